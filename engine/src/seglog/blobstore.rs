//! Blobs (recordings) on disk: one file per blob, written as a stream of
//! checksummed chunks and read chunk by chunk, so a blob of several GiB never
//! sits whole in memory.
//!
//! ```text
//! blob  = chunk*
//! chunk = len:u32 crc:u32 offset:u64 data[len]    crc = CRC32C(len, offset, data)
//! ```
//! `offset` is the chunk's position in the blob, so a chunk out of place is
//! caught like a flipped bit. A torn last chunk (a crash mid-append) is cut
//! on open; a bad chunk anywhere is an error on read, naming blob and offset.

use super::io_err;
use crate::disk::{Vfs, VfsFile};
use crate::storage::{BlobId, StorageError};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

pub const CHUNK_HEADER: usize = 16;
/// Chunks are never larger than this (a sanity bound when reading headers).
pub const MAX_CHUNK: u32 = 64 << 20;

pub fn blob_name(id: &BlobId) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(69);
    for b in id {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s.push_str(".blob");
    s
}

pub fn parse_blob_name(name: &str) -> Option<BlobId> {
    let hex = name.strip_suffix(".blob")?;
    if hex.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

fn chunk_crc(header: &[u8], data: &[u8]) -> u32 {
    let c = crc32c::crc32c(&header[0..4]);
    let c = crc32c::crc32c_append(c, &header[8..16]);
    crc32c::crc32c_append(c, data)
}

pub fn encode_chunk(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(CHUNK_HEADER + data.len());
    c.extend_from_slice(&(data.len() as u32).to_le_bytes());
    c.extend_from_slice(&[0; 4]);
    c.extend_from_slice(&offset.to_le_bytes());
    let crc = chunk_crc(&c, data);
    c[4..8].copy_from_slice(&crc.to_le_bytes());
    c.extend_from_slice(data);
    c
}

/// One chunk's place.
#[derive(Clone, Copy, Debug)]
pub struct Chunk {
    pub offset: u64,
    pub file_offset: u64,
    pub len: u32,
}

/// An open blob: its chunk map.
#[derive(Clone, Debug)]
struct OpenBlob<F> {
    file: F,
    chunks: Vec<Chunk>,
    len: u64,
    /// File offset after the last valid chunk.
    end: u64,
    /// Something invalid follows the last valid chunk: a torn append, or a
    /// bad read. Nothing is cut on a read (a read error must never destroy
    /// data): the view is walked again on the next access, and the file is
    /// cut at `end` only when the blob is appended to.
    suspect: bool,
}

/// Reads a chunk header at `pos`: `(len, crc, offset)`.
fn read_chunk_header<F: VfsFile>(file: &F, pos: u64) -> io::Result<(u32, u32, u64)> {
    let mut h = [0u8; CHUNK_HEADER];
    file.read_exact_at(pos, &mut h)?;
    let mut off = [0u8; 8];
    off.copy_from_slice(&h[8..16]);
    Ok((
        u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        u64::from_le_bytes(off),
    ))
}

/// Verifies the chunk at `c`, then calls `f` with its data.
fn with_chunk<F: VfsFile, R>(
    file: &F,
    c: &Chunk,
    f: impl FnOnce(&[u8]) -> R,
) -> io::Result<Result<R, String>> {
    file.with_bytes(c.file_offset, CHUNK_HEADER + c.len as usize, |b| {
        let (h, data) = b.split_at(CHUNK_HEADER);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if chunk_crc(h, data) != crc {
            Err("chunk checksum mismatch".to_string())
        } else {
            Ok(f(data))
        }
    })
}

/// Chunks found, and where and why a walk stopped early.
pub type Walk = (Vec<Chunk>, Option<(u64, String)>);

/// Walks a blob file's chunk headers. Returns the chunks, and where and why
/// the walk stopped early (a bad header or a torn last chunk).
pub fn walk_chunks<F: VfsFile>(file: &F) -> io::Result<Walk> {
    let file_len = file.size()?;
    let mut chunks = Vec::new();
    let mut pos = 0u64;
    let mut logical = 0u64;
    while pos < file_len {
        if file_len - pos < CHUNK_HEADER as u64 {
            return Ok((chunks, Some((pos, "chunk header cut short".into()))));
        }
        let (len, _, offset) = read_chunk_header(file, pos)?;
        if len == 0 || len > MAX_CHUNK || offset != logical {
            return Ok((chunks, Some((pos, "bad chunk header".into()))));
        }
        if pos + CHUNK_HEADER as u64 + len as u64 > file_len {
            return Ok((chunks, Some((pos, "chunk cut short".into()))));
        }
        chunks.push(Chunk {
            offset,
            file_offset: pos,
            len,
        });
        pos += CHUNK_HEADER as u64 + len as u64;
        logical += len as u64;
    }
    Ok((chunks, None))
}

/// Verifies every chunk of a blob file; the first bad file offset if any.
pub fn verify_blob<F: VfsFile>(file: &F) -> io::Result<Result<(u64, usize), (u64, String)>> {
    let (chunks, stop) = walk_chunks(file)?;
    for c in &chunks {
        if let Err(e) = with_chunk(file, c, |_| ())? {
            return Ok(Err((c.file_offset, e)));
        }
    }
    if let Some(stop) = stop {
        return Ok(Err(stop));
    }
    Ok(Ok((
        chunks.iter().map(|c| c.len as u64).sum(),
        chunks.len(),
    )))
}

/// The blob directory of one storage.
pub struct BlobStore<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    chunk: usize,
    open: RefCell<BTreeMap<BlobId, OpenBlob<V::File>>>,
    dirty: BTreeSet<BlobId>,
    dir_dirty: bool,
}

impl<V: Vfs> BlobStore<V> {
    pub fn new(vfs: V, dir: PathBuf, chunk: usize) -> Self {
        Self {
            vfs,
            dir,
            chunk: chunk.clamp(1, MAX_CHUNK as usize),
            open: RefCell::new(BTreeMap::new()),
            dirty: BTreeSet::new(),
            dir_dirty: false,
        }
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(blob_name(id))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens a blob into the cache (cutting a torn last chunk); false when
    /// it does not exist.
    fn load(&self, id: &BlobId) -> Result<bool, StorageError> {
        if self.open.borrow().get(id).is_some_and(|b| !b.suspect) {
            return Ok(true);
        }
        let path = self.path(id);
        if !self.vfs.exists(&path) {
            return Ok(false);
        }
        let file = self.vfs.open(&path).map_err(|e| io_err("blob open", e))?;
        let (mut chunks, stop) = walk_chunks(&file).map_err(|e| io_err("blob open", e))?;
        // The last chunk may be a torn append: check it now.
        let mut cut = stop.map(|(pos, _)| pos);
        if let Some(last) = chunks.last().copied() {
            if with_chunk(&file, &last, |_| ())
                .map_err(|e| io_err("blob open", e))?
                .is_err()
            {
                chunks.pop();
                cut = Some(last.file_offset);
            }
        }
        let end = chunks
            .last()
            .map_or(0, |c| c.file_offset + CHUNK_HEADER as u64 + c.len as u64);
        let len = chunks.iter().map(|c| c.len as u64).sum();
        self.open.borrow_mut().insert(
            *id,
            OpenBlob {
                file,
                chunks,
                len,
                end,
                suspect: cut.is_some(),
            },
        );
        Ok(true)
    }

    pub fn len(&self, id: &BlobId) -> u64 {
        match self.load(id) {
            Ok(true) => self.open.borrow().get(id).map_or(0, |b| b.len),
            _ => 0,
        }
    }

    pub fn append(&mut self, id: &BlobId, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        if !self.load(id)? {
            let file = self
                .vfs
                .create(&self.path(id))
                .map_err(|e| io_err("blob create", e))?;
            self.dir_dirty = true;
            self.open.borrow_mut().insert(
                *id,
                OpenBlob {
                    file,
                    chunks: Vec::new(),
                    len: 0,
                    end: 0,
                    suspect: false,
                },
            );
        }
        let mut open = self.open.borrow_mut();
        let b = open.get_mut(id).ok_or(StorageError::Io {
            op: "blob_append",
            detail: "blob vanished from the cache".into(),
        })?;
        if b.len != offset {
            return Err(StorageError::Io {
                op: "blob_append",
                detail: format!("offset {offset} is not the blob's length {}", b.len),
            });
        }
        if b.suspect {
            // Appending continues from the last valid chunk: what follows it
            // goes (it is re-sent by whoever supplies the rest).
            b.file
                .set_len(b.end)
                .map_err(|e| io_err("blob_append", e))?;
            b.suspect = false;
        }
        for piece in data.chunks(self.chunk) {
            let frame = encode_chunk(b.len, piece);
            b.file
                .write_at(b.end, &frame)
                .map_err(|e| io_err("blob_append", e))?;
            b.chunks.push(Chunk {
                offset: b.len,
                file_offset: b.end,
                len: piece.len() as u32,
            });
            b.end += frame.len() as u64;
            b.len += piece.len() as u64;
        }
        self.dirty.insert(*id);
        Ok(())
    }

    pub fn read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        if !self.load(id)? {
            return Ok(Vec::new());
        }
        let open = self.open.borrow();
        let Some(b) = open.get(id) else {
            return Ok(Vec::new());
        };
        let end = offset.saturating_add(len as u64).min(b.len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        if offset >= end {
            return Ok(out);
        }
        let first = b
            .chunks
            .partition_point(|c| c.offset + c.len as u64 <= offset);
        for c in &b.chunks[first..] {
            if c.offset >= end {
                break;
            }
            let from = offset.max(c.offset) - c.offset;
            let to = end.min(c.offset + c.len as u64) - c.offset;
            with_chunk(&b.file, c, |data| {
                out.extend_from_slice(&data[from as usize..to as usize])
            })
            .map_err(|e| io_err("blob_read", e))?
            .map_err(|detail| StorageError::Corrupt {
                location: format!(
                    "{} at file offset {}",
                    self.path(id).display(),
                    c.file_offset
                ),
                detail,
            })?;
        }
        Ok(out)
    }

    pub fn rename(&mut self, from: &BlobId, to: &BlobId) -> Result<(), StorageError> {
        if !self.load(from)? {
            return Ok(());
        }
        // A finished blob is durable, bytes and name, before anything can
        // refer to it: a version may be shipped before the log entry naming
        // it is durable, and its blob must outlive a crash of this node.
        if self.dirty.remove(from) {
            if let Some(b) = self.open.borrow().get(from) {
                b.file.sync_data().map_err(|e| io_err("blob sync", e))?;
            }
        }
        self.vfs
            .rename(&self.path(from), &self.path(to))
            .map_err(|e| io_err("blob_rename", e))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| io_err("blob directory sync", e))?;
        let mut open = self.open.borrow_mut();
        if let Some(b) = open.remove(from) {
            open.insert(*to, b);
        }
        Ok(())
    }

    pub fn remove(&mut self, id: &BlobId) -> Result<(), StorageError> {
        self.open.borrow_mut().remove(id);
        self.dirty.remove(id);
        let path = self.path(id);
        if self.vfs.exists(&path) {
            self.vfs
                .remove(&path)
                .map_err(|e| io_err("blob_remove", e))?;
            self.dir_dirty = true;
        }
        Ok(())
    }

    /// Whether this blob has bytes that wait for `sync`.
    pub fn is_dirty_blob(&self, id: &BlobId) -> bool {
        self.dirty.contains(id)
    }

    /// Whether anything waits for `sync`.
    pub fn is_dirty(&self) -> bool {
        self.dir_dirty || !self.dirty.is_empty()
    }

    /// Makes every blob byte and directory change so far durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        let open = self.open.borrow();
        for id in &self.dirty {
            if let Some(b) = open.get(id) {
                b.file.sync_data().map_err(|e| io_err("blob sync", e))?;
            }
        }
        drop(open);
        self.dirty.clear();
        if self.dir_dirty {
            self.vfs
                .sync_dir(&self.dir)
                .map_err(|e| io_err("blob directory sync", e))?;
            self.dir_dirty = false;
        }
        Ok(())
    }
}
