//! The node: recsync's sans-IO replication state machine.
//!
//! # Driver contract
//!
//! A driver (the threaded runtime, the simulator, a test) owns a `Node` and:
//! 1. feeds it inputs, each with the current time `now_ms` (milliseconds
//!    since the Unix epoch, as the driver's clock reads it; the node clamps it
//!    to be non-decreasing): application calls (`put`, `delete`,
//!    `write_batch`, `sync_now`, ...), transport events (`handle_connected`,
//!    `handle_connect_failed`, `handle_disconnected`, `handle_bytes`),
//!    storage progress (`handle_durable`) and timer expiry (`handle_timeout`);
//! 2. after each input, drains `poll_output` (connect, transmit, close) and
//!    `poll_event` (for the application) until they return `None`;
//! 3. calls `handle_timeout` once `poll_timeout` is reached.
//!
//! The node never reads a clock, sleeps, spawns, touches the network or the
//! file system, or draws unseeded randomness. Acknowledgements to peers are
//! held back until the storage reports the entry durable (`durable_lsn`), so
//! "never acknowledge before durable" holds whatever the driver does.

use crate::blobs::{
    BlobError, BlobUpload, Fetch, Serve, BLOB_CHUNK_BYTES, BLOB_VERIFY_READ_BYTES,
    BLOB_WINDOW_CHUNKS,
};
use crate::canary::{self, Canary};
use crate::config::{ConfigError, NodeConfig, PeerConfig};
use crate::event::{Event, SessionEnd};
use crate::hlc::{Hlc, HlcClock};
use crate::ids::{ClusterId, Dot, Key, Lsn, NodeId, ReplicaId};
use crate::keystate::{ApplyOutcome, ConflictReport, KeyState};
use crate::peer::{backoff_ms, BacklogItem, Link, Outbound, Peer, PeerStatus};
use crate::policy::{ConflictPolicy, Resolution};
use crate::record::{BlobRef, Body, Labels, Version};
use crate::schedule::Schedule;
use crate::storage::{BlobId, EntryBody, LogEntry, NodeMeta, Storage, StorageError};
use crate::wire::{
    self, Ack, Batch, BlobChunk, BlobWant, Cursor, FrameError, Hello, Message, Position, Refusal,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

mod purge;
mod reconfigure;
pub use purge::{PeerPurgeStatus, PurgeStatus};
pub use reconfigure::{PeersChanged, ReconfigureError};

/// The policy for versions of a class this node does not know (a peer with a
/// newer configuration): last-writer-wins, so every node still agrees.
const DEFAULT_POLICY: ConflictPolicy = ConflictPolicy::LastWriterWins;
/// Earlier origins whose possibly lost dots a node keeps asking for.
const LOST_RANGES_MAX: usize = 64;
/// Keys a snapshot batch looks at, at most, so one batch is bounded work.
const SNAPSHOT_KEYS_PER_BATCH_MAX: usize = 4096;

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a connection to the peer, then call `handle_connected` or
    /// `handle_connect_failed`.
    Connect { peer: NodeId },
    /// Send these bytes on the peer's connection, in order.
    Transmit { peer: NodeId, frame: Vec<u8> },
    /// Close the peer's connection (the node already considers it down).
    Close { peer: NodeId },
}

/// One object write in a put or a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Key,
    pub labels: Labels,
    pub meta: Vec<u8>,
    pub blob: Option<BlobRef>,
}

/// One operation of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put(PutRequest),
    Delete(Key),
}

/// What a committed local write got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReceipt {
    /// The log entry; durable once `storage().durable_lsn() >= lsn`.
    pub lsn: Lsn,
    /// One dot per operation, in order.
    pub dots: Vec<Dot>,
}

/// Why a local write was refused. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("class: {class:?} is not configured")]
    UnknownClass { class: String },
    #[error("meta: {len} bytes, over the limit of {max}")]
    MetaTooLarge { len: usize, max: usize },
    #[error("ops: a batch needs at least one operation")]
    EmptyBatch,
    #[error("ops: {len} operations, over the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("ops: key {key} appears twice in one batch")]
    DuplicateKey { key: Key },
    #[error("key: {key} does not exist (or is deleted)")]
    NotFound { key: Key },
    #[error("blob: {blob:?} is not stored here whole (upload it first)")]
    BlobMissing { blob: BlobRef },
    /// Storage failed before anything was written: the write did not
    /// happen.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Storage failed while the write's log entry was being written or
    /// synced: its outcome is unknown. The node has stopped (fail-stop);
    /// after a restart the write may be there or not, and if it is, it
    /// replicates like any other. `versions` are what it would hold.
    #[error(
        "storage failed before the write was confirmed (it may be there after a restart): {error}"
    )]
    Unconfirmed {
        versions: Vec<Version>,
        error: StorageError,
    },
    #[error("the node's storage failed earlier; it no longer accepts writes")]
    Failed,
}

/// Why a node could not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the storage belongs to node {found}, the config says {expected}")]
    WrongNode { expected: NodeId, found: NodeId },
    #[error("the storage belongs to cluster {found}, the config says {expected}")]
    WrongCluster {
        expected: ClusterId,
        found: ClusterId,
    },
}

/// Why input on a session was refused; the session is closed, nothing else
/// changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("peer {0} is not configured")]
    UnknownPeer(NodeId),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("storage: {0}")]
    Storage(StorageError),
}

/// A read of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectView {
    /// The standing versions (several only while concurrent).
    pub siblings: Vec<Version>,
    /// The visible version, `None` while manual siblings are unresolved.
    pub winner: Option<Dot>,
}

impl ObjectView {
    /// The visible version (it may be a tombstone).
    pub fn value(&self) -> Option<&Version> {
        self.winner
            .and_then(|w| self.siblings.iter().find(|v| v.dot == w))
    }

    /// Whether the visible version is a delete.
    pub fn is_deleted(&self) -> bool {
        self.value().is_some_and(|v| v.body.is_tombstone())
    }

    /// The visible live metadata, if any.
    pub fn meta(&self) -> Option<&[u8]> {
        match self.value().map(|v| &v.body) {
            Some(Body::Live { meta, .. }) => Some(meta),
            _ => None,
        }
    }
}

/// An acknowledgement waiting for its entry to become durable.
#[derive(Clone, Copy, Debug)]
struct GatedAck {
    lsn: Lsn,
    peer: NodeId,
    cursor: Cursor,
}

/// A recsync node. See the module documentation for the driver contract.
pub struct Node<S: Storage> {
    cfg: NodeConfig,
    storage: S,
    meta: NodeMeta,
    /// The last dot counter handed out.
    counter: u64,
    hlc: HlcClock,
    keys: BTreeMap<Key, KeyState>,
    peers: BTreeMap<NodeId, Peer>,
    events: VecDeque<Event>,
    events_dropped: u64,
    outputs: VecDeque<Output>,
    gated: VecDeque<GatedAck>,
    rng: ChaCha8Rng,
    now_ms: u64,
    next_trim_ms: u64,
    /// Log entries trimming has to look at: every entry appended or
    /// replayed until it is seen standing, and every entry whose version
    /// was superseded since. Trimming never rescans the whole log.
    trim_candidates: BTreeSet<Lsn>,
    failed: Option<StorageError>,
    /// Blobs held whole and verified.
    blobs_complete: BTreeSet<[u8; 32]>,
    /// Peers that confirmed holding a blob whole (since this open): what
    /// `copies` counts for a recording, whose metadata alone is no copy.
    blob_holders: BTreeMap<[u8; 32], BTreeSet<NodeId>>,
    /// Versions waiting for their blob, by blob hash.
    /// (Each with the peer it came from and that peer's log then: relaying
    /// skips the sender only while it is still that incarnation.)
    staged: BTreeMap<[u8; 32], Vec<(NodeId, ReplicaId, Version)>>,
    /// Blobs being fetched for staged versions.
    fetches: BTreeMap<[u8; 32], Fetch>,
    /// The highest dot counter applied here, per replica.
    replica_max: BTreeMap<ReplicaId, u64>,
    /// Dots of earlier origins that may have been lost (see `Hello`).
    lost_own_counters: Vec<(ReplicaId, u64, u64)>,
    /// Keys whose only standing version is a tombstone, by its entry
    /// (kept only with `tombstone_purge`): the purge candidates.
    lone_tombstones: BTreeSet<(Lsn, Key)>,
    /// Retained `Purged` entries and their `upto` (see `EntryBody`).
    purged_entries: BTreeMap<Lsn, Lsn>,
}

impl<S: Storage> Node<S> {
    /// Opens a node on its storage: loads or creates its identity, rebuilds
    /// the state from the log. `seed` drives the node's only randomness
    /// (reconnect jitter, a new replica id): the driver passes OS entropy,
    /// the simulator a seeded value.
    pub fn open(
        cfg: NodeConfig,
        mut storage: S,
        now_ms: u64,
        seed: u64,
    ) -> Result<Self, OpenError> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let meta = match storage.load_meta()? {
            Some(m) if m.node != cfg.node => {
                return Err(OpenError::WrongNode {
                    expected: cfg.node,
                    found: m.node,
                })
            }
            Some(m) if m.cluster != cfg.cluster => {
                return Err(OpenError::WrongCluster {
                    expected: cfg.cluster,
                    found: m.cluster,
                })
            }
            Some(m) => m,
            None => {
                let meta = NodeMeta {
                    node: cfg.node,
                    cluster: cfg.cluster,
                    log_id: ReplicaId(uuid::Builder::from_random_bytes(rng.gen()).into_uuid()),
                    replica: ReplicaId(uuid::Builder::from_random_bytes(rng.gen()).into_uuid()),
                    counters_reserved: 0,
                    lsns_reserved: 0,
                    lost_ranges: Vec::new(),
                    peer_acked: BTreeMap::new(),
                    stable_lsn: 0,
                };
                storage.store_meta(&meta)?;
                meta
            }
        };
        let peers = cfg
            .peers
            .iter()
            .map(|p| {
                (
                    p.node,
                    Peer::new(p.clone(), cfg.limits.frame_payload_len_max, now_ms),
                )
            })
            .collect();
        let next_trim_ms = now_ms + cfg.timing.trim_interval_ms;
        let mut peers: BTreeMap<NodeId, Peer> = peers;
        for (id, lsn) in &meta.peer_acked {
            if let Some(p) = peers.get_mut(id) {
                p.acked = Some(Cursor {
                    replica: meta.log_id,
                    pos: Position::Log { lsn: *lsn },
                });
            }
        }
        let mut node = Self {
            counter: meta.counters_reserved,
            cfg,
            storage,
            meta,
            hlc: HlcClock::default(),
            keys: BTreeMap::new(),
            peers,
            events: VecDeque::new(),
            events_dropped: 0,
            outputs: VecDeque::new(),
            gated: VecDeque::new(),
            rng,
            now_ms,
            next_trim_ms,
            trim_candidates: BTreeSet::new(),
            failed: None,
            blobs_complete: BTreeSet::new(),
            blob_holders: BTreeMap::new(),
            staged: BTreeMap::new(),
            fetches: BTreeMap::new(),
            replica_max: BTreeMap::new(),
            lost_own_counters: Vec::new(),
            lone_tombstones: BTreeSet::new(),
            purged_entries: BTreeMap::new(),
        };
        node.replay()?;
        // Standing conflicts are reported again: a version whose entry's
        // write failed unconfirmed (a failed sync) was never applied, so
        // never reported, and may be back now from the log.
        let reports: Vec<ConflictReport> = node
            .keys
            .values()
            .filter_map(|s| s.standing_conflict(|v| policy_of(&node.cfg, v)))
            .collect();
        for r in reports {
            node.push_event(Event::Conflict(r));
        }
        node.new_dot_origin()?;
        // Entries peers may have seen and a crash lost: never reuse their
        // positions.
        if node.storage.last_lsn() < node.meta.lsns_reserved {
            node.storage.skip_to(node.meta.lsns_reserved)?;
        }
        node.finish_present_fetches()?;
        Ok(node)
    }

    /// Starts a new dot origin for this incarnation: the previous one's
    /// dots above what the log kept may have left before a crash lost them.
    fn new_dot_origin(&mut self) -> Result<(), StorageError> {
        let previous = self.meta.replica;
        let kept = self.replica_max.get(&previous).copied().unwrap_or(0);
        let mut meta = self.meta.clone();
        if meta.counters_reserved > kept {
            meta.lost_ranges
                .push((previous, kept, meta.counters_reserved));
            let excess = meta.lost_ranges.len().saturating_sub(LOST_RANGES_MAX);
            meta.lost_ranges.drain(..excess);
        }
        self.lost_own_counters = meta.lost_ranges.clone();
        let fresh = ReplicaId(uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid());
        if canary::on(Canary::DotOriginReused) {
            meta.lost_ranges.retain(|r| r.0 != previous);
            self.lost_own_counters = meta.lost_ranges.clone();
            meta.counters_reserved = kept;
            self.storage.store_meta(&meta)?;
            self.meta = meta;
            self.counter = kept;
        } else {
            meta.replica = fresh;
            meta.counters_reserved = 0;
            self.storage.store_meta(&meta)?;
            self.meta = meta;
            self.counter = 0;
        }
        Ok(())
    }

    /// Rebuilds keys, cursors and backlogs from the retained log.
    fn replay(&mut self) -> Result<(), StorageError> {
        let first = self.storage.first_retained_lsn();
        self.for_each_entry(first, Self::replay_entry)
    }

    fn replay_entry(&mut self, entry: LogEntry) {
        if let EntryBody::Purged { upto, keys } = &entry.body {
            self.replay_purged(entry.lsn, *upto, keys);
            return;
        }
        let versions = entry.body.versions();
        if let EntryBody::Remote {
            from,
            staged,
            cursor,
            ..
        } = &entry.body
        {
            for v in staged {
                self.stage(*from, cursor.replica, v.clone());
            }
        }
        if let EntryBody::BlobReady { hash, .. } = &entry.body {
            // Only the versions this entry applies leave the stage; others
            // staged for the same blob (from other peers) wait for theirs,
            // or are applied after the replay since the blob is here.
            if let Some(waiting) = self.staged.get_mut(hash) {
                waiting.retain(|(_, _, w)| !versions.iter().any(|v| v.dot == w.dot));
                if waiting.is_empty() {
                    self.staged.remove(hash);
                    self.fetches.remove(hash);
                }
            }
        }
        if let EntryBody::Remote { from, cursor, .. } = &entry.body {
            if let Some(p) = self.peers.get_mut(from) {
                p.recv_applied = Some(*cursor);
                p.recv_durable = Some(*cursor);
                p.recv_cursor_lsn = entry.lsn;
            }
        }
        for p in self.peers.values_mut() {
            push_entry_backlog(p, &entry);
        }
        self.trim_candidates.insert(entry.lsn);
        // The state the entry left: no reports (they went out when it was
        // first applied), and the versions move out of the entry.
        for v in entry.body.into_versions() {
            if let Body::Live { blob: Some(b), .. } = &v.body {
                self.blobs_complete.insert(b.hash);
            }
            self.hlc.observe(v.hlc);
            note_max(&mut self.replica_max, &v.dot);
            let key = v.key;
            let before = self.lone_before(&key);
            self.keys.entry(key).or_default().absorb(v, entry.lsn);
            self.track_lone(key, before);
        }
    }

    // ----- queries -------------------------------------------------------

    pub fn node_id(&self) -> NodeId {
        self.cfg.node
    }

    /// The origin of this incarnation's dots (new at every open).
    pub fn replica_id(&self) -> ReplicaId {
        self.meta.replica
    }

    /// The identity of this node's log, as peers' cursors name it.
    pub fn log_id(&self) -> ReplicaId {
        self.meta.log_id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// For the driver's durability work (sync); call `handle_durable` after.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back (to reopen it, e.g. after a simulated crash).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Reads one object.
    pub fn get(&self, key: &Key) -> Option<ObjectView> {
        let state = self.keys.get(key)?;
        let (winner, _) = state.settle(|v| policy_of(&self.cfg, v));
        let winner =
            winner.or_else(|| (state.siblings.len() == 1).then(|| state.siblings[0].version.dot));
        Some(ObjectView {
            siblings: state.siblings.iter().map(|s| s.version.clone()).collect(),
            winner,
        })
    }

    /// The keys whose siblings wait for the application (manual policy).
    pub fn unresolved_conflicts(&self) -> Vec<Key> {
        self.keys
            .iter()
            .filter(|(_, s)| {
                s.siblings.len() > 1
                    && s.settle(|v| policy_of(&self.cfg, v)).1 == Resolution::Manual
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Every key the node holds state for (deleted ones included), in order.
    /// One key's state (frontier and what was seen), if the key is known.
    pub fn key_state(&self, key: &Key) -> Option<&KeyState> {
        self.keys.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = (&Key, &KeyState)> {
        self.keys.iter()
    }

    /// A digest of the replicated state (keys, what each has seen, standing
    /// versions). Two nodes that received the same writes have equal digests.
    pub fn state_digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (key, state) in &self.keys {
            h.update(key.as_bytes());
            h.update(&postcard::to_allocvec(&state.seen).unwrap_or_default());
            h.update(&(state.siblings.len() as u64).to_le_bytes());
            for s in &state.siblings {
                h.update(&postcard::to_allocvec(&s.version).unwrap_or_default());
            }
        }
        *h.finalize().as_bytes()
    }

    /// The peers that durably hold `dot` of `key`, as far as this node knows
    /// from acknowledgements (this node included, if it holds it).
    pub fn copies(&self, key: &Key, dot: &Dot) -> Vec<NodeId> {
        let Some(state) = self.keys.get(key) else {
            return Vec::new();
        };
        if !state.has_seen(dot) {
            return Vec::new();
        }
        let mut out = BTreeSet::new();
        let sibling = state.siblings.iter().find(|s| s.version.dot == *dot);
        if let Some(s) = sibling {
            if s.lsn <= self.storage.durable_lsn() {
                out.insert(self.cfg.node);
            }
            if let Ok(Some(entry)) = self.storage.read(s.lsn) {
                if let EntryBody::Remote { from, .. } = entry.body {
                    out.insert(from);
                }
            }
            let blob = match &s.version.body {
                Body::Live { blob: Some(b), .. } if b.len_bytes > 0 => Some(b.hash),
                _ => None,
            };
            for (id, p) in &self.peers {
                let acked = matches!(p.acked, Some(Cursor { replica, pos: Position::Log { lsn } })
                    if replica == self.meta.log_id && lsn >= s.lsn);
                // A recording is a copy only once its blob is there too.
                let whole = blob.is_none_or(|h| {
                    self.blob_holders
                        .get(&h)
                        .is_some_and(|holders| holders.contains(id))
                });
                if acked && whole && p.cfg.filter.passes(&s.version.labels) {
                    out.insert(*id);
                }
            }
        }
        out.into_iter().collect()
    }

    pub fn peer_status(&self, peer: &NodeId) -> Option<PeerStatus> {
        self.peers.get(peer).map(|p| p.status(self.now_ms))
    }

    /// The storage error that stopped the node, if any.
    pub fn failure(&self) -> Option<&StorageError> {
        self.failed.as_ref()
    }

    // ----- application calls --------------------------------------------

    /// Writes one object.
    pub fn put(&mut self, now_ms: u64, req: PutRequest) -> Result<WriteReceipt, WriteError> {
        self.write_batch(now_ms, vec![WriteOp::Put(req)])
    }

    /// Deletes one object (writes a tombstone).
    pub fn delete(&mut self, now_ms: u64, key: Key) -> Result<WriteReceipt, WriteError> {
        self.write_batch(now_ms, vec![WriteOp::Delete(key)])
    }

    /// Writes several objects as one atomic log entry.
    pub fn write_batch(
        &mut self,
        now_ms: u64,
        ops: Vec<WriteOp>,
    ) -> Result<WriteReceipt, WriteError> {
        self.advance(now_ms);
        if self.failed.is_some() {
            return Err(WriteError::Failed);
        }
        self.validate_ops(&ops)?;
        for op in &ops {
            if let WriteOp::Put(PutRequest { blob: Some(b), .. }) = op {
                self.blobs_complete.insert(b.hash);
            }
        }
        self.reserve_counters(ops.len() as u64)?;
        let versions: Vec<Version> = ops.into_iter().map(|op| self.new_version(op)).collect();
        let body = EntryBody::Local { versions };
        let lsn = match self.append(&body) {
            Ok(lsn) => lsn,
            Err(error) => {
                let EntryBody::Local { versions } = body else {
                    unreachable!()
                };
                return Err(WriteError::Unconfirmed { versions, error });
            }
        };
        let EntryBody::Local { versions } = body else {
            unreachable!()
        };
        let dots = versions.iter().map(|v| v.dot).collect();
        self.push_backlogs(lsn, &versions, None, self.now_ms);
        for v in versions {
            let outcome = self.apply_version(v, lsn);
            assert_eq!(
                outcome,
                ApplyOutcome::Applied,
                "a local write supersedes what it saw"
            );
        }
        self.pump_all();
        Ok(WriteReceipt { lsn, dots })
    }

    fn validate_ops(&self, ops: &[WriteOp]) -> Result<(), WriteError> {
        let limits = &self.cfg.limits;
        if ops.is_empty() {
            return Err(WriteError::EmptyBatch);
        }
        if ops.len() > limits.batch_ops_max {
            return Err(WriteError::BatchTooLarge {
                len: ops.len(),
                max: limits.batch_ops_max,
            });
        }
        let mut keys = BTreeSet::new();
        for op in ops {
            let key = match op {
                WriteOp::Put(p) => {
                    if !self.cfg.classes.contains_key(&p.labels.class) {
                        return Err(WriteError::UnknownClass {
                            class: p.labels.class.to_string(),
                        });
                    }
                    if p.meta.len() > limits.meta_len_max {
                        return Err(WriteError::MetaTooLarge {
                            len: p.meta.len(),
                            max: limits.meta_len_max,
                        });
                    }
                    if let Some(blob) = p.blob {
                        if !self.holds_blob(&blob) {
                            return Err(WriteError::BlobMissing { blob });
                        }
                    }
                    p.key
                }
                WriteOp::Delete(key) => {
                    let live = self
                        .get(key)
                        .is_some_and(|o| o.siblings.iter().any(|v| !v.body.is_tombstone()));
                    if !live {
                        return Err(WriteError::NotFound { key: *key });
                    }
                    *key
                }
            };
            if !keys.insert(key) {
                return Err(WriteError::DuplicateKey { key });
            }
        }
        Ok(())
    }

    /// Makes sure log positions up to `lsn` are durably reserved before an
    /// entry at `lsn` leaves this node.
    fn reserve_lsns(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        if lsn <= self.meta.lsns_reserved {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.lsns_reserved = lsn + self.cfg.timing.counter_block;
        self.store_meta(&meta)?;
        self.meta = meta;
        Ok(())
    }

    /// Makes sure `n` more dot counters are durably reserved.
    fn reserve_counters(&mut self, n: u64) -> Result<(), StorageError> {
        if self.counter + n <= self.meta.counters_reserved {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.counters_reserved = self.counter + n + self.cfg.timing.counter_block;
        self.store_meta(&meta)?;
        self.meta = meta;
        Ok(())
    }

    fn new_version(&mut self, op: WriteOp) -> Version {
        self.counter += 1;
        assert!(
            self.counter <= self.meta.counters_reserved,
            "dot counter not reserved"
        );
        let (key, labels, body) = match op {
            WriteOp::Put(p) => (
                p.key,
                p.labels,
                Body::Live {
                    meta: p.meta,
                    blob: p.blob,
                },
            ),
            WriteOp::Delete(key) => {
                let labels = self
                    .keys
                    .get(&key)
                    .and_then(|s| {
                        s.siblings
                            .iter()
                            .map(|s| &s.version)
                            .max_by(|a, b| crate::policy::lww_cmp(a, b))
                    })
                    .map(|v| v.labels.clone());
                let Some(labels) = labels else {
                    unreachable!("validated: the key exists")
                };
                (key, labels, Body::Tombstone)
            }
        };
        let context = self
            .keys
            .get(&key)
            .map(|s| s.seen.clone())
            .unwrap_or_default();
        Version {
            key,
            dot: Dot {
                replica: self.meta.replica,
                counter: self.counter,
            },
            origin: self.cfg.node,
            hlc: self.hlc.tick(self.now_ms),
            context,
            labels,
            body,
        }
    }

    /// Ships what is pending: to one peer, or to all when `peer` is `None`.
    /// Under a manual schedule this is the only thing that ships.
    pub fn sync_now(&mut self, now_ms: u64, peer: Option<NodeId>) {
        self.advance(now_ms);
        let upto = self.storage.last_lsn();
        for (id, p) in self.peers.iter_mut() {
            if peer.is_none_or(|x| x == *id) {
                p.sync_upto = upto.max(1);
            }
        }
        self.pump_all();
    }

    /// Stops shipping to a peer (its backlog keeps growing durably).
    pub fn pause_peer(&mut self, peer: NodeId) -> bool {
        self.peers.get_mut(&peer).map(|p| p.paused = true).is_some()
    }

    pub fn resume_peer(&mut self, now_ms: u64, peer: NodeId) -> bool {
        self.advance(now_ms);
        let found = self
            .peers
            .get_mut(&peer)
            .map(|p| p.paused = false)
            .is_some();
        self.pump_all();
        found
    }

    // ----- driver inputs --------------------------------------------------

    fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The driver connected to the peer (outgoing or incoming).
    pub fn handle_connected(&mut self, now_ms: u64, peer: NodeId) {
        self.advance(now_ms);
        let (replica, log_id) = (self.meta.replica, self.meta.log_id);
        let hello_base = (self.cfg.cluster, self.cfg.node);
        let Some(p) = self.peers.get_mut(&peer) else {
            self.outputs.push_back(Output::Close { peer });
            return;
        };
        p.decoder = wire::FrameDecoder::new(self.cfg.limits.frame_payload_len_max);
        // Resume from what is durable here: that is all a peer may count as
        // held (re-applying the rest is idempotent).
        p.recv_applied = p.recv_durable;
        p.partial_since_ms = None;
        p.out = None;
        p.link = Link::Handshaking {
            since_ms: self.now_ms,
        };
        p.stats.sessions += 1;
        let hello = Hello {
            cluster: hello_base.0,
            node: hello_base.1,
            replica,
            log_id,
            receive: p.cfg.receive.then_some(p.recv_applied),
            lost_own_counters: self.lost_own_counters.clone(),
        };
        self.outputs.push_back(Output::Transmit {
            peer,
            frame: wire::encode_frame(&Message::Hello(hello)),
        });
    }

    /// The driver could not connect to the peer.
    pub fn handle_connect_failed(&mut self, now_ms: u64, peer: NodeId) {
        self.advance(now_ms);
        self.link_down(peer, None);
    }

    /// The peer's connection is gone.
    pub fn handle_disconnected(&mut self, now_ms: u64, peer: NodeId) {
        self.advance(now_ms);
        self.link_down(peer, Some(SessionEnd::Disconnected));
    }

    fn link_down(&mut self, peer: NodeId, why: Option<SessionEnd>) {
        let (initial, max) = (
            self.cfg.timing.reconnect_initial_ms,
            self.cfg.timing.reconnect_max_ms,
        );
        let jitter: f64 = self.rng.gen();
        let now = self.now_ms;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let was_up = p.is_up();
        if matches!(p.link, Link::Down { .. }) && why.is_some() {
            return;
        }
        p.link = Link::Down {
            retry_at_ms: now + backoff_ms(p.reconnect_attempt, initial, max, jitter),
        };
        p.reconnect_attempt = p.reconnect_attempt.saturating_add(1);
        p.out = None;
        p.serving.clear();
        p.partial_since_ms = None;
        p.stability.last_report = None;
        self.gated.retain(|g| g.peer != peer);
        if let (true, Some(why)) = (was_up, why) {
            self.push_event(Event::PeerDown { peer, why });
        }
    }

    /// Closes the session with `peer` after a protocol problem.
    fn refuse(&mut self, peer: NodeId, why: SessionEnd, tell: Option<Refusal>) {
        if let Some(r) = tell {
            self.outputs.push_back(Output::Transmit {
                peer,
                frame: wire::encode_frame(&Message::Refuse(r)),
            });
        }
        self.outputs.push_back(Output::Close { peer });
        let was_up = self.peers.get(&peer).is_some_and(|p| p.is_up());
        self.link_down(peer, None);
        let _ = was_up;
        self.push_event(Event::PeerDown { peer, why });
    }

    /// Bytes arrived on the peer's connection. A bad frame or a protocol
    /// violation closes that session only and changes no state.
    pub fn handle_bytes(
        &mut self,
        now_ms: u64,
        peer: NodeId,
        bytes: &[u8],
    ) -> Result<(), SessionError> {
        self.advance(now_ms);
        let Some(p) = self.peers.get_mut(&peer) else {
            self.outputs.push_back(Output::Close { peer });
            return Err(SessionError::UnknownPeer(peer));
        };
        if !matches!(p.link, Link::Handshaking { .. } | Link::Up { .. }) {
            return Ok(());
        }
        p.decoder.push(bytes);
        loop {
            let Some(p) = self.peers.get_mut(&peer) else {
                return Ok(());
            };
            if !matches!(p.link, Link::Handshaking { .. } | Link::Up { .. }) {
                return Ok(());
            }
            match p.decoder.next_message() {
                Ok(None) => {
                    p.partial_since_ms = match (p.decoder.buffered_len(), p.partial_since_ms) {
                        (0, _) => None,
                        (_, Some(t)) => Some(t),
                        (_, None) => Some(self.now_ms),
                    };
                    return Ok(());
                }
                Ok(Some(msg)) => self.handle_message(peer, msg)?,
                Err(e) => {
                    self.refuse(
                        peer,
                        SessionEnd::BadFrame(e.clone()),
                        Some(Refusal::BadFrame),
                    );
                    return Err(SessionError::Frame(e));
                }
            }
        }
    }

    fn handle_message(&mut self, peer: NodeId, msg: Message) -> Result<(), SessionError> {
        let result = match msg {
            Message::Hello(h) => self.on_hello(peer, h),
            Message::Refuse(r) => {
                self.outputs.push_back(Output::Close { peer });
                self.link_down(peer, None);
                self.push_event(Event::PeerDown {
                    peer,
                    why: SessionEnd::RefusedByPeer(r),
                });
                Ok(())
            }
            Message::Batch(b) => self.on_batch(peer, b),
            Message::Ack(a) => {
                self.on_ack(peer, a);
                Ok(())
            }
            Message::BlobWant(w) => {
                self.on_blob_want(peer, w);
                Ok(())
            }
            Message::BlobChunk(c) => self.on_blob_chunk(peer, c),
            Message::BlobMissing { hash } => {
                self.on_blob_missing(peer, hash);
                Ok(())
            }
            Message::Stability(a) => {
                self.note_ack_stability(&peer, &a);
                Ok(())
            }
        };
        if let Err(e) = &result {
            let tell = match e {
                SessionError::Refused(r) => Some(*r),
                _ => None,
            };
            let why = match tell {
                Some(r) => SessionEnd::Refused(r),
                None => SessionEnd::Disconnected,
            };
            self.refuse(peer, why, tell);
        }
        result
    }

    fn on_hello(&mut self, peer: NodeId, h: Hello) -> Result<(), SessionError> {
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(SessionError::UnknownPeer(peer));
        };
        if !matches!(p.link, Link::Handshaking { .. }) {
            return Err(SessionError::Refused(Refusal::Misbehaved));
        }
        if h.cluster != self.cfg.cluster {
            return Err(SessionError::Refused(Refusal::WrongCluster));
        }
        if h.node != peer {
            return Err(SessionError::Refused(Refusal::UnexpectedNode));
        }
        p.link = Link::Up {
            remote_replica: h.replica,
            remote_log: h.log_id,
        };
        p.reconnect_attempt = 0;
        // Holding a standing version the peer wrote and lost (a crash cut
        // its log tail after the write left it): seed it with a snapshot
        // that gives those back.
        let holds_lost = |&(origin, lo, hi): &(ReplicaId, u64, u64)| {
            self.keys.values().any(|k| {
                k.siblings.iter().any(|s| {
                    let d = s.version.dot;
                    d.replica == origin && lo < d.counter && d.counter <= hi
                })
            })
        };
        let reseed = h.lost_own_counters.iter().any(holds_lost);
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(SessionError::UnknownPeer(peer));
        };
        p.echo_range = h.lost_own_counters;
        p.reseed_owed = reseed;
        if let (true, Some(resume)) = (p.cfg.send, h.receive) {
            self.start_outbound(peer, if reseed { None } else { resume })?;
        }
        self.push_event(Event::PeerUp { peer });
        let wanted: Vec<[u8; 32]> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.source == peer)
            .map(|(h, _)| *h)
            .collect();
        for hash in wanted {
            self.send_want(hash, true);
        }
        self.pump_all();
        Ok(())
    }

    /// Decides where the stream to `peer` starts: where it says it stands in
    /// our log when that is valid, a snapshot of our state otherwise (a new,
    /// wiped or rolled-back peer, or one behind what we trimmed).
    fn start_outbound(&mut self, peer: NodeId, resume: Option<Cursor>) -> Result<(), SessionError> {
        let mine = self.meta.log_id;
        let last = self.storage.last_lsn();
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(SessionError::UnknownPeer(peer));
        };
        let acked_lsn = match p.acked {
            Some(Cursor {
                replica,
                pos: Position::Log { lsn },
            }) if replica == mine => lsn,
            _ => 0,
        };
        let valid = resume.filter(|c| {
            c.replica == mine
                && match c.pos {
                    Position::Log { lsn } => lsn <= last && lsn >= acked_lsn,
                    Position::Snapshot { at_lsn, .. } => at_lsn <= last,
                }
        });
        let start = match valid {
            Some(c) => c,
            None => {
                // A new snapshot gets a position never used before, so a late
                // duplicate of an older snapshot's start is told apart.
                let at_lsn = last + 1;
                if let Err(e) = self.storage.skip_to(at_lsn) {
                    self.fail(e.clone());
                    return Err(SessionError::Storage(e));
                }
                Cursor {
                    replica: mine,
                    pos: Position::Snapshot {
                        at_lsn,
                        after: None,
                    },
                }
            }
        };
        let last = self.storage.last_lsn();
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(SessionError::UnknownPeer(peer));
        };
        let needed_after = match start.pos {
            Position::Log { lsn } => lsn,
            Position::Snapshot { at_lsn, .. } => at_lsn,
        };
        let rebuild_from = p.backlog.front().map(|b| b.lsn).unwrap_or(last + 1);
        let rebuild = needed_after + 1 < rebuild_from && needed_after < acked_lsn;
        p.acked = Some(start);
        p.out = Some(Outbound::new(start));
        if rebuild {
            self.rebuild_backlog(peer, needed_after)
                .map_err(SessionError::Storage)?;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            let popped = match start.pos {
                Position::Log { lsn } if canary::on(Canary::ResumeCursorOffByOne) => Cursor {
                    replica: start.replica,
                    pos: Position::Log {
                        lsn: p
                            .backlog
                            .iter()
                            .map(|b| b.lsn)
                            .find(|l| *l > lsn)
                            .unwrap_or(lsn),
                    },
                },
                _ => start,
            };
            p.pop_acked(&popped);
        }
        Ok(())
    }

    /// Re-reads the log after `after_lsn` into `peer`'s backlog.
    fn rebuild_backlog(&mut self, peer: NodeId, after_lsn: Lsn) -> Result<(), StorageError> {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.backlog.clear();
        }
        self.for_each_entry(after_lsn + 1, |node, e| {
            if let Some(p) = node.peers.get_mut(&peer) {
                push_entry_backlog(p, &e);
            }
        })
    }

    fn on_batch(&mut self, peer: NodeId, b: Batch) -> Result<(), SessionError> {
        let Some(p) = self.peers.get(&peer) else {
            return Err(SessionError::UnknownPeer(peer));
        };
        let Link::Up { remote_log, .. } = p.link else {
            return Err(SessionError::Refused(Refusal::Misbehaved));
        };
        if !p.cfg.receive || b.prev.replica != remote_log || b.next.replica != remote_log {
            return Err(SessionError::Refused(Refusal::Misbehaved));
        }
        if b.versions.iter().any(|v| v.dot.counter == 0) {
            return Err(SessionError::Refused(Refusal::Misbehaved));
        }
        // The sender may always (re)seed us with a snapshot that starts
        // beyond where we stand (we are new, wiped, or were restored from a
        // backup); an older snapshot start is a stale duplicate.
        let fresh_start = match (b.prev.pos, p.recv_applied) {
            (Position::Snapshot { after: None, .. }, None) => true,
            (
                Position::Snapshot {
                    after: None,
                    at_lsn,
                },
                Some(c),
            ) => {
                c.replica != remote_log
                    || match c.pos {
                        Position::Log { lsn } => lsn < at_lsn,
                        Position::Snapshot { at_lsn: older, .. } => older < at_lsn,
                    }
            }
            _ => false,
        };
        if Some(b.prev) != p.recv_applied && !fresh_start {
            // Out of sequence (lost, duplicated or reordered): ignore, and
            // repeat where we stand so the sender can go back.
            let (lsn, at) = (p.recv_cursor_lsn, p.recv_applied);
            let queued = self
                .gated
                .iter()
                .any(|g| g.peer == peer && Some(g.cursor) == at);
            if !queued {
                self.gate_ack(lsn, peer, at);
            }
            self.release_gated();
            return Ok(());
        }
        // A version written after a member purged a tombstone this node
        // holds as stable meets a fresh key, as it does there.
        self.purge_for_arrivals(&b.versions)
            .map_err(SessionError::Storage)?;
        // Keep what is new here (and only once per batch); versions whose
        // blob is not here whole wait for it.
        let mut taken = BTreeSet::new();
        let (versions, staged): (Vec<Version>, Vec<Version>) = b
            .versions
            .into_iter()
            .filter(|v| {
                !self.keys.get(&v.key).is_some_and(|s| s.has_seen(&v.dot))
                    && !self.is_staged(v)
                    && taken.insert(v.dot)
            })
            .partition(|v| self.blob_ready(v) || canary::on(Canary::RecordingAppliedBeforeBlob));
        let mut versions = versions;
        drop_superseded_within(&mut versions);
        let body = EntryBody::Remote {
            from: peer,
            versions,
            staged,
            cursor: b.next,
        };
        let lsn = self.append(&body).map_err(SessionError::Storage)?;
        let EntryBody::Remote {
            versions, staged, ..
        } = body
        else {
            unreachable!()
        };
        let at = self.now_ms;
        self.push_backlogs(lsn, &versions, Some(peer), at);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.recv_applied = Some(b.next);
            p.recv_cursor_lsn = lsn;
            p.stats.batches_received += 1;
            p.stats.versions_received += versions.len() as u64;
        }
        self.apply_remote(peer, versions, lsn);
        self.gate_ack(lsn, peer, Some(b.next));
        // Staged versions fetch their blobs; one already here whole (an
        // empty blob, say) applies now, in an entry after this batch's.
        for v in staged {
            if let Some(hash) = self.stage(peer, b.next.replica, v) {
                self.send_want(hash, true);
            }
        }
        // An empty blob (or one already present) needs no transfer.
        self.finish_present_fetches()
            .map_err(SessionError::Storage)?;

        self.release_gated();
        self.pump_all();
        Ok(())
    }

    fn gate_ack(&mut self, lsn: Lsn, peer: NodeId, cursor: Option<Cursor>) {
        if let Some(cursor) = cursor {
            self.gated.push_back(GatedAck { lsn, peer, cursor });
        }
    }

    fn on_ack(&mut self, peer: NodeId, a: Ack) {
        self.note_ack_stability(&peer, &a);
        let mine = self.meta.log_id;
        let now = self.now_ms;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(out) = p.out.as_mut() else { return };
        if a.cursor.replica != mine {
            return;
        }
        if let Some(i) = out.inflight.iter().position(|f| f.next == a.cursor) {
            let acked = out.inflight[i];
            out.inflight.drain(..=i);
            if acked.first {
                p.rto.sample(now.saturating_sub(acked.sent_at_ms));
            }
            p.rto.progress();
            if matches!(a.cursor.pos, Position::Log { .. }) {
                // Past the end of any snapshot this stream started with.
                p.reseed_owed = false;
            }
            p.acked = Some(a.cursor);
            p.last_success_ms = Some(now);
            p.pop_acked(&a.cursor);
        } else if within(p.acked, &a.cursor, &out.sent) && !out.inflight.is_empty() {
            // The receiver stands somewhere that is not the end of a batch
            // in flight (what we sent after it was lost, reordered, or cut
            // differently before a go-back): nothing in flight can apply
            // there. Take the position as acknowledged and go back to it,
            // once per position and ack timeout (see `last_go_back`).
            let timeout = p.rto.timeout_ms(self.cfg.timing.ack_timeout_ms);
            if p.last_go_back
                .is_some_and(|(c, at)| c == a.cursor && now < at + timeout)
            {
                return;
            }
            p.last_go_back = Some((a.cursor, now));
            out.go_back(a.cursor);
            p.stats.resends += 1;
            if p.acked != Some(a.cursor) {
                p.acked = Some(a.cursor);
                p.last_success_ms = Some(now);
                p.pop_acked(&a.cursor);
            }
        } else if !stale(p.acked, &a.cursor)
            && (!p.reseed_owed || in_same_snapshot(p.acked, &a.cursor))
        {
            // The receiver durably stands somewhere this stream cannot
            // continue from (it restarted a snapshot, or we did, or
            // duplicates of an earlier round's batches took it past what
            // this round sent): its position is the truth; resume from
            // there. While a re-seed is owed, only from within that
            // snapshot (its log position lies behind what it lost).
            p.stats.resends += 1;
            if let Err(SessionError::Storage(e)) = self.start_outbound(peer, Some(a.cursor)) {
                self.fail(e);
            }
        }
        self.pump_all();
    }

    /// The storage made more entries durable (call after a sync).
    pub fn handle_durable(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.release_gated();
        // Received versions wait for durability before they are relayed.
        self.pump_all();
    }

    fn release_gated(&mut self) {
        let durable = self.storage.durable_lsn();
        if self.gated.front().is_none_or(|g| g.lsn > durable) {
            return;
        }
        // What purging needs; a node that does not purge reports nothing
        // (its stable point stays 0, so no peer purges on its word).
        let (view, staged) = if self.cfg.tombstone_purge {
            (self.members_view(), self.staged_count())
        } else {
            (0, 0)
        };
        while self.gated.front().is_some_and(|g| g.lsn <= durable) {
            let Some(g) = self.gated.pop_front() else {
                break;
            };
            let Some(p) = self.peers.get_mut(&g.peer) else {
                continue;
            };
            if !p.is_up() {
                continue;
            }
            p.recv_durable = Some(g.cursor);
            let Some(p) = self.peers.get(&g.peer) else {
                continue;
            };
            let ack = self.ack_to(p, g.cursor, view, staged);
            self.outputs.push_back(Output::Transmit {
                peer: g.peer,
                frame: wire::encode_frame(&Message::Ack(ack)),
            });
        }
    }

    /// Timers: reconnects, retransmissions, linger and windows, trimming.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.advance(now_ms);
        let now = self.now_ms;
        let ack_timeout = self.cfg.timing.ack_timeout_ms;
        let mut stalled = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            match p.link {
                Link::Down { retry_at_ms } if retry_at_ms <= now => {
                    p.link = Link::Connecting;
                    self.outputs.push_back(Output::Connect { peer: *id });
                }
                Link::Handshaking { since_ms } if since_ms + ack_timeout <= now => {
                    stalled.push(*id);
                }
                Link::Up { .. } if p.partial_since_ms.is_some_and(|t| t + ack_timeout <= now) => {
                    // Part of a frame has waited too long for the rest: the
                    // stream is desynchronised (or the peer hung mid-frame).
                    stalled.push(*id);
                }
                _ => {}
            }
            let rto = p.rto.timeout_ms(ack_timeout);
            if let (Some(out), Some(acked)) = (p.out.as_mut(), p.acked) {
                if out
                    .inflight
                    .front()
                    .is_some_and(|f| f.sent_at_ms + rto <= now)
                {
                    out.go_back(acked);
                    p.rto.backed_off();
                    p.stats.resends += 1;
                }
            }
        }
        self.blob_timeouts();
        for peer in stalled {
            // The peer's Hello never came: drop the connection and retry.
            self.outputs.push_back(Output::Close { peer });
            self.link_down(peer, Some(SessionEnd::Disconnected));
        }
        if now >= self.next_trim_ms {
            self.next_trim_ms = now + self.cfg.timing.trim_interval_ms;
            if let Err(e) = self.purge_pass().and_then(|_| self.trim_log()) {
                self.fail(e);
            }
        }
        self.release_gated();
        self.pump_all();
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        // A node whose storage failed stops (fail-stop): no timers, nothing
        // sent, until the driver restarts it on working storage.
        if self.failed.is_some() {
            return None;
        }
        let ack_timeout = self.cfg.timing.ack_timeout_ms;
        let mut t = self.next_trim_ms;
        for p in self.peers.values() {
            match p.link {
                Link::Down { retry_at_ms } => t = t.min(retry_at_ms),
                Link::Handshaking { since_ms } => t = t.min(since_ms + ack_timeout),
                _ => {}
            }
            if let Some(since) = p.partial_since_ms {
                t = t.min(since + ack_timeout);
            }
            let rto = p.rto.timeout_ms(ack_timeout);
            if let Some(f) = p.out.as_ref().and_then(|o| o.inflight.front()) {
                t = t.min(f.sent_at_ms + rto);
            }
            if let Some(w) = self.send_wake(p) {
                t = t.min(w);
            }
            for s in p.serving.values().filter(|s| s.sent > s.acked) {
                t = t.min(s.last_progress_ms + rto);
            }
            let window = BLOB_WINDOW_CHUNKS * BLOB_CHUNK_BYTES as u64;
            let blob_work = p.next_blob_chunk(window).is_some();
            if let (true, true, Some(b)) = (blob_work, p.is_up() && !p.paused, &p.bucket) {
                t = t.min(b.ready_at_ms());
            }
        }
        for f in self.fetches.values() {
            t = t.min(f.deadline_ms);
        }
        Some(t.max(self.now_ms))
    }

    /// Which timers `poll_timeout` is made of (for a stuck simulation).
    pub fn timer_debug(&self) -> String {
        let ack_timeout = self.cfg.timing.ack_timeout_ms;
        let mut parts = vec![format!("now {} trim {}", self.now_ms, self.next_trim_ms)];
        for (id, p) in &self.peers {
            parts.push(format!(
                "{id}: link {:?} partial {:?} inflight {:?} wake {:?} serving {:?}",
                p.link,
                p.partial_since_ms.map(|t| t + ack_timeout),
                p.out
                    .as_ref()
                    .and_then(|o| o.inflight.front())
                    .map(|f| f.sent_at_ms + ack_timeout),
                self.send_wake(p),
                p.serving
                    .values()
                    .map(|s| (s.sent, s.acked, s.len, s.last_progress_ms))
                    .collect::<Vec<_>>()
            ));
        }
        for (h, f) in &self.fetches {
            parts.push(format!(
                "fetch {:02x}{:02x}: deadline {}",
                h[0], h[1], f.deadline_ms
            ));
        }
        parts.join("; ")
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events_dropped > 0 {
            let count = std::mem::take(&mut self.events_dropped);
            return Some(Event::EventsDropped { count });
        }
        self.events.pop_front()
    }

    // ----- internals ----------------------------------------------------

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.cfg.limits.events_max {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn fail(&mut self, e: StorageError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    fn append(&mut self, body: &EntryBody) -> Result<Lsn, StorageError> {
        match self.storage.append(body) {
            Ok(lsn) => {
                self.trim_candidates.insert(lsn);
                Ok(lsn)
            }
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// Stores the node metadata; a failure fails the node, as a failed
    /// append does (the log refuses every later write after it).
    fn store_meta(&mut self, meta: &NodeMeta) -> Result<(), StorageError> {
        self.storage
            .store_meta(meta)
            .inspect_err(|e| self.fail(e.clone()))
    }

    fn apply_version(&mut self, v: Version, lsn: Lsn) -> ApplyOutcome {
        note_max(&mut self.replica_max, &v.dot);
        let key = v.key;
        let before = self.lone_before(&key);
        let cfg = &self.cfg;
        let candidates = &mut self.trim_candidates;
        // The entries of superseded versions may be releasable now.
        let outcome = self.keys.entry(key).or_default().apply_noting(
            v,
            lsn,
            |v| policy_of(cfg, v),
            |old| {
                candidates.insert(old);
            },
        );
        self.track_lone(key, before);
        outcome
    }

    /// Applies versions received from `from` (logged at `lsn`, all unseen
    /// here) and reports each, and each conflict, to the application.
    fn apply_remote(&mut self, from: NodeId, versions: Vec<Version>, lsn: Lsn) {
        for v in versions {
            let (key, dot) = (v.key, v.dot);
            self.hlc.observe(v.hlc);
            let outcome = self.apply_version(v, lsn);
            assert_ne!(
                outcome,
                ApplyOutcome::Ignored,
                "only unseen versions are applied"
            );
            self.push_event(Event::RemoteApplied { from, key, dot });
            if let ApplyOutcome::Conflict(report) = outcome {
                // Planted: a conflict a policy settled by itself goes
                // unreported (the application never learns it lost a write).
                if !(report.winner.is_some() && canary::on(Canary::SettledConflictNotReported)) {
                    self.push_event(Event::Conflict(report));
                }
            }
        }
    }

    /// Calls `f` on every retained log entry from `from` on, in order.
    fn for_each_entry(
        &mut self,
        from: Lsn,
        mut f: impl FnMut(&mut Self, LogEntry),
    ) -> Result<(), StorageError> {
        let mut from = from;
        loop {
            let chunk = self.storage.scan(from, 4096)?;
            let Some(last) = chunk.last() else {
                return Ok(());
            };
            from = last.lsn + 1;
            for entry in chunk {
                f(self, entry);
            }
        }
    }

    /// Adds an entry to the backlog of every peer it has something for.
    fn push_backlogs(&mut self, lsn: Lsn, versions: &[Version], from: Option<NodeId>, at_ms: u64) {
        for p in self.peers.values_mut() {
            push_backlog(p, lsn, versions, from, at_ms);
        }
    }

    /// When the peer's stream wants to wake up (linger, window, bandwidth).
    fn send_wake(&self, p: &Peer) -> Option<u64> {
        let out = p.out.as_ref()?;
        if !p.is_up()
            || p.paused
            || p.waiting_for_durable
            || out.inflight.len() >= self.cfg.limits.inflight_batches_max
        {
            return None;
        }
        let first = next_unsent(p, &out.sent)?;
        let when = match &p.cfg.schedule {
            Schedule::Continuous { linger_ms } => match first {
                Some(item) => item.written_at_ms + linger_ms,
                None => self.now_ms,
            },
            Schedule::Manual => return None,
            Schedule::Windows { .. } if p.cfg.schedule.window_open(self.now_ms) => self.now_ms,
            Schedule::Windows { .. } => p.cfg.schedule.next_open_ms(self.now_ms)?,
        };
        match &p.bucket {
            Some(b) => Some(when.max(b.ready_at_ms())),
            None => Some(when),
        }
    }

    fn pump_all(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.pump(id) {
                self.fail(e);
            }
        }
    }

    /// Sends to `peer` whatever its schedule, bandwidth and windows allow:
    /// record batches first, then blob chunks in the lane behind them.
    fn pump(&mut self, peer: NodeId) -> Result<(), StorageError> {
        self.pump_batches(peer)?;
        self.pump_blobs(peer)
    }

    fn pump_batches(&mut self, peer: NodeId) -> Result<(), StorageError> {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.waiting_for_durable = false;
        }
        loop {
            let now = self.now_ms;
            let Some(p) = self.peers.get_mut(&peer) else {
                return Ok(());
            };
            let Link::Up { remote_replica, .. } = p.link else {
                return Ok(());
            };
            let Some(out) = p.out.as_ref() else {
                return Ok(());
            };
            if p.paused || out.inflight.len() >= self.cfg.limits.inflight_batches_max {
                return Ok(());
            }
            let Some(first) = next_unsent(p, &out.sent) else {
                return Ok(());
            };
            let upto = match &p.cfg.schedule {
                Schedule::Continuous { linger_ms } => {
                    let full = p.backlog.len() >= self.cfg.limits.send_batch_versions_max;
                    if first.is_some_and(|i| i.written_at_ms + linger_ms > now) && !full {
                        return Ok(());
                    }
                    Lsn::MAX
                }
                Schedule::Manual => p.sync_upto,
                Schedule::Windows { .. } if p.cfg.schedule.window_open(now) => Lsn::MAX,
                Schedule::Windows { .. } => return Ok(()),
            };
            let due = match (first, out.sent.pos) {
                (Some(item), _) => item.lsn <= upto,
                (None, Position::Snapshot { at_lsn, .. }) => at_lsn <= upto,
                (None, Position::Log { .. }) => false,
            };
            if !due {
                return Ok(());
            }
            if let Some(b) = p.bucket.as_mut() {
                if !b.ready(now) {
                    return Ok(());
                }
            }
            let sent = out.sent;
            let batch = self.build_batch(peer, sent, remote_replica, upto)?;
            if batch.next == sent {
                // What comes next is not durable here yet (see
                // `build_batch`): `handle_durable` pumps again.
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.waiting_for_durable = true;
                }
                return Ok(());
            }
            let shipped_upto = match batch.next.pos {
                Position::Log { lsn } => lsn,
                Position::Snapshot { at_lsn, .. } => self.storage.last_lsn().max(at_lsn),
            };
            self.reserve_lsns(shipped_upto)?;
            let frame = wire::encode_frame(&Message::Batch(batch.clone()));
            let Some(p) = self.peers.get_mut(&peer) else {
                return Ok(());
            };
            if let Some(b) = p.bucket.as_mut() {
                b.spend(frame.len(), now);
            }
            p.stats.batches_sent += 1;
            p.stats.versions_sent += batch.versions.len() as u64;
            p.stats.bytes_sent += frame.len() as u64;
            if let Some(out) = p.out.as_mut() {
                out.push_sent(batch.next, now);
            }
            self.outputs.push_back(Output::Transmit { peer, frame });
        }
    }

    /// The next batch to `peer` after `sent`, from the snapshot or the log.
    fn build_batch(
        &self,
        peer: NodeId,
        sent: Cursor,
        remote: ReplicaId,
        upto: Lsn,
    ) -> Result<Batch, StorageError> {
        let Some(p) = self.peers.get(&peer) else {
            unreachable!("pump checked the peer")
        };
        let limits = &self.cfg.limits;
        // Versions received from peers are forwarded only once durable
        // here: a relay that crashed after forwarding one it then lost
        // would never get it back (its peers do not echo a version to the
        // node it came from), and the nodes behind it would never get it.
        // Our own writes may leave early: a crash that loses them is
        // announced, and peers echo them back.
        let durable = self.storage.durable_lsn();
        let wanted = |v: &Version| {
            p.cfg.filter.passes(&v.labels) && (v.dot.replica != remote || p.echoes(v))
        };
        let mut versions = Vec::new();
        let mut bytes = 0usize;
        let full = |n: usize, b: usize| {
            n >= limits.send_batch_versions_max || b >= limits.send_batch_bytes_max
        };
        let next_pos = match sent.pos {
            Position::Snapshot { at_lsn, after } => {
                let lower = match after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                };
                let mut last_key = None;
                let mut done = true;
                for (visited, (key, state)) in
                    self.keys.range((lower, Bound::Unbounded)).enumerate()
                {
                    if full(versions.len(), bytes) || visited >= SNAPSHOT_KEYS_PER_BATCH_MAX {
                        done = false;
                        break;
                    }
                    let me = self.cfg.node;
                    let purging = self.cfg.tombstone_purge;
                    if state
                        .siblings
                        .iter()
                        .any(|s| s.lsn > durable && (s.version.origin != me || purging))
                    {
                        done = false;
                        break;
                    }
                    last_key = Some(*key);
                    // A stable lone tombstone is left out: the receiver
                    // holds nothing it supersedes (it would have had to
                    // acknowledge it), and a member may have purged it,
                    // so writes of the key meet a fresh key there too.
                    if purging
                        && purge::lone_tombstone(state).is_some_and(|l| l <= self.meta.stable_lsn)
                    {
                        continue;
                    }
                    for s in state.siblings.iter().filter(|s| wanted(&s.version)) {
                        bytes += s.version.size_bytes();
                        versions.push(s.version.clone());
                    }
                }
                if done {
                    Position::Log { lsn: at_lsn }
                } else {
                    Position::Snapshot {
                        at_lsn,
                        after: last_key.or(after),
                    }
                }
            }
            Position::Log { lsn: sent_lsn } => {
                let mut next = sent_lsn;
                let start = p.backlog.partition_point(|b| b.lsn <= sent_lsn);
                for item in p.backlog.range(start..) {
                    if item.lsn > upto || (!versions.is_empty() && full(versions.len(), bytes)) {
                        break;
                    }
                    // The entry may have been released only if nobody needs it.
                    if let Some(entry) = self.storage.read(item.lsn)? {
                        let relayed = entry.body.source().is_some();
                        if (relayed || self.cfg.tombstone_purge) && item.lsn > durable {
                            break;
                        }
                        let planted = |v: &Version| {
                            if relayed && canary::on(Canary::FilterNotAppliedOnRelay) {
                                return v.dot.replica != remote || p.echoes(v);
                            }
                            !(relayed
                                && v.body.is_tombstone()
                                && canary::on(Canary::TombstoneNotRelayed))
                                && wanted(v)
                        };
                        // The entry was read for this batch: its versions
                        // move into it.
                        for v in entry.body.into_versions() {
                            if planted(&v) {
                                bytes += v.size_bytes();
                                versions.push(v);
                            }
                        }
                    }
                    next = item.lsn;
                }
                Position::Log { lsn: next }
            }
        };
        Ok(Batch {
            prev: sent,
            next: Cursor {
                replica: sent.replica,
                pos: next_pos,
            },
            versions,
        })
    }

    /// Releases log entries no peer needs and no key stands on (SPEC §4):
    /// every peer that should get the entry acknowledged it, and none of its
    /// versions is still in its key's frontier. Returns how many were released.
    pub fn trim_log(&mut self) -> Result<usize, StorageError> {
        let limit = self
            .peers
            .values()
            .filter(|p| p.cfg.send)
            .map(|p| p.backlog.front().map(|b| b.lsn).unwrap_or(Lsn::MAX))
            .min()
            .unwrap_or(Lsn::MAX);
        let keep_cursor: BTreeSet<Lsn> = self.peers.values().map(|p| p.recv_cursor_lsn).collect();
        self.persist_peer_acked()?;
        let durable = self.storage.durable_lsn();
        let upto = limit.min(durable.saturating_add(1));
        #[cfg(debug_assertions)]
        self.check_trim_candidates(upto)?;
        let candidates: Vec<Lsn> = self.trim_candidates.range(..upto).copied().collect();
        let mut released = 0;
        // Entries a not yet durable `Purged` entry covers stay.
        let purge_volatile = self.purge_volatile_upto();
        for lsn in candidates {
            let Some(entry) = self.storage.read(lsn)? else {
                self.trim_candidates.remove(&lsn);
                continue;
            };
            if let EntryBody::Purged { upto, .. } = entry.body {
                // Released by `release_purged_entries`.
                self.trim_candidates.remove(&lsn);
                self.purged_entries.insert(lsn, upto);
                continue;
            }
            if lsn <= purge_volatile {
                continue;
            }
            let versions = entry.body.versions();
            let stands = |v: &Version| {
                if v.body.is_tombstone() && canary::on(Canary::TrimDropsLiveTombstone) {
                    return false;
                }
                self.keys
                    .get(&v.key)
                    .is_some_and(|s| s.siblings.iter().any(|s| s.version.dot == v.dot))
            };
            if versions.iter().any(stands) {
                // Looked at again once a version of it is superseded.
                self.trim_candidates.remove(&lsn);
                continue;
            }
            // Kept while what superseded a version is not yet durable (a
            // crash could still take that away), while a staged version
            // waits for its blob or the entry that applied it is not yet
            // durable (the same), or while it holds a peer's resume cursor.
            let staged: &[Version] = match &entry.body {
                EntryBody::Remote { staged, .. } => staged,
                _ => &[],
            };
            let superseder_volatile = versions.iter().chain(staged).any(|v| {
                self.keys
                    .get(&v.key)
                    .is_some_and(|s| s.siblings.iter().any(|s| s.lsn > durable))
            });
            let waiting = staged.iter().any(|v| self.is_staged(v));
            if superseder_volatile || waiting || keep_cursor.contains(&lsn) {
                continue;
            }
            if let Err(e) = self.storage.release(lsn) {
                self.fail(e.clone());
                return Err(e);
            }
            self.trim_candidates.remove(&lsn);
            released += 1;
        }
        self.release_purged_entries()
            .inspect_err(|e| self.fail(e.clone()))?;
        Ok(released)
    }

    /// Debug check of the candidates' invariant: every retained entry
    /// below `upto` none of whose versions stands is a candidate (else
    /// trimming would keep it for good).
    #[cfg(debug_assertions)]
    fn check_trim_candidates(&self, upto: Lsn) -> Result<(), StorageError> {
        let mut missed = None;
        self.storage
            .visit(self.storage.first_retained_lsn(), &mut |lsn, body| {
                if lsn >= upto {
                    return false;
                }
                let stands = body.versions().iter().any(|v| {
                    self.keys
                        .get(&v.key)
                        .is_some_and(|s| s.siblings.iter().any(|s| s.version.dot == v.dot))
                });
                let purged = matches!(body, EntryBody::Purged { .. });
                if !stands && !purged && !self.trim_candidates.contains(&lsn) {
                    missed = Some(lsn);
                    return false;
                }
                true
            })?;
        debug_assert!(
            missed.is_none(),
            "entry {missed:?} stands no more but is no trim candidate"
        );
        Ok(())
    }

    // ----- blobs ---------------------------------------------------------

    /// Starts a local blob upload (stream the bytes in with `blob_write`).
    pub fn blob_begin(&mut self) -> BlobUpload {
        BlobUpload {
            id: self.rng.gen(),
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }

    /// Appends bytes to an upload.
    pub fn blob_write(&mut self, up: &mut BlobUpload, data: &[u8]) -> Result<(), BlobError> {
        self.storage.blob_append(&up.id, up.len, data)?;
        up.hasher.update(data);
        up.len += data.len() as u64;
        Ok(())
    }

    /// Finishes an upload; the blob can now be named in a put.
    pub fn blob_finish(&mut self, up: BlobUpload) -> Result<BlobRef, BlobError> {
        let blob = BlobRef {
            hash: *up.hasher.finalize().as_bytes(),
            len_bytes: up.len,
        };
        if self.blobs_complete.contains(&blob.hash) {
            self.storage.blob_remove(&up.id)?;
        } else {
            self.storage.blob_rename(&up.id, &blob.hash)?;
            self.blobs_complete.insert(blob.hash);
        }
        Ok(blob)
    }

    /// Reads part of a blob held whole here.
    pub fn read_blob(
        &self,
        hash: &[u8; 32],
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, BlobError> {
        if !self.blobs_complete.contains(hash) {
            return Err(BlobError::NotFound);
        }
        Ok(self.storage.blob_read(hash, offset, len)?)
    }

    /// Whether a blob is held whole and verified here.
    pub fn has_blob(&self, hash: &[u8; 32]) -> bool {
        self.blobs_complete.contains(hash)
    }

    /// Versions waiting for their blob.
    pub fn staged_versions(&self) -> usize {
        self.staged.values().map(Vec::len).sum()
    }

    /// The blobs versions are staged for (waiting to be fetched).
    pub fn staged_blobs(&self) -> Vec<[u8; 32]> {
        self.staged.keys().copied().collect()
    }

    /// Whether a blob is here whole: known, or stored under its name with
    /// the right length and content (an upload finished before a restart).
    fn holds_blob(&self, blob: &BlobRef) -> bool {
        self.blobs_complete.contains(&blob.hash)
            || (self.storage.blob_len(&blob.hash) == blob.len_bytes
                && !self.fetches.contains_key(&blob.hash)
                && self
                    .blob_hash(&blob.hash, blob.len_bytes)
                    .is_ok_and(|h| h == blob.hash))
    }

    fn blob_ready(&self, v: &Version) -> bool {
        match &v.body {
            Body::Live { blob: Some(b), .. } => self.blobs_complete.contains(&b.hash),
            _ => true,
        }
    }

    fn is_staged(&self, v: &Version) -> bool {
        match &v.body {
            Body::Live { blob: Some(b), .. } => self
                .staged
                .get(&b.hash)
                .is_some_and(|s| s.iter().any(|(_, _, x)| x.dot == v.dot)),
            _ => false,
        }
    }

    /// Stages a version for its blob; returns the hash if a fetch started.
    fn stage(&mut self, from: NodeId, from_log: ReplicaId, v: Version) -> Option<[u8; 32]> {
        let Body::Live { blob: Some(b), .. } = &v.body else {
            unreachable!("only versions with blobs are staged")
        };
        let (hash, len) = (b.hash, b.len_bytes);
        if self.is_staged(&v) {
            return None;
        }
        self.staged
            .entry(hash)
            .or_default()
            .push((from, from_log, v));
        if self.fetches.contains_key(&hash) {
            return None;
        }
        self.fetches.insert(
            hash,
            Fetch {
                len,
                source: from,
                deadline_ms: self.now_ms + self.cfg.timing.ack_timeout_ms,
                failures: 0,
                stalls: 0,
                restart_asked: None,
            },
        );
        Some(hash)
    }

    /// After a restart: fetches whose bytes are all present are verified.
    fn finish_present_fetches(&mut self) -> Result<(), StorageError> {
        let done: Vec<[u8; 32]> = self
            .fetches
            .iter()
            .filter(|(h, f)| self.storage.blob_len(h) >= f.len)
            .map(|(h, _)| *h)
            .collect();
        for hash in done {
            self.blob_arrived(hash)?;
        }
        Ok(())
    }

    fn send_want(&mut self, hash: [u8; 32], restart: bool) {
        let Some(f) = self.fetches.get(&hash) else {
            return;
        };
        let source = f.source;
        if !self.peers.get(&source).is_some_and(|p| p.is_up()) {
            return;
        }
        let offset = self.storage.blob_len(&hash);
        self.outputs.push_back(Output::Transmit {
            peer: source,
            frame: wire::encode_frame(&Message::BlobWant(BlobWant {
                hash,
                offset,
                restart,
            })),
        });
    }

    fn on_blob_want(&mut self, peer: NodeId, w: BlobWant) {
        let now = self.now_ms;
        let len = self.storage.blob_len(&w.hash);
        // A blob stored whole but not known here (its put was lost in a
        // crash, say) is served if its content matches its name.
        if !self.blobs_complete.contains(&w.hash)
            && !self.fetches.contains_key(&w.hash)
            && len > 0
            && self.blob_hash(&w.hash, len).is_ok_and(|h| h == w.hash)
        {
            self.blobs_complete.insert(w.hash);
        }
        if self.blobs_complete.contains(&w.hash) && w.offset >= len && len > 0 {
            // The peer has it all (its way of closing a transfer).
            self.blob_holders.entry(w.hash).or_default().insert(peer);
        }
        if !self.blobs_complete.contains(&w.hash) || w.offset > len {
            self.outputs.push_back(Output::Transmit {
                peer,
                frame: wire::encode_frame(&Message::BlobMissing { hash: w.hash }),
            });
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let s = p.serving.entry(w.hash).or_insert(Serve {
            len,
            acked: w.offset,
            sent: w.offset,
            last_progress_ms: now,
        });
        if w.restart {
            s.sent = w.offset;
        }
        if w.offset >= s.acked {
            if w.offset > s.acked {
                p.rto.progress();
            }
            s.acked = w.offset;
            s.last_progress_ms = now;
        }
        s.sent = s.sent.max(s.acked);
        if s.acked >= s.len {
            p.serving.remove(&w.hash);
        }
        if let Err(e) = self.pump(peer) {
            self.fail(e);
        }
    }

    /// Sends blob chunks to `peer` within each blob's window and the cap.
    fn pump_blobs(&mut self, peer: NodeId) -> Result<(), StorageError> {
        let now = self.now_ms;
        let window = BLOB_WINDOW_CHUNKS * BLOB_CHUNK_BYTES as u64;
        loop {
            let Some(p) = self.peers.get_mut(&peer) else {
                return Ok(());
            };
            if !p.is_up() || p.paused {
                return Ok(());
            }
            if let Some(b) = p.bucket.as_mut() {
                if !b.ready(now) {
                    return Ok(());
                }
            }
            let Some((hash, offset, total_len)) = p.next_blob_chunk(window) else {
                return Ok(());
            };
            let data = self.storage.blob_read(&hash, offset, BLOB_CHUNK_BYTES)?;
            assert!(
                !data.is_empty(),
                "a complete blob has bytes up to its length"
            );
            let chunk = BlobChunk {
                hash,
                offset,
                total_len,
                crc32c: crc32c::crc32c(&data),
                data,
            };
            let n = chunk.data.len() as u64;
            let frame = wire::encode_frame(&Message::BlobChunk(chunk));
            let Some(p) = self.peers.get_mut(&peer) else {
                return Ok(());
            };
            if let Some(b) = p.bucket.as_mut() {
                b.spend(frame.len(), now);
            }
            p.stats.blob_bytes_sent += n;
            p.stats.bytes_sent += frame.len() as u64;
            if let Some(s) = p.serving.get_mut(&hash) {
                if s.sent == s.acked {
                    s.last_progress_ms = now;
                }
                s.sent += n;
            }
            self.outputs.push_back(Output::Transmit { peer, frame });
        }
    }

    fn on_blob_chunk(&mut self, peer: NodeId, c: BlobChunk) -> Result<(), SessionError> {
        let Some(f) = self.fetches.get(&c.hash) else {
            // Not (or no longer) wanted: if we hold it whole, tell the
            // sender so it stops sending.
            if self.blobs_complete.contains(&c.hash) {
                self.tell_blob_complete(peer, c.hash);
            }
            return Ok(());
        };
        let end = c.offset.checked_add(c.data.len() as u64);
        if c.total_len != f.len || end.is_none_or(|e| e > f.len) || c.data.len() > BLOB_CHUNK_BYTES
        {
            return Err(SessionError::Refused(Refusal::Misbehaved));
        }
        let present = self.storage.blob_len(&c.hash);
        if crc32c::crc32c(&c.data) != c.crc32c || c.offset > present {
            // Corrupt or after a gap: ask again from what we have, once per
            // ack timeout (see `Fetch::restart_asked`).
            let now = self.now_ms;
            let timeout = self.cfg.timing.ack_timeout_ms;
            let Some(f) = self.fetches.get_mut(&c.hash) else {
                return Ok(());
            };
            if f.restart_asked
                .is_some_and(|(off, at)| off == present && now < at + timeout)
            {
                return Ok(());
            }
            f.restart_asked = Some((present, now));
            self.send_want(c.hash, true);
            return Ok(());
        }
        if c.offset < present {
            return Ok(()); // a duplicate
        }
        self.storage
            .blob_append(&c.hash, c.offset, &c.data)
            .map_err(|e| {
                self.fail(e.clone());
                SessionError::Storage(e)
            })?;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.blob_bytes_received += c.data.len() as u64;
        }
        let now = self.now_ms;
        let timeout = self.cfg.timing.ack_timeout_ms;
        let len = match self.fetches.get_mut(&c.hash) {
            Some(f) => {
                f.deadline_ms = now + timeout;
                f.stalls = 0;
                f.len
            }
            None => return Ok(()),
        };
        if present + c.data.len() as u64 >= len {
            self.blob_arrived(c.hash).map_err(SessionError::Storage)?;
            if self.blobs_complete.contains(&c.hash) {
                self.tell_blob_complete(peer, c.hash);
            }
            self.pump_all();
        } else {
            self.send_want(c.hash, false);
        }
        Ok(())
    }

    /// Acknowledges a whole blob, so the peer closes its transfer.
    fn tell_blob_complete(&mut self, peer: NodeId, hash: [u8; 32]) {
        let offset = self.storage.blob_len(&hash);
        self.outputs.push_back(Output::Transmit {
            peer,
            frame: wire::encode_frame(&Message::BlobWant(BlobWant {
                hash,
                offset,
                restart: false,
            })),
        });
    }

    /// The peer asked for a blob does not hold it whole: ask the next
    /// connected peer we receive from, after a pause.
    fn on_blob_missing(&mut self, peer: NodeId, hash: [u8; 32]) {
        let deadline_ms = self.now_ms + self.cfg.timing.ack_timeout_ms;
        let next = self.next_blob_source(peer);
        let Some(f) = self.fetches.get_mut(&hash) else {
            return;
        };
        if f.source != peer {
            return;
        }
        if let Some(next) = next {
            f.source = next;
        }
        f.deadline_ms = deadline_ms;
        self.drop_unneeded_fetch(hash);
    }

    /// Drops a fetch none of whose staged versions is needed any more: each
    /// was superseded here (its successor applied, and durable, so a crash
    /// cannot bring the need back before the stage is rebuilt from the log),
    /// and `blob_arrived` would skip it anyway. Without this, a blob that
    /// the reachable peers no longer hold was asked for forever. Called
    /// only when the source just said it does not hold the blob, so no
    /// transfer of it to us is under way.
    fn drop_unneeded_fetch(&mut self, hash: [u8; 32]) {
        let durable = self.storage.durable_lsn();
        let needed = self.staged.get(&hash).is_some_and(|waiting| {
            waiting.iter().any(|(_, _, v)| {
                !self.keys.get(&v.key).is_some_and(|s| {
                    s.has_seen(&v.dot) && s.siblings.iter().all(|x| x.lsn <= durable)
                })
            })
        });
        if needed {
            return;
        }
        self.staged.remove(&hash);
        self.fetches.remove(&hash);
        if !self.blobs_complete.contains(&hash) {
            // The partial copy: nothing will resume it.
            if let Err(e) = self.storage.blob_remove(&hash) {
                self.fail(e);
            }
        }
    }

    /// The connected peer we receive from that follows `after` in id order
    /// (wrapping): where a blob fetch turns next.
    fn next_blob_source(&self, after: NodeId) -> Option<NodeId> {
        let up = || {
            self.peers
                .iter()
                .filter(|(_, p)| p.is_up() && p.cfg.receive)
                .map(|(id, _)| *id)
        };
        up().find(|id| *id > after).or_else(|| up().next())
    }

    /// Every byte of a fetched blob is here: verify it, then apply the
    /// versions staged for it (or start over if the content is wrong).
    fn blob_arrived(&mut self, hash: [u8; 32]) -> Result<(), StorageError> {
        let Some(fetch) = self.fetches.get(&hash).cloned() else {
            return Ok(());
        };
        if self.blob_hash(&hash, fetch.len)? != hash {
            // Never apply it; try again later, backing off.
            self.storage.blob_remove(&hash)?;
            let timeout = self.cfg.timing.ack_timeout_ms;
            let now = self.now_ms;
            if let Some(f) = self.fetches.get_mut(&hash) {
                f.failures = f.failures.saturating_add(1);
                f.deadline_ms = now + (timeout << f.failures.min(8));
            }
            self.push_event(Event::BlobRejected {
                from: fetch.source,
                hash,
            });
            return Ok(());
        }
        self.blobs_complete.insert(hash);
        // One entry per peer the versions came from, so relaying skips
        // each version's own sender only while it surely holds them: it is
        // up as the log that sent them, and a version it wrote itself is of
        // its current dot origin. Any other may not: a sender wiped or
        // rolled back since was seeded by a snapshot, which has no staged
        // versions; one that restarted may have lost its own write before
        // it was durable, and the range it announces as lost may have
        // scrolled off since; and while the link is down nothing is known.
        // (A duplicate is ignored.)
        let mut by_source: BTreeMap<(NodeId, bool), Vec<Version>> = BTreeMap::new();
        for (from, from_log, v) in self.staged.remove(&hash).unwrap_or_default() {
            if !self.keys.get(&v.key).is_some_and(|s| s.has_seen(&v.dot)) {
                let holds = self.peers.get(&from).is_some_and(|p| match p.link {
                    Link::Up {
                        remote_log,
                        remote_replica,
                    } => {
                        remote_log == from_log
                            && (v.origin != from || v.dot.replica == remote_replica)
                    }
                    _ => false,
                });
                by_source.entry((from, !holds)).or_default().push(v);
            }
        }
        self.fetches.remove(&hash);
        for ((from, restarted), mut versions) in by_source {
            // An earlier group may have applied a successor of one of
            // these, or one of them may supersede another.
            versions.retain(|v| !self.keys.get(&v.key).is_some_and(|s| s.has_seen(&v.dot)));
            drop_superseded_within(&mut versions);
            if versions.is_empty() {
                continue;
            }
            let body = EntryBody::BlobReady {
                from,
                hash,
                versions,
            };
            let lsn = self.append(&body)?;
            let EntryBody::BlobReady { versions, .. } = body else {
                unreachable!()
            };
            let skip = (!restarted).then_some(from);
            self.push_backlogs(lsn, &versions, skip, self.now_ms);
            self.apply_remote(from, versions, lsn);
        }
        Ok(())
    }

    /// BLAKE3 of a stored blob, read piece by piece (never whole in memory).
    fn blob_hash(&self, id: &BlobId, len: u64) -> Result<[u8; 32], StorageError> {
        let mut h = blake3::Hasher::new();
        let mut offset = 0;
        while offset < len {
            let piece = self.storage.blob_read(id, offset, BLOB_VERIFY_READ_BYTES)?;
            if piece.is_empty() {
                break;
            }
            offset += piece.len() as u64;
            h.update(&piece);
        }
        Ok(*h.finalize().as_bytes())
    }

    /// Fetches without progress ask again (another peer if the source is
    /// down); serves without progress go back to what was acknowledged.
    fn blob_timeouts(&mut self) {
        let now = self.now_ms;
        let timeout = self.cfg.timing.ack_timeout_ms;
        let stale: Vec<[u8; 32]> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now)
            .map(|(h, _)| *h)
            .collect();
        for hash in stale {
            let Some(source) = self.fetches.get(&hash).map(|f| f.source) else {
                continue;
            };
            let source_up = self.peers.get(&source).is_some_and(|p| p.is_up());
            let next = if source_up {
                None
            } else {
                self.next_blob_source(source)
            };
            let base = self
                .peers
                .get(&source)
                .map_or(timeout, |p| p.rto.timeout_ms(timeout));
            if let Some(f) = self.fetches.get_mut(&hash) {
                f.stalls = f.stalls.saturating_add(1);
                let doublings = f.failures.saturating_add(f.stalls).min(8);
                f.deadline_ms = now.saturating_add(base.saturating_mul(1 << doublings));
                if let Some(next) = next {
                    f.source = next;
                }
            }
            let whole = self
                .fetches
                .get(&hash)
                .is_some_and(|f| self.storage.blob_len(&hash) >= f.len);
            if whole {
                // Every byte is here but the check did not finish (a read
                // failed while hashing): check again rather than ask the
                // source, which has nothing more to send. A failure waits
                // for the next deadline.
                let _retried_at_the_next_deadline = self.blob_arrived(hash);
                continue;
            }
            self.send_want(hash, true);
        }
        for p in self.peers.values_mut() {
            let rto = p.rto.timeout_ms(timeout);
            let mut stalled = false;
            for s in p.serving.values_mut() {
                if s.sent > s.acked && s.last_progress_ms + rto <= now {
                    s.sent = s.acked;
                    s.last_progress_ms = now;
                    stalled = true;
                }
            }
            if stalled {
                p.rto.backed_off();
            }
        }
    }

    /// Records every peer's acknowledged position durably (before entries
    /// it covers are released).
    fn persist_peer_acked(&mut self) -> Result<(), StorageError> {
        let mine = self.meta.log_id;
        let acked: BTreeMap<NodeId, Lsn> = self
            .peers
            .iter()
            .filter_map(|(id, p)| match p.acked {
                Some(Cursor {
                    replica,
                    pos: Position::Log { lsn },
                }) if replica == mine => Some((*id, lsn)),
                _ => None,
            })
            .collect();
        if acked != self.meta.peer_acked {
            let mut meta = self.meta.clone();
            meta.peer_acked = acked;
            self.store_meta(&meta)?;
            self.meta = meta;
        }
        Ok(())
    }

    /// For tests and the simulator: the raw per-peer stream state.
    pub fn peer_acked(&self, peer: &NodeId) -> Option<Cursor> {
        self.peers.get(peer).and_then(|p| p.acked)
    }

    /// For tests and the simulator: a readable dump of one peer's state.
    pub fn peer_debug(&self, peer: &NodeId) -> String {
        match self.peers.get(peer) {
            Some(p) => format!(
                "link={:?} acked={:?} out={:?} backlog_front={:?} backlog_len={} recv_applied={:?} sync_upto={} view={} stability={:?}",
                p.link,
                p.acked,
                p.out,
                p.backlog.front(),
                p.backlog.len(),
                p.recv_applied,
                p.sync_upto,
                self.members_view(),
                p.stability
            ),
            None => "not configured".into(),
        }
    }

    /// For tests and the simulator: a readable dump of blob transfers.
    pub fn blob_debug(&self) -> String {
        let fetches: Vec<String> = self
            .fetches
            .iter()
            .map(|(h, f)| {
                format!(
                    "fetch {:02x}{:02x}: {}/{} from {:?} deadline {} failures {} complete_here {}",
                    h[0],
                    h[1],
                    self.storage.blob_len(h),
                    f.len,
                    f.source,
                    f.deadline_ms,
                    f.failures,
                    self.blobs_complete.contains(h)
                )
            })
            .collect();
        let serving: Vec<String> = self
            .peers
            .iter()
            .flat_map(|(id, p)| {
                p.serving
                    .iter()
                    .map(move |(h, s)| format!("serve {:02x}{:02x} to {id:?}: {s:?}", h[0], h[1]))
            })
            .collect();
        format!("{fetches:?} {serving:?}")
    }

    /// For tests: the current HLC.
    pub fn hlc_last(&self) -> Hlc {
        self.hlc.last()
    }
}

/// Whether an acknowledgement is older than what was already acknowledged.
fn stale(acked: Option<Cursor>, pos: &Cursor) -> bool {
    use std::cmp::Ordering::*;
    acked.is_some_and(|a| {
        a.replica == pos.replica && matches!(pos.pos.partial_order(&a.pos), Some(Less | Equal))
    })
}

/// Whether `pos` is a position of the snapshot `acked` stands in.
fn in_same_snapshot(acked: Option<Cursor>, pos: &Cursor) -> bool {
    match (acked, pos.pos) {
        (
            Some(Cursor {
                replica,
                pos: Position::Snapshot { at_lsn: a, .. },
            }),
            Position::Snapshot { at_lsn: b, .. },
        ) => replica == pos.replica && a == b,
        _ => false,
    }
}

/// Whether `pos` lies between what was acknowledged and what was sent.
fn within(acked: Option<Cursor>, pos: &Cursor, sent: &Cursor) -> bool {
    use std::cmp::Ordering::*;
    let after_acked = match acked {
        Some(a) => {
            a.replica == pos.replica && matches!(a.pos.partial_order(&pos.pos), Some(Less | Equal))
        }
        None => true,
    };
    after_acked
        && sent.replica == pos.replica
        && matches!(pos.pos.partial_order(&sent.pos), Some(Less | Equal))
}

fn note_max(m: &mut BTreeMap<ReplicaId, u64>, dot: &Dot) {
    let e = m.entry(dot.replica).or_insert(0);
    *e = (*e).max(dot.counter);
}

fn policy_of<'a>(cfg: &'a NodeConfig, v: &Version) -> &'a ConflictPolicy {
    cfg.classes.get(&v.labels.class).unwrap_or(&DEFAULT_POLICY)
}

/// The first backlog item after `sent`: `Some(None)` while a snapshot is
/// still to be sent with nothing logged after it, `None` when caught up.
fn next_unsent<'a>(p: &'a Peer, sent: &Cursor) -> Option<Option<&'a BacklogItem>> {
    match sent.pos {
        Position::Log { lsn } => {
            let i = p.backlog.partition_point(|b| b.lsn <= lsn);
            p.backlog.get(i).map(Some)
        }
        Position::Snapshot { .. } => Some(p.backlog.front()),
    }
}

/// Adds the entry to the peer's backlog if it has something for it: a
/// version passing the peer's filter, not received from that very peer.
fn push_backlog(p: &mut Peer, lsn: Lsn, versions: &[Version], from: Option<NodeId>, at_ms: u64) {
    if !p.cfg.send {
        return;
    }
    let remote = match p.link {
        Link::Up { remote_replica, .. } => Some(remote_replica),
        _ => None,
    };
    let from_peer = from == Some(p.cfg.node);
    let mut n = 0u32;
    let mut bytes = 0u64;
    for v in versions {
        let its_own = from_peer || Some(v.dot.replica) == remote;
        if p.cfg.filter.passes(&v.labels) && (!its_own || p.echoes(v)) {
            n += 1;
            bytes += v.size_bytes() as u64;
            if let Body::Live { blob: Some(b), .. } = &v.body {
                bytes += b.len_bytes;
            }
        }
    }
    if n > 0 {
        debug_assert!(p.backlog.back().is_none_or(|b| b.lsn < lsn));
        p.backlog.push_back(BacklogItem {
            lsn,
            versions: n,
            bytes,
            written_at_ms: at_ms,
        });
    }
}

/// Drops every version that one listed before it in `versions`
/// supersedes: applied in order, it would find itself seen already (a
/// sender may list a version after its successor, by design or by malice).
/// A version listed before its successor stays: it is applied, then
/// superseded, as if the two had come in two batches.
fn drop_superseded_within(versions: &mut Vec<Version>) {
    let superseded_at = |i: usize| {
        let v = &versions[i];
        versions[..i]
            .iter()
            .any(|w| w.key == v.key && w.supersedes(v))
    };
    // The usual batch has none: no allocation then.
    if !(0..versions.len()).any(superseded_at) {
        return;
    }
    let superseded: Vec<bool> = (0..versions.len()).map(superseded_at).collect();
    let mut index = 0;
    versions.retain(|_| {
        let keep = !superseded[index];
        index += 1;
        keep
    });
}

/// Adds a log entry read back from the log (a replay or a rebuild) to one
/// peer's backlog.
fn push_entry_backlog(p: &mut Peer, e: &LogEntry) {
    let body = &e.body;
    push_backlog(
        p,
        e.lsn,
        body.versions(),
        body.relay_skip(),
        body.written_at_ms(),
    );
}

/// Helper for configs in tests and the harness.
impl PeerConfig {
    /// Sets the schedule.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemStorage, MemSync};
    use crate::wire::decode_frame;

    const T0: u64 = 1_767_225_600_000;

    fn a_with_peer_b(f: impl FnOnce(&mut NodeConfig)) -> Node<MemStorage> {
        let mut cfg = NodeConfig::new(NodeId::from_u128(1), ClusterId::from_u128(9), &["user"]);
        cfg.peers.push(PeerConfig::two_way(NodeId::from_u128(2)));
        f(&mut cfg);
        Node::open(cfg, MemStorage::new(MemSync::Immediate), T0, 1).unwrap()
    }

    fn b() -> NodeId {
        NodeId::from_u128(2)
    }

    fn messages(n: &mut Node<MemStorage>) -> Vec<Output> {
        std::iter::from_fn(|| n.poll_output()).collect()
    }

    fn batch_in(out: &Output) -> Option<Batch> {
        match out {
            Output::Transmit { frame, .. } => match decode_frame(frame, u32::MAX) {
                Ok((Message::Batch(b), _)) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    /// Regression (found by acceptance_convergence, seed range 0..1000): a
    /// lost Hello left both sides handshaking forever.
    #[test]
    fn stalled_handshake_is_dropped_and_retried() {
        let mut a = a_with_peer_b(|_| {});
        a.handle_connected(T0, b());
        let _ = messages(&mut a);
        let deadline = a.poll_timeout().unwrap();
        assert!(deadline <= T0 + a.config().timing.ack_timeout_ms);
        a.handle_timeout(deadline);
        assert!(messages(&mut a).contains(&Output::Close { peer: b() }));
        // ... and a reconnect is asked for after the backoff.
        let retry = a.poll_timeout().unwrap();
        a.handle_timeout(retry);
        assert!(messages(&mut a).contains(&Output::Connect { peer: b() }));
    }

    /// Regression (found by acceptance_bad_frames): a 4-byte frame prefix
    /// made the next real frame's bytes read as a huge length; the session
    /// looked up but waited forever.
    #[test]
    fn partial_frame_that_never_completes_closes_the_session() {
        let mut a = a_with_peer_b(|_| {});
        a.handle_connected(T0, b());
        let hello = Hello {
            cluster: ClusterId::from_u128(9),
            node: b(),
            replica: ReplicaId::from_u128(22),
            log_id: ReplicaId::from_u128(23),
            receive: None,
            lost_own_counters: Vec::new(),
        };
        a.handle_bytes(T0, b(), &wire::encode_frame(&Message::Hello(hello)))
            .unwrap();
        assert!(a.peer_status(&b()).unwrap().connected);
        a.handle_bytes(T0 + 1, b(), b"RS\x01\x00").unwrap();
        let _ = messages(&mut a);
        let deadline = a.poll_timeout().unwrap();
        assert!(deadline <= T0 + 1 + a.config().timing.ack_timeout_ms);
        a.handle_timeout(deadline);
        assert!(messages(&mut a).contains(&Output::Close { peer: b() }));
        assert!(!a.peer_status(&b()).unwrap().connected);
    }

    /// Regression (acceptance_convergence seed 0): after a go-back the
    /// receiver stood at a position that was not the end of any batch in
    /// flight; its acks were ignored and the session livelocked.
    #[test]
    fn ack_between_batch_boundaries_goes_back_to_it() {
        let mut a = a_with_peer_b(|c| {
            c.limits.send_batch_versions_max = 2;
            c.peers[0].schedule = Schedule::Continuous { linger_ms: 0 };
        });
        for k in 0..3u128 {
            let req = PutRequest {
                key: Key::from_u128(k),
                labels: Labels::parse("user", "t", "g").unwrap(),
                meta: vec![1],
                blob: None,
            };
            a.put(T0, req).unwrap();
        }
        a.handle_connected(T0, b());
        let _ = messages(&mut a);
        let mine = a.log_id();
        let log = |lsn| Cursor {
            replica: mine,
            pos: Position::Log { lsn },
        };
        let hello = Hello {
            cluster: ClusterId::from_u128(9),
            node: b(),
            replica: ReplicaId::from_u128(22),
            log_id: ReplicaId::from_u128(23),
            receive: Some(Some(log(0))),
            lost_own_counters: Vec::new(),
        };
        a.handle_bytes(T0, b(), &wire::encode_frame(&Message::Hello(hello)))
            .unwrap();
        let sent: Vec<Batch> = messages(&mut a).iter().filter_map(batch_in).collect();
        assert_eq!(
            sent.iter().map(|b| b.next).collect::<Vec<_>>(),
            vec![log(2), log(3)]
        );
        // The receiver says it stands at 1: not a boundary of what is in flight.
        let ack = Message::Ack(Ack::of(log(1)));
        a.handle_bytes(T0 + 1, b(), &wire::encode_frame(&ack))
            .unwrap();
        let resent: Vec<Batch> = messages(&mut a).iter().filter_map(batch_in).collect();
        assert_eq!(
            resent.first().map(|b| b.prev),
            Some(log(1)),
            "goes back to where B stands"
        );
        assert_eq!(a.peer_acked(&b()), Some(log(1)));
    }
}
