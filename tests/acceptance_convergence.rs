//! Convergence (SPEC §3): seeded random workloads on 3 to 5 nodes with
//! random delivery order, duplicates, drops (retried), cuts, partitions and
//! restarts, some on the real segment log over a simulated disk (torn
//! crashes, trimming, compaction). After healing, every node has the same state digest and no
//! acknowledged write is missing anywhere.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsync_engine::seglog::{Durability, LogOptions};
use recsync_engine::{ConflictPolicy, Dot, Key, Name, WriteOp};
use recsync_sim::cluster::{labels, node_id, put_req, ClusterBuilder};
use recsync_sim::{Cluster, NetConfig};

const CASES: u64 = 1000;

struct Case {
    cluster: Cluster,
    acked: Vec<(Key, Dot)>,
}

fn policy(rng: &mut ChaCha8Rng, n: usize) -> ConflictPolicy {
    match rng.gen_range(0..3) {
        0 => ConflictPolicy::LastWriterWins,
        1 => {
            let mut order: Vec<_> = (0..n).map(node_id).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.gen_range(0..=i));
            }
            ConflictPolicy::Priority(order)
        }
        _ => ConflictPolicy::Manual,
    }
}

fn run_case(seed: u64) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.gen_range(3..=5);
    let net = NetConfig {
        latency_ms_min: 1,
        latency_ms_max: rng.gen_range(2..80),
        reorder: rng.gen_bool(0.5),
        drop_probability: if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.15)
        } else {
            0.0
        },
        duplicate_probability: if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.15)
        } else {
            0.0
        },
        wan_bytes_per_s: None,
    };
    let user_policy = policy(&mut rng, n);
    let group_policy = policy(&mut rng, n);
    let mut b = ClusterBuilder::new(seed, n).net(net).all_nodes(|cfg| {
        cfg.classes
            .insert(Name::new("user").unwrap(), user_policy.clone());
        cfg.classes
            .insert(Name::new("group").unwrap(), group_policy.clone());
        cfg.timing.ack_timeout_ms = 500;
        cfg.timing.reconnect_max_ms = 2_000;
        cfg.limits.send_batch_versions_max = 8;
    });
    // A mesh, or a bidirectional ring (relays on every path).
    if rng.gen_bool(0.5) {
        b = b.mesh();
    } else {
        for i in 0..n {
            b = b.two_way(i, (i + 1) % n);
        }
    }
    // Some cases sync storage only now and then: a crash then loses the
    // unsynced tail, and only synced writes count as acknowledged.
    let explicit = rng.gen_bool(0.3);
    // Half of those run on the real segment log over a simulated disk, with
    // small segments and blob chunks: crashes tear its tail, and logs are
    // trimmed and compacted as they go.
    let on_disk = explicit && seed.is_multiple_of(2);
    if on_disk {
        b = b.on_disk(LogOptions {
            segment_size: 32 << 10,
            durability: Durability::Periodic,
            blob_chunk: 16 << 10,
            compact_dead_fraction: 0.5,
        });
    } else if explicit {
        b = b.explicit_sync();
    }
    let mut c = b.build();
    let mut unsynced: Vec<Vec<(Key, Dot)>> = vec![Vec::new(); n];
    let keys: Vec<Key> = (0..rng.gen_range(3..12))
        .map(|k| Key::from_u128(k as u128))
        .collect();
    let mut acked = Vec::new();
    for _ in 0..rng.gen_range(20..70) {
        let i = rng.gen_range(0..n);
        c.run_for(rng.gen_range(0..60));
        if explicit && c.is_up(i) && rng.gen_bool(0.5) {
            c.sync_storage(i);
            acked.append(&mut unsynced[i]);
            if on_disk && rng.gen_bool(0.3) {
                c.node_mut(i).trim_log().expect("trim");
                if let Some(d) = c.node_mut(i).storage_mut().disk_mut() {
                    d.log.compact().expect("compact");
                }
            }
        }
        match rng.gen_range(0..100) {
            0..=3 => {
                let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
                if a != b {
                    c.cut(a, b);
                }
            }
            4..=5 => {
                let split = rng.gen_range(1..n);
                let left: Vec<usize> = (0..split).collect();
                let right: Vec<usize> = (split..n).collect();
                c.partition(&[&left, &right]);
            }
            6..=8 => c.heal(),
            9 if c.is_up(i) => {
                unsynced[i].clear(); // may be lost: no longer promised
                c.crash(i);
                c.run_for(rng.gen_range(0..200));
                c.restart(i);
            }
            10..=13 if c.is_up(i) => {
                let k = Key::from_u128(1000 + rng.gen_range(0..4u128));
                let mut audio = vec![0u8; rng.gen_range(0..200_000)];
                rng.fill(&mut audio[..]);
                let r = c.put_recording(i, k, format!("{seed}").as_bytes(), &audio);
                let pending = if explicit {
                    &mut unsynced[i]
                } else {
                    &mut acked
                };
                pending.push((k, r.dots[0]));
            }
            _ if c.is_up(i) => {
                let class = if rng.gen_bool(0.7) { "user" } else { "group" };
                let count = if rng.gen_bool(0.2) {
                    rng.gen_range(2..5)
                } else {
                    1
                };
                let mut ops = Vec::new();
                let mut used = Vec::new();
                for _ in 0..count {
                    let k = keys[rng.gen_range(0..keys.len())];
                    if used.contains(&k) {
                        continue;
                    }
                    used.push(k);
                    let live = c
                        .node(i)
                        .get(&k)
                        .is_some_and(|o| o.siblings.iter().any(|v| !v.body.is_tombstone()));
                    if live && rng.gen_bool(0.25) {
                        ops.push(WriteOp::Delete(k));
                    } else {
                        let meta = format!("{seed}/{i}/{}", rng.gen::<u32>());
                        ops.push(WriteOp::Put(put_req(k, labels(class), meta.as_bytes())));
                    }
                }
                let r = c.try_write(i, ops.clone()).expect("write");
                let pending = if explicit {
                    &mut unsynced[i]
                } else {
                    &mut acked
                };
                for (op, dot) in ops.iter().zip(r.dots) {
                    let k = match op {
                        WriteOp::Put(p) => p.key,
                        WriteOp::Delete(k) => *k,
                    };
                    pending.push((k, dot));
                }
            }
            _ => {}
        }
    }
    c.heal();
    if explicit {
        for (i, u) in unsynced.iter_mut().enumerate() {
            if c.is_up(i) {
                c.sync_storage(i);
                acked.append(u);
            }
        }
        settle_syncing(&mut c, 30 * 60_000, seed);
    } else if let Err(l) = c.run_until_settled(30 * 60_000) {
        for (i, j, _) in &l.pending {
            eprintln!("{i}->{j}: {}", c.node(*i).peer_debug(&node_id(*j)));
            eprintln!("{j}<-{i}: {}", c.node(*j).peer_debug(&node_id(*i)));
        }
        panic!("seed {seed}: did not settle: {l:?}");
    }
    Case { cluster: c, acked }
}

/// Runs one case and checks it; returns (conflicts reported, writes acked).
fn check_case(seed: u64) -> (usize, usize) {
    let mut conflicts = 0usize;
    let Case { cluster: c, acked } = run_case(seed);
    let all: Vec<usize> = (0..c.len()).collect();
    if !c.digests_equal(&all) {
        for i in 0..c.len() {
            for (k, st) in c.node(i).keys() {
                eprintln!(
                    "n{i} {:?} {:?} seen {:?} staged {}",
                    k,
                    st.siblings
                        .iter()
                        .map(|s| s.version.dot)
                        .collect::<Vec<_>>(),
                    st.seen,
                    c.node(i).staged_versions()
                );
            }
        }
    }
    assert!(c.digests_equal(&all), "seed {seed}: nodes diverged");
    for i in all {
        for (k, dot) in &acked {
            let seen = c.node(i).keys().any(|(key, s)| key == k && s.has_seen(dot));
            assert!(
                seen,
                "seed {seed}: node {i} lacks acknowledged write {dot:?} of {k:?}"
            );
        }
        conflicts += c
            .events(i)
            .iter()
            .filter(|e| matches!(e, recsync_engine::Event::Conflict(_)))
            .count();
    }
    (conflicts, acked.len())
}

#[test]
fn acceptance_convergence_1000_random_cases() {
    let mut conflicts = 0usize;
    let mut writes = 0usize;
    for seed in 0..CASES {
        let (c, w) = check_case(seed);
        conflicts += c;
        writes += w;
    }
    // The workload really produced concurrency.
    assert!(
        conflicts > CASES as usize,
        "only {conflicts} conflicts in {writes} writes"
    );
}

/// Seeds that once failed, kept apart so they run even if the workload
/// generator changes.
/// - 90: on the segment log, a recording shipped (metadata first) before
///   its origin synced; the origin crashed and lost the blob, and the peers
///   fetched it from nobody, forever. Fixed: a finished upload is durable
///   when `blob_finish` returns.
#[test]
fn regression_convergence_seeds() {
    const SEEDS: &[u64] = &[90];
    for &seed in SEEDS {
        check_case(seed);
    }
}

#[test]
fn acceptance_convergence_same_seed_same_run() {
    let a = run_case(4242);
    let b = run_case(4242);
    assert_eq!(
        a.cluster.node(0).state_digest(),
        b.cluster.node(0).state_digest()
    );
    assert_eq!(a.cluster.now_ms(), b.cluster.now_ms());
    assert_eq!(a.cluster.sent.len(), b.cluster.sent.len());
}

/// Runs until settled, making every node's log durable as it goes.
fn settle_syncing(c: &mut Cluster, max_ms: u64, seed: u64) {
    if let Err(l) = c.run_until_settled_syncing(max_ms) {
        for i in (0..c.len()).filter(|i| c.is_up(*i)) {
            eprintln!("node {i}: {}", c.node(i).blob_debug());
            for j in (0..c.len()).filter(|j| *j != i) {
                eprintln!("  {i}->{j}: {}", c.node(i).peer_debug(&node_id(j)));
            }
        }
        panic!("seed {seed}: did not settle: {l:?}");
    }
}

/// A node loses the unsynced tail of its log in a crash after those writes
/// already reached a peer: it gets them back, never reuses their dots, and
/// the cluster converges.
#[test]
fn acceptance_convergence_after_losing_an_unsynced_tail() {
    let mut c = ClusterBuilder::new(77, 3).mesh().explicit_sync().build();
    let synced: Vec<Dot> = (0..10u128)
        .map(|k| c.put(0, Key::from_u128(k), labels("user"), b"durable").dots[0])
        .collect();
    c.sync_storage(0);
    let lost: Vec<Dot> = (10..15u128)
        .map(|k| {
            c.put(0, Key::from_u128(k), labels("user"), b"unsynced")
                .dots[0]
        })
        .collect();
    // The peers receive everything and make it durable; node 0 does not.
    for _ in 0..20 {
        c.run_for(50);
        c.sync_storage(1);
        c.sync_storage(2);
    }
    assert!(c.node(1).get(&Key::from_u128(14)).is_some());
    c.crash(0);
    c.restart(0);
    assert!(
        c.node(0).get(&Key::from_u128(14)).is_none(),
        "the tail was lost"
    );
    let fresh = c
        .put(0, Key::from_u128(99), labels("user"), b"after restart")
        .dots[0];
    assert!(
        !lost.contains(&fresh) && !synced.contains(&fresh),
        "no dot is reused"
    );
    assert_ne!(
        fresh.replica, synced[0].replica,
        "a restart writes under a new dot origin"
    );
    settle_syncing(&mut c, 60_000, 77);
    assert!(c.digests_equal(&[0, 1, 2]));
    for k in 10..15u128 {
        assert_eq!(
            c.node(0).get(&Key::from_u128(k)).unwrap().meta(),
            Some(&b"unsynced"[..])
        );
    }
}
