//! The real file system: std::fs for writes and syncs, memmap2 for reads.
//!
//! Reads check the file's length before touching the mapping, so a file
//! shrunk under a live map (by another process, or a full disk) gives an
//! error instead of SIGBUS. (A shrink racing between the check and the copy
//! can still fault; nothing in recsync shrinks a mapped file itself.)

use super::{short_file, Vfs, VfsFile};
use memmap2::{Mmap, MmapOptions};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The real file system, rooted at a directory.
#[derive(Clone, Debug)]
pub struct RealFs {
    root: PathBuf,
}

impl RealFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}

/// An open real file; clones share the descriptor and the mapping.
#[derive(Clone, Debug)]
pub struct RealFile(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    map: RwLock<Option<Mmap>>,
}

impl RealFile {
    fn new(path: PathBuf, file: File) -> Self {
        Self(Arc::new(Inner {
            path,
            file,
            map: RwLock::new(None),
        }))
    }
}

fn poisoned() -> io::Error {
    io::Error::other("a thread panicked while holding a file mapping")
}

impl VfsFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.file.metadata()?.len())
    }

    fn with_bytes<R>(&self, offset: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> io::Result<R> {
        let file_len = self.size()?;
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= file_len)
            .ok_or_else(|| short_file(&self.0.path, offset, len, file_len))?;
        if len == 0 {
            return Ok(f(&[]));
        }
        {
            let map = self.0.map.read().map_err(|_| poisoned())?;
            if let Some(m) = map.as_ref().filter(|m| m.len() as u64 >= end) {
                return Ok(f(&m[offset as usize..end as usize]));
            }
        }
        let mut map = self.0.map.write().map_err(|_| poisoned())?;
        if map.as_ref().is_none_or(|m| (m.len() as u64) < end) {
            // SAFETY: the mapping is read-only and every access is preceded
            // by a length check against the live file (see the module doc).
            #[allow(unsafe_code)]
            let m = unsafe {
                MmapOptions::new()
                    .len(file_len as usize)
                    .map(&self.0.file)?
            };
            *map = Some(m);
        }
        let m = map.as_ref().ok_or_else(poisoned)?;
        Ok(f(&m[offset as usize..end as usize]))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.file.write_all_at(data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut map = self.0.map.write().map_err(|_| poisoned())?;
        *map = None;
        self.0.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.file.sync_data()
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        // Zeros written, not a hole or an unwritten extent: a sync after a
        // write in place then commits no new allocation (an 8 KiB group
        // commit took ~200 us to sync on a sparse file, ~130 us on a
        // written one).
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK as usize];
        let mut at = 0;
        while at < len {
            let n = CHUNK.min(len - at);
            self.0.file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        Ok(())
    }
}

impl Vfs for RealFs {
    type File = RealFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(self.full(path))
    }

    fn create(&self, path: &Path) -> io::Result<RealFile> {
        let full = self.full(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&full)?;
        Ok(RealFile::new(full, file))
    }

    fn open(&self, path: &Path) -> io::Result<RealFile> {
        let full = self.full(path);
        let file = OpenOptions::new().read(true).write(true).open(&full)?;
        Ok(RealFile::new(full, file))
    }

    fn exists(&self, path: &Path) -> bool {
        self.full(path).exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(self.full(dir))? {
            let e = e?;
            if e.file_type()?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(self.full(from), self.full(to))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(self.full(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(self.full(dir))?.sync_all()
    }
}
