//! Executes a plan on a cluster: the fault phase (the plan's steps), then
//! the heal phase (links healed, disks fixed, nodes restarted, the original
//! peers restored, everything synced) until the cluster has replicated
//! everything or the liveness bound runs out; then the oracle.

use super::oracle::{key_of, labels_of, Failure, Model, Route};
use super::plan::{Action, DiskFault, Op, Plan, StoreKnobs, CLASSES};
use crate::cluster::{put_req, Cluster, ClusterBuilder, EPOCH_MS};
use crate::net::NetConfig;
use recsync_engine::disk::{CrashMode, SimFaults};
use recsync_engine::seglog::{Durability, LogOptions};
use recsync_engine::{
    ConflictPolicy, Dot, Event, Key, Lsn, Name, NodeConfig, PeerConfig, ReconfigureError, Schedule,
    Storage, VersionVector, Window, WriteError, WriteOp,
};
use std::collections::BTreeMap;

/// How long after the heal everything must have replicated (covers an
/// hourly window and a manual peer, synced every few seconds).
pub const LIVENESS_BOUND_MS: u64 = 2 * 3_600_000;
const DAY_MS: u64 = 24 * 3_600_000;

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub faults: BTreeMap<&'static str, u64>,
    pub writes: u64,
    pub acked: u64,
    pub conflicts: u64,
    /// Tombstones purged, summed over the nodes (0 unless the plan purges).
    pub purged: u64,
    /// Whether the plan purges tombstones.
    pub purging: bool,
    pub bytes: u64,
    /// Simulated time from the heal until everything had replicated.
    pub heal_to_converged_ms: u64,
    pub simulated_ms: u64,
    /// The fault phase alone: simulated ms and real seconds (the speed
    /// figure: the heal's quiet waiting is cheap simulated time).
    pub fault_phase_ms: u64,
    pub fault_phase_real_s: f64,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub trace_hash: [u8; 32],
    pub failure: Option<Failure>,
    pub stats: Stats,
    pub trace: Vec<String>,
}

fn policy(code: u8, nodes: usize) -> ConflictPolicy {
    match code {
        0 => ConflictPolicy::LastWriterWins,
        1 => ConflictPolicy::Priority((0..nodes).rev().map(crate::cluster::node_id).collect()),
        _ => ConflictPolicy::Manual,
    }
}

fn build(plan: &Plan) -> Cluster {
    let k = &plan.knobs;
    let net = NetConfig {
        latency_ms_min: k.latency_ms.0,
        latency_ms_max: k.latency_ms.1,
        reorder: k.reorder,
        drop_probability: k.drop_probability,
        duplicate_probability: k.duplicate_probability,
        wan_bytes_per_s: k.wan_bytes_per_s,
    };
    let policies = k.policies.clone();
    let nodes = k.nodes;
    let batch = k.batch_versions_max;
    let ack = k.ack_timeout_ms;
    let purge = k.purge.is_some();
    let trim_ms = k.purge.unwrap_or(60_000);
    let mut b =
        ClusterBuilder::new(plan.seed, k.nodes)
            .net(net)
            .all_nodes(move |cfg: &mut NodeConfig| {
                for (i, c) in CLASSES.iter().enumerate() {
                    if let Ok(name) = Name::new(c) {
                        cfg.classes.insert(name, policy(policies[i], nodes));
                    }
                }
                cfg.limits.send_batch_versions_max = batch;
                cfg.timing.ack_timeout_ms = ack;
                cfg.timing.reconnect_max_ms = 5_000;
                if purge {
                    cfg.tombstone_purge = true;
                    cfg.timing.trim_interval_ms = trim_ms;
                }
            });
    for l in &k.links {
        b = b.one_way(l.from, l.to).peer(l.from, l.to, |p| {
            p.schedule = match l.schedule {
                0 => Schedule::Continuous {
                    linger_ms: l.linger_ms,
                },
                1 => Schedule::Manual,
                2 => Schedule::Windows {
                    windows: vec![Window::Hourly {
                        start_min: l.window.0,
                        end_min: l.window.1,
                    }],
                    utc_offset_min: 0,
                },
                // Two hours one night a week, in a local time zone.
                4 => Schedule::Windows {
                    windows: vec![Window::Weekly {
                        start_min: (l.window.0 % 7) * 1440 + 60 + l.window.0,
                        end_min: (l.window.0 % 7) * 1440 + 180 + l.window.0,
                    }],
                    utc_offset_min: -300,
                },
                // A nightly window, an hour and a half long, in a local
                // time zone.
                _ => Schedule::Windows {
                    windows: vec![Window::Daily {
                        start_min: 60 + l.window.0,
                        end_min: 150 + l.window.0,
                    }],
                    utc_offset_min: 60,
                },
            };
            if let Some(t) = l.exclude_tenant {
                if let Ok(name) = Name::new(&format!("t{t}")) {
                    p.filter.exclude_tenants.insert(name);
                }
            }
            if let Some(g) = l.exclude_group {
                if let Ok(name) = Name::new(&format!("g{g}")) {
                    p.filter.exclude_groups.insert(name);
                }
            }
            if let Some(x) = l.exclude_class {
                if let Ok(name) = Name::new(CLASSES[x as usize]) {
                    p.filter.exclude_classes.insert(name);
                }
            }
            p.bandwidth_bytes_per_s = l.bandwidth;
        });
    }
    b = match k.store {
        StoreKnobs::MemImmediate => b,
        StoreKnobs::MemExplicit => b.explicit_sync(),
        StoreKnobs::Disk {
            durability,
            segment_size,
            blob_chunk,
        } => b.on_disk(LogOptions {
            segment_size,
            durability: match durability {
                0 => Durability::Always,
                1 => Durability::Group,
                _ => Durability::Periodic,
            },
            blob_chunk,
            compact_dead_fraction: 0.5,
        }),
    };
    b.build()
}

/// Runs a plan. With `trace`, readable trace lines are printed as they
/// happen. A panic in the engine or the harness (a livelock the harness
/// detects, say) is a failure of its own, not a crash of the caller.
pub fn run(plan: &Plan, trace: bool) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_inner(plan, trace))) {
        Ok(out) => out,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Outcome {
                trace_hash: [0; 32],
                failure: Some(Failure {
                    invariant: "no panic",
                    detail: msg.chars().take(2_000).collect(),
                }),
                stats: Stats::default(),
                trace: Vec::new(),
            }
        }
    }
}

fn run_inner(plan: &Plan, trace: bool) -> Outcome {
    let mut r = Runner::new(plan, trace);
    let failure = r.go().err();
    let trace_hash = r.c.trace_hash();
    let stats = r.stats(failure.is_none());
    Outcome {
        trace_hash,
        failure,
        stats,
        trace: r.c.take_trace(),
    }
}

/// What one node would still have seen after a restart (see
/// `Runner::refresh_durable_view`).
struct DurableView {
    /// The node's open count when the view was started.
    opened: u64,
    /// The last log entry taken in.
    upto: Lsn,
    seen: BTreeMap<Key, VersionVector>,
}

struct Runner<'p> {
    plan: &'p Plan,
    c: Cluster,
    model: Model,
    /// Per node: written but not yet durable (lsn, dots).
    pending: Vec<Vec<(Lsn, Vec<Dot>)>>,
    original: Vec<NodeConfig>,
    /// Per node: its durable view, kept between wipes of other nodes.
    durable_views: Vec<Option<DurableView>>,
    /// Per node: whether its peers were last changed live (the heal puts
    /// the original list back the same way).
    reconfigured_live: Vec<bool>,
    faults: BTreeMap<&'static str, u64>,
    writes: u64,
    heal_to_converged_ms: u64,
    start_ms: u64,
    fault_phase_ms: u64,
    fault_phase_real_s: f64,
    /// A dot to follow in the trace (`RECSYNC_SIM_WATCH=abcd1234#7`).
    watch: Option<String>,
    watched: Vec<usize>,
}

impl<'p> Runner<'p> {
    fn new(plan: &'p Plan, trace: bool) -> Self {
        let mut c = build(plan);
        if trace {
            c.stream_trace();
        }
        c.note(|| format!("seed {} knobs {:?}", plan.seed, plan.knobs));
        let original = (0..c.len()).map(|i| c.node(i).config().clone()).collect();
        let start_ms = c.now_ms();
        Self {
            reconfigured_live: vec![false; c.len()],
            durable_views: (0..c.len()).map(|_| None).collect(),
            model: Model::new(&plan.knobs),
            pending: vec![Vec::new(); c.len()],
            c,
            plan,
            original,
            faults: BTreeMap::new(),
            writes: 0,
            heal_to_converged_ms: 0,
            start_ms,
            fault_phase_ms: 0,
            fault_phase_real_s: 0.0,
            watch: std::env::var("RECSYNC_SIM_WATCH").ok(),
            watched: Vec::new(),
        }
    }

    /// Notes in the trace when the watched dot's holders change.
    fn watch_step(&mut self) {
        let Some(w) = self.watch.clone() else { return };
        let mut holders = self.holders_of(&w);
        let acked = self
            .model
            .written
            .iter()
            .any(|(d, x)| x.acked && super::oracle::short(d) == w);
        holders.push(if acked { 1000 } else { 2000 });
        if holders != self.watched {
            let h = holders.clone();
            let key = self
                .model
                .written
                .iter()
                .find(|(d, _)| super::oracle::short(d) == w)
                .map(|(_, x)| x.version.key);
            let states: Vec<String> = (0..self.c.len())
                .filter(|j| self.c.is_up(*j))
                .map(|j| {
                    let st = key.and_then(|k| self.c.node(j).key_state(&k));
                    format!(
                        "n{j}: {:?}",
                        st.map(|s| (
                            s.siblings.iter().map(|x| x.version.dot).collect::<Vec<_>>(),
                            &s.seen
                        ))
                    )
                })
                .collect();
            self.c.note(|| {
                format!(
                    "WATCH {w}: held by {h:?} (1000: acked) {}",
                    states.join(" ")
                )
            });
            self.watched = holders;
        }
    }

    /// The running nodes that have seen the dot named `w` ("abcd1234#7").
    fn holders_of(&self, w: &str) -> Vec<usize> {
        let Some(d) = self
            .model
            .written
            .keys()
            .find(|d| super::oracle::short(d) == w)
        else {
            return Vec::new();
        };
        let key = self.model.written[d].version.key;
        (0..self.c.len())
            .filter(|j| {
                self.c.is_up(*j)
                    && self
                        .c
                        .node(*j)
                        .key_state(&key)
                        .is_some_and(|s| s.has_seen(d))
            })
            .collect()
    }

    fn stats(&self, converged: bool) -> Stats {
        let conflicts = (0..self.c.len())
            .map(|i| {
                self.c
                    .events(i)
                    .iter()
                    .filter(|e| matches!(e, Event::Conflict(_)))
                    .count() as u64
            })
            .sum();
        let purged = (0..self.c.len())
            .map(|i| {
                self.c
                    .events(i)
                    .iter()
                    .map(|e| match e {
                        Event::TombstonesPurged { keys } => keys.len() as u64,
                        _ => 0,
                    })
                    .sum::<u64>()
            })
            .sum();
        Stats {
            purged,
            purging: self.plan.knobs.purge.is_some(),
            faults: self.faults.clone(),
            writes: self.writes,
            acked: self.model.written.values().filter(|w| w.acked).count() as u64,
            conflicts,
            bytes: self.c.bytes_sent,
            heal_to_converged_ms: if converged {
                self.heal_to_converged_ms
            } else {
                0
            },
            simulated_ms: self.c.now_ms() - self.start_ms,
            fault_phase_ms: self.fault_phase_ms,
            fault_phase_real_s: self.fault_phase_real_s,
        }
    }

    fn go(&mut self) -> Result<(), Failure> {
        let started = std::time::Instant::now();
        for (index, step) in self.plan.steps.iter().enumerate() {
            self.c.run_until(self.start_ms + step.at_ms);
            // The plan follows from the seed: the trace hashes the step's
            // place in it, and spells it out only when printed.
            self.c
                .note_step(index as u64, || format!("step {:?}", step.action));
            if let Some(kind) = step.action.fault_kind() {
                *self.faults.entry(kind).or_default() += 1;
            }
            self.apply(&step.action)?;
            self.refresh_acked();
            self.watch_step();
        }
        self.fault_phase_ms = self.c.now_ms() - self.start_ms;
        self.fault_phase_real_s = started.elapsed().as_secs_f64();
        self.heal()?;
        self.purge_settle()?;
        self.model.note_purges(&self.c);
        self.model.check(&self.c)
    }

    fn clear_disk_faults(&mut self, i: usize) {
        if let Some(n) = self.c.node_mut_if_up(i) {
            if let Some(d) = n.storage_mut().disk_mut() {
                d.fs.set_faults(SimFaults::default());
            }
        }
    }

    /// Before a restart: acknowledges what is durable, forgets the rest.
    fn forget_pending(&mut self, i: usize) {
        self.refresh_acked();
        self.lose_pending(i);
    }

    /// A crash or restart of node `i` may take away its writes not yet
    /// durable there: they are never acknowledged, and node `i` stops being
    /// a source of them. It may get them back only as any other node would,
    /// along the links that carry their class from a node that still holds
    /// them (the echo of lost ranges); a one-way link or a filter may leave
    /// it none. If it kept them after all, it holds them, and they spread
    /// from it as from any holder.
    fn lose_pending(&mut self, i: usize) {
        for (_, dots) in self.pending[i].drain(..) {
            for d in dots {
                if let Some(w) = self.model.written.get_mut(&d) {
                    w.sources.remove(i);
                }
            }
        }
    }

    /// Marks writes acknowledged once durable at their origin.
    fn refresh_acked(&mut self) {
        self.model.note_purges(&self.c);
        for i in 0..self.c.len() {
            if !self.c.is_up(i) {
                continue;
            }
            let durable = self.c.node(i).storage().durable_lsn();
            let p = &mut self.pending[i];
            let done = p.iter().take_while(|(lsn, _)| *lsn <= durable).count();
            for (_, dots) in p.drain(..done) {
                for d in dots {
                    if let Some(w) = self.model.written.get_mut(&d) {
                        w.acked = true;
                    }
                }
            }
        }
    }

    fn apply(&mut self, a: &Action) -> Result<(), Failure> {
        let c = &mut self.c;
        match a {
            Action::Write { node, ops } => return self.write(*node, ops),
            Action::Sync { node } => c.sync_storage(*node),
            Action::SyncNow { node } => {
                if c.is_up(*node) {
                    c.sync_now(*node)
                }
            }
            Action::Partition { left } => {
                let right: Vec<usize> = (0..c.len()).filter(|i| !left.contains(i)).collect();
                c.partition(&[left, &right]);
            }
            Action::Block { from, to } => c.block(*from, *to),
            Action::Heal => c.heal(),
            Action::Cut { a, b } => c.cut(*a, *b),
            Action::Crash { node, torn } => {
                if c.is_up(*node) {
                    self.clear_disk_faults(*node);
                    let mode = if *torn {
                        CrashMode::Torn {
                            seed: self.plan.seed ^ self.c.now_ms(),
                        }
                    } else {
                        CrashMode::LoseUnsynced
                    };
                    self.c.crash_with(*node, mode);
                    self.lose_pending(*node);
                }
            }
            Action::Restart { node } => {
                if !c.is_up(*node) {
                    c.restart(*node);
                }
            }
            Action::Wipe { node } => {
                self.excuse_wiped(*node);
                self.clear_disk_faults(*node);
                self.c.wipe(*node);
                self.pending[*node].clear();
            }
            Action::Skew { node, offset_ms } => c.set_clock_offset(*node, *offset_ms),
            Action::Disk { node, fault } => {
                if let Some(n) = c.node_mut_if_up(*node) {
                    if let Some(d) = n.storage_mut().disk_mut() {
                        let faults = match fault {
                            DiskFault::FailWrites(k) => SimFaults {
                                failing_writes: *k,
                                ..Default::default()
                            },
                            DiskFault::FailSyncs(k) => SimFaults {
                                failing_syncs: *k,
                                ..Default::default()
                            },
                            DiskFault::Full(extra) => SimFaults {
                                capacity: Some(d.fs.used_bytes() + extra),
                                ..Default::default()
                            },
                            DiskFault::CorruptReads(k) => SimFaults {
                                corrupt_reads: *k,
                                ..Default::default()
                            },
                            DiskFault::ShortReads(k) => SimFaults {
                                short_reads: *k,
                                ..Default::default()
                            },
                        };
                        d.fs.set_faults(faults);
                    }
                }
            }
            Action::TrimCompact { node } => {
                if let Some(n) = c.node_mut_if_up(*node) {
                    // Failures here fail the node's storage, as they would
                    // in production; the heal restarts it.
                    let _ = n.trim_log();
                    if let Some(d) = n.storage_mut().disk_mut() {
                        let _ = d.log.compact();
                    }
                }
            }
            Action::EditPeer { a: x, b: y, what } => {
                let (x, id) = (*x, crate::cluster::node_id(*y));
                let original = self.original[x]
                    .peers
                    .iter()
                    .find(|p| p.node == id)
                    .cloned();
                let mut peers = self.c.node_config(x).peers.clone();
                let (Some(original), Some(p)) = (original, peers.iter_mut().find(|p| p.node == id))
                else {
                    // Not linked now: nothing to edit.
                    return Ok(());
                };
                if *what == 0 {
                    p.bandwidth_bytes_per_s =
                        if p.bandwidth_bytes_per_s == original.bandwidth_bytes_per_s {
                            match original.bandwidth_bytes_per_s {
                                Some(_) => None,
                                None => Some(200_000),
                            }
                        } else {
                            original.bandwidth_bytes_per_s
                        };
                } else {
                    p.schedule = if p.schedule == original.schedule {
                        Schedule::Continuous { linger_ms: 500 }
                    } else {
                        original.schedule.clone()
                    };
                }
                self.set_peers_live(x, peers);
            }
            Action::TogglePeer {
                a: first,
                b: second,
            }
            | Action::SetPeers {
                a: first,
                b: second,
            } => {
                let live = matches!(a, Action::SetPeers { .. });
                let (a, b) = (*first, *second);
                let linked = self
                    .c
                    .node_config(a)
                    .peers
                    .iter()
                    .any(|p| p.node == crate::cluster::node_id(b))
                    || self
                        .c
                        .node_config(b)
                        .peers
                        .iter()
                        .any(|p| p.node == crate::cluster::node_id(a));
                for (x, y) in [(a, b), (b, a)] {
                    let id = crate::cluster::node_id(y);
                    let mut peers = self.c.node_config(x).peers.clone();
                    if linked {
                        peers.retain(|p| p.node != id);
                    } else if let Some(p) = self.original[x].peers.iter().find(|p| p.node == id) {
                        peers.push(p.clone());
                    }
                    self.reconfigured_live[x] = live;
                    if live {
                        self.set_peers_live(x, peers);
                        continue;
                    }
                    self.clear_disk_faults(x);
                    // A restart: what is not durable by now is not promised
                    // (the shutdown's sync may fail on a failed disk).
                    self.forget_pending(x);
                    self.c.reconfigure(x, |cfg| cfg.peers = peers);
                }
            }
        }
        Ok(())
    }

    /// Replaces node `x`'s peer list live (`Node::set_peers`). A storage
    /// failure while reading the log fails the node, as any would; the
    /// heal restarts it. The simulator only builds valid lists.
    fn set_peers_live(&mut self, x: usize, peers: Vec<PeerConfig>) {
        self.reconfigured_live[x] = true;
        if let Err(ReconfigureError::Config(e)) = self.c.set_peers(x, peers) {
            panic!("node {x}: the simulator built a bad peer list: {e}");
        }
    }

    /// Writes that lived durably only on a node being wiped may be gone:
    /// a version is excused unless another running node holds it durably,
    /// itself or through a successor (a crashed node's disk counts as lost
    /// here, which only excuses more). From then on every version spreads
    /// from those holders (and its other sources), no longer from node i.
    fn excuse_wiped(&mut self, i: usize) {
        let up: Vec<usize> = (0..self.c.len())
            .filter(|j| *j != i && self.c.is_up(*j))
            .collect();
        for j in &up {
            self.refresh_durable_view(*j);
        }
        // Per key, the vectors of the nodes that hold it.
        let mut per_key: BTreeMap<Key, Vec<(usize, &VersionVector)>> = BTreeMap::new();
        for j in up {
            let Some(view) = &self.durable_views[j] else {
                continue;
            };
            for (key, vv) in &view.seen {
                per_key.entry(*key).or_default().push((j, vv));
            }
        }
        for w in self.model.written.values_mut() {
            let (key, dot) = (&w.version.key, &w.version.dot);
            w.sources.remove(i);
            let mut held_elsewhere = false;
            for (j, vv) in per_key.get(key).into_iter().flatten() {
                if vv.covers(dot) {
                    w.sources.insert(*j);
                    held_elsewhere = true;
                }
            }
            if w.acked && !held_elsewhere {
                w.excused = true;
            }
        }
    }

    /// Brings node `j`'s durable view up to date: what it would still
    /// have seen after a restart, per key (the versions of its durable log
    /// entries and what they supersede). A successor the node applied but
    /// has not made durable does not count (a crash or restart may take it
    /// away with what it superseded). Durable entries stay until the node
    /// reopens (trimming releases only entries a durable successor
    /// covers), so the view grows from where it stood and starts over when
    /// the node was reopened.
    fn refresh_durable_view(&mut self, j: usize) {
        let opened = self.c.restarts(j);
        let s = self.c.node(j).storage();
        let durable = s.durable_lsn();
        let view = match self.durable_views[j].take() {
            Some(v) if v.opened == opened => v,
            _ => DurableView {
                opened,
                upto: 0,
                seen: BTreeMap::new(),
            },
        };
        let DurableView {
            opened,
            mut upto,
            mut seen,
        } = view;
        let from = (upto + 1).max(s.first_retained_lsn());
        // A read error leaves what was read so far; the rest is read at
        // the next refresh.
        let _partial_on_error = s.visit(from, &mut |lsn, body| {
            if lsn > durable {
                return false;
            }
            for v in body.versions() {
                let vv = seen.entry(v.key).or_default();
                vv.join(&v.context);
                vv.add(&v.dot);
            }
            upto = lsn;
            true
        });
        self.durable_views[j] = Some(DurableView { opened, upto, seen });
    }

    fn write(&mut self, i: usize, ops: &[Op]) -> Result<(), Failure> {
        if !self.c.is_up(i) {
            return Ok(());
        }
        let mut write_ops = Vec::new();
        let mut keys = Vec::new();
        for op in ops {
            let (k, key) = match op {
                Op::Put { key } | Op::Delete { key } | Op::Recording { key, .. } => {
                    (*key, key_of(*key))
                }
            };
            if keys.contains(&key) {
                continue;
            }
            let live = self
                .c
                .node(i)
                .get(&key)
                .is_some_and(|o| o.siblings.iter().any(|v| !v.body.is_tombstone()));
            let meta = format!("{}/{i}/{}", self.plan.seed, self.writes);
            let labels = labels_of(k);
            match op {
                Op::Delete { .. } if live => write_ops.push(WriteOp::Delete(key)),
                Op::Recording { len, .. } => {
                    // Byte b is (b ^ writes ^ seed) as u8: a 256-byte
                    // period, copied rather than computed byte by byte.
                    let x = (self.writes ^ self.plan.seed) as u8;
                    let period: [u8; 256] = std::array::from_fn(|b| b as u8 ^ x);
                    let len = *len as usize;
                    let mut audio = Vec::with_capacity(len);
                    while audio.len() < len {
                        let n = (len - audio.len()).min(period.len());
                        audio.extend_from_slice(&period[..n]);
                    }
                    let blob = match self.c.try_upload_blob(i, &audio) {
                        Ok(b) => b,
                        Err(_) => return Ok(()), // a failed disk refuses it
                    };
                    let mut req = put_req(key, labels, meta.as_bytes());
                    req.blob = Some(blob);
                    write_ops.push(WriteOp::Put(req));
                }
                _ => write_ops.push(WriteOp::Put(put_req(key, labels, meta.as_bytes()))),
            }
            keys.push(key);
        }
        self.writes += 1;
        let receipt = match self.c.try_write(i, write_ops) {
            Ok(r) => r,
            // The disk failed under the entry: it may or may not survive
            // the restart. Recorded as written but never durable at its
            // origin, so the origin is no source of it; if it survives, it
            // spreads from whoever holds it like any other.
            Err(WriteError::Unconfirmed { versions, .. }) => {
                let now = self.c.now_ms() - EPOCH_MS;
                for v in versions {
                    let dot = v.dot;
                    self.model.record(i, v, now)?;
                    if let Some(w) = self.model.written.get_mut(&dot) {
                        w.sources.remove(i);
                    }
                }
                return Ok(());
            }
            Err(_) => return Ok(()), // refused (a failed disk): nothing was written
        };
        let now = self.c.now_ms() - EPOCH_MS;
        for (key, dot) in keys.iter().zip(&receipt.dots) {
            let version = self
                .c
                .node(i)
                .key_state(key)
                .and_then(|s| s.siblings.iter().find(|s| s.version.dot == *dot))
                .map(|s| s.version.clone());
            if let Some(v) = version {
                self.model.record(i, v, now)?;
            }
        }
        self.pending[i].push((receipt.lsn, receipt.dots));
        Ok(())
    }

    /// Nothing in flight, every continuous link caught up, and no version
    /// waits for a blob that some node holds whole and can pass on to it
    /// (a recording whose only blob was on a wiped node waits forever,
    /// rightly). A node fetches a blob only from the peers it receives
    /// from, so a holder counts only if the links that carry recordings
    /// lead from it to the waiting node: a blob that survives only
    /// downstream of a one-way link never comes back up it.
    fn quiet(&self) -> bool {
        let c = &self.c;
        if c.net.in_flight() != 0 || !c.pending().is_empty() {
            return false;
        }
        (0..c.len()).filter(|i| c.is_up(*i)).all(|i| {
            c.node(i).staged_blobs().iter().all(|h| {
                !(0..c.len()).any(|j| {
                    c.is_up(j)
                        && c.node(j).has_blob(h)
                        && self.model.reach([j], self.blob_class(h)).contains(&i)
                })
            })
        })
    }

    /// Where the versions that name a blob (recordings) may go.
    fn blob_class(&self, hash: &[u8; 32]) -> Route {
        self.model
            .written
            .values()
            .find(|w| {
                matches!(&w.version.body,
                    recsync_engine::Body::Live { blob: Some(b), .. } if b.hash == *hash)
            })
            .map_or(
                Route {
                    class: 3,
                    tenant: u8::MAX,
                    group: u8::MAX,
                },
                |w| Route::of(&w.version.labels),
            )
    }

    /// Keys whose frontier is a lone tombstone on some node and empty
    /// (purged) or a lone tombstone on every other: what purging owes.
    fn purge_owed(&self) -> Vec<Key> {
        let c = &self.c;
        let up: Vec<usize> = (0..c.len()).filter(|i| c.is_up(*i)).collect();
        self.model
            .by_key
            .keys()
            .filter(|k| {
                let states: Vec<_> = up.iter().map(|&i| c.node(i).key_state(k)).collect();
                states.iter().any(|s| s.is_some())
                    && states.iter().all(|s| {
                        s.is_none_or(|s| {
                            s.siblings.len() == 1 && s.siblings[0].version.body.is_tombstone()
                        })
                    })
            })
            .copied()
            .collect()
    }

    /// Purge plans, after the heal: every tombstone that stands alone
    /// everywhere is purged everywhere within the bound (liveness), unless
    /// a version waits for a blob nobody can send (purging then waits).
    /// The first few keys purged are written again at once on the node
    /// that purged them, while other nodes may still hold the tombstone
    /// (the arrival rule's case); then everything must replicate again.
    fn purge_settle(&mut self) -> Result<(), Failure> {
        const RECREATED_MAX: usize = 3;
        let Some(interval) = self.plan.knobs.purge else {
            return Ok(());
        };
        let deadline = self.c.now_ms() + self.replication_bound().max(100 * interval);
        let mut round = 0u64;
        let mut seen_events: Vec<usize> =
            (0..self.c.len()).map(|i| self.c.events(i).len()).collect();
        let mut recreated = 0usize;
        loop {
            // Write a freshly purged key again on the node that purged it.
            for (j, seen) in seen_events.iter_mut().enumerate() {
                let new: Vec<Key> = self.c.events(j)[*seen..]
                    .iter()
                    .filter_map(|e| match e {
                        Event::TombstonesPurged { keys } => Some(keys.iter().map(|(k, _)| *k)),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                *seen = self.c.events(j).len();
                for k in new {
                    let Some(key) = workload_key(&k) else {
                        continue;
                    };
                    if recreated < RECREATED_MAX
                        && self.c.is_up(j)
                        && self.c.node(j).key_state(&k).is_none()
                    {
                        recreated += 1;
                        self.c.note(|| format!("n{j} writes purged key {k} again"));
                        self.write(j, &[Op::Put { key }])?;
                    }
                }
            }
            let owed = self.purge_owed();
            if owed.is_empty() && self.quiet() && self.model.missing(&self.c).is_none() {
                return Ok(());
            }
            let staged =
                (0..self.c.len()).any(|i| self.c.is_up(i) && self.c.node(i).staged_versions() > 0);
            if owed.is_empty() || staged {
                if staged {
                    self.c
                        .note(|| "purge waits: versions stay staged".to_string());
                }
                // Nothing (more) to purge: what was written again must
                // still replicate.
                if self.quiet() && self.model.missing(&self.c).is_none() {
                    return Ok(());
                }
            }
            if self.c.now_ms() >= deadline {
                for i in 0..self.c.len() {
                    if !self.c.is_up(i) {
                        continue;
                    }
                    let st = self.c.node(i).purge_status();
                    self.c.note(|| format!("n{i} purge: {st:?}"));
                    for j in (0..self.c.len()).filter(|j| *j != i) {
                        let d = self.c.node(i).peer_debug(&crate::cluster::node_id(j));
                        self.c.note(|| format!("n{i} -> n{j}: {d}"));
                    }
                }
                let detail = match (owed.first(), self.model.missing(&self.c)) {
                    (Some(k), _) => format!(
                        "{} keys stand as lone tombstones after the heal, e.g. {k}",
                        owed.len()
                    ),
                    (None, Some(m)) => m,
                    (None, None) => "the network never went quiet".into(),
                };
                return Err(Failure {
                    invariant: "tombstone purge liveness",
                    detail,
                });
            }
            for i in 0..self.c.len() {
                self.c.sync_storage(i);
                if round.is_multiple_of(5) {
                    self.c.sync_now(i);
                }
            }
            round += 1;
            self.c.run_for(interval);
            self.refresh_acked();
            self.watch_step();
        }
    }

    /// How long replication may take after the heal: a fixed bound plus,
    /// since a write may wait for the next window of every windowed link
    /// on its way (a weekly window may just have closed when it arrives,
    /// and it may then wait for the next link's), one period of each.
    fn replication_bound(&self) -> u64 {
        LIVENESS_BOUND_MS
            + self
                .plan
                .knobs
                .links
                .iter()
                .map(|l| match l.schedule {
                    2 => DAY_MS / 24,
                    3 => DAY_MS,
                    4 => 7 * DAY_MS,
                    _ => 0,
                })
                .sum::<u64>()
    }

    /// Everything back to normal, then run until replicated or the bound.
    fn heal(&mut self) -> Result<(), Failure> {
        self.c.note(|| "heal".to_string());
        self.c.heal();
        for i in 0..self.c.len() {
            self.clear_disk_faults(i);
            if !self.c.is_up(i) {
                self.c.restart(i);
            } else if self.c.node(i).failure().is_some() || self.c.node(i).storage().failed() {
                // A node whose disk failed is restarted, as an operator or
                // a supervisor would. The node may not know yet: a failed
                // sync is seen by the driver that ran it (the node learns at
                // its next write), and the log refuses writes from then on.
                self.c.crash_with(i, CrashMode::LoseUnsynced);
                self.lose_pending(i);
                self.c.restart(i);
            }
            if self.c.node(i).config().peers != self.original[i].peers {
                let peers = self.original[i].peers.clone();
                if self.reconfigured_live[i] {
                    self.set_peers_live(i, peers);
                } else {
                    self.forget_pending(i);
                    self.c.reconfigure(i, |cfg| cfg.peers = peers);
                }
            }
        }
        self.refresh_acked();
        self.watch_step();
        let healed_at = self.c.now_ms();
        let bound = self.replication_bound();
        let deadline = healed_at + bound;
        let mut round = 0u64;
        loop {
            for i in 0..self.c.len() {
                self.c.sync_storage(i);
                if round.is_multiple_of(5) {
                    self.c.sync_now(i);
                }
            }
            self.refresh_acked();
            if self.quiet() && self.model.missing(&self.c).is_none() {
                break;
            }
            if self.c.now_ms() >= deadline {
                // The state of every link and blob transfer, for --trace.
                let up: Vec<usize> = (0..self.c.len()).filter(|i| self.c.is_up(*i)).collect();
                for i in up {
                    let blobs = self.c.node(i).blob_debug();
                    self.c.note(|| format!("n{i} blobs: {blobs}"));
                    for j in (0..self.c.len()).filter(|j| *j != i) {
                        let d = self.c.node(i).peer_debug(&crate::cluster::node_id(j));
                        self.c.note(|| format!("n{i} -> n{j}: {d}"));
                    }
                }
                let what = self
                    .model
                    .missing(&self.c)
                    .unwrap_or_else(|| "the network never went quiet".into());
                return Err(Failure {
                    invariant: "liveness (replicated within the bound after the heal)",
                    detail: format!("after {} s: {what}", bound / 1000),
                });
            }
            // Quiet network: only windows or retry timers are left to wait
            // for; step a minute at a time.
            let step = if self.c.net.in_flight() == 0 && round > 60 {
                60_000
            } else {
                1_000
            };
            self.c.run_for(step);
            self.watch_step();
            round += 1;
        }
        self.heal_to_converged_ms = self.c.now_ms() - healed_at;
        // Recordings: every standing version's blob is readable.
        for i in 0..self.c.len() {
            let node = self.c.node(i);
            for (key, st) in node.keys() {
                for s in &st.siblings {
                    if let recsync_engine::Body::Live { blob: Some(b), .. } = &s.version.body {
                        if let Err(e) = node.read_blob(&b.hash, 0, 1) {
                            if b.len_bytes > 0 {
                                return Err(Failure {
                                    invariant: "recordings complete",
                                    detail: format!("node {i}: key {key}: blob unreadable: {e}"),
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The workload's number of a key (see `oracle::key_of`), for a plain key
/// (not a recording's).
fn workload_key(k: &Key) -> Option<u32> {
    let n = k.0.as_u128().checked_sub(0x5157_0000_0000)?;
    let n = u32::try_from(n).ok()?;
    (n & 0x1_0000 == 0).then_some(n)
}
