//! recsync-bench: the criterion benchmarks of recsync (`benches/core.rs`)
//! and the small fixtures they share: ids, labels, metadata, hand-built
//! remote versions and batches, and a receiving node driven by hand through
//! the public sans-IO API (no simulator in between).
//!
//! Run with `cargo bench -p recsync-bench`. Everything here is in memory
//! (`MemStorage`), so the `core` figures measure the engine's CPU cost, not
//! disks; `benches/storage.rs` measures the segment log on the real disk
//! (`scripts/bench_storage.sh` runs it and sums up against its targets).

use recsync_engine::hlc::Hlc;
use recsync_engine::wire::{encode_frame, Batch, Cursor, Hello, Message, Position};
use recsync_engine::{
    Body, ClusterId, Dot, Key, Labels, Lsn, MemStorage, MemSync, Node, NodeConfig, NodeId,
    PeerConfig, PutRequest, ReplicaId, Version, VersionVector,
};

/// Simulated wall clock the fixtures start at: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// The class every fixture object has.
pub const CLASS: &str = "user";
/// The node that writes (the sender, in replication fixtures).
pub const SENDER: NodeId = NodeId::from_u128(0xB000);
/// The node that receives.
pub const RECEIVER: NodeId = NodeId::from_u128(0xB001);
/// The sender's replica id (its log incarnation) in hand-built batches.
pub const SENDER_REPLICA: ReplicaId = ReplicaId::from_u128(0xBEEF);
pub const CLUSTER: ClusterId = ClusterId::from_u128(0xC1);

/// `len` bytes of deterministic, not-all-equal metadata.
pub fn meta(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// The labels every fixture object carries.
pub fn labels() -> Labels {
    match Labels::parse(CLASS, "default", "default") {
        Ok(l) => l,
        Err(e) => panic!("fixture labels are valid: {e}"),
    }
}

/// A put of `meta` under key number `key`.
pub fn put_request(key: u128, labels: &Labels, meta: &[u8]) -> PutRequest {
    PutRequest {
        key: Key::from_u128(key),
        labels: labels.clone(),
        meta: meta.to_vec(),
        blob: None,
    }
}

/// A fresh node with no peers on immediately durable memory storage.
pub fn lone_node(node: NodeId, seed: u64) -> Node<MemStorage> {
    let cfg = NodeConfig::new(node, CLUSTER, &[CLASS]);
    match Node::open(cfg, MemStorage::new(MemSync::Immediate), EPOCH_MS, seed) {
        Ok(n) => n,
        Err(e) => panic!("fixture node opens: {e}"),
    }
}

/// A version as the sender would have written it: a new object (empty
/// causal context) with dot `(SENDER_REPLICA, counter)`.
pub fn remote_version(key: u128, counter: u64, labels: &Labels, meta: &[u8]) -> Version {
    Version {
        key: Key::from_u128(key),
        dot: Dot {
            replica: SENDER_REPLICA,
            counter,
        },
        origin: SENDER,
        hlc: Hlc {
            wall_ms: EPOCH_MS,
            logical: u32::try_from(counter).unwrap_or(u32::MAX),
        },
        context: VersionVector::new(),
        labels: labels.clone(),
        body: Body::Live {
            meta: meta.to_vec(),
            blob: None,
        },
    }
}

/// The sender's cursor at `lsn` of its log; `None` is the start of a fresh
/// stream (an empty snapshot at LSN 0, which a new receiver accepts).
pub fn sender_cursor(lsn: Option<Lsn>) -> Cursor {
    Cursor {
        replica: SENDER_REPLICA,
        pos: match lsn {
            Some(lsn) => Position::Log { lsn },
            None => Position::Snapshot {
                at_lsn: 0,
                after: None,
            },
        },
    }
}

/// Batch number `n` (from 0) of a stream of `per_batch` new objects per
/// batch, each with `meta`; batch `n` moves the cursor from LSN `n` (or the
/// stream start) to LSN `n + 1`. Keys and dots continue across batches.
pub fn stream_batch(n: u64, per_batch: usize, labels: &Labels, meta: &[u8]) -> Batch {
    let first = n * per_batch as u64 + 1;
    let versions = (first..first + per_batch as u64)
        .map(|c| remote_version(u128::from(c), c, labels, meta))
        .collect();
    Batch {
        prev: sender_cursor((n > 0).then_some(n)),
        next: sender_cursor(Some(n + 1)),
        versions,
    }
}

/// A receiving node with a live session from [`SENDER`], driven by hand:
/// the benchmark feeds it batch frames as the transport would.
pub struct Receiver {
    pub node: Node<MemStorage>,
    pub now_ms: u64,
}

impl Receiver {
    /// Opens the receiver and completes the handshake with the sender.
    pub fn connected(seed: u64) -> Self {
        let mut cfg = NodeConfig::new(RECEIVER, CLUSTER, &[CLASS]);
        cfg.peers.push(PeerConfig::receive_only(SENDER));
        let node = match Node::open(cfg, MemStorage::new(MemSync::Immediate), EPOCH_MS, seed) {
            Ok(n) => n,
            Err(e) => panic!("fixture receiver opens: {e}"),
        };
        let mut r = Self {
            node,
            now_ms: EPOCH_MS,
        };
        r.node.handle_connected(r.now_ms, SENDER);
        let hello = encode_frame(&Message::Hello(Hello {
            cluster: CLUSTER,
            node: SENDER,
            replica: SENDER_REPLICA,
            log_id: SENDER_REPLICA,
            receive: None,
            lost_own_counters: Vec::new(),
        }));
        r.feed(&hello);
        r
    }

    /// Hands the node bytes from the sender, then drains what it produced
    /// (the acknowledgement, the applied events), as a driver must.
    /// Returns how many outputs and events were drained.
    pub fn feed(&mut self, frame: &[u8]) -> usize {
        if let Err(e) = self.node.handle_bytes(self.now_ms, SENDER, frame) {
            panic!("fixture frame refused: {e}");
        }
        let mut drained = 0;
        while self.node.poll_output().is_some() {
            drained += 1;
        }
        while self.node.poll_event().is_some() {
            drained += 1;
        }
        drained
    }
}
