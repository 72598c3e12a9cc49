//! Resume after a cut (SPEC §4): a session cut at random points 100 times;
//! the receiver ends with exactly every record, and after each cut the
//! sender re-sends at most what was unacknowledged.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsync_engine::wire::Position;
use recsync_engine::{Dot, Key, Lsn};
use recsync_sim::cluster::{labels, node_id, ClusterBuilder};
use recsync_sim::NetConfig;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn acceptance_resume_after_100_random_cuts() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let mut c = ClusterBuilder::new(31, 2)
        .one_way(0, 1)
        .all_nodes(|cfg| {
            cfg.limits.send_batch_versions_max = 16;
            cfg.limits.inflight_batches_max = 3;
            cfg.timing.reconnect_initial_ms = 20;
            cfg.timing.reconnect_max_ms = 100;
        })
        .net(NetConfig {
            latency_ms_min: 5,
            latency_ms_max: 20,
            ..NetConfig::default()
        })
        .build();
    let total = 3000u128;
    let mut lsn_of: BTreeMap<Dot, Lsn> = BTreeMap::new();
    let write = |c: &mut recsync_sim::Cluster, lsn_of: &mut BTreeMap<Dot, Lsn>, n: u128| {
        let r = c.put(0, Key::from_u128(n), labels("recording"), &[7; 200]);
        lsn_of.insert(r.dots[0], r.lsn);
    };
    for n in 0..total / 2 {
        write(&mut c, &mut lsn_of, n);
    }
    let mut next = total / 2;
    let mut ever_sent: BTreeSet<Dot> = BTreeSet::new();
    let mut resent_total = 0usize;
    for cut in 0..100 {
        let seen_batches = c.sent.len();
        c.run_for(rng.gen_range(1..120));
        for b in &c.sent[seen_batches..] {
            ever_sent.extend(b.versions.iter().map(|(_, d, _)| *d));
        }
        // Keep writing while the link flaps.
        for _ in 0..rng.gen_range(0..30) {
            if next < total {
                write(&mut c, &mut lsn_of, next);
                next += 1;
            }
        }
        let acked = match c.node(0).peer_acked(&node_id(1)).map(|c| c.pos) {
            Some(Position::Log { lsn }) => lsn,
            _ => 0,
        };
        c.cut(0, 1);
        // Until the next cut, whatever is sent again must have been
        // unacknowledged at this cut.
        let before = c.sent.len();
        c.run_for(rng.gen_range(50..300));
        for b in &c.sent[before..] {
            for (_, dot, _) in &b.versions {
                if !ever_sent.insert(*dot) {
                    resent_total += 1;
                    assert!(
                        lsn_of[dot] > acked,
                        "cut {cut}: re-sent {dot:?} at lsn {} though {acked} was acknowledged",
                        lsn_of[dot]
                    );
                }
            }
        }
    }
    while next < total {
        write(&mut c, &mut lsn_of, next);
        next += 1;
    }
    c.run_until_settled(600_000)
        .expect("settles after the cuts");
    let held: BTreeSet<u128> = c.node(1).keys().map(|(k, _)| k.0.as_u128()).collect();
    assert_eq!(
        held,
        (0..total).collect::<BTreeSet<_>>(),
        "exactly every record"
    );
    assert!(c.digests_equal(&[0, 1]));
    eprintln!("resume: 100 cuts, {resent_total} versions re-sent, all unacknowledged at their cut");
    // The cuts did force re-sends (the test exercised something).
    assert!(resent_total > 0);
}
