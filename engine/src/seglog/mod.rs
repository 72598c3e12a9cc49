//! The replication log on disk: segment files of bounded size holding
//! checksummed entry frames, an atomic meta file for the node's identity and
//! counters, and a blob directory. [`SegmentStorage`] implements the core's
//! [`Storage`] trait over any [`Vfs`], so the simulator runs this very code
//! on its simulated disk.
//!
//! ```text
//! DIR/meta          node identity (NodeMeta), replaced atomically
//! DIR/log/*.seg     segments, named by sequence number (see `format`)
//! DIR/blobs/*.blob  one chunked, checksummed file per blob
//! ```
//!
//! Crash safety: an entry is durable once the active segment is synced
//! (every append in `always` mode; at `sync()` in `group` and `periodic`).
//! A new segment is created, preallocated, given its header and synced, and
//! the directory synced, before anything is written to it; the previous one
//! is sealed and synced first. On open, every segment is scanned: the torn
//! tail of the last one is cut (and zeroed) at the last valid frame;
//! anything invalid elsewhere is an error naming segment and offset.
//! Releases (entries the core no longer needs) are recorded as marker frames
//! and compaction copies live entries out of mostly-dead segments.

pub mod blobstore;
pub mod check;
pub mod format;
pub mod group;

use crate::disk::{Vfs, VfsFile};
use crate::ids::Lsn;
use crate::record::Body;
use crate::storage::{BlobId, EntryBody, LogEntry, NodeMeta, Storage, StorageError};
use blobstore::BlobStore;
use format::{FrameKind, ScanEnd, HEADER_LEN};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

pub use group::SharedLog;

/// When appends become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync before `append` returns.
    Always,
    /// Appends are made durable together by `sync()` (the driver calls it
    /// once per batch of work; [`SharedLog`] lets concurrent writers share
    /// one fdatasync and return only once covered).
    Group,
    /// Appends are made durable by `sync()` on the driver's timer.
    Periodic,
}

/// Tuning of a segment log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Maximum segment size (a bigger single entry gets a segment of its
    /// own); segments are preallocated to it.
    pub segment_size: u64,
    pub durability: Durability,
    /// Blob chunk size.
    pub blob_chunk: usize,
    /// A sealed segment is compacted once at least this fraction of its
    /// bytes is dead.
    pub compact_dead_fraction: f64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_size: 64 << 20,
            durability: Durability::Group,
            blob_chunk: 256 << 10,
            compact_dead_fraction: 0.5,
        }
    }
}

pub const META_FILE: &str = "meta";
pub const META_TMP: &str = "meta.tmp";
pub const LOG_DIR: &str = "log";
pub const BLOB_DIR: &str = "blobs";
const META_MAGIC: &[u8; 8] = b"RSYNCMET";

/// Encodes the meta file: magic, length, CRC32C, postcard body.
pub fn encode_meta(meta: &NodeMeta) -> Result<Vec<u8>, StorageError> {
    let body = postcard::to_allocvec(meta).map_err(|e| StorageError::Io {
        op: "store_meta",
        detail: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes the meta file.
pub fn decode_meta(bytes: &[u8]) -> Result<NodeMeta, String> {
    if bytes.len() < 16 || &bytes[0..8] != META_MAGIC {
        return Err("not a recsync meta file".into());
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let body = bytes
        .get(16..16 + len)
        .ok_or_else(|| "meta file cut short".to_string())?;
    if crc32c::crc32c(body) != crc {
        return Err("meta checksum mismatch".into());
    }
    postcard::from_bytes(body).map_err(|e| format!("meta does not decode: {e}"))
}

pub(crate) fn io_err(op: &'static str, e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::StorageFull {
        StorageError::Full { op }
    } else {
        StorageError::Io {
            op,
            detail: e.to_string(),
        }
    }
}

/// Where an entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
}

struct Segment<F> {
    file: F,
    /// Allocated length.
    size: u64,
    /// End of the valid frames.
    write_pos: u64,
    sealed: bool,
    /// Bytes of frames, and of live entry frames.
    frame_bytes: u64,
    live_bytes: u64,
}

/// What open found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub entries: usize,
    /// Bytes of a torn tail cut from the last segment.
    pub torn_bytes: u64,
    /// Where the torn tail started, as `segment@offset`.
    pub torn_at: Option<String>,
}

/// What one compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub segments_removed: usize,
    pub entries_copied: usize,
    pub bytes_copied: u64,
    pub bytes_freed: u64,
}

/// Errors opening a log directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenLogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The segment log, with meta file and blobs, over a [`Vfs`].
pub struct SegmentStorage<V: Vfs> {
    vfs: V,
    opts: LogOptions,
    segments: BTreeMap<u64, Segment<V::File>>,
    index: BTreeMap<Lsn, Loc>,
    /// Released entries whose frames still exist, and the segment holding
    /// each (their markers must outlive that segment).
    released: BTreeMap<Lsn, u64>,
    pending_release: Vec<Lsn>,
    last_lsn: Lsn,
    durable_lsn: Lsn,
    /// Whether the active segment holds bytes not yet synced.
    unsynced: bool,
    meta: Option<NodeMeta>,
    blobs: BlobStore<V>,
    failed: Option<StorageError>,
    recovery: Recovery,
    /// Frames appended but not yet written to the active segment (one
    /// write per `WRITE_BUFFER` bytes instead of one per frame); they are
    /// written before any sync, seal or rotation, and reads see them.
    wbuf: Vec<u8>,
    /// The file offset of `wbuf[0]` in the active segment.
    wbuf_at: u64,
    /// Reused for encoding entries.
    scratch: Vec<u8>,
    /// fdatasync calls on segments, for tests and benchmarks.
    pub log_syncs: u64,
}

/// Buffered frame bytes written to the file at once.
const WRITE_BUFFER: usize = 256 << 10;

fn log_path(name: &str) -> PathBuf {
    Path::new(LOG_DIR).join(name)
}

impl<V: Vfs + Clone> SegmentStorage<V> {
    /// Opens (or creates) the log in the file system's root.
    pub fn open(vfs: V, opts: LogOptions) -> Result<Self, StorageError> {
        let fresh = !vfs.exists(Path::new(LOG_DIR));
        if fresh {
            vfs.create_dir_all(Path::new(LOG_DIR))
                .map_err(|e| io_err("create log directory", e))?;
            vfs.create_dir_all(Path::new(BLOB_DIR))
                .map_err(|e| io_err("create blob directory", e))?;
            vfs.sync_dir(Path::new(""))
                .map_err(|e| io_err("sync data directory", e))?;
        } else if !vfs.exists(Path::new(BLOB_DIR)) {
            vfs.create_dir_all(Path::new(BLOB_DIR))
                .map_err(|e| io_err("create blob directory", e))?;
        }
        let meta = if vfs.exists(Path::new(META_FILE)) {
            let f = vfs
                .open(Path::new(META_FILE))
                .map_err(|e| io_err("open meta", e))?;
            let len = f.size().map_err(|e| io_err("read meta", e))?;
            let bytes = f
                .with_bytes(0, len as usize, |b| b.to_vec())
                .map_err(|e| io_err("read meta", e))?;
            Some(decode_meta(&bytes).map_err(|detail| StorageError::Corrupt {
                location: META_FILE.into(),
                detail,
            })?)
        } else {
            None
        };
        let blobs = BlobStore::new(vfs.clone(), PathBuf::from(BLOB_DIR), opts.blob_chunk);
        let mut s = Self {
            vfs,
            opts,
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            released: BTreeMap::new(),
            pending_release: Vec::new(),
            last_lsn: 0,
            durable_lsn: 0,
            unsynced: false,
            meta,
            blobs,
            failed: None,
            recovery: Recovery::default(),
            wbuf: Vec::new(),
            wbuf_at: 0,
            scratch: Vec::new(),
            log_syncs: 0,
        };
        s.recover()?;
        Ok(s)
    }

    fn recover(&mut self) -> Result<(), StorageError> {
        let names = self
            .vfs
            .list(Path::new(LOG_DIR))
            .map_err(|e| io_err("list log directory", e))?;
        let seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| format::parse_segment_name(n))
            .collect();
        let mut all: BTreeMap<Lsn, Loc> = BTreeMap::new();
        let mut releases: BTreeSet<Lsn> = BTreeSet::new();
        let mut max_lsn = 0;
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let name = format::segment_name(seq);
            let path = log_path(&name);
            let file = self
                .vfs
                .open(&path)
                .map_err(|e| io_err("open segment", e))?;
            let size = file.size().map_err(|e| io_err("open segment", e))?;
            let scan = file
                .with_bytes(0, size as usize, |seg| {
                    let header =
                        format::decode_header(seg.get(..HEADER_LEN as usize).unwrap_or(seg));
                    match header {
                        Ok(found) if found == seq => Ok(format::scan_segment(seg)),
                        Ok(found) => Err(format!("header names segment {found}")),
                        Err(e) => Err(e),
                    }
                })
                .map_err(|e| io_err("read segment", e))?;
            let scan = match scan {
                Ok(scan) => scan,
                // A last segment whose header never made it to disk was
                // being created at the crash: nothing in it was durable.
                Err(_) if last && self.header_is_blank(&file)? => {
                    self.vfs
                        .remove(&path)
                        .map_err(|e| io_err("remove unfinished segment", e))?;
                    self.vfs
                        .sync_dir(Path::new(LOG_DIR))
                        .map_err(|e| io_err("sync log directory", e))?;
                    continue;
                }
                Err(detail) => {
                    return Err(StorageError::Corrupt {
                        location: format!("{LOG_DIR}/{name} offset 0"),
                        detail,
                    })
                }
            };
            let mut write_pos = scan.end;
            match &scan.outcome {
                ScanEnd::Sealed => {}
                ScanEnd::Clean if last => {}
                ScanEnd::Clean => {
                    return Err(StorageError::Corrupt {
                        location: format!("{LOG_DIR}/{name} offset {}", scan.end),
                        detail: "segment is not sealed but later segments exist".into(),
                    })
                }
                ScanEnd::Torn { offset, detail } if last => {
                    // Cut the torn tail and zero it, so no stale bytes can
                    // be mistaken for data later.
                    let (cut_from, cut_to) = file
                        .with_bytes(0, size as usize, |seg| {
                            (
                                *offset as usize,
                                format::end_of_nonzero(seg, *offset as usize),
                            )
                        })
                        .map_err(|e| io_err("read segment", e))?;
                    if cut_to > cut_from {
                        file.write_at(cut_from as u64, &vec![0u8; cut_to - cut_from])
                            .map_err(|e| io_err("cut torn tail", e))?;
                    }
                    file.sync_data().map_err(|e| io_err("cut torn tail", e))?;
                    self.recovery.torn_bytes += (cut_to - cut_from) as u64;
                    self.recovery.torn_at = Some(format!("{LOG_DIR}/{name}@{offset} ({detail})"));
                    write_pos = *offset;
                }
                ScanEnd::Torn { offset, detail } | ScanEnd::Corrupt { offset, detail } => {
                    return Err(StorageError::Corrupt {
                        location: format!("{LOG_DIR}/{name} offset {offset}"),
                        detail: detail.clone(),
                    })
                }
            }
            let mut frame_bytes = 0;
            for f in &scan.frames {
                frame_bytes += f.len as u64;
                max_lsn = max_lsn.max(f.lsn);
                match f.kind {
                    FrameKind::Entry => {
                        all.insert(
                            f.lsn,
                            Loc {
                                seq,
                                offset: f.offset,
                                len: f.len,
                            },
                        );
                    }
                    FrameKind::Release => {
                        let payload = file
                            .with_bytes(f.offset, f.len as usize, |b| b[f.payload()].to_vec())
                            .map_err(|e| io_err("read segment", e))?;
                        for c in payload.chunks_exact(8) {
                            let mut x = [0u8; 8];
                            x.copy_from_slice(c);
                            releases.insert(u64::from_le_bytes(x));
                        }
                    }
                    FrameKind::Skip | FrameKind::Seal => {}
                }
            }
            if last && scan.outcome != ScanEnd::Sealed {
                // Whatever a killed process left in the page cache is made
                // durable now, so everything found counts as durable.
                file.sync_data().map_err(|e| io_err("sync segment", e))?;
            }
            self.segments.insert(
                seq,
                Segment {
                    file,
                    size,
                    write_pos,
                    sealed: scan.outcome == ScanEnd::Sealed,
                    frame_bytes,
                    live_bytes: 0,
                },
            );
        }
        for (lsn, loc) in all {
            if releases.contains(&lsn) {
                self.released.insert(lsn, loc.seq);
            } else {
                if let Some(seg) = self.segments.get_mut(&loc.seq) {
                    seg.live_bytes += loc.len as u64;
                }
                self.index.insert(lsn, loc);
            }
        }
        self.last_lsn = max_lsn;
        self.durable_lsn = max_lsn;
        self.recovery.segments = self.segments.len();
        self.recovery.entries = self.index.len();
        if self.segments.values().next_back().is_none_or(|s| s.sealed) {
            self.new_segment(self.opts.segment_size)?;
        }
        Ok(())
    }

    fn header_is_blank(&self, file: &V::File) -> Result<bool, StorageError> {
        let len = file.size().map_err(|e| io_err("read segment", e))?;
        let n = len.min(HEADER_LEN) as usize;
        let head = file
            .with_bytes(0, n, |b| b.to_vec())
            .map_err(|e| io_err("read segment", e))?;
        // Blank, or a torn header write (a prefix of a valid header).
        let valid = format::encode_header(0);
        Ok(n < HEADER_LEN as usize
            || head.iter().all(|b| *b == 0)
            || head[..8] == valid[..8] && format::decode_header(&head).is_err() && {
                // Only a header cut short (trailing zeros) counts as torn.
                let nz = head.iter().rposition(|b| *b != 0).unwrap_or(0);
                head[nz + 1..].iter().all(|b| *b == 0) && nz < HEADER_LEN as usize - 1
            })
    }

    /// What open found (torn tail cut, counts).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn options(&self) -> &LogOptions {
        &self.opts
    }

    /// The file system under the log.
    pub fn vfs(&self) -> &V {
        &self.vfs
    }

    /// The write or sync failure after which the log refuses every write,
    /// if any (a driver whose sync failed sees it here too).
    pub fn failure(&self) -> Option<&StorageError> {
        self.failed.as_ref()
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records a write or sync failure: the log refuses further writes
    /// (after a failed fsync the page cache cannot be trusted).
    fn fail(&mut self, e: StorageError) -> StorageError {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    fn active_seq(&self) -> Result<u64, StorageError> {
        self.segments
            .iter()
            .next_back()
            .filter(|(_, s)| !s.sealed)
            .map(|(seq, _)| *seq)
            .ok_or(StorageError::Io {
                op: "append",
                detail: "no active segment".into(),
            })
    }

    /// Creates, preallocates and durably names a new active segment.
    fn new_segment(&mut self, size: u64) -> Result<(), StorageError> {
        let seq = self.segments.keys().next_back().map_or(1, |s| s + 1);
        let path = log_path(&format::segment_name(seq));
        let file = self
            .vfs
            .create(&path)
            .map_err(|e| io_err("create segment", e))?;
        file.preallocate(size)
            .and_then(|_| file.write_at(0, &format::encode_header(seq)))
            .and_then(|_| file.sync_data())
            .map_err(|e| io_err("create segment", e))?;
        self.vfs
            .sync_dir(Path::new(LOG_DIR))
            .map_err(|e| io_err("sync log directory", e))?;
        self.log_syncs += 1;
        self.segments.insert(
            seq,
            Segment {
                file,
                size,
                write_pos: HEADER_LEN,
                sealed: false,
                frame_bytes: 0,
                live_bytes: 0,
            },
        );
        Ok(())
    }

    /// Seals the active segment (durably) and starts a new one that can
    /// hold at least `need` bytes.
    fn rotate(&mut self, need: u64) -> Result<(), StorageError> {
        self.flush_wbuf()?;
        let seq = self.active_seq()?;
        // Blob bytes become durable no later than the log that names them.
        if self.blobs.is_dirty() {
            self.blobs.sync()?;
        }
        let seal = format::encode_frame(FrameKind::Seal, self.last_lsn, &[]);
        if let Some(seg) = self.segments.get_mut(&seq) {
            seg.file
                .write_at(seg.write_pos, &seal)
                .and_then(|_| seg.file.sync_data())
                .map_err(|e| io_err("seal segment", e))?;
            seg.write_pos += seal.len() as u64;
            seg.frame_bytes += seal.len() as u64;
            seg.sealed = true;
        }
        self.log_syncs += 1;
        self.unsynced = false;
        self.durable_lsn = self.last_lsn;
        let size = self
            .opts
            .segment_size
            .max(HEADER_LEN + need + format::FRAME_HEADER as u64);
        self.new_segment(size)
    }

    /// Writes one frame to the active segment; returns where it went.
    fn write_frame(&mut self, frame: &[u8]) -> Result<Loc, StorageError> {
        self.write_frame_with(frame.len(), |buf| buf.extend_from_slice(frame))
    }

    /// Adds a frame of `len` bytes, which `encode` appends to the buffer.
    fn write_frame_with(
        &mut self,
        len: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Loc, StorageError> {
        let need = len as u64 + format::FRAME_HEADER as u64; // room for the seal
        let seq = self.active_seq()?;
        let fits = self
            .segments
            .get(&seq)
            .is_some_and(|s| s.write_pos + need <= s.size);
        if !fits {
            self.rotate(len as u64)?;
        }
        let seq = self.active_seq()?;
        let seg = self.segments.get_mut(&seq).ok_or(StorageError::Io {
            op: "append",
            detail: "no active segment".into(),
        })?;
        let offset = seg.write_pos;
        if self.wbuf.is_empty() {
            self.wbuf_at = offset;
        }
        debug_assert_eq!(self.wbuf_at + self.wbuf.len() as u64, offset);
        let before = self.wbuf.len();
        encode(&mut self.wbuf);
        assert_eq!(self.wbuf.len() - before, len, "frame length");
        seg.write_pos += len as u64;
        seg.frame_bytes += len as u64;
        self.unsynced = true;
        if self.wbuf.len() >= WRITE_BUFFER {
            self.flush_wbuf()?;
        }
        Ok(Loc {
            seq,
            offset,
            len: len as u32,
        })
    }

    /// Writes the buffered frames to the active segment.
    fn flush_wbuf(&mut self) -> Result<(), StorageError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let seq = self.active_seq()?;
        let seg = self.segments.get(&seq).ok_or(StorageError::Io {
            op: "append",
            detail: "no active segment".into(),
        })?;
        seg.file
            .write_at(self.wbuf_at, &self.wbuf)
            .map_err(|e| io_err("append", e))?;
        self.wbuf_at += self.wbuf.len() as u64;
        self.wbuf.clear();
        Ok(())
    }

    fn flush_releases(&mut self) -> Result<(), StorageError> {
        if self.pending_release.is_empty() {
            return Ok(());
        }
        let mut payload = Vec::with_capacity(self.pending_release.len() * 8);
        for lsn in &self.pending_release {
            payload.extend_from_slice(&lsn.to_le_bytes());
        }
        let frame = format::encode_frame(FrameKind::Release, self.last_lsn, &payload);
        self.write_frame(&frame)?;
        self.pending_release.clear();
        Ok(())
    }

    fn try_sync(&mut self) -> Result<Lsn, StorageError> {
        self.check_failed()?;
        self.flush_releases()?;
        if self.blobs.is_dirty() {
            self.blobs.sync()?;
        }
        self.flush_wbuf()?;
        if self.unsynced {
            let seq = self.active_seq()?;
            if let Some(seg) = self.segments.get(&seq) {
                seg.file.sync_data().map_err(|e| io_err("fdatasync", e))?;
            }
            self.log_syncs += 1;
            self.unsynced = false;
        }
        self.durable_lsn = self.last_lsn;
        Ok(self.durable_lsn)
    }

    /// Makes everything appended so far durable; returns the durable LSN.
    pub fn sync(&mut self) -> Result<Lsn, StorageError> {
        self.try_sync().map_err(|e| self.fail(e))
    }

    /// The first half of a group commit: writes what is buffered and names
    /// what a sync of the returned file will cover. Blob bytes are synced
    /// here, before the log that refers to them.
    pub fn begin_sync(&mut self) -> Result<(Lsn, Option<V::File>), StorageError> {
        let r = (|| {
            self.check_failed()?;
            self.flush_releases()?;
            if self.blobs.is_dirty() {
                self.blobs.sync()?;
            }
            self.flush_wbuf()?;
            let file = if self.unsynced {
                let seq = self.active_seq()?;
                self.unsynced = false;
                self.segments.get(&seq).map(|s| s.file.clone())
            } else {
                None
            };
            Ok((self.last_lsn, file))
        })();
        r.map_err(|e| self.fail(e))
    }

    /// The second half: the sync of `begin_sync`'s file returned `result`.
    pub fn end_sync(&mut self, target: Lsn, result: io::Result<()>) -> Result<Lsn, StorageError> {
        match result {
            Ok(()) => {
                self.log_syncs += 1;
                self.durable_lsn = self.durable_lsn.max(target);
                Ok(self.durable_lsn)
            }
            Err(e) => Err(self.fail(io_err("fdatasync", e))),
        }
    }

    fn try_append(&mut self, body: &EntryBody) -> Result<Lsn, StorageError> {
        self.check_failed()?;
        self.flush_releases()?;
        // A blob an entry names is durable, bytes and name, before the entry
        // is written: a crash can keep an unsynced frame while losing the
        // blob's unsynced tail, and the entry would then claim a blob cut
        // short (a fetched blob's `BlobReady`; simulator seed 58).
        let names_dirty_blob = body.versions().iter().any(|v| match &v.body {
            Body::Live { blob: Some(b), .. } => self.blobs.is_dirty_blob(&b.hash),
            _ => false,
        });
        if names_dirty_blob {
            self.blobs.sync()?;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let payload = postcard::to_extend(body, scratch).map_err(|e| StorageError::Io {
            op: "append",
            detail: format!("entry does not encode: {e}"),
        })?;
        let lsn = self.last_lsn + 1;
        let len = format::FRAME_HEADER + payload.len();
        let loc = self.write_frame_with(len, |buf| {
            format::encode_frame_into(buf, FrameKind::Entry, lsn, &payload);
        });
        self.scratch = payload;
        let loc = loc?;
        if let Some(seg) = self.segments.get_mut(&loc.seq) {
            seg.live_bytes += loc.len as u64;
        }
        self.index.insert(lsn, loc);
        self.last_lsn = lsn;
        if self.opts.durability == Durability::Always {
            self.try_sync()?;
        }
        Ok(lsn)
    }

    fn read_loc(&self, lsn: Lsn, loc: &Loc) -> Result<LogEntry, StorageError> {
        let seg = self.segments.get(&loc.seq).ok_or(StorageError::Io {
            op: "read",
            detail: format!("segment {} of entry {lsn} is gone", loc.seq),
        })?;
        let decode = |b: &[u8]| match format::parse_frame(b, loc.offset) {
            format::Parsed::Frame(f) if f.lsn == lsn && f.kind == FrameKind::Entry => {
                postcard::from_bytes::<EntryBody>(&b[f.payload()])
                    .map_err(|e| format!("entry does not decode: {e}"))
            }
            format::Parsed::Frame(f) => Err(format!(
                "expected entry {lsn}, found {:?} {}",
                f.kind, f.lsn
            )),
            format::Parsed::End => Err("entry is gone (zeros)".into()),
            format::Parsed::Invalid(d) => Err(d),
        };
        let buffered = !self.wbuf.is_empty()
            && self.active_seq().is_ok_and(|a| a == loc.seq)
            && loc.offset >= self.wbuf_at;
        let decoded = if buffered {
            let at = (loc.offset - self.wbuf_at) as usize;
            match self.wbuf.get(at..at + loc.len as usize) {
                Some(b) => decode(b),
                None => Err("entry runs past the write buffer".to_string()),
            }
        } else {
            seg.file
                .with_bytes(loc.offset, loc.len as usize, decode)
                .map_err(|e| io_err("read", e))?
        };
        decoded
            .map(|body| LogEntry { lsn, body })
            .map_err(|detail| StorageError::Corrupt {
                location: format!(
                    "{LOG_DIR}/{} offset {}",
                    format::segment_name(loc.seq),
                    loc.offset
                ),
                detail,
            })
    }

    /// Copies the live entries out of sealed segments that are at least
    /// `compact_dead_fraction` dead, then deletes those segments. Entries
    /// keep their LSNs, so the state and every peer's resume point are
    /// unchanged.
    pub fn compact(&mut self) -> Result<CompactStats, StorageError> {
        self.check_failed()?;
        let r = self.try_compact();
        r.map_err(|e| self.fail(e))
    }

    fn try_compact(&mut self) -> Result<CompactStats, StorageError> {
        let mut stats = CompactStats::default();
        let active = self.active_seq()?;
        let victims: Vec<u64> = self
            .segments
            .iter()
            .filter(|(seq, s)| {
                **seq != active
                    && s.sealed
                    && (s.frame_bytes == 0
                        || (s.frame_bytes - s.live_bytes) as f64
                            >= self.opts.compact_dead_fraction * s.frame_bytes as f64)
            })
            .map(|(seq, _)| *seq)
            .collect();
        if victims.is_empty() {
            return Ok(stats);
        }
        let victim_set: BTreeSet<u64> = victims.iter().copied().collect();
        let moving: Vec<(Lsn, Loc)> = self
            .index
            .iter()
            .filter(|(_, l)| victim_set.contains(&l.seq))
            .map(|(k, l)| (*k, *l))
            .collect();
        for (lsn, loc) in moving {
            let seg = self.segments.get(&loc.seq).ok_or(StorageError::Io {
                op: "compact",
                detail: "segment vanished".into(),
            })?;
            let frame = seg
                .file
                .with_bytes(loc.offset, loc.len as usize, |b| b.to_vec())
                .map_err(|e| io_err("compact read", e))?;
            if !matches!(format::parse_frame(&frame, loc.offset), format::Parsed::Frame(f) if f.lsn == lsn)
            {
                return Err(StorageError::Corrupt {
                    location: format!(
                        "{LOG_DIR}/{} offset {}",
                        format::segment_name(loc.seq),
                        loc.offset
                    ),
                    detail: "entry fails its checksum during compaction".into(),
                });
            }
            let new = self.write_frame(&frame)?;
            if let Some(s) = self.segments.get_mut(&new.seq) {
                s.live_bytes += new.len as u64;
            }
            self.index.insert(lsn, new);
            stats.entries_copied += 1;
            stats.bytes_copied += new.len as u64;
        }
        // Release markers must outlive the frames they hide; the victims'
        // markers are rewritten for entries that survive elsewhere.
        self.released.retain(|_, seq| !victim_set.contains(seq));
        self.pending_release.extend(self.released.keys().copied());
        self.flush_releases()?;
        // The highest LSN may have been in a victim: keep it from reuse.
        let skip = format::encode_frame(FrameKind::Skip, self.last_lsn, &[]);
        self.write_frame(&skip)?;
        self.try_sync()?;
        for seq in &victims {
            if let Some(seg) = self.segments.remove(seq) {
                stats.bytes_freed += seg.size;
            }
            self.vfs
                .remove(&log_path(&format::segment_name(*seq)))
                .map_err(|e| io_err("remove segment", e))?;
            stats.segments_removed += 1;
        }
        self.vfs
            .sync_dir(Path::new(LOG_DIR))
            .map_err(|e| io_err("sync log directory", e))?;
        Ok(stats)
    }

    /// Bytes allocated by segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Number of retained entries.
    pub fn retained(&self) -> usize {
        self.index.len()
    }
}

impl<V: Vfs + Clone> Storage for SegmentStorage<V> {
    fn load_meta(&mut self) -> Result<Option<NodeMeta>, StorageError> {
        Ok(self.meta.clone())
    }

    fn store_meta(&mut self, meta: &NodeMeta) -> Result<(), StorageError> {
        self.check_failed()?;
        let bytes = encode_meta(meta)?;
        let tmp = Path::new(META_TMP);
        if self.vfs.exists(tmp) {
            self.vfs.remove(tmp).map_err(|e| io_err("store_meta", e))?;
        }
        let r = self
            .vfs
            .create(tmp)
            .and_then(|f| f.write_at(0, &bytes).and_then(|_| f.sync_data()))
            .and_then(|_| self.vfs.rename(tmp, Path::new(META_FILE)))
            .and_then(|_| self.vfs.sync_dir(Path::new("")));
        r.map_err(|e| {
            let e = io_err("store_meta", e);
            self.fail(e)
        })?;
        self.meta = Some(meta.clone());
        Ok(())
    }

    fn append(&mut self, body: &EntryBody) -> Result<Lsn, StorageError> {
        self.try_append(body).map_err(|e| self.fail(e))
    }

    fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    fn read(&self, lsn: Lsn) -> Result<Option<LogEntry>, StorageError> {
        match self.index.get(&lsn) {
            Some(loc) => self.read_loc(lsn, loc).map(Some),
            None => Ok(None),
        }
    }

    fn scan(&self, from: Lsn, limit: usize) -> Result<Vec<LogEntry>, StorageError> {
        self.index
            .range(from..)
            .take(limit)
            .map(|(lsn, loc)| self.read_loc(*lsn, loc))
            .collect()
    }

    fn release(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        if let Some(loc) = self.index.remove(&lsn) {
            if let Some(seg) = self.segments.get_mut(&loc.seq) {
                seg.live_bytes = seg.live_bytes.saturating_sub(loc.len as u64);
            }
            self.released.insert(lsn, loc.seq);
            self.pending_release.push(lsn);
        }
        Ok(())
    }

    fn first_retained_lsn(&self) -> Lsn {
        self.index
            .keys()
            .next()
            .copied()
            .unwrap_or(self.last_lsn + 1)
    }

    fn skip_to(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        if lsn <= self.last_lsn {
            return Ok(());
        }
        let r = (|| {
            self.check_failed()?;
            let frame = format::encode_frame(FrameKind::Skip, lsn, &[]);
            self.write_frame(&frame)?;
            self.last_lsn = lsn;
            self.try_sync().map(|_| ())
        })();
        r.map_err(|e| self.fail(e))
    }

    fn blob_append(&mut self, id: &BlobId, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.check_failed()?;
        self.blobs.append(id, offset, data)
    }

    fn blob_len(&self, id: &BlobId) -> u64 {
        self.blobs.len(id)
    }

    fn blob_read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        self.blobs.read(id, offset, len)
    }

    fn blob_rename(&mut self, from: &BlobId, to: &BlobId) -> Result<(), StorageError> {
        self.check_failed()?;
        self.blobs.rename(from, to)
    }

    fn blob_remove(&mut self, id: &BlobId) -> Result<(), StorageError> {
        self.check_failed()?;
        self.blobs.remove(id)
    }
}

#[cfg(test)]
mod tests;
