//! Regression tests: every bug found by review or by the randomized tests
//! that broke the replication contract (SPEC §2-4), each as the scenario
//! that exposed it; all fixed. `explore_variants` is a by-hand exploration
//! tool (`cargo test --test regressions -- --ignored explore_variants`,
//! with EXPLICIT=1, WIPES=1, NOTRIM=1 or DEBUG_SEED=n).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsync_engine::{Key, Schedule};
use recsync_sim::cluster::{labels, node_id, ClusterBuilder};
use recsync_sim::{Cluster, NetConfig};

fn key(n: u128) -> Key {
    Key::from_u128(n)
}

fn audio(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0; len];
    rng.fill_bytes(&mut v);
    v
}

fn settle_syncing(c: &mut Cluster, max_ms: u64) -> bool {
    c.run_until_settled_syncing(max_ms).is_ok()
}

/// Runs `ms`, syncing only the nodes in `sync`.
fn run_syncing(c: &mut Cluster, ms: u64, sync: &[usize]) {
    let mut waited = 0;
    while waited < ms {
        for &i in sync {
            if c.is_up(i) {
                c.sync_storage(i);
            }
        }
        c.run_for(10);
        waited += 10;
    }
}

// ---------------------------------------------------------------------------
// 1. The sender ships log entries that are not durable yet. After a crash
//    that loses them, the same LSNs (same replica id) are reused for other
//    entries, while the peer already acknowledged the old ones.
// ---------------------------------------------------------------------------

/// The peer acknowledged LSN 2 (a write that was later lost in a crash);
/// the restarted sender writes new entries at LSNs 2 and 3; the peer
/// resumes "after 2" and never receives the entry now at LSN 2.
#[test]
fn explicit_crash_reused_lsn_is_skipped_forever() {
    let mut c = ClusterBuilder::new(1, 2)
        .one_way(0, 1)
        .explicit_sync()
        .build();
    assert!(settle_syncing(&mut c, 10_000));
    c.put(0, key(1), labels("user"), b"k1");
    assert!(settle_syncing(&mut c, 10_000));
    // k2 at LSN 2, never synced on node 0, but it ships and node 1 makes it
    // durable and acknowledges.
    c.put(0, key(2), labels("user"), b"k2");
    run_syncing(&mut c, 300, &[1]);
    assert!(c.node(1).get(&key(2)).is_some(), "k2 reached node 1");
    c.crash(0);
    c.restart(0);
    // The restarted node writes two entries (LSN 2 and 3) before node 1
    // reconnects; both are made durable.
    c.put(0, key(3), labels("user"), b"k3");
    c.put(0, key(4), labels("user"), b"k4");
    c.sync_storage(0);
    assert!(settle_syncing(&mut c, 60_000));
    assert!(c.node(1).get(&key(4)).is_some());
    assert!(
        c.node(1).get(&key(3)).is_some(),
        "durable write k3 (LSN 2 reused) never reaches node 1"
    );
}

/// The peer acknowledged LSNs up to 5 that the sender lost; the sender's log
/// now ends before that, so it re-seeds by a snapshot at LSN 0, which the
/// receiver (standing at Log 5 of the same replica) rejects as "stale": the
/// session livelocks and no later write is delivered.
#[test]
fn explicit_crash_sender_tail_loss_livelocks_session() {
    let mut c = ClusterBuilder::new(2, 2)
        .one_way(0, 1)
        .explicit_sync()
        .build();
    assert!(settle_syncing(&mut c, 10_000));
    for k in 0..5 {
        c.put(0, key(k), labels("user"), b"lost");
    }
    run_syncing(&mut c, 300, &[1]);
    assert_eq!(c.node(1).keys().count(), 5);
    c.crash(0);
    c.restart(0);
    c.put(0, key(100), labels("user"), b"after restart");
    c.sync_storage(0);
    let settled = settle_syncing(&mut c, 60_000);
    assert!(
        c.node(1).get(&key(100)).is_some(),
        "the write after the restart never arrives (settled: {settled}): {}",
        c.node(0).peer_debug(&node_id(1))
    );
    assert!(settled);
}

/// Node 0's non-durable write escapes to node 1, then node 0 crashes and
/// loses it. Nobody ever sends a node its own dots back, so node 0 never
/// gets it again while node 1 keeps it: the cluster diverges forever.
#[test]
fn explicit_crash_own_escaped_write_never_returns() {
    let mut c = ClusterBuilder::new(3, 2)
        .two_way(0, 1)
        .explicit_sync()
        .build();
    assert!(settle_syncing(&mut c, 10_000));
    c.put(0, key(1), labels("user"), b"escaped");
    run_syncing(&mut c, 300, &[1]);
    assert!(c.node(1).get(&key(1)).is_some());
    c.crash(0);
    c.restart(0);
    assert!(settle_syncing(&mut c, 60_000));
    assert!(
        c.digests_equal(&[0, 1]),
        "node 0 has key 1: {}, node 1 has key 1: {}",
        c.node(0).get(&key(1)).is_some(),
        c.node(1).get(&key(1)).is_some()
    );
}

// ---------------------------------------------------------------------------
// 2. Blobs.
// ---------------------------------------------------------------------------

/// Two recordings with the same audio (same content hash) reach node 1 from
/// two peers: k_a from node 2 (the fetch goes to node 2) and k_b from node 0
/// while the blob is still in transfer. When the blob is whole, the
/// `BlobReady` entry holding both versions is attributed to the fetch
/// source (node 2) and so is never relayed to node 2: node 2 never gets k_b.
#[test]
fn same_blob_staged_from_two_peers_is_not_relayed_to_fetch_source() {
    let mut c = ClusterBuilder::new(5, 3)
        .one_way(0, 1)
        .two_way(1, 2)
        .build();
    c.run_until_settled(10_000).unwrap();
    let data = audio(5, 4 << 20);
    c.put_recording(2, key(1), b"k_a on node 2", &data);
    c.run_for(30); // k_a's batch reached node 1, the blob is streaming from 2
    c.put_recording(0, key(2), b"k_b on node 0", &data);
    c.run_until_settled(600_000).unwrap();
    assert!(c.node(1).get(&key(2)).is_some(), "node 1 has k_b");
    assert!(
        c.node(2).get(&key(2)).is_some(),
        "node 2 never receives k_b through node 1"
    );
    assert!(c.digests_equal(&[1, 2]));
}

/// Node 1 fetches a blob from node 0 (which sent the recording); the link
/// breaks mid-blob, the fetch deadline moves the fetch to node 2, which does
/// not have the blob and answers `BlobMissing` (ignored). After healing, the
/// fetch stays on node 2 forever: the recording is never visible on node 1.
/// (Failed on commit 345c5d5, where `BlobMissing` was ignored; passes with
/// the uncommitted `on_blob_missing` in the working tree. Kept as a
/// regression test.)
#[test]
fn blob_fetch_moved_to_peer_without_blob_stalls_forever() {
    let mut c = ClusterBuilder::new(6, 3)
        .one_way(0, 1)
        .one_way(2, 1)
        .peer(0, 1, |p| p.bandwidth_bytes_per_s = Some(1 << 20))
        .build();
    c.run_until_settled(10_000).unwrap();
    c.put_recording(0, key(1), b"call", &audio(6, 4 << 20));
    c.run_for(1_000); // the batch is there, the blob is part way
    assert_eq!(c.node(1).staged_versions(), 1);
    c.partition(&[&[0], &[1, 2]]);
    c.run_for(20_000); // fetch deadline passes while node 0 is unreachable
    c.heal();
    let r = c.run_until_settled(300_000);
    assert!(
        c.node(1).get(&key(1)).is_some(),
        "recording never becomes visible on node 1 ({r:?})"
    );
}

// ---------------------------------------------------------------------------
// 3. Schedules.
// ---------------------------------------------------------------------------

/// Under a manual schedule a wiped peer (empty backlog, a snapshot to send)
/// is never re-seeded: `sync_now` sets `sync_upto = last_lsn`, and a
/// snapshot at `at_lsn == last_lsn` with nothing after it is "not due"
/// (`at_lsn < upto` is false).
#[test]
fn manual_schedule_never_reseeds_a_wiped_peer() {
    let mut c = ClusterBuilder::new(7, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.schedule = Schedule::Manual)
        .build();
    c.put(0, key(1), labels("user"), b"v");
    c.run_for(1_000);
    c.sync_now(0);
    c.run_for(1_000);
    assert!(c.node(1).get(&key(1)).is_some(), "first sync ships");
    c.wipe(1);
    c.run_for(1_000);
    c.sync_now(0);
    c.run_for(5_000);
    assert!(
        c.node(1).get(&key(1)).is_some(),
        "sync now after the peer was wiped ships nothing: {}",
        c.node(0).peer_debug(&node_id(1))
    );
}

// ---------------------------------------------------------------------------
// 4. Acknowledged before durable.
// ---------------------------------------------------------------------------

/// The receiver's Hello carries its *applied* (not durable) position in the
/// sender's log, and the sender takes it as acknowledged: `copies()` then
/// names a peer that does not durably hold the version (and a crash there
/// loses it).
#[test]
fn resume_cursor_in_hello_is_not_durable_but_counts_as_copy() {
    let mut c = ClusterBuilder::new(8, 2)
        .one_way(0, 1)
        .explicit_sync()
        .build();
    assert!(settle_syncing(&mut c, 10_000));
    let r = c.put(0, key(1), labels("recording"), b"call");
    c.sync_storage(0);
    run_syncing(&mut c, 300, &[0]); // node 1 applies it, never syncs
    assert!(c.node(1).get(&key(1)).is_some());
    c.cut(0, 1);
    run_syncing(&mut c, 2_000, &[0]); // reconnect: node 1 says where it stands
    let copies = c.node(0).copies(&key(1), &r.dots[0]);
    let durable_on_1 = recsync_engine::Storage::durable_lsn(c.node(1).storage());
    let claimed = copies.contains(&node_id(1));
    c.crash(1);
    c.restart(1);
    assert!(
        !claimed || c.node(1).get(&key(1)).is_some(),
        "copies() named node 1 (durable LSN {durable_on_1}) as holding the \
         recording durably; a crash of node 1 then lost it"
    );
}

// ---------------------------------------------------------------------------
// 5. Snapshot start duplicated late.
// ---------------------------------------------------------------------------

/// A late duplicate of the first batch of a finished snapshot (reordering +
/// duplication) reaches a receiver that stands exactly at `Log { at_lsn }`:
/// the `fresh_start` rule (`lsn <= at_lsn`) takes it as a new snapshot and
/// moves the receiver back into the snapshot. The sender considers that
/// position stale and never continues the snapshot: every later batch is
/// out of sequence and the session livelocks.
#[test]
fn late_duplicate_of_snapshot_start_livelocks() {
    use recsync_engine::wire::{encode_frame, Batch, Cursor, Message, Position};
    let mut c = ClusterBuilder::new(9, 2)
        .one_way(0, 1)
        .node(0, |cfg| cfg.limits.send_batch_versions_max = 2)
        .build();
    for k in 0..6 {
        c.put(0, key(k), labels("user"), b"v");
    }
    c.run_until_settled(10_000).unwrap();
    assert_eq!(c.node(1).keys().count(), 6);
    let acked = c.node(0).peer_acked(&node_id(1)).unwrap();
    let Position::Log { lsn: at_lsn } = acked.pos else {
        panic!("snapshot finished: {acked:?}")
    };
    let replica = c.node(0).log_id();
    // The first batch of that snapshot again (its versions are known).
    let dup = Batch {
        prev: Cursor {
            replica,
            pos: Position::Snapshot {
                at_lsn,
                after: None,
            },
        },
        next: Cursor {
            replica,
            pos: Position::Snapshot {
                at_lsn,
                after: Some(key(1)),
            },
        },
        versions: Vec::new(),
    };
    c.inject(1, 0, &encode_frame(&Message::Batch(dup))).unwrap();
    c.put(0, key(100), labels("user"), b"later");
    let r = c.run_until_settled(120_000);
    assert!(
        c.node(1).get(&key(100)).is_some(),
        "the later write never arrives ({r:?}): sender {} / receiver {}",
        c.node(0).peer_debug(&node_id(1)),
        c.node(1).peer_debug(&node_id(0))
    );
}

// ---------------------------------------------------------------------------
// Randomized exploration (explicit sync, crashes, reorder, duplicates).
// ---------------------------------------------------------------------------

struct Explored {
    diverged: bool,
    missing: Vec<(usize, Key)>,
    settled: bool,
}

fn explore(seed: u64, explicit: bool, wipes: bool) -> Explored {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.gen_range(2..=4);
    let net = NetConfig {
        latency_ms_min: 1,
        latency_ms_max: rng.gen_range(2..60),
        reorder: rng.gen_bool(0.5),
        drop_probability: if rng.gen_bool(0.5) { 0.05 } else { 0.0 },
        duplicate_probability: if rng.gen_bool(0.5) { 0.1 } else { 0.0 },
        wan_bytes_per_s: None,
    };
    let mut b = ClusterBuilder::new(seed, n).net(net).all_nodes(|cfg| {
        cfg.timing.ack_timeout_ms = 300;
        cfg.timing.reconnect_max_ms = 1_000;
        cfg.timing.trim_interval_ms = if std::env::var("NOTRIM").is_ok() {
            1 << 40
        } else {
            500
        };
        cfg.limits.send_batch_versions_max = 3;
    });
    if explicit {
        b = b.explicit_sync();
    }
    if rng.gen_bool(0.5) {
        b = b.mesh();
    } else {
        for i in 0..n {
            b = b.two_way(i, (i + 1) % n);
        }
    }
    let mut c = b.build();
    // Writes not yet durable on their node, and durable ones (checked at
    // the end, except those of a node later wiped).
    let mut pending: Vec<(usize, Key)> = Vec::new();
    let mut durable: Vec<(usize, Key)> = Vec::new();
    for _ in 0..rng.gen_range(20..80) {
        c.run_for(rng.gen_range(0..80));
        let i = rng.gen_range(0..n);
        if !c.is_up(i) {
            if rng.gen_bool(0.5) {
                c.restart(i);
            }
            continue;
        }
        let op = rng.gen_range(0..100);
        if std::env::var("DEBUG_SEED").is_ok_and(|s| s == seed.to_string()) {
            eprintln!(
                "t={} node {i} op {op}",
                c.now_ms() - recsync_sim::cluster::EPOCH_MS
            );
        }
        match op {
            0..=4 => {
                let j = rng.gen_range(0..n);
                if i != j {
                    c.cut(i, j);
                }
            }
            5..=9 => {
                c.crash(i);
                pending.retain(|(w, _)| *w != i);
            }
            10..=11 if wipes => {
                c.wipe(i);
                pending.retain(|(w, _)| *w != i);
                durable.retain(|(w, _)| *w != i);
            }
            12..=40 => {
                c.sync_storage(i);
                durable.extend(pending.iter().filter(|(w, _)| *w == i));
                pending.retain(|(w, _)| *w != i);
            }
            41..=50 => {
                let k = key(rng.gen_range(0..6));
                if c.node(i)
                    .get(&k)
                    .is_some_and(|o| o.siblings.iter().any(|v| !v.body.is_tombstone()))
                {
                    c.delete(i, k);
                }
            }
            _ => {
                // Unique keys for the durability check, plus shared ones.
                let unique = rng.gen_bool(0.5);
                let k = if unique {
                    key(1000 + (pending.len() + durable.len()) as u128 + 100 * i as u128)
                } else {
                    key(rng.gen_range(0..6))
                };
                if unique && c.node(i).get(&k).is_some() {
                    continue;
                }
                c.put(i, k, labels("user"), format!("{seed}/{i}").as_bytes());
                if unique {
                    pending.push((i, k));
                }
            }
        }
    }
    for i in 0..n {
        if !c.is_up(i) {
            c.restart(i);
        }
    }
    let settled = settle_syncing(&mut c, 120_000);
    let all: Vec<usize> = (0..n).collect();
    if std::env::var("DEBUG_SEED").is_ok_and(|s| s == seed.to_string()) {
        for b in &c.sent {
            if b.at_ms - recsync_sim::cluster::EPOCH_MS > 1900 {
                eprintln!(
                    "sent t={} {}->{} {:?}",
                    b.at_ms - recsync_sim::cluster::EPOCH_MS,
                    b.from,
                    b.to,
                    b.versions.iter().map(|v| (v.0, v.1)).collect::<Vec<_>>()
                );
            }
        }
        eprintln!("pending {:?} in_flight {}", c.pending(), c.net.in_flight());
        for (i, j, _) in c.pending() {
            eprintln!("{i}->{j}: {}", c.node(i).peer_debug(&node_id(j)));
            eprintln!("{j}<-{i}: {}", c.node(j).peer_debug(&node_id(i)));
        }
        for i in 0..n {
            eprintln!(
                "node {i} replica {:?} staged {}",
                c.node(i).replica_id(),
                c.node(i).staged_versions()
            );
            for (k, st) in c.node(i).keys() {
                let sib: Vec<_> = st
                    .siblings
                    .iter()
                    .map(|s| (s.version.dot, s.version.body.is_tombstone()))
                    .collect();
                eprintln!("  {k:?} seen={:?} sib={:?}", st.seen, sib);
            }
        }
    }
    let mut missing = Vec::new();
    for i in 0..n {
        for (_, k) in &durable {
            if c.node(i).get(k).is_none() {
                missing.push((i, *k));
            }
        }
    }
    Explored {
        diverged: !c.digests_equal(&all),
        missing,
        settled,
    }
}

/// The late-duplicate snapshot livelock (test 5) as it happens on its own:
/// immediate durability, wipes, reordering and duplicates, no injection.
/// Node 0 ends standing inside a finished snapshot of node 3's log.
#[test]
fn explore_seed_132_livelocks_in_a_finished_snapshot() {
    let e = explore(132, false, true);
    assert!(e.settled, "seed 132 never settles");
}

/// Randomized exploration: `EXPLICIT=1` for explicit sync (crashes lose the
/// unsynced tail), `WIPES=1` to wipe nodes, `NOTRIM=1` to disable trimming,
/// `DEBUG_SEED=n` to dump one seed. About 1-2 s for 300 seeds.
#[test]
#[ignore = "exploration: run by hand"]
fn explore_variants() {
    let explicit = std::env::var("EXPLICIT").is_ok();
    let wipes = std::env::var("WIPES").is_ok();
    let mut bad = Vec::new();
    for seed in 0..300 {
        let e = explore(seed, explicit, wipes);
        if e.diverged || !e.missing.is_empty() || !e.settled {
            eprintln!(
                "seed {seed}: diverged={} settled={} missing={:?}",
                e.diverged, e.settled, e.missing
            );
            bad.push(seed);
        }
    }
    assert!(bad.is_empty(), "bad seeds: {bad:?}");
}

// ---------------------------------------------------------------------------
// 6. Trimming against non-durable state.
// ---------------------------------------------------------------------------

/// `trim_log` releases a durable entry whose version is superseded only by a
/// version in a *non-durable* entry (the key map already holds it). A crash
/// then loses the superseding entry, and the released one is gone too: node
/// 1 loses its own durable, acknowledged write of key 1. The echo on
/// reconnect covers only counters above the highest one retained, so node 0
/// never gives it back: the nodes diverge for good.
#[test]
fn trim_releases_entry_superseded_by_non_durable_write() {
    let mut c = ClusterBuilder::new(10, 2)
        .two_way(0, 1)
        .explicit_sync()
        .build();
    assert!(settle_syncing(&mut c, 10_000));
    c.put(1, key(1), labels("user"), b"v1"); // durable on 1 and 0
    c.put(1, key(2), labels("user"), b"w"); // a later durable own write
    assert!(settle_syncing(&mut c, 10_000));
    assert!(c.node(0).get(&key(1)).is_some());
    c.partition(&[&[0], &[1]]);
    c.put(1, key(1), labels("user"), b"v2"); // supersedes v1, never synced
    c.node_mut(1).trim_log().unwrap();
    c.crash(1);
    c.restart(1);
    c.heal();
    assert!(settle_syncing(&mut c, 60_000));
    assert!(
        c.node(1).get(&key(1)).is_some(),
        "node 1 lost its durable write v1 of key 1 (node 0 still shows {:?})",
        c.node(0)
            .get(&key(1))
            .and_then(|o| o.meta().map(|m| m.to_vec()))
    );
    assert!(c.digests_equal(&[0, 1]));
}

// ---------------------------------------------------------------------------
// 7. Version vectors cannot tell a lost own dot from a seen one.
// ---------------------------------------------------------------------------

/// Node 1 writes key 1 (dot n1#1); it escapes to node 0, then node 1
/// crashes and loses it. Before the echo can bring it back, node 1 writes
/// key 1 again (n1#1026, whose context lacks n1#1). On node 0, n1#1026 does
/// not supersede n1#1: both stand as siblings. On node 1 the echoed n1#1 is
/// "already seen" (the plain version vector says seen[n1] = 1026 covers 1)
/// and is ignored. The frontiers differ forever.
#[test]
fn lost_own_write_then_rewrite_diverges() {
    let mut c = ClusterBuilder::new(11, 2)
        .two_way(0, 1)
        .explicit_sync()
        .build();
    assert!(settle_syncing(&mut c, 10_000));
    c.put(1, key(1), labels("user"), b"lost on 1");
    run_syncing(&mut c, 300, &[0]);
    assert!(c.node(0).get(&key(1)).is_some(), "escaped to node 0");
    c.partition(&[&[0], &[1]]);
    c.crash(1);
    c.restart(1);
    assert!(c.node(1).get(&key(1)).is_none(), "lost on node 1");
    c.put(1, key(1), labels("user"), b"rewritten on 1");
    c.sync_storage(1);
    c.heal();
    assert!(settle_syncing(&mut c, 60_000));
    let sib = |i: usize| c.node(i).get(&key(1)).map_or(0, |o| o.siblings.len());
    assert!(
        c.digests_equal(&[0, 1]),
        "key 1: node 0 has {} siblings, node 1 has {}",
        sib(0),
        sib(1)
    );
}

/// Seeds of `explore_variants` (explicit sync, crashes) that diverged: a node
/// crashed twice, and its second restart announced only the latest earlier
/// origin's possibly lost dots, so the older ones never came back. Lost
/// ranges now accumulate across incarnations.
#[test]
fn explicit_sync_double_crash_seeds_converge() {
    for seed in [34, 119, 213, 216] {
        let e = explore(seed, true, false);
        assert!(
            e.settled && !e.diverged && e.missing.is_empty(),
            "seed {seed}"
        );
    }
}

// ---------------------------------------------------------------------------
// 8. Blob fetches for versions superseded while they waited.
// ---------------------------------------------------------------------------

/// Node 2 stages a recording from node 0 and fetches its blob (slowly);
/// node 1, which got the blob, supersedes the recording; node 0 is wiped
/// (its copy of the blob is gone) and re-seeded from node 1 with only the
/// successor, which it relays to node 2. Node 2 no longer needs the blob,
/// yet asked node 0 for it forever (`BlobWant`, `BlobMissing`, every ack
/// timeout): the cluster never settled. (Simulator seeds 48 and 85.)
#[test]
fn fetch_for_superseded_staged_version_is_dropped() {
    let mut c = ClusterBuilder::new(12, 3)
        .two_way(0, 1)
        .one_way(0, 2)
        .peer(0, 2, |p| p.bandwidth_bytes_per_s = Some(256 << 10))
        .build();
    c.run_until_settled(10_000).unwrap();
    c.put_recording(0, key(1), b"call", &audio(12, 4 << 20));
    c.run_for(1_000); // node 1 has it all, node 2 has the batch
    assert!(c.node(1).get(&key(1)).is_some());
    assert_eq!(c.node(2).staged_versions(), 1);
    c.put(1, key(1), labels("recording"), b"call, edited");
    c.run_for(500);
    c.wipe(0);
    let r = c.run_until_settled(600_000);
    assert!(
        r.is_ok(),
        "never settled ({r:?}); node 2: {}",
        c.node(2).blob_debug()
    );
    assert_eq!(c.node(2).staged_versions(), 0);
    assert!(c.digests_equal(&[0, 1, 2]));
}

// ---------------------------------------------------------------------------
// 9. A fetched blob named by a log entry that outlived it.
// ---------------------------------------------------------------------------

/// Node 1 (on disk, periodic) fetches a recording's blob and appends its
/// `BlobReady`; neither is synced, but more entries follow, enough for the
/// log to write its buffer to the file. A torn crash keeps the log's
/// unsynced frames but not the blob's bytes or name (each file keeps its
/// own prefix, as a real disk may), so after the restart node 1 believed
/// it held a blob it had cut short or lost: it served it with the wrong
/// length, and every peer refused the session as misbehaving, for good.
/// (Simulator seed 58.)
#[test]
fn blob_ready_never_outlives_its_blob_in_a_crash() {
    use recsync_engine::disk::CrashMode;
    use recsync_engine::seglog::{Durability, LogOptions};
    let data = audio(58, 40_000);
    for seed in 0..16u64 {
        let mut c = ClusterBuilder::new(58, 2)
            .one_way(0, 1)
            .on_disk(LogOptions {
                durability: Durability::Periodic,
                blob_chunk: 4 << 10,
                ..LogOptions::default()
            })
            .build();
        c.run_until_settled_syncing(10_000).expect("settles");
        let dot = c.put_recording(0, key(1), b"call", &data).dots[0];
        c.sync_storage(0);
        run_syncing(&mut c, 2_000, &[0]);
        let held = |c: &Cluster| {
            c.node(1)
                .key_state(&key(1))
                .is_some_and(|s| s.has_seen(&dot))
        };
        assert!(held(&c), "node 1 applied the recording");
        // Unsynced entries after the `BlobReady`, more than the log's write
        // buffer holds, so its frames reach the file.
        for k in 0..6 {
            c.put(1, key(100 + k), labels("user"), &[7; 60 << 10]);
        }
        c.crash_with(1, CrashMode::Torn { seed });
        c.restart(1);
        let hash = match &c.node(0).get(&key(1)).expect("written").siblings[0].body {
            recsync_engine::Body::Live { blob: Some(b), .. } => b.hash,
            _ => panic!("a recording"),
        };
        if c.node(1).has_blob(&hash) {
            let got = c.node(1).read_blob(&hash, 0, data.len()).expect("reads");
            assert!(
                got == data,
                "seed {seed}: node 1 claims a blob it cut short"
            );
        }
        c.run_until_settled_syncing(60_000).expect("settles");
        assert!(held(&c), "seed {seed}: node 1 has the recording");
        let got = c.node(1).read_blob(&hash, 0, data.len()).expect("reads");
        assert!(got == data, "seed {seed}: node 1 holds the whole blob");
    }
}

// ---------------------------------------------------------------------------
// 10. A storage error the node swallowed.
// ---------------------------------------------------------------------------

/// Node 0 (on disk) must reserve more dot counters before a write and the
/// metadata write fails. The write was refused, but the node did not mark
/// itself failed: the log refused every later write (fsyncgate) while
/// `failure()` said all was well, so a supervisor that restarts failed
/// nodes left it alone; it fail-stopped only later, at its next handshake,
/// and nothing it held ever left it again. (Simulator swarm seed 93.)
#[test]
fn failed_counter_reservation_fails_the_node() {
    use recsync_engine::disk::{CrashMode, SimFaults};
    use recsync_engine::seglog::{Durability, LogOptions};
    use recsync_engine::{StorageError, WriteError, WriteOp};
    use recsync_sim::cluster::put_req;
    let mut c = ClusterBuilder::new(93, 2)
        .two_way(0, 1)
        .all_nodes(|cfg| cfg.timing.counter_block = 1)
        .on_disk(LogOptions {
            // Entries wait in the write buffer: the metadata write is the
            // first to reach the disk.
            durability: Durability::Periodic,
            ..LogOptions::default()
        })
        .build();
    c.run_until_settled_syncing(10_000).expect("settles");
    c.put(0, key(1), labels("user"), b"before");
    c.run_until_settled_syncing(10_000).expect("settles");
    let fail_writes = |c: &mut Cluster, n: u32| {
        let d = c.node_mut(0).storage_mut().disk_mut().expect("on disk");
        d.fs.set_faults(SimFaults {
            failing_writes: n,
            ..Default::default()
        });
    };
    fail_writes(&mut c, 1);
    // With one counter reserved at a time, one of two writes reserves more.
    let mut refused = None;
    for k in 0..2 {
        let w = WriteOp::Put(put_req(key(10 + k), labels("user"), b"during"));
        if let Err(e) = c.try_write(0, vec![w]) {
            refused = Some(e);
            break;
        }
    }
    assert!(
        matches!(
            refused,
            Some(WriteError::Storage(StorageError::Io {
                op: "store_meta",
                ..
            }))
        ),
        "the reservation failed: {refused:?}"
    );
    assert!(
        c.node(0).failure().is_some(),
        "a storage error marks the node failed"
    );
    let again = c.try_write(0, vec![WriteOp::Delete(key(1))]);
    assert!(matches!(again, Err(WriteError::Failed)), "{again:?}");
    // The supervisor restarts the failed node on its repaired disk; the
    // pair converges again.
    fail_writes(&mut c, 0);
    c.crash_with(0, CrashMode::LoseUnsynced);
    c.restart(0);
    c.put(0, key(2), labels("user"), b"after");
    c.run_until_settled_syncing(60_000).expect("settles");
    assert!(c.digests_equal(&[0, 1]));
    assert!(c.node(1).get(&key(2)).is_some());
}

// ---------------------------------------------------------------------------
// 11. Lost own writes come back along any path, not only from direct peers.
// ---------------------------------------------------------------------------

/// In the one-way ring 0 -> 1 -> 2 -> 0, node 0's non-durable write reaches
/// node 2 only through node 1 (node 0 gets nothing from node 1), while node
/// 0 runs as the write's origin, so node 2 does not queue it for node 0.
/// Node 0 crashes and loses it; node 2, not a peer it was sent to, echoes
/// it back. Then the same again with a second write and a second crash:
/// both lost ranges are announced and honoured. (Guards the rule of the
/// simulator's oracle: a crashed origin is owed its lost write by any
/// holder whose links lead to it, and only by one; swarm seed 6.)
#[test]
fn lost_own_write_comes_back_through_a_relay() {
    let mut c = ClusterBuilder::new(5, 3)
        .one_way(0, 1)
        .one_way(1, 2)
        .one_way(2, 0)
        .explicit_sync()
        .build();
    assert!(settle_syncing(&mut c, 10_000));
    for k in [1, 2] {
        c.put(0, key(k), labels("user"), b"lost at its origin");
        run_syncing(&mut c, 2_000, &[1, 2]);
        assert!(c.node(2).get(&key(k)).is_some(), "key {k} at node 2");
        c.crash(0);
        c.restart(0);
        assert!(c.node(0).get(&key(k)).is_none(), "key {k} lost on node 0");
        assert!(settle_syncing(&mut c, 60_000));
        assert!(c.node(0).get(&key(k)).is_some(), "key {k} echoed to node 0");
    }
    assert!(c.node(0).get(&key(1)).is_some());
    assert!(c.digests_equal(&[0, 1, 2]));
}

/// Swarm seed 890 (generator 2): a batch's entry was written but its sync
/// failed, so the node failed before applying it and reported nothing; the
/// entry was there after the restart and the replay brought a conflict
/// back in silence. A node reports its standing conflicts at open.
#[test]
fn standing_conflicts_are_reported_again_at_open() {
    use recsync_engine::Event;
    let mut c = ClusterBuilder::new(890, 2).two_way(0, 1).build();
    c.partition(&[&[0], &[1]]);
    let a = c.put(0, key(1), labels("user"), b"from A").dots[0];
    let b = c.put(1, key(1), labels("user"), b"from B").dots[0];
    c.heal();
    c.run_until_settled(60_000).unwrap();
    let before = c.events(0).len();
    c.crash(0);
    c.restart(0);
    let again = c.events(0)[before..].iter().any(|e| match e {
        Event::Conflict(r) => {
            r.at_open
                && r.key == key(1)
                && r.versions.iter().any(|v| v.dot == a)
                && r.versions.iter().any(|v| v.dot == b)
        }
        _ => false,
    });
    assert!(again, "the standing conflict on key 1 is reported at open");
    // A key without concurrent versions is not.
    c.put(0, key(2), labels("user"), b"alone");
    c.run_until_settled(60_000).unwrap();
    let before = c.events(0).len();
    c.crash(0);
    c.restart(0);
    assert!(!c.events(0)[before..]
        .iter()
        .any(|e| matches!(e, Event::Conflict(r) if r.key == key(2))));
}

/// Review: a batch listing a version after its successor (a crafted frame,
/// or a sender that orders them so) made the receiver apply the successor
/// first and then assert that the superseded one was unseen: a panic from
/// network input. A batch now drops what another of its versions
/// supersedes.
#[test]
fn a_batch_listing_a_version_after_its_successor_is_applied_safely() {
    use recsync_engine::wire::{encode_frame, Batch, Cursor, Message, Position};
    let mut c = ClusterBuilder::new(31, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.schedule = Schedule::Manual)
        .build();
    c.put(0, key(1), labels("user"), b"first");
    let first = c.node(0).get(&key(1)).unwrap().siblings[0].clone();
    c.put(0, key(1), labels("user"), b"second");
    let second = c.node(0).get(&key(1)).unwrap().siblings[0].clone();
    assert!(second.supersedes(&first));
    c.run_for(2_000);
    assert!(
        c.node(1).get(&key(1)).is_none(),
        "nothing sent before sync now"
    );
    let replica = c.node(0).log_id();
    let at = |after| Cursor {
        replica,
        pos: Position::Snapshot {
            at_lsn: 1_000,
            after,
        },
    };
    let crafted = Batch {
        prev: at(None),
        next: at(Some(key(1))),
        versions: vec![second.clone(), first],
    };
    c.inject(1, 0, &encode_frame(&Message::Batch(crafted)))
        .unwrap();
    let view = c.node(1).get(&key(1)).unwrap();
    assert_eq!(view.siblings, vec![second]);
}
