//! A simulated file system in memory, deterministic, for the simulator and
//! the storage tests.
//!
//! It models what a crash does to a real disk: file data written since the
//! file's last `sync_data` and directory entries changed since the
//! directory's last `sync_dir` may be lost. [`SimFs::crash`] loses all of it
//! or keeps a random prefix of each file's unsynced writes with the last kept
//! write torn. Faults can be injected: failing writes and syncs, a capacity
//! (disk full), and bit flips. Syncs, writes and bytes are counted.

use super::{parent_of, short_file, Vfs, VfsFile};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a crash keeps of unsynced data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost.
    LoseUnsynced,
    /// Each file keeps a random prefix of its unsynced writes (drawn from the
    /// seed), the last kept one possibly torn at a random byte.
    Torn { seed: u64 },
}

/// Faults to inject; counters count down as faults fire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// The next this many writes fail with an I/O error.
    pub failing_writes: u32,
    /// The next this many syncs (data or directory) fail.
    pub failing_syncs: u32,
    /// Total bytes the disk holds; a write that would grow past it fails
    /// with "no space".
    pub capacity: Option<u64>,
    /// The next this many reads come back with one bit flipped (silent
    /// corruption: only a checksum can tell).
    pub corrupt_reads: u32,
    /// The next this many reads come back short (an I/O error).
    pub short_reads: u32,
}

/// Operation counts, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub writes: u64,
    pub bytes_written: u64,
    pub data_syncs: u64,
    pub dir_syncs: u64,
    pub crashes: u64,
}

/// The simulated file system; clones share the same disk.
#[derive(Clone, Debug, Default)]
pub struct SimFs(Arc<Mutex<State>>);

#[derive(Clone, Debug, Default)]
struct State {
    files: BTreeMap<u64, FileData>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// Files that lost a name since the last directory sync: gone for good
    /// at the next one if no name reaches them then.
    unlinked: Vec<u64>,
    /// Names created, renamed or removed since their directory's last sync.
    dirty_names: BTreeSet<PathBuf>,
    dirs: BTreeMap<PathBuf, ()>,
    next_ino: u64,
    /// Bumped by every crash; handles from before a crash stop working.
    generation: u64,
    faults: SimFaults,
    stats: SimStats,
}

#[derive(Clone, Debug, Default)]
struct FileData {
    /// Bytes past `data.len()` (up to `len`) read as zeros.
    data: Vec<u8>,
    len: u64,
    /// Changes since the last sync, oldest first, with what they replaced.
    undo: Vec<Undo>,
}

#[derive(Clone, Debug)]
enum Undo {
    Write {
        offset: u64,
        /// The bytes replaced; `None` when they were all zeros.
        old: Option<Vec<u8>>,
        old_len: u64,
        new: Vec<u8>,
    },
    SetLen {
        old_len: u64,
        /// The bytes cut off by a shrink.
        old_tail: Vec<u8>,
    },
}

impl FileData {
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let start = offset as usize;
        if start < self.data.len() {
            let end = (start + len).min(self.data.len());
            out[..end - start].copy_from_slice(&self.data[start..end]);
        }
        out
    }

    fn raw_write(&mut self, offset: u64, bytes: &[u8]) {
        let start = offset as usize;
        let end = start + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[start..end].copy_from_slice(bytes);
        self.len = self.len.max(end as u64);
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let start = offset as usize;
        let old = (start < self.data.len()).then(|| self.read(offset, bytes.len()));
        self.undo.push(Undo::Write {
            offset,
            old,
            old_len: self.len,
            new: bytes.to_vec(),
        });
        self.raw_write(offset, bytes);
    }

    fn raw_set_len(&mut self, len: u64) {
        if (len as usize) < self.data.len() {
            self.data.truncate(len as usize);
        }
        self.len = len;
    }

    fn set_len(&mut self, len: u64) {
        let old_tail = if len < self.len {
            self.read(len, (self.len - len) as usize)
        } else {
            Vec::new()
        };
        self.undo.push(Undo::SetLen {
            old_len: self.len,
            old_tail,
        });
        self.raw_set_len(len);
    }

    /// Reverts the last unsynced change.
    fn revert(&mut self, u: &Undo) {
        match u {
            Undo::Write {
                offset,
                old,
                old_len,
                new,
            } => {
                match old {
                    Some(old) => self.raw_write(*offset, old),
                    None => {
                        let zeros = vec![0u8; new.len()];
                        self.raw_write(*offset, &zeros)
                    }
                }
                self.raw_set_len(*old_len);
            }
            Undo::SetLen { old_len, old_tail } => {
                let cut = self.len;
                self.raw_set_len(*old_len);
                if !old_tail.is_empty() {
                    self.raw_write(cut, old_tail);
                }
            }
        }
    }
}

/// A small deterministic generator (splitmix64) for crash choices.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} error"))
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("simulated disk poisoned"))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Only reached from test helpers; a poisoned disk is a test bug.
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Simulates a power loss or process crash: unsynced data and directory
    /// changes are lost (or partly kept, per `mode`). Open handles stop
    /// working.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.state();
        st.stats.crashes += 1;
        st.generation += 1;
        st.names = st.durable_names.clone();
        st.unlinked.clear();
        st.dirty_names.clear();
        let live: std::collections::BTreeSet<u64> = st.names.values().copied().collect();
        st.files.retain(|ino, _| live.contains(ino));
        for (ino, f) in st.files.iter_mut() {
            let undo = std::mem::take(&mut f.undo);
            let keep = match mode {
                CrashMode::LoseUnsynced => 0,
                CrashMode::Torn { seed } => {
                    (mix(seed ^ mix(*ino)) % (undo.len() as u64 + 1)) as usize
                }
            };
            for u in undo[keep..].iter().rev() {
                f.revert(u);
            }
            // Tear: part of the first lost write reached the disk.
            if let (CrashMode::Torn { seed }, Some(Undo::Write { offset, new, .. })) =
                (mode, undo.get(keep))
            {
                let part = (mix(seed ^ 0x7EA2 ^ *ino) % (new.len() as u64 + 1)) as usize;
                if part > 0 {
                    f.raw_write(*offset, &new[..part]);
                }
            }
        }
    }

    /// An independent copy of the whole disk as it is now (unsynced bytes
    /// included): an operator's file-level backup.
    pub fn deep_clone(&self) -> SimFs {
        let mut st = self.state().clone();
        st.generation += 1;
        SimFs(Arc::new(Mutex::new(st)))
    }

    /// Sets the faults to inject from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.state().faults = faults;
    }

    pub fn stats(&self) -> SimStats {
        self.state().stats
    }

    /// Flips one bit of a file, as a failing disk would (durably).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut st = self.lock()?;
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let f = st.files.get_mut(&ino).ok_or_else(|| not_found(path))?;
        if offset >= f.len {
            return Err(short_file(path, offset, 1, f.len));
        }
        let mut b = f.read(offset, 1);
        b[0] ^= 1 << (bit % 8);
        f.raw_write(offset, &b);
        Ok(())
    }

    /// A copy of a file's current bytes.
    pub fn contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock()?;
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let f = st.files.get(&ino).ok_or_else(|| not_found(path))?;
        Ok(f.read(0, f.len as usize))
    }

    /// Replaces a file's bytes, durably (tests: torn tails, truncation).
    pub fn replace_contents(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock()?;
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let f = st.files.get_mut(&ino).ok_or_else(|| not_found(path))?;
        f.undo.clear();
        f.data = bytes.to_vec();
        f.len = bytes.len() as u64;
        Ok(())
    }

    /// Bytes held by all files (their logical lengths).
    pub fn used_bytes(&self) -> u64 {
        self.state().files.values().map(|f| f.len).sum()
    }
}

/// A handle to a simulated file.
#[derive(Clone, Debug)]
pub struct SimFile {
    fs: SimFs,
    ino: u64,
    generation: u64,
    path: PathBuf,
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.fs.lock()?;
        if st.generation != self.generation || !st.files.contains_key(&self.ino) {
            return Err(io::Error::other(format!(
                "{}: handle from before a crash, or file removed",
                self.path.display()
            )));
        }
        f(&mut st, self.ino)
    }
}

impl VfsFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        self.with(|st, ino| Ok(st.files.get(&ino).map_or(0, |f| f.len)))
    }

    fn with_bytes<R>(&self, offset: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> io::Result<R> {
        // Without a read fault to inject, `f` reads the stored bytes in
        // place when they are all stored (no zeros to pad with).
        let mut f = Some(f);
        let direct = self.with(|st, ino| {
            if st.faults.short_reads > 0 || st.faults.corrupt_reads > 0 {
                return Ok(None);
            }
            let file = st.files.get(&ino).ok_or_else(|| not_found(&self.path))?;
            let end = offset
                .checked_add(len as u64)
                .filter(|end| *end <= file.len)
                .ok_or_else(|| short_file(&self.path, offset, len, file.len))?;
            if end as usize > file.data.len() {
                return Ok(None);
            }
            Ok(f.take()
                .map(|f| f(&file.data[offset as usize..end as usize])))
        })?;
        if let Some(r) = direct {
            return Ok(r);
        }
        let Some(f) = f else {
            unreachable!("`f` is taken only when it ran")
        };
        let bytes = self.with(|st, ino| {
            let file = st.files.get(&ino).ok_or_else(|| not_found(&self.path))?;
            let mut bytes = match offset.checked_add(len as u64) {
                Some(end) if end <= file.len => file.read(offset, len),
                _ => return Err(short_file(&self.path, offset, len, file.len)),
            };
            if len > 0 && st.faults.short_reads > 0 {
                st.faults.short_reads -= 1;
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: injected short read", self.path.display()),
                ));
            }
            if len > 0 && st.faults.corrupt_reads > 0 {
                st.faults.corrupt_reads -= 1;
                let at = (mix(offset ^ len as u64) % len as u64) as usize;
                bytes[at] ^= 1 << (offset % 8);
            }
            Ok(bytes)
        })?;
        Ok(f(&bytes))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|st, ino| {
            if st.faults.failing_writes > 0 {
                st.faults.failing_writes -= 1;
                return Err(injected("write"));
            }
            // The space used is summed only when a capacity is set.
            let over = st.faults.capacity.is_some_and(|cap| {
                let used: u64 = st.files.values().map(|f| f.len).sum();
                let cur = st.files.get(&ino).map_or(0, |f| f.len);
                used + (offset + data.len() as u64).saturating_sub(cur) > cap
            });
            if over {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated disk full",
                ));
            }
            st.stats.writes += 1;
            st.stats.bytes_written += data.len() as u64;
            let file = st
                .files
                .get_mut(&ino)
                .ok_or_else(|| not_found(&self.path))?;
            file.write(offset, data);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|st, ino| {
            let file = st
                .files
                .get_mut(&ino)
                .ok_or_else(|| not_found(&self.path))?;
            file.set_len(len);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|st, ino| {
            if st.faults.failing_syncs > 0 {
                st.faults.failing_syncs -= 1;
                return Err(injected("fsync"));
            }
            st.stats.data_syncs += 1;
            if let Some(f) = st.files.get_mut(&ino) {
                f.undo.clear();
            }
            Ok(())
        })
    }
}

impl Vfs for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock()?;
        let mut p = PathBuf::new();
        for c in path.components() {
            p.push(c);
            st.dirs.insert(p.clone(), ());
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut st = self.lock()?;
        if st.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists", path.display()),
            ));
        }
        let parent = parent_of(path);
        if !parent.as_os_str().is_empty() && !st.dirs.contains_key(&parent) {
            return Err(not_found(&parent));
        }
        st.next_ino += 1;
        let ino = st.next_ino;
        st.files.insert(ino, FileData::default());
        st.names.insert(path.to_path_buf(), ino);
        st.dirty_names.insert(path.to_path_buf());
        Ok(SimFile {
            fs: self.clone(),
            ino,
            generation: st.generation,
            path: path.to_path_buf(),
        })
    }

    fn open(&self, path: &Path) -> io::Result<SimFile> {
        let st = self.lock()?;
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(SimFile {
            fs: self.clone(),
            ino,
            generation: st.generation,
            path: path.to_path_buf(),
        })
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock()
            .map(|st| st.names.contains_key(path) || st.dirs.contains_key(path))
            .unwrap_or(false)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock()?;
        if !dir.as_os_str().is_empty() && !st.dirs.contains_key(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| parent_of(p) == dir)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock()?;
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        if let Some(replaced) = st.names.insert(to.to_path_buf(), ino) {
            st.unlinked.push(replaced);
        }
        st.dirty_names.insert(from.to_path_buf());
        st.dirty_names.insert(to.to_path_buf());
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock()?;
        let ino = st.names.remove(path).ok_or_else(|| not_found(path))?;
        st.unlinked.push(ino);
        st.dirty_names.insert(path.to_path_buf());
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock()?;
        if st.faults.failing_syncs > 0 {
            st.faults.failing_syncs -= 1;
            return Err(injected("directory fsync"));
        }
        st.stats.dir_syncs += 1;
        // Only the names changed since the last sync of `dir` differ from
        // their durable state: a sync costs what changed, not what the
        // directory holds.
        let changed: Vec<PathBuf> = st
            .dirty_names
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        let mut before = Vec::new();
        for p in changed {
            st.dirty_names.remove(&p);
            let now = st.names.get(&p).copied();
            let old = match now {
                Some(ino) => st.durable_names.insert(p, ino),
                None => st.durable_names.remove(&p),
            };
            if let Some(old) = old.filter(|o| Some(*o) != now) {
                before.push(old);
            }
        }
        // Files no name reaches any more are gone for good.
        let mut dropped: Vec<u64> = std::mem::take(&mut st.unlinked);
        dropped.extend(before);
        dropped.sort_unstable();
        dropped.dedup();
        for ino in dropped {
            let reached = st.names.values().any(|i| *i == ino)
                || st.durable_names.values().any(|i| *i == ino);
            if !reached {
                st.files.remove(&ino);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn unsynced_data_and_names_are_lost_in_a_crash() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("d")).unwrap();
        let f = fs.create(&p("d/a")).unwrap();
        f.write_at(0, b"hello").unwrap();
        f.sync_data().unwrap();
        fs.crash(CrashMode::LoseUnsynced);
        assert!(!fs.exists(&p("d/a")), "creation was not made durable");

        let f = fs.create(&p("d/b")).unwrap();
        f.write_at(0, b"hello").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&p("d")).unwrap();
        f.write_at(5, b" world").unwrap();
        f.set_len(100).unwrap();
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.contents(&p("d/b")).unwrap(), b"hello");
        assert!(f.size().is_err(), "old handles die with the crash");
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_the_unsynced_writes() {
        for seed in 0..200 {
            let fs = SimFs::new();
            let f = fs.create(&p("a")).unwrap();
            fs.sync_dir(&p("")).unwrap();
            f.write_at(0, b"AAAA").unwrap();
            f.sync_data().unwrap();
            f.write_at(4, b"BBBB").unwrap();
            f.write_at(8, b"CCCC").unwrap();
            fs.crash(CrashMode::Torn { seed });
            let got = fs.contents(&p("a")).unwrap();
            let full = b"AAAABBBBCCCC";
            assert!(
                got.len() >= 4 && full.starts_with(&got),
                "seed {seed}: {got:?}"
            );
        }
    }

    #[test]
    fn faults_fire_and_count_down() {
        let fs = SimFs::new();
        let f = fs.create(&p("a")).unwrap();
        fs.set_faults(SimFaults {
            failing_writes: 1,
            failing_syncs: 1,
            capacity: Some(8),
            ..Default::default()
        });
        assert!(f.write_at(0, b"x").is_err());
        f.write_at(0, b"12345678").unwrap();
        assert_eq!(
            f.write_at(8, b"9").unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        assert_eq!(fs.stats().data_syncs, 1);
    }

    #[test]
    fn injected_read_faults_corrupt_or_cut_one_read_each() {
        let fs = SimFs::new();
        let f = fs.create(&p("a")).unwrap();
        f.write_at(0, b"abcdefgh").unwrap();
        fs.set_faults(SimFaults {
            corrupt_reads: 1,
            short_reads: 1,
            ..Default::default()
        });
        assert!(f.with_bytes(0, 8, |_| ()).is_err(), "short read first");
        let corrupt = f.with_bytes(0, 8, |b| b.to_vec()).unwrap();
        assert_ne!(corrupt, b"abcdefgh");
        let diff: u32 = corrupt
            .iter()
            .zip(b"abcdefgh")
            .map(|(x, y)| (x ^ y).count_ones())
            .sum();
        assert_eq!(diff, 1, "one bit flipped");
        assert_eq!(f.with_bytes(0, 8, |b| b.to_vec()).unwrap(), b"abcdefgh");
        assert_eq!(
            fs.contents(&p("a")).unwrap(),
            b"abcdefgh",
            "the disk is intact"
        );
    }

    #[test]
    fn reads_past_the_end_are_errors() {
        let fs = SimFs::new();
        let f = fs.create(&p("a")).unwrap();
        f.write_at(0, b"abc").unwrap();
        assert!(f.with_bytes(2, 2, |_| ()).is_err());
        assert_eq!(f.with_bytes(1, 2, |b| b.to_vec()).unwrap(), b"bc");
        f.set_len(10).unwrap();
        assert_eq!(f.with_bytes(8, 2, |b| b.to_vec()).unwrap(), [0, 0]);
    }
}
