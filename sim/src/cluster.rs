//! The deterministic cluster harness: real engine nodes on in-memory
//! storage, wired through [`Network`], driven from one seed in one thread.
//!
//! Scenarios read like specifications:
//! `partition(&[&[0], &[1]])`, `put(...)`, `heal()`, `run_until_settled()`.
//! A drive that does not settle reports a [`Livelock`] instead of hanging.

use crate::net::{NetConfig, Network};
use crate::store::{SimStore, StoreKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsync_engine::disk::CrashMode;
use recsync_engine::seglog::LogOptions;
use recsync_engine::wire::{decode_frame, Message, FRAME_PAYLOAD_LEN_MAX};
use recsync_engine::{
    BlobError, BlobRef, ClusterId, Dot, Event, Key, Labels, MemSync, Node, NodeConfig, NodeId,
    Output, PeerConfig, PeersChanged, PutRequest, ReconfigureError, Schedule, WriteError, WriteOp,
    WriteReceipt,
};

/// More packets in flight than this is a runaway (see `run_until`).
const RUNAWAY_PACKETS: usize = 200_000;

/// Where simulated time starts: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Classes every harness node knows.
pub const CLASSES: &[&str] = &["user", "group", "setting", "recording", "log"];

/// The node id of harness node `i`.
pub fn node_id(i: usize) -> NodeId {
    NodeId::from_u128(0xA000 + i as u128)
}

pub fn cluster_id() -> ClusterId {
    ClusterId::from_u128(0xC1)
}

/// One batch that left a node, as the harness saw it on the wire.
#[derive(Clone, Debug)]
pub struct SentBatch {
    pub at_ms: u64,
    pub from: usize,
    pub to: usize,
    pub frame_bytes: usize,
    pub versions: Vec<(Key, Dot, Labels)>,
}

/// The drive did not settle within its bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Livelock {
    pub waited_ms: u64,
    pub in_flight: usize,
    pub pending: Vec<(usize, usize, u64)>,
}

struct SimNode {
    cfg: NodeConfig,
    node: Option<Node<SimStore>>,
    /// Storage of a crashed node, until restart.
    parked: Option<SimStore>,
    events: Vec<Event>,
    restarts: u64,
}

/// Builds a cluster: nodes, links, schedules, policies.
pub struct ClusterBuilder {
    seed: u64,
    configs: Vec<NodeConfig>,
    net: NetConfig,
    store: StoreKind,
}

impl ClusterBuilder {
    /// `n` nodes, no links yet.
    pub fn new(seed: u64, n: usize) -> Self {
        let configs = (0..n)
            .map(|i| NodeConfig::new(node_id(i), cluster_id(), CLASSES))
            .collect();
        Self {
            seed,
            configs,
            net: NetConfig::default(),
            store: StoreKind::Mem(MemSync::Immediate),
        }
    }

    fn peer_mut(&mut self, at: usize, peer: usize) -> &mut PeerConfig {
        let id = node_id(peer);
        let peers = &mut self.configs[at].peers;
        if !peers.iter().any(|p| p.node == id) {
            let mut p = PeerConfig::two_way(id);
            p.send = false;
            p.receive = false;
            peers.push(p);
        }
        let Some(p) = peers.iter_mut().find(|p| p.node == id) else {
            unreachable!("inserted above")
        };
        p
    }

    /// `from` ships to `to` (and `to` accepts from `from`).
    pub fn one_way(mut self, from: usize, to: usize) -> Self {
        self.peer_mut(from, to).send = true;
        self.peer_mut(to, from).receive = true;
        self
    }

    /// Both directions between `a` and `b`.
    pub fn two_way(self, a: usize, b: usize) -> Self {
        self.one_way(a, b).one_way(b, a)
    }

    /// Every pair, both directions.
    pub fn mesh(mut self) -> Self {
        let n = self.configs.len();
        for a in 0..n {
            for b in a + 1..n {
                self = self.two_way(a, b);
            }
        }
        self
    }

    /// Changes the configuration of what `from` sends to `to`.
    pub fn peer(mut self, from: usize, to: usize, f: impl FnOnce(&mut PeerConfig)) -> Self {
        f(self.peer_mut(from, to));
        self
    }

    /// Changes a whole node configuration.
    pub fn node(mut self, i: usize, f: impl FnOnce(&mut NodeConfig)) -> Self {
        f(&mut self.configs[i]);
        self
    }

    /// Changes every node configuration.
    pub fn all_nodes(mut self, f: impl Fn(&mut NodeConfig)) -> Self {
        for c in &mut self.configs {
            f(c);
        }
        self
    }

    pub fn net(mut self, net: NetConfig) -> Self {
        self.net = net;
        self
    }

    /// Storage syncs only when the harness says (crashes lose the rest).
    pub fn explicit_sync(mut self) -> Self {
        self.store = StoreKind::Mem(MemSync::Explicit);
        self
    }

    /// Nodes run on the real segment log over a simulated disk each; like
    /// `explicit_sync`, the log is durable only when the harness syncs it,
    /// and a crash loses (or tears) the rest.
    pub fn on_disk(mut self, opts: LogOptions) -> Self {
        self.store = StoreKind::Disk(opts);
        self
    }

    pub fn build(self) -> Cluster {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let nodes = self
            .configs
            .into_iter()
            .map(|cfg| {
                let storage = match self.store.fresh() {
                    Ok(s) => s,
                    Err(e) => panic!("harness storage for {:?} failed: {e}", cfg.node),
                };
                let node = Node::open(cfg.clone(), storage, EPOCH_MS, rng.gen());
                let node = match node {
                    Ok(n) => n,
                    Err(e) => panic!("harness config for {:?} is invalid: {e}", cfg.node),
                };
                SimNode {
                    cfg,
                    node: Some(node),
                    parked: None,
                    events: Vec::new(),
                    restarts: 0,
                }
            })
            .collect();
        let mut c = Cluster {
            now_ms: EPOCH_MS,
            rng,
            nodes,
            net: Network::new(self.net),
            sent: Vec::new(),
            store: self.store,
            clock_offset_ms: Vec::new(),
            trace: blake3::Hasher::new(),
            bytes_sent: 0,
            trace_lines: None,
            trace_stream: false,
        };
        c.clock_offset_ms = vec![0; c.nodes.len()];
        c.drain_all();
        c
    }
}

/// A running cluster.
pub struct Cluster {
    now_ms: u64,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    pub net: Network,
    /// Every batch sent, in order.
    pub sent: Vec<SentBatch>,
    store: StoreKind,
    /// Per-node clock skew (the time a node is told is `now + offset`).
    clock_offset_ms: Vec<i64>,
    /// Everything that crossed the network and every event, hashed in
    /// order: two runs of one seed must end with the same hash.
    trace: blake3::Hasher,
    /// Frame bytes handed to the network.
    pub bytes_sent: u64,
    /// Readable trace lines, when asked for (`record_trace`).
    trace_lines: Option<Vec<String>>,
    /// Print trace lines to stdout as they happen instead of keeping them
    /// (so a run that panics still shows how it got there).
    trace_stream: bool,
}

impl Cluster {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The hash of everything sent and every event so far.
    pub fn trace_hash(&self) -> [u8; 32] {
        *self.trace.finalize().as_bytes()
    }

    /// Starts keeping readable trace lines (see `take_trace`).
    pub fn record_trace(&mut self) {
        self.trace_lines.get_or_insert_with(Vec::new);
    }

    /// Prints trace lines to stdout as they happen.
    pub fn stream_trace(&mut self) {
        self.record_trace();
        self.trace_stream = true;
    }

    fn trace_line(&mut self, l: String) {
        if self.trace_stream {
            use std::io::Write;
            // A reader that went away (`| head`) ends the stream, not the run.
            if writeln!(std::io::stdout().lock(), "{l}").is_err() {
                self.trace_stream = false;
                self.trace_lines = None;
            }
        } else if let Some(t) = self.trace_lines.as_mut() {
            t.push(l);
        }
    }

    /// Adds a line to the trace (and its hash).
    pub fn note(&mut self, line: impl FnOnce() -> String) {
        let l = format!("{:>10} {}", self.now_ms - EPOCH_MS, line());
        self.trace.update(l.as_bytes());
        if self.trace_lines.is_some() {
            self.trace_line(l);
        }
    }

    /// Notes the plan's step `index` (the hash takes the index and the
    /// time; the line is made only when the trace is printed or kept).
    pub fn note_step(&mut self, index: u64, line: impl FnOnce() -> String) {
        self.trace.update(&self.now_ms.to_le_bytes());
        self.trace.update(&index.to_le_bytes());
        if self.trace_lines.is_some() {
            let l = format!("{:>10} {}", self.now_ms - EPOCH_MS, line());
            self.trace_line(l);
        }
    }

    /// The trace lines recorded so far.
    pub fn take_trace(&mut self) -> Vec<String> {
        self.trace_lines
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Simulated time, milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The time node `i` believes it is.
    fn node_time(&self, i: usize) -> u64 {
        (self.now_ms as i64 + self.clock_offset_ms[i]).max(0) as u64
    }

    /// Skews node `i`'s clock by `offset_ms`.
    pub fn set_clock_offset(&mut self, i: usize, offset_ms: i64) {
        self.clock_offset_ms[i] = offset_ms;
    }

    /// The running node `i` (panics if it is crashed: a test bug).
    pub fn node(&self, i: usize) -> &Node<SimStore> {
        match &self.nodes[i].node {
            Some(n) => n,
            None => panic!("node {i} is down"),
        }
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node<SimStore> {
        match &mut self.nodes[i].node {
            Some(n) => n,
            None => panic!("node {i} is down"),
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    /// Events node `i` reported so far.
    pub fn events(&self, i: usize) -> &[Event] {
        &self.nodes[i].events
    }

    // ----- application calls ---------------------------------------------

    pub fn put(&mut self, i: usize, key: Key, labels: Labels, meta: &[u8]) -> WriteReceipt {
        match self.try_write(i, vec![WriteOp::Put(put_req(key, labels, meta))]) {
            Ok(r) => r,
            Err(e) => panic!("put on node {i} failed: {e}"),
        }
    }

    pub fn delete(&mut self, i: usize, key: Key) -> WriteReceipt {
        match self.try_write(i, vec![WriteOp::Delete(key)]) {
            Ok(r) => r,
            Err(e) => panic!("delete on node {i} failed: {e}"),
        }
    }

    pub fn try_write(&mut self, i: usize, ops: Vec<WriteOp>) -> Result<WriteReceipt, WriteError> {
        let t = self.node_time(i);
        let r = self.node_mut(i).write_batch(t, ops);
        self.drain(i);
        r
    }

    /// Uploads a blob on node `i`, in 100 KiB writes.
    pub fn upload_blob(&mut self, i: usize, data: &[u8]) -> BlobRef {
        match self.try_upload_blob(i, data) {
            Ok(b) => b,
            Err(e) => panic!("blob upload on node {i} failed: {e}"),
        }
    }

    /// Uploads a blob on node `i`; a failing disk makes it an error.
    pub fn try_upload_blob(&mut self, i: usize, data: &[u8]) -> Result<BlobRef, BlobError> {
        let node = self.node_mut(i);
        let mut up = node.blob_begin();
        for piece in data.chunks(100 << 10) {
            node.blob_write(&mut up, piece)?;
        }
        node.blob_finish(up)
    }

    /// Node `i`, if it is running.
    pub fn node_mut_if_up(&mut self, i: usize) -> Option<&mut Node<SimStore>> {
        self.nodes.get_mut(i).and_then(|n| n.node.as_mut())
    }

    /// Node `i`'s configuration (also while it is down).
    pub fn node_config(&self, i: usize) -> &NodeConfig {
        &self.nodes[i].cfg
    }

    /// Writes a recording with its blob on node `i`.
    pub fn put_recording(&mut self, i: usize, key: Key, meta: &[u8], audio: &[u8]) -> WriteReceipt {
        let blob = self.upload_blob(i, audio);
        let mut req = put_req(key, labels("recording"), meta);
        req.blob = Some(blob);
        match self.try_write(i, vec![WriteOp::Put(req)]) {
            Ok(r) => r,
            Err(e) => panic!("put on node {i} failed: {e}"),
        }
    }

    pub fn sync_now(&mut self, i: usize) {
        let t = self.node_time(i);
        self.node_mut(i).sync_now(t, None);
        self.drain(i);
    }

    // ----- faults ------------------------------------------------------------

    /// Splits the nodes into groups that cannot reach each other; open
    /// connections across groups are cut.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        for (gi, g) in groups.iter().enumerate() {
            for (hi, h) in groups.iter().enumerate() {
                if gi != hi {
                    for &a in g.iter() {
                        for &b in h.iter() {
                            self.net.block(a, b);
                            self.cut(a, b);
                        }
                    }
                }
            }
        }
    }

    /// Blocks one directed link (asymmetric), cutting the connection.
    pub fn block(&mut self, from: usize, to: usize) {
        self.net.block(from, to);
        self.cut(from, to);
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.net.unblock_all();
    }

    /// Cuts the connection between `a` and `b` (both sides notice).
    pub fn cut(&mut self, a: usize, b: usize) {
        if self.net.disconnect(a, b) {
            for (x, y) in [(a, b), (b, a)] {
                let t = self.node_time(x);
                if let Some(n) = self.nodes[x].node.as_mut() {
                    n.handle_disconnected(t, node_id(y));
                }
                self.drain(x);
            }
        }
    }

    /// Cuts every connection of node `i`.
    pub fn cut_all(&mut self, i: usize) {
        for j in self.net.connections_of(i) {
            self.cut(i, j);
        }
    }

    /// Crashes node `i`: connections drop, unsynced log entries are lost.
    pub fn crash(&mut self, i: usize) {
        let mode = match self.store {
            StoreKind::Mem(_) => CrashMode::LoseUnsynced,
            StoreKind::Disk(_) => CrashMode::Torn {
                seed: self.rng.gen(),
            },
        };
        self.crash_with(i, mode);
    }

    /// Crashes node `i`, choosing what its disk keeps of unsynced writes.
    pub fn crash_with(&mut self, i: usize, mode: CrashMode) {
        self.cut_all(i);
        if let Some(n) = self.nodes[i].node.take() {
            match n.into_storage().crash(mode) {
                Ok(s) => self.nodes[i].parked = Some(s),
                Err(e) => panic!("node {i}'s storage does not reopen after a crash: {e}"),
            }
        }
    }

    /// Restarts a crashed node on its storage.
    pub fn restart(&mut self, i: usize) {
        let storage = match self.nodes[i].parked.take() {
            Some(s) => s,
            None => panic!("node {i} is not crashed"),
        };
        self.start(i, storage);
    }

    /// Crashes node `i` and restarts it on empty storage (new replica id).
    pub fn wipe(&mut self, i: usize) {
        if self.is_up(i) {
            self.crash(i);
        }
        self.nodes[i].parked = None;
        let fresh = self.fresh_store();
        self.start(i, fresh);
    }

    fn fresh_store(&self) -> SimStore {
        match self.store.fresh() {
            Ok(s) => s,
            Err(e) => panic!("fresh storage failed: {e}"),
        }
    }

    /// A copy of node `i`'s storage as it is now (an operator's backup).
    pub fn backup(&mut self, i: usize) -> SimStore {
        match self.node_mut(i).storage_mut().backup() {
            Ok(s) => s,
            Err(e) => panic!("backup of node {i} failed: {e}"),
        }
    }

    /// Stops node `i` and starts it again on a backup taken earlier.
    pub fn restore(&mut self, i: usize, backup: SimStore) {
        if self.is_up(i) {
            self.crash(i);
        }
        self.nodes[i].parked = None;
        self.start(i, backup);
    }

    /// How many times node `i` was opened (started, restarted, wiped,
    /// restored or reconfigured by a restart).
    pub fn restarts(&self, i: usize) -> u64 {
        self.nodes[i].restarts
    }

    /// Replaces node `i`'s configuration (a restart with the new config).
    pub fn reconfigure(&mut self, i: usize, f: impl FnOnce(&mut NodeConfig)) {
        f(&mut self.nodes[i].cfg);
        if self.is_up(i) {
            self.crash_clean(i);
        }
        let storage = match self.nodes[i].parked.take() {
            Some(s) => s,
            None => self.fresh_store(),
        };
        self.start(i, storage);
    }

    /// Replaces node `i`'s peer list while it runs (`Node::set_peers`, no
    /// restart). A node that is down takes the new list when it restarts.
    pub fn set_peers(
        &mut self,
        i: usize,
        peers: Vec<PeerConfig>,
    ) -> Result<PeersChanged, ReconfigureError> {
        let t = self.node_time(i);
        let changed = match self.nodes[i].node.as_mut() {
            Some(n) => n.set_peers(t, peers.clone()),
            None => Ok(PeersChanged::default()),
        };
        // A failed node (a storage error) takes the list when reopened.
        if !matches!(changed, Err(ReconfigureError::Config(_))) {
            self.nodes[i].cfg.peers = peers;
        }
        self.drain(i);
        changed
    }

    /// Stops node `i` without losing anything (a clean shutdown).
    fn crash_clean(&mut self, i: usize) {
        self.cut_all(i);
        if let Some(n) = self.nodes[i].node.take() {
            let mut s = n.into_storage();
            // A storage that failed cannot sync: the shutdown is a crash.
            if s.sync().is_err() {
                s = match s.crash(CrashMode::LoseUnsynced) {
                    Ok(s) => s,
                    Err(e) => panic!("node {i}'s storage does not reopen after a crash: {e}"),
                };
            }
            self.nodes[i].parked = Some(s);
        }
    }

    fn start(&mut self, i: usize, storage: SimStore) {
        let seed = self.rng.gen();
        let t = self.node_time(i);
        let cfg = self.nodes[i].cfg.clone();
        match Node::open(cfg, storage, t, seed) {
            Ok(n) => self.nodes[i].node = Some(n),
            Err(e) => panic!("node {i} failed to reopen: {e}"),
        }
        self.nodes[i].restarts += 1;
        self.drain(i);
    }

    /// Makes node `i`'s log durable (with `explicit_sync`).
    pub fn sync_storage(&mut self, i: usize) {
        let t = self.node_time(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            // A failed sync leaves the durable point where it was; the node
            // keeps not acknowledging past it.
            let _ = n.storage_mut().sync();
            n.handle_durable(t);
        }
        self.drain(i);
    }

    /// Injects raw bytes into node `i` as if `from` had sent them.
    pub fn inject(
        &mut self,
        i: usize,
        from: usize,
        bytes: &[u8],
    ) -> Result<(), recsync_engine::SessionError> {
        let t = self.node_time(i);
        let r = self.node_mut(i).handle_bytes(t, node_id(from), bytes);
        self.drain(i);
        r
    }

    // ----- driving -------------------------------------------------------------

    /// Carries out node `i`'s outputs and collects its events.
    fn drain(&mut self, i: usize) {
        loop {
            let sim = &mut self.nodes[i];
            let Some(node) = sim.node.as_mut() else {
                return;
            };
            let out = node.poll_output();
            let mut events = Vec::new();
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            for e in events {
                hash_event(&mut self.trace, i, &e);
                if self.trace_lines.is_some() {
                    let l = format!("{:>10} n{i} event {e:?}", self.now_ms - EPOCH_MS);
                    self.trace_line(l);
                }
                self.nodes[i].events.push(e);
            }
            let Some(out) = out else { return };
            match out {
                Output::Connect { peer } => self.connect(i, index_of(peer)),
                Output::Transmit { peer, frame } => {
                    let to = index_of(peer);
                    self.trace.update(&self.now_ms.to_le_bytes());
                    self.trace.update(&[i as u8, to as u8]);
                    self.trace.update(&(frame.len() as u64).to_le_bytes());
                    // The frame header's CRC32C covers the payload: its
                    // first bytes stand for all of it (hashing every byte
                    // of every batch and chunk cost more than the rest).
                    self.trace.update(&frame[..frame.len().min(64)]);
                    self.bytes_sent += frame.len() as u64;
                    if self.trace_lines.is_some() {
                        let what = match decode_frame(&frame, FRAME_PAYLOAD_LEN_MAX) {
                            Ok((m, _)) => message_summary(&m),
                            Err(e) => format!("bad frame: {e}"),
                        };
                        let l = format!(
                            "{:>10} n{i} -> n{to} {what} ({} bytes)",
                            self.now_ms - EPOCH_MS,
                            frame.len()
                        );
                        self.trace_line(l);
                    }
                    self.record_sent(i, to, &frame);
                    let now = self.now_ms;
                    self.net.send(&mut self.rng, now, i, to, frame);
                }
                Output::Close { peer } => {
                    let j = index_of(peer);
                    if self.net.disconnect(i, j) {
                        let t = self.node_time(j);
                        if let Some(n) = self.nodes[j].node.as_mut() {
                            n.handle_disconnected(t, node_id(i));
                        }
                        self.drain(j);
                    }
                }
            }
        }
    }

    fn drain_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
    }

    fn record_sent(&mut self, from: usize, to: usize, frame: &[u8]) {
        if let Some(versions) = crate::sent::batch_versions(frame) {
            self.sent.push(SentBatch {
                at_ms: self.now_ms,
                from,
                to,
                frame_bytes: frame.len(),
                versions,
            });
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        let ta = self.node_time(a);
        if b >= self.nodes.len() || !self.is_up(b) || !self.net.reachable(a, b) {
            self.node_mut(a).handle_connect_failed(ta, node_id(b));
            return;
        }
        if !self.net.connect(a, b) {
            // Already connected: the other side's request got there first.
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            let t = self.node_time(x);
            self.node_mut(x).handle_connected(t, node_id(y));
        }
        self.drain(a);
        self.drain(b);
    }

    /// The next moment something happens.
    fn next_event_ms(&self) -> Option<u64> {
        let mut t = self.net.next_delivery_ms();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(timeout) = n.node.as_ref().and_then(|n| n.poll_timeout()) {
                // A node's timer is in its own (skewed) time.
                let real = (timeout as i64 - self.clock_offset_ms[i]).max(0) as u64;
                t = Some(t.map_or(real, |t| t.min(real)));
            }
        }
        t
    }

    /// Runs one step: everything due at the next event time.
    fn step(&mut self, until_ms: u64) -> bool {
        let Some(next) = self.next_event_ms() else {
            return false;
        };
        if next > until_ms {
            return false;
        }
        self.now_ms = self.now_ms.max(next);
        while let Some(p) = self.net.pop_due(self.now_ms) {
            let t = self.node_time(p.to);
            if let Some(n) = self.nodes[p.to].node.as_mut() {
                // Errors close that session only; they are reported as events.
                let _ = n.handle_bytes(t, node_id(p.from), &p.frame);
            }
            self.drain(p.to);
        }
        for i in 0..self.nodes.len() {
            let t = self.node_time(i);
            let due = self.nodes[i]
                .node
                .as_ref()
                .and_then(|n| n.poll_timeout())
                .is_some_and(|d| d <= t);
            if due {
                self.node_mut(i).handle_timeout(t);
                self.drain(i);
            }
        }
        true
    }

    /// Runs until simulated time `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        let mut same_time_steps = 0u32;
        let mut last = self.now_ms;
        while self.step(until_ms) {
            // Traffic that multiplies (a retry storm) would exhaust memory
            // before any bound on time: that is a failure of its own.
            if self.net.in_flight() > RUNAWAY_PACKETS {
                panic!(
                    "runaway traffic: {} packets in flight at {} ms",
                    self.net.in_flight(),
                    self.now_ms
                );
            }
            if self.now_ms == last {
                same_time_steps += 1;
                if same_time_steps >= 100_000 {
                    let stuck: Vec<String> = (0..self.nodes.len())
                        .filter_map(|i| {
                            let n = self.nodes[i].node.as_ref()?;
                            let t = n.poll_timeout()?;
                            (t <= self.node_time(i)).then(|| {
                                let peers: Vec<String> = self.nodes[i]
                                    .cfg
                                    .peers
                                    .iter()
                                    .map(|p| n.peer_debug(&p.node))
                                    .collect();
                                format!(
                                    "node {i} wants a timer at {t}: {} || timers: {} || failure: {:?}",
                                    peers.join(" | "),
                                    n.timer_debug(),
                                    n.failure()
                                )
                            })
                        })
                        .collect();
                    panic!(
                        "livelock: no progress of time at {} ms: {}",
                        self.now_ms,
                        stuck.join("; ")
                    );
                }
            } else {
                same_time_steps = 0;
                last = self.now_ms;
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs for `ms` of simulated time.
    pub fn run_for(&mut self, ms: u64) {
        let t = self.now_ms + ms;
        self.run_until(t);
    }

    /// Whether nothing is in flight and every continuous link is caught up.
    pub fn settled(&self) -> bool {
        self.net.in_flight() == 0
            && self.pending().is_empty()
            && self
                .nodes
                .iter()
                .all(|n| n.node.as_ref().is_none_or(|n| n.staged_versions() == 0))
    }

    /// (node, peer, versions) still pending on continuous links.
    pub fn pending(&self) -> Vec<(usize, usize, u64)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(node) = n.node.as_ref() else {
                continue;
            };
            for p in &n.cfg.peers {
                let continuous = matches!(p.schedule, Schedule::Continuous { .. });
                let j = index_of(p.node);
                if !p.send || !continuous || !self.is_up(j) {
                    continue;
                }
                if let Some(s) = node.peer_status(&p.node) {
                    if s.pending_versions > 0 || !s.connected || s.seeding {
                        out.push((i, j, s.pending_versions));
                    }
                }
            }
        }
        out
    }

    /// Runs until settled, at most `max_ms` of simulated time.
    pub fn run_until_settled(&mut self, max_ms: u64) -> Result<u64, Livelock> {
        let start = self.now_ms;
        let deadline = start + max_ms;
        let mut same_time_steps = 0u32;
        let mut last = self.now_ms;
        loop {
            if self.settled() {
                return Ok(self.now_ms - start);
            }
            if !self.step(deadline) {
                return Err(Livelock {
                    waited_ms: self.now_ms - start,
                    in_flight: self.net.in_flight(),
                    pending: self.pending(),
                });
            }
            if self.now_ms == last {
                same_time_steps += 1;
                assert!(same_time_steps < 100_000, "livelock at {} ms", self.now_ms);
            } else {
                same_time_steps = 0;
                last = self.now_ms;
            }
        }
    }

    /// Like `run_until_settled`, for clusters with `explicit_sync`: makes
    /// every running node's log durable every 20 ms of simulated time
    /// (acknowledgements only leave once durable).
    pub fn run_until_settled_syncing(&mut self, max_ms: u64) -> Result<u64, Livelock> {
        let start = self.now_ms;
        loop {
            for i in 0..self.nodes.len() {
                if self.is_up(i) {
                    self.sync_storage(i);
                }
            }
            if self.settled() {
                return Ok(self.now_ms - start);
            }
            if self.now_ms - start >= max_ms {
                return Err(Livelock {
                    waited_ms: self.now_ms - start,
                    in_flight: self.net.in_flight(),
                    pending: self.pending(),
                });
            }
            self.run_for(20);
        }
    }

    /// Whether the given nodes have identical state digests.
    pub fn digests_equal(&self, nodes: &[usize]) -> bool {
        let mut d = nodes.iter().map(|&i| self.node(i).state_digest());
        let Some(first) = d.next() else { return true };
        d.all(|x| x == first)
    }
}

/// The harness index of a node id.
/// One line about a message, for the readable trace.
fn message_summary(m: &Message) -> String {
    match m {
        Message::Batch(b) => format!(
            "batch {:?} -> {:?} of {}: {}",
            b.prev.pos,
            b.next.pos,
            b.versions.len(),
            b.versions
                .iter()
                .take(4)
                .map(|v| format!("{}#{}", v.key, v.dot.counter))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Message::BlobWant(w) => format!(
            "blob want {:02x}{:02x} from {}{}",
            w.hash[0],
            w.hash[1],
            w.offset,
            if w.restart { " (restart)" } else { "" }
        ),
        Message::BlobChunk(c) => format!(
            "blob chunk {:02x}{:02x} at {} of {} ({} bytes)",
            c.hash[0],
            c.hash[1],
            c.offset,
            c.total_len,
            c.data.len()
        ),
        Message::BlobMissing { hash } => format!("blob missing {:02x}{:02x}", hash[0], hash[1]),
        Message::Hello(h) => {
            // As `ReplicaId`'s `Debug` prints it elsewhere in the trace.
            let short = |r: &recsync_engine::ReplicaId| {
                let s = r.0.simple().to_string();
                s[s.len() - 8..].to_string()
            };
            format!(
                "hello: replica {} log {} receive from {} lost {}",
                short(&h.replica),
                short(&h.log_id),
                match &h.receive {
                    None => "-".to_string(),
                    Some(None) => "the start".to_string(),
                    Some(Some(c)) => format!("{}/{:?}", short(&c.replica), c.pos),
                },
                h.lost_own_counters
                    .iter()
                    .map(|(r, lo, hi)| format!("{}({lo},{hi}]", short(r)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
        other => {
            let s = format!("{other:?}");
            s.chars().take(160).collect()
        }
    }
}

pub fn index_of(id: NodeId) -> usize {
    (id.0.as_u128() - 0xA000) as usize
}

/// Builds a put request.
pub fn put_req(key: Key, labels: Labels, meta: &[u8]) -> PutRequest {
    PutRequest {
        key,
        labels,
        meta: meta.to_vec(),
        blob: None,
    }
}

/// Labels with the given class and default tenant and group.
pub fn labels(class: &str) -> Labels {
    match Labels::parse(class, "default", "default") {
        Ok(l) => l,
        Err(e) => panic!("bad class name {class:?}: {e}"),
    }
}

/// Feeds an event of node `i` to the trace hash: the frequent kinds by
/// their identifying fields (formatting every conflict's versions cost more
/// than the rest of a run), the rare ones as they print.
fn hash_event(h: &mut blake3::Hasher, i: usize, e: &Event) {
    let dot = |h: &mut blake3::Hasher, d: &recsync_engine::Dot| {
        h.update(d.replica.0.as_bytes());
        h.update(&d.counter.to_le_bytes());
    };
    h.update(&[i as u8]);
    match e {
        Event::RemoteApplied { from, key, dot: d } => {
            h.update(b"applied");
            h.update(from.0.as_bytes());
            h.update(key.0.as_bytes());
            dot(h, d);
        }
        Event::Conflict(r) => {
            h.update(b"conflict");
            h.update(r.key.0.as_bytes());
            dot(h, &r.arrived);
            for v in &r.versions {
                dot(h, &v.dot);
            }
            if let Some(w) = &r.winner {
                dot(h, w);
            }
            h.update(format!("{:?}", r.resolution).as_bytes());
        }
        other => {
            h.update(format!("{other:?}").as_bytes());
        }
    }
}
