//! A simulation run as data: the knobs (cluster shape, network, storage,
//! workload and fault mix) and the timed steps (writes and faults), all
//! drawn from one seed. Keeping the inputs as a plan is what makes a run
//! replayable from a file and shrinkable: the runner only executes plans.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Classes of the simulated workload, with what they stand for.
pub const CLASSES: &[&str] = &["user", "group", "setting", "recording", "log"];
/// Tenants and groups of the workload's keys (`t0`.., `g0`..).
pub const TENANTS: u8 = 3;
pub const GROUPS: u8 = 3;

/// How the nodes are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topology {
    Mesh,
    Ring,
    Chain,
    Star,
    /// A chain where every link is one-way (0 -> 1 -> 2 ...).
    OneWayChain,
}

/// One link's settings (from `from` to `to`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkKnobs {
    pub from: usize,
    pub to: usize,
    /// 0 continuous, 1 manual, 2 hourly window, 3 daily window, 4 weekly
    /// window.
    pub schedule: u8,
    pub linger_ms: u64,
    /// Minutes past the hour of an hourly window.
    pub window: (u32, u32),
    /// A class this link never carries.
    pub exclude_class: Option<u8>,
    /// A tenant (`t<n>`) this link never carries.
    #[serde(default)]
    pub exclude_tenant: Option<u8>,
    /// A group (`g<n>`) this link never carries.
    #[serde(default)]
    pub exclude_group: Option<u8>,
    pub bandwidth: Option<u64>,
}

/// Storage of the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreKnobs {
    MemImmediate,
    MemExplicit,
    /// Segment log on a simulated disk: durability 0 always, 1 group,
    /// 2 periodic; sizes in bytes.
    Disk {
        durability: u8,
        segment_size: u64,
        blob_chunk: usize,
    },
}

/// Everything drawn once per run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    pub nodes: usize,
    pub topology: Topology,
    pub links: Vec<LinkKnobs>,
    /// Conflict policy per class index: 0 lww, 1 priority, 2 manual.
    pub policies: Vec<u8>,
    pub latency_ms: (u64, u64),
    pub reorder: bool,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// A WAN bandwidth on every link direction (bytes per second).
    #[serde(default)]
    pub wan_bytes_per_s: Option<u64>,
    pub store: StoreKnobs,
    pub batch_versions_max: usize,
    pub ack_timeout_ms: u64,
    /// Simulated length of the fault phase.
    pub fault_phase_ms: u64,
    pub keys: u32,
    /// Tombstone purge on every node, with this trim (and purge) interval
    /// in ms: then the links are a two-way, unfiltered mesh, and nothing
    /// changes the membership (no wipes, no peers removed).
    #[serde(default)]
    pub purge: Option<u64>,
}

/// A write in a plan; keys are small integers, each with a fixed class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: u32,
    },
    /// Turns into a put if the node sees no live value.
    Delete {
        key: u32,
    },
    /// A recording with a blob of `len` bytes.
    Recording {
        key: u32,
        len: u32,
    },
}

/// A disk fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskFault {
    FailWrites(u32),
    FailSyncs(u32),
    /// Capacity set to what is used now plus this many bytes.
    Full(u64),
    /// The next reads return a flipped bit (checksums must catch it).
    CorruptReads(u32),
    /// The next reads fail short.
    ShortReads(u32),
}

/// What happens at one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Write {
        node: usize,
        ops: Vec<Op>,
    },
    /// The driver's periodic sync of a node's storage.
    Sync {
        node: usize,
    },
    SyncNow {
        node: usize,
    },
    Partition {
        left: Vec<usize>,
    },
    Block {
        from: usize,
        to: usize,
    },
    Heal,
    Cut {
        a: usize,
        b: usize,
    },
    Crash {
        node: usize,
        torn: bool,
    },
    Restart {
        node: usize,
    },
    Wipe {
        node: usize,
    },
    Skew {
        node: usize,
        offset_ms: i64,
    },
    Disk {
        node: usize,
        fault: DiskFault,
    },
    TrimCompact {
        node: usize,
    },
    /// Removes the link between two nodes (both configs), or puts it back,
    /// by restarting both with the new configuration.
    TogglePeer {
        a: usize,
        b: usize,
    },
    /// The same change made live (`Node::set_peers`), with no restart.
    SetPeers {
        a: usize,
        b: usize,
    },
    /// Edits node a's settings for peer b live, or puts the original back:
    /// `what` 0 toggles a bandwidth cap, 1 the schedule (continuous with a
    /// half-second linger instead of the original).
    EditPeer {
        a: usize,
        b: usize,
        what: u8,
    },
}

impl Action {
    /// The fault kind, for the summary (`None` for workload steps).
    pub fn fault_kind(&self) -> Option<&'static str> {
        Some(match self {
            Action::Partition { .. } => "partition",
            Action::Block { .. } => "asymmetric block",
            Action::Cut { .. } => "connection cut",
            Action::Crash { torn: true, .. } => "crash (torn disk)",
            Action::Crash { .. } => "crash",
            Action::Wipe { .. } => "wipe + reseed",
            Action::Skew { .. } => "clock skew",
            Action::Disk {
                fault: DiskFault::FailWrites(_),
                ..
            } => "disk write error",
            Action::Disk {
                fault: DiskFault::FailSyncs(_),
                ..
            } => "disk fsync error",
            Action::Disk {
                fault: DiskFault::Full(_),
                ..
            } => "disk full",
            Action::Disk {
                fault: DiskFault::CorruptReads(_),
                ..
            } => "disk read corruption",
            Action::Disk {
                fault: DiskFault::ShortReads(_),
                ..
            } => "disk short read",
            Action::TogglePeer { .. } => "peer removed/added",
            Action::SetPeers { .. } => "peer removed/added live",
            Action::EditPeer { .. } => "peer edited live",
            _ => return None,
        })
    }

    /// The nodes a step names.
    pub fn nodes(&self) -> Vec<usize> {
        match self {
            Action::Write { node, .. }
            | Action::Sync { node }
            | Action::SyncNow { node }
            | Action::Crash { node, .. }
            | Action::Restart { node }
            | Action::Wipe { node }
            | Action::Skew { node, .. }
            | Action::Disk { node, .. }
            | Action::TrimCompact { node } => vec![*node],
            Action::Partition { left } => left.clone(),
            Action::Block { from: a, to: b }
            | Action::Cut { a, b }
            | Action::TogglePeer { a, b }
            | Action::SetPeers { a, b }
            | Action::EditPeer { a, b, .. } => vec![*a, *b],
            Action::Heal => Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Offset from the start of the run.
    pub at_ms: u64,
    pub action: Action,
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub swarm: bool,
    pub knobs: Knobs,
    pub steps: Vec<Step>,
}

/// Relative weights of the step kinds.
#[derive(Clone, Debug)]
struct Mix {
    write: u32,
    sync: u32,
    sync_now: u32,
    partition: u32,
    block: u32,
    heal: u32,
    cut: u32,
    crash: u32,
    wipe: u32,
    skew: u32,
    disk: u32,
    trim: u32,
    toggle: u32,
}

impl Mix {
    fn standard() -> Self {
        Self {
            write: 60,
            sync: 20,
            sync_now: 2,
            partition: 2,
            block: 1,
            heal: 3,
            cut: 3,
            crash: 2,
            wipe: 1,
            skew: 1,
            disk: 1,
            trim: 2,
            toggle: 1,
        }
    }

    /// Swarm: each weight is switched off or scaled at random, so runs
    /// differ in which faults they stress.
    fn swarm(rng: &mut ChaCha8Rng) -> Self {
        let mut m = Self::standard();
        for w in [
            &mut m.sync_now,
            &mut m.partition,
            &mut m.block,
            &mut m.cut,
            &mut m.crash,
            &mut m.wipe,
            &mut m.skew,
            &mut m.disk,
            &mut m.trim,
            &mut m.toggle,
        ] {
            *w = if rng.gen_bool(0.3) {
                0
            } else {
                *w * rng.gen_range(1..=4)
            };
        }
        m.heal = m.heal.max((m.partition + m.block) / 2);
        m
    }

    fn total(&self) -> u32 {
        self.write
            + self.sync
            + self.sync_now
            + self.partition
            + self.block
            + self.heal
            + self.cut
            + self.crash
            + self.wipe
            + self.skew
            + self.disk
            + self.trim
            + self.toggle
    }
}

/// Recordings are at most this long (bytes).
const RECORDING_LEN_MAX: f64 = 400_000.0;

/// Plan generators: seeds keep meaning what they meant when a bug was
/// found (regression tests name the generator), new draws come with a new
/// generator. 1: the first swarm; 2: tenant and group filters, daily
/// windows, WAN caps, read faults and clock drift in swarm mode; 3: some
/// swarm runs open with the divergent-writes table; 4: weekly windows in
/// swarm mode, and recording lengths log-uniform in both modes (most
/// recordings short, a few of many chunks) instead of uniform, which moves
/// a fifth of the bytes; 5: in both modes, most peer changes are made
/// live (`Node::set_peers`) rather than by restarting both nodes; 6: in
/// both modes, some peer changes edit a peer's bandwidth cap or schedule
/// live instead; 7: in swarm mode, two plans in five purge tombstones
/// (`Knobs::purge`: a two-way unfiltered mesh, no wipes, no peer removals;
/// the other plans are generator 6's).
pub const GENERATOR_LATEST: u8 = 7;
/// What `recsync-sim` and CI draw by default: the newest generator whose
/// seed ranges pass.
pub const GENERATOR_DEFAULT: u8 = 7;

/// The divergent-writes table (the engine-core acceptance scenario) as the
/// opening of a run, on user keys 1..8 between nodes 0 (A) and 1 (B):
/// both know users 1, 3, 4, 5, 6, 7; A is cut off; A writes 1 and 3,
/// deletes 4 and 6, writes 7, then sets every user it knows active; B writes
/// 2 and 3, deletes 5, writes 6, deletes every user it knows, writes 8; the
/// partition heals. Returns the steps and when the random part may start.
fn divergent_table() -> (Vec<Step>, u64) {
    // Keys divisible by 4 have class "user" (see `oracle::class_of`).
    let user = |u: u32| 4 * (100 + u);
    let put = |u: u32| Op::Put { key: user(u) };
    let del = |u: u32| Op::Delete { key: user(u) };
    let w = |at_ms: u64, node: usize, ops: Vec<Op>| Step {
        at_ms,
        action: Action::Write { node, ops },
    };
    let steps = vec![
        w(0, 0, [1, 3, 4, 5, 6, 7].map(put).to_vec()),
        Step {
            at_ms: 3_000,
            action: Action::Partition { left: vec![0] },
        },
        w(3_100, 0, vec![put(1)]),
        w(3_110, 0, vec![put(3)]),
        w(3_120, 0, vec![del(4)]),
        w(3_130, 0, vec![del(6)]),
        w(3_140, 0, vec![put(7)]),
        w(3_150, 0, [1, 3, 5, 7].map(put).to_vec()),
        w(3_100, 1, vec![put(2)]),
        w(3_110, 1, vec![put(3)]),
        w(3_120, 1, vec![del(5)]),
        w(3_130, 1, vec![put(6)]),
        w(3_140, 1, [1, 2, 3, 4, 6, 7].map(del).to_vec()),
        w(3_150, 1, vec![put(8)]),
        Step {
            at_ms: 6_000,
            action: Action::Heal,
        },
    ];
    (steps, 6_000)
}

fn links(
    rng: &mut ChaCha8Rng,
    n: usize,
    topology: Topology,
    swarm: bool,
    generator: u8,
) -> Vec<LinkKnobs> {
    let g2 = generator >= 2;
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let two_way = |pairs: &mut Vec<(usize, usize)>, a: usize, b: usize| {
        pairs.push((a, b));
        pairs.push((b, a));
    };
    match topology {
        Topology::Mesh => {
            for a in 0..n {
                for b in a + 1..n {
                    two_way(&mut pairs, a, b);
                }
            }
        }
        Topology::Ring => {
            for a in 0..n {
                let b = (a + 1) % n;
                if a < b || n > 2 {
                    two_way(&mut pairs, a.min(b), a.max(b));
                }
            }
            pairs.sort();
            pairs.dedup();
        }
        Topology::Chain => {
            for a in 0..n - 1 {
                two_way(&mut pairs, a, a + 1);
            }
        }
        Topology::Star => {
            for b in 1..n {
                two_way(&mut pairs, 0, b);
            }
        }
        Topology::OneWayChain => {
            for a in 0..n - 1 {
                pairs.push((a, a + 1));
            }
        }
    }
    let odd = if swarm { 0.15 } else { 0.05 };
    pairs
        .into_iter()
        .map(|(from, to)| {
            let schedule = if rng.gen_bool(odd) {
                rng.gen_range(
                    1..=match generator {
                        1 => 2,
                        2 | 3 => 3,
                        _ => 4,
                    },
                )
            } else {
                0
            };
            let start = rng.gen_range(0..50);
            LinkKnobs {
                from,
                to,
                schedule,
                linger_ms: rng.gen_range(0..200),
                window: (start, start + rng.gen_range(5..10)),
                exclude_class: rng
                    .gen_bool(odd)
                    .then(|| rng.gen_range(0..CLASSES.len() as u8)),
                bandwidth: rng.gen_bool(odd).then(|| rng.gen_range(20_000..2_000_000)),
                exclude_tenant: (g2 && rng.gen_bool(odd)).then(|| rng.gen_range(0..TENANTS)),
                exclude_group: (g2 && rng.gen_bool(odd)).then(|| rng.gen_range(0..GROUPS)),
            }
        })
        .collect()
}

/// `generator` is the plan generator in swarm mode, 1 otherwise.
fn draw_knobs(rng: &mut ChaCha8Rng, swarm: bool, generator: u8) -> Knobs {
    let g2 = generator >= 2;
    let nodes = rng.gen_range(2..=5);
    let topology = match rng.gen_range(0..10) {
        0..=3 => Topology::Mesh,
        4..=5 => Topology::Ring,
        6 => Topology::Chain,
        7 => Topology::Star,
        _ if swarm => Topology::OneWayChain,
        _ => Topology::Mesh,
    };
    let links = links(rng, nodes, topology, swarm, generator);
    let store = match rng.gen_range(0..10) {
        0..=2 => StoreKnobs::MemImmediate,
        3..=4 => StoreKnobs::MemExplicit,
        _ => StoreKnobs::Disk {
            durability: rng.gen_range(0..3),
            segment_size: if swarm {
                1 << rng.gen_range(12..22)
            } else {
                1 << 20
            },
            blob_chunk: if swarm {
                1 << rng.gen_range(10..18)
            } else {
                64 << 10
            },
        },
    };
    let lossy = swarm || rng.gen_bool(0.5);
    Knobs {
        nodes,
        topology,
        links,
        policies: (0..CLASSES.len()).map(|_| rng.gen_range(0..3)).collect(),
        latency_ms: {
            let lo = rng.gen_range(1..20);
            (lo, lo + rng.gen_range(0..200))
        },
        reorder: rng.gen_bool(0.5),
        drop_probability: if lossy { rng.gen_range(0.0..0.08) } else { 0.0 },
        duplicate_probability: if lossy { rng.gen_range(0.0..0.08) } else { 0.0 },
        wan_bytes_per_s: (g2 && rng.gen_bool(0.3)).then(|| rng.gen_range(50_000..5_000_000)),
        store,
        batch_versions_max: if swarm { rng.gen_range(1..=64) } else { 32 },
        ack_timeout_ms: rng.gen_range(300..3_000),
        fault_phase_ms: rng.gen_range(20_000..120_000),
        keys: rng.gen_range(2..40),
        purge: None,
    }
}

impl Plan {
    /// Draws a plan from a seed. `swarm` lets the seed choose the fault
    /// mix and the tuning knobs too.
    pub fn generate(seed: u64, swarm: bool) -> Plan {
        Self::generate_with(seed, swarm, GENERATOR_DEFAULT)
    }

    /// Draws a plan with a given generator (see `GENERATOR_LATEST`).
    pub fn generate_with(seed: u64, swarm: bool, generator: u8) -> Plan {
        // Recording lengths follow the generator in both modes; the other
        // draws of later generators are swarm knobs.
        let g4 = generator >= 4;
        let g5 = generator >= 5;
        let g6 = generator >= 6;
        let generator = if swarm { generator } else { 1 };
        let g2 = generator >= 2;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_5157);
        let knobs = draw_knobs(&mut rng, swarm, generator);
        let mix = if swarm {
            Mix::swarm(&mut rng)
        } else {
            Mix::standard()
        };
        let n = knobs.nodes;
        let mut steps = Vec::new();
        let mut t = 0u64;
        if swarm && generator >= 3 && rng.gen_bool(0.3) {
            let (table, start) = divergent_table();
            steps = table;
            t = start;
        }
        // About 100 writes per simulated second across the cluster.
        let mean_gap = (1_000 * mix.total() as u64) / (100 * mix.write.max(1) as u64);
        while t < knobs.fault_phase_ms {
            t += rng.gen_range(0..=2 * mean_gap.max(1));
            let node = rng.gen_range(0..n);
            let other = (node + rng.gen_range(1..n.max(2))) % n;
            let mut pick = rng.gen_range(0..mix.total());
            let mut take = |w: u32| {
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            };
            let action = if take(mix.write) {
                let count = if rng.gen_bool(0.15) {
                    rng.gen_range(2..6)
                } else {
                    1
                };
                let ops = (0..count)
                    .map(|_| {
                        // Hot keys: a few keys take most writes.
                        let key = if rng.gen_bool(0.6) {
                            rng.gen_range(0..knobs.keys.min(3))
                        } else {
                            rng.gen_range(0..knobs.keys)
                        };
                        match rng.gen_range(0..100) {
                            0..=14 => Op::Delete { key },
                            15..=24 => Op::Recording {
                                key: key | 0x1_0000,
                                len: if rng.gen_bool(0.2) {
                                    0
                                } else if g4 {
                                    // Log-uniform: mostly short, some
                                    // of many chunks.
                                    rng.gen_range(0.0..RECORDING_LEN_MAX.ln()).exp() as u32
                                } else {
                                    rng.gen_range(1..400_000)
                                },
                            },
                            _ => Op::Put { key },
                        }
                    })
                    .collect();
                Action::Write { node, ops }
            } else if take(mix.sync) {
                Action::Sync { node }
            } else if take(mix.sync_now) {
                Action::SyncNow { node }
            } else if take(mix.partition) {
                let split = rng.gen_range(1..n.max(2));
                Action::Partition {
                    left: (0..split.min(n)).collect(),
                }
            } else if take(mix.block) {
                Action::Block {
                    from: node,
                    to: other,
                }
            } else if take(mix.heal) {
                Action::Heal
            } else if take(mix.cut) {
                Action::Cut { a: node, b: other }
            } else if take(mix.crash) {
                Action::Crash {
                    node,
                    torn: rng.gen_bool(0.5),
                }
            } else if take(mix.wipe) {
                Action::Wipe { node }
            } else if take(mix.skew) {
                Action::Skew {
                    node,
                    offset_ms: rng.gen_range(-120_000..120_000),
                }
            } else if take(mix.disk) {
                Action::Disk {
                    node,
                    fault: match rng.gen_range(0..if g2 { 5 } else { 3 }) {
                        0 => DiskFault::FailWrites(rng.gen_range(1..3)),
                        1 => DiskFault::FailSyncs(1),
                        2 => DiskFault::Full(rng.gen_range(0..200_000)),
                        3 => DiskFault::CorruptReads(rng.gen_range(1..4)),
                        _ => DiskFault::ShortReads(rng.gen_range(1..4)),
                    },
                }
            } else if take(mix.trim) {
                Action::TrimCompact { node }
            } else if take(mix.toggle) && n > 1 {
                if g6 && rng.gen_bool(0.4) {
                    Action::EditPeer {
                        a: node,
                        b: other,
                        what: rng.gen_range(0..2),
                    }
                } else if g5 && rng.gen_bool(0.8) {
                    Action::SetPeers { a: node, b: other }
                } else {
                    Action::TogglePeer { a: node, b: other }
                }
            } else {
                Action::Sync { node }
            };
            // A crashed node comes back a little later.
            if let Action::Crash { node, .. } = action {
                let back = t + rng.gen_range(0..5_000);
                steps.push(Step { at_ms: t, action });
                steps.push(Step {
                    at_ms: back,
                    action: Action::Restart { node },
                });
                continue;
            }
            steps.push(Step { at_ms: t, action });
        }
        // Clock drift (swarm): a node's clock runs fast or slow, moved in
        // small steps (a skew that grows with time).
        if g2 {
            for node in 0..n {
                if rng.gen_bool(0.3) {
                    let ppm: i64 = rng.gen_range(-20_000..20_000);
                    let base: i64 = rng.gen_range(-5_000..5_000);
                    let mut at = 0;
                    while at < knobs.fault_phase_ms {
                        let offset_ms = base + ppm * at as i64 / 1_000_000;
                        steps.push(Step {
                            at_ms: at,
                            action: Action::Skew { node, offset_ms },
                        });
                        at += 2_000;
                    }
                }
            }
        }
        steps.sort_by_key(|s| s.at_ms);
        let mut plan = Plan {
            seed,
            swarm,
            knobs,
            steps,
        };
        if generator >= 7 {
            // Drawn apart, so that the other plans stay generator 6's.
            let mut pr = ChaCha8Rng::seed_from_u64(seed ^ 0x9E26_E7B0_5700);
            if pr.gen_bool(0.4) {
                plan.make_purging(&mut pr);
            }
        }
        plan
    }

    /// Turns the plan into one that purges tombstones: a two-way,
    /// unfiltered mesh whose membership never changes (the purge rule's
    /// preconditions), with a trim interval of 1 to 10 s.
    fn make_purging(&mut self, rng: &mut ChaCha8Rng) {
        let k = &mut self.knobs;
        k.topology = Topology::Mesh;
        k.links = links(rng, k.nodes, Topology::Mesh, self.swarm, 6)
            .into_iter()
            .map(|l| LinkKnobs {
                exclude_class: None,
                exclude_tenant: None,
                exclude_group: None,
                ..l
            })
            .collect();
        k.purge = Some(rng.gen_range(1_000..10_000));
        self.steps.retain(|s| {
            !matches!(
                s.action,
                Action::Wipe { .. } | Action::TogglePeer { .. } | Action::SetPeers { .. }
            )
        });
        // More deletes, so that more keys end as lone tombstones.
        for s in &mut self.steps {
            if let Action::Write { ops, .. } = &mut s.action {
                for op in ops.iter_mut() {
                    if let Op::Put { key } = *op {
                        if rng.gen_bool(0.25) {
                            *op = Op::Delete { key };
                        }
                    }
                }
            }
        }
    }
}
