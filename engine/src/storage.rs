//! The storage interface the core writes its log and identity through, and
//! an in-memory implementation (for tests, the harness and benchmarks).
//!
//! The log is a sequence of entries numbered by LSN from 1. The core decides
//! which entries are dead (trimming rules, SPEC §4) and releases them; the
//! storage may then reclaim their space (the segment log compacts). Durability
//! is reported, not assumed: `durable_lsn` says how far a crash cannot reach,
//! and the core never acknowledges past it.

use crate::ids::{ClusterId, Key, Lsn, NodeId, ReplicaId};
use crate::record::Version;
use crate::vv::VersionVector;
use crate::wire::Cursor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node persists about itself outside the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub node: NodeId,
    pub cluster: ClusterId,
    /// The identity of this storage's log, named by peers' cursors; stable
    /// for the storage's life.
    pub log_id: ReplicaId,
    /// The origin of local dots: new at every open, so writes made after a
    /// crash that may have lost earlier ones never look like their causal
    /// successors (version vectors assume one causal chain per origin).
    pub replica: ReplicaId,
    /// Dot counters up to this value may have been handed out; a restart
    /// continues above it, so no dot is reused even if the log tail is lost.
    pub counters_reserved: u64,
    /// Log positions up to this may have been shipped to peers. A restart
    /// continues the log above it, so a position a peer saw is never reused
    /// for another entry, even if the entries themselves were lost.
    pub lsns_reserved: Lsn,
    /// Dot ranges `(lo, hi]` of earlier origins that may have been handed out
    /// and lost in a crash (the most recent 64 incarnations).
    pub lost_ranges: Vec<(ReplicaId, u64, u64)>,
    /// For each peer, the position in our log it had acknowledged when we
    /// last released entries. A peer asking to resume from before it is
    /// treated as rolled back (restored from a backup) and re-seeded by
    /// snapshot, since the entries in between may be gone.
    pub peer_acked: BTreeMap<NodeId, Lsn>,
    /// Tombstones in our log at or below this position are stable: no
    /// version written without knowledge of them can still arrive (see
    /// `crate::stability`). Reported to peers only once persisted here,
    /// so it never goes back.
    pub stable_lsn: Lsn,
}

/// One log entry's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    /// A local put, delete or atomic batch.
    Local { versions: Vec<Version> },
    /// What one batch from a peer added, and the peer's cursor after it
    /// (persisted with the data, so the two can never disagree). `staged`
    /// versions wait for their blob; they are applied by a later `BlobReady`.
    Remote {
        from: NodeId,
        versions: Vec<Version>,
        staged: Vec<Version>,
        cursor: Cursor,
    },
    /// A blob arrived whole and verified: the versions staged for it apply.
    BlobReady {
        from: NodeId,
        hash: [u8; 32],
        versions: Vec<Version>,
    },
    /// Keys whose only standing version, a stable tombstone, was purged:
    /// each with everything it had seen. A replay drops a key's state when
    /// this entry covers it, so versions in older entries still retained do
    /// not come back. `upto` is the highest LSN of an entry that held one
    /// of the tombstones: once no entry at or below it is retained, this
    /// one is released too.
    Purged {
        upto: Lsn,
        keys: Vec<(Key, VersionVector)>,
    },
}

impl EntryBody {
    /// The versions this entry applies.
    pub fn versions(&self) -> &[Version] {
        match self {
            EntryBody::Local { versions }
            | EntryBody::Remote { versions, .. }
            | EntryBody::BlobReady { versions, .. } => versions,
            EntryBody::Purged { .. } => &[],
        }
    }

    /// The versions the entry holds, moved out.
    pub fn into_versions(self) -> Vec<Version> {
        match self {
            EntryBody::Local { versions }
            | EntryBody::Remote { versions, .. }
            | EntryBody::BlobReady { versions, .. } => versions,
            EntryBody::Purged { .. } => Vec::new(),
        }
    }

    /// When the entry's newest version was written (its HLC wall time; 0
    /// for none): what a backlog's oldest-pending age counts from.
    pub fn written_at_ms(&self) -> u64 {
        self.versions()
            .iter()
            .map(|v| v.hlc.wall_ms)
            .max()
            .unwrap_or(0)
    }

    /// The peer a backlog rebuilt from the log (at open, at a session
    /// start, for a peer added live) does not send the entry back to: the
    /// sender of a `Remote` entry. A `BlobReady` entry names none: its
    /// versions were staged, and their sender may have been wiped since
    /// and seeded by a snapshot without them (staged versions are in no
    /// snapshot), so a duplicate it ignores is the safe side.
    pub fn relay_skip(&self) -> Option<NodeId> {
        match self {
            EntryBody::Remote { from, .. } => Some(*from),
            EntryBody::Local { .. } | EntryBody::BlobReady { .. } | EntryBody::Purged { .. } => {
                None
            }
        }
    }

    /// The peer the entry's versions came from (none for local writes).
    pub fn source(&self) -> Option<NodeId> {
        match self {
            EntryBody::Local { .. } | EntryBody::Purged { .. } => None,
            EntryBody::Remote { from, .. } | EntryBody::BlobReady { from, .. } => Some(*from),
        }
    }
}

/// Names a blob in storage: its content hash once complete, or a staging
/// name while a local upload is in progress.
pub type BlobId = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub lsn: Lsn,
    pub body: EntryBody,
}

/// A storage failure. After an I/O error on sync the log must be considered
/// failed (PostgreSQL's fsyncgate lesson): the core stops acknowledging.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("I/O error during {op}: {detail}")]
    Io { op: &'static str, detail: String },
    #[error("no space left for {op}")]
    Full { op: &'static str },
    #[error("corrupt storage at {location}: {detail}")]
    Corrupt { location: String, detail: String },
    #[error("storage belongs to node {found}, not {expected}")]
    WrongNode { expected: NodeId, found: NodeId },
}

/// The storage a node runs on.
pub trait Storage {
    /// The persisted identity, or `None` for fresh storage.
    fn load_meta(&mut self) -> Result<Option<NodeMeta>, StorageError>;
    /// Persists the identity; durable when it returns.
    fn store_meta(&mut self, meta: &NodeMeta) -> Result<(), StorageError>;
    /// Appends an entry and returns its LSN (`last_lsn() + 1`).
    fn append(&mut self, body: &EntryBody) -> Result<Lsn, StorageError>;
    /// Entries up to this LSN survive a crash.
    fn durable_lsn(&self) -> Lsn;
    /// The highest LSN ever appended (0 if none).
    fn last_lsn(&self) -> Lsn;
    /// Reads one entry; `None` if it was released.
    fn read(&self, lsn: Lsn) -> Result<Option<LogEntry>, StorageError>;
    /// The retained entries with `lsn >= from`, in order, at most `limit`.
    fn scan(&self, from: Lsn, limit: usize) -> Result<Vec<LogEntry>, StorageError>;
    /// Calls `f` on the retained entries with `lsn >= from`, in order,
    /// until it returns `false`. Reads without copying where the storage
    /// can (the default goes through `scan`).
    fn visit(
        &self,
        from: Lsn,
        f: &mut dyn FnMut(Lsn, &EntryBody) -> bool,
    ) -> Result<(), StorageError> {
        let mut from = from;
        loop {
            let chunk = self.scan(from, 4096)?;
            let Some(last) = chunk.last() else {
                return Ok(());
            };
            from = last.lsn + 1;
            for e in &chunk {
                if !f(e.lsn, &e.body) {
                    return Ok(());
                }
            }
        }
    }
    /// The core no longer needs this entry.
    fn release(&mut self, lsn: Lsn) -> Result<(), StorageError>;
    /// The lowest retained LSN (`last_lsn() + 1` when none is retained).
    fn first_retained_lsn(&self) -> Lsn;
    /// Makes the next append get `lsn + 1`: positions up to `lsn` that hold
    /// no entry stay empty for good. Durable when it returns.
    fn skip_to(&mut self, lsn: Lsn) -> Result<(), StorageError>;

    /// Appends bytes to a blob at `offset`, which must be its present
    /// length. Blob bytes are durable no later than any log entry appended
    /// after them, and before an entry whose versions name the blob is
    /// written at all (a crash may keep that entry without a sync); a crash
    /// may cut an unfinished blob short.
    fn blob_append(&mut self, id: &BlobId, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Bytes of the blob present (0 if none).
    fn blob_len(&self, id: &BlobId) -> u64;
    /// Reads `len` bytes at `offset` (fewer at the end).
    fn blob_read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Vec<u8>, StorageError>;
    /// Renames a blob (a finished upload takes its content hash); replaces
    /// any blob already named `to`. The blob, bytes and name, is durable
    /// when this returns: versions naming it may ship before the log entry
    /// that holds them is durable, and must still find it after a crash.
    fn blob_rename(&mut self, from: &BlobId, to: &BlobId) -> Result<(), StorageError>;
    fn blob_remove(&mut self, id: &BlobId) -> Result<(), StorageError>;
}

/// When the in-memory storage makes appends durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemSync {
    /// Every append is durable at once.
    Immediate,
    /// Appends become durable at `sync()`; `crash()` loses the rest.
    Explicit,
}

/// Storage in memory, for tests, the harness and benchmarks.
#[derive(Clone, Debug)]
pub struct MemStorage {
    meta: Option<NodeMeta>,
    entries: BTreeMap<Lsn, EntryBody>,
    last_lsn: Lsn,
    durable_lsn: Lsn,
    sync: MemSync,
    /// Positions up to here were skipped; a skip survives a crash.
    skipped_to: Lsn,
    blobs: BTreeMap<BlobId, Vec<u8>>,
    /// Appends and reads count here, for tests and benchmarks.
    pub appends: u64,
}

impl MemStorage {
    pub fn new(sync: MemSync) -> Self {
        Self {
            meta: None,
            entries: BTreeMap::new(),
            last_lsn: 0,
            durable_lsn: 0,
            sync,
            skipped_to: 0,
            blobs: BTreeMap::new(),
            appends: 0,
        }
    }

    /// Makes every append so far durable; returns the durable LSN.
    pub fn sync(&mut self) -> Lsn {
        self.durable_lsn = self.last_lsn;
        self.durable_lsn
    }

    /// Simulates a crash: everything after the durable LSN is lost.
    pub fn crash(&mut self) {
        self.entries.retain(|lsn, _| *lsn <= self.durable_lsn);
        self.last_lsn = self.durable_lsn.max(self.skipped_to);
    }

    /// Flips one bit of a stored blob (fault injection for tests).
    pub fn corrupt_blob(&mut self, id: &BlobId, offset: usize) {
        if let Some(b) = self.blobs.get_mut(id) {
            if let Some(byte) = b.get_mut(offset) {
                *byte ^= 1;
            }
        }
    }

    /// Number of retained entries.
    pub fn retained(&self) -> usize {
        self.entries.len()
    }
}

impl Storage for MemStorage {
    fn load_meta(&mut self) -> Result<Option<NodeMeta>, StorageError> {
        Ok(self.meta.clone())
    }

    fn store_meta(&mut self, meta: &NodeMeta) -> Result<(), StorageError> {
        self.meta = Some(meta.clone());
        Ok(())
    }

    fn append(&mut self, body: &EntryBody) -> Result<Lsn, StorageError> {
        self.last_lsn += 1;
        self.appends += 1;
        self.entries.insert(self.last_lsn, body.clone());
        if self.sync == MemSync::Immediate {
            self.durable_lsn = self.last_lsn;
        }
        Ok(self.last_lsn)
    }

    fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    fn read(&self, lsn: Lsn) -> Result<Option<LogEntry>, StorageError> {
        Ok(self.entries.get(&lsn).map(|body| LogEntry {
            lsn,
            body: body.clone(),
        }))
    }

    fn scan(&self, from: Lsn, limit: usize) -> Result<Vec<LogEntry>, StorageError> {
        Ok(self
            .entries
            .range(from..)
            .take(limit)
            .map(|(lsn, body)| LogEntry {
                lsn: *lsn,
                body: body.clone(),
            })
            .collect())
    }

    fn visit(
        &self,
        from: Lsn,
        f: &mut dyn FnMut(Lsn, &EntryBody) -> bool,
    ) -> Result<(), StorageError> {
        for (lsn, body) in self.entries.range(from..) {
            if !f(*lsn, body) {
                break;
            }
        }
        Ok(())
    }

    fn release(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        self.entries.remove(&lsn);
        Ok(())
    }

    fn first_retained_lsn(&self) -> Lsn {
        self.entries
            .keys()
            .next()
            .copied()
            .unwrap_or(self.last_lsn + 1)
    }

    fn skip_to(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        if lsn > self.last_lsn {
            self.last_lsn = lsn;
        }
        self.skipped_to = self.skipped_to.max(lsn);
        Ok(())
    }

    fn blob_append(&mut self, id: &BlobId, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let b = self.blobs.entry(*id).or_default();
        if b.len() as u64 != offset {
            return Err(StorageError::Io {
                op: "blob_append",
                detail: format!("offset {offset} is not the blob's length {}", b.len()),
            });
        }
        b.extend_from_slice(data);
        Ok(())
    }

    fn blob_len(&self, id: &BlobId) -> u64 {
        self.blobs.get(id).map_or(0, |b| b.len() as u64)
    }

    fn blob_read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let b = self.blobs.get(id).map(Vec::as_slice).unwrap_or_default();
        let start = (offset as usize).min(b.len());
        let end = start.saturating_add(len).min(b.len());
        Ok(b[start..end].to_vec())
    }

    fn blob_rename(&mut self, from: &BlobId, to: &BlobId) -> Result<(), StorageError> {
        if let Some(b) = self.blobs.remove(from) {
            self.blobs.insert(*to, b);
        }
        Ok(())
    }

    fn blob_remove(&mut self, id: &BlobId) -> Result<(), StorageError> {
        self.blobs.remove(id);
        Ok(())
    }
}
