//! The file system behind a small interface, so the segment log runs
//! unchanged on the real disk ([`RealFs`]: std::fs for writes, memmap2 for
//! reads) and on a simulated one ([`SimFs`]: loses unsynced bytes, tears the
//! last write, flips bits, fails on demand) that the simulator drives.
//!
//! Paths are relative to the file system's root: the real one joins them to
//! a base directory; the simulated one uses them as names.

mod real;
mod sim;

pub use real::RealFs;
pub use sim::{CrashMode, SimFaults, SimFs, SimStats};

use std::io;
use std::path::{Path, PathBuf};

/// A file system: the handful of operations a crash-safe log needs.
pub trait Vfs: Send + Sync {
    type File: VfsFile;
    /// Creates a directory and its parents (durable after `sync_dir` of the
    /// parent).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// The names of the files in a directory, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames a file, replacing `to` if it exists (durable after
    /// `sync_dir`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (durable after `sync_dir`).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. Handles are cheap to clone and share one file.
pub trait VfsFile: Clone + Send + Sync {
    /// The file's current length.
    fn size(&self) -> io::Result<u64>;
    /// Calls `f` with the bytes `offset..offset + len`. Errors (never a
    /// crash) when the file is shorter than that, also when it was shrunk
    /// under a live mapping.
    fn with_bytes<R>(&self, offset: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> io::Result<R>;
    /// Writes `data` at `offset`, growing the file if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Sets the file's length (zero-filled when it grows).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Grows the file to `len` bytes with every block allocated and
    /// written (zeros), so that later writes in place change data only and
    /// their fdatasync has no new block allocation to commit to the file
    /// system's journal (PostgreSQL's `wal_init_zero`). The default just
    /// sets the length, which reads the same.
    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with_bytes(offset, buf.len(), |b| buf.copy_from_slice(b))
    }
}

/// The error a read past the end of a file gives.
pub(crate) fn short_file(path: &Path, offset: u64, len: usize, file_len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "{}: {len} bytes at offset {offset} are past the end of the file ({file_len} bytes; \
             was it truncated?)",
            path.display()
        ),
    )
}

/// The parent directory of a path ("" for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}
