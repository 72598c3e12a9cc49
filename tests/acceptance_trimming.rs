//! Log trimming (SPEC §4): an entry is released once every peer that should
//! get it acknowledged it and none of its versions still stands. Trimming
//! changes neither the state, nor a restart's rebuild, nor resumption.

use recsync_engine::Key;
use recsync_sim::cluster::{labels, ClusterBuilder};

#[test]
fn acceptance_trimming_keeps_state_and_resume() {
    let mut c = ClusterBuilder::new(71, 3)
        .two_way(0, 1)
        .one_way(1, 2)
        .build();
    // Many overwrites of few keys: most entries become dead.
    for round in 0..50u128 {
        for k in 0..10u128 {
            c.put(
                (round % 2) as usize,
                Key::from_u128(k),
                labels("user"),
                &round.to_le_bytes(),
            );
        }
        c.run_for(20);
    }
    c.delete(0, Key::from_u128(3));
    c.run_until_settled(60_000).unwrap();
    let digests: Vec<_> = (0..3).map(|i| c.node(i).state_digest()).collect();
    let before: Vec<usize> = (0..3).map(|i| c.node(i).storage().retained()).collect();
    for i in 0..3 {
        c.node_mut(i).trim_log().unwrap();
    }
    let after: Vec<usize> = (0..3).map(|i| c.node(i).storage().retained()).collect();
    for i in 0..3 {
        assert!(
            after[i] * 4 < before[i],
            "node {i}: {} of {} entries kept",
            after[i],
            before[i]
        );
        assert_eq!(c.node(i).state_digest(), digests[i]);
    }
    // The live tombstone's entry is kept.
    assert!(c.node(0).get(&Key::from_u128(3)).unwrap().is_deleted());
    // A restart rebuilds the same state from the trimmed log.
    c.crash(1);
    c.restart(1);
    assert_eq!(c.node(1).state_digest(), digests[1]);
    // Replication resumes from the acknowledged points, and a wiped node is
    // seeded by snapshot although the log no longer holds the history.
    c.wipe(2);
    c.put(0, Key::from_u128(100), labels("user"), b"after trim");
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2]));
    assert!(c.node(2).get(&Key::from_u128(100)).is_some());
}

#[test]
fn acceptance_trimming_waits_for_a_disconnected_peer() {
    let mut c = ClusterBuilder::new(72, 2).one_way(0, 1).build();
    c.run_until_settled(10_000).unwrap();
    c.partition(&[&[0], &[1]]);
    for round in 0..20u128 {
        c.put(0, Key::from_u128(1), labels("user"), &round.to_le_bytes());
    }
    let before = c.node(0).storage().retained();
    c.node_mut(0).trim_log().unwrap();
    // Superseded, but not yet acknowledged by the peer: nothing released
    // from the backlog the peer still needs.
    assert_eq!(c.node(0).storage().retained(), before);
    c.heal();
    c.run_until_settled(60_000).unwrap();
    c.node_mut(0).trim_log().unwrap();
    assert_eq!(
        c.node(0).storage().retained(),
        1,
        "only the standing version stays"
    );
    assert!(c.digests_equal(&[0, 1]));
}

#[test]
fn acceptance_trimming_peer_restored_from_backup_is_reseeded() {
    let mut c = ClusterBuilder::new(73, 2).two_way(0, 1).build();
    for k in 0..20u128 {
        c.put(0, Key::from_u128(k), labels("user"), b"v1");
    }
    c.run_until_settled(60_000).unwrap();
    let backup = c.backup(1);
    for k in 0..20u128 {
        c.put(0, Key::from_u128(k), labels("user"), b"v2");
        c.put(0, Key::from_u128(100 + k), labels("user"), b"new");
    }
    c.run_until_settled(60_000).unwrap();
    c.node_mut(0).trim_log().unwrap();
    // Node 1 comes back from its old backup: behind what it acknowledged.
    c.restore(1, backup);
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1]));
    assert_eq!(
        c.node(1).get(&Key::from_u128(5)).unwrap().meta(),
        Some(&b"v2"[..])
    );
    // ... and node 0 restarted in between still knows where node 1 stood.
    c.crash(0);
    c.restart(0);
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1]));
}
