//! Topologies (SPEC §4): one-way, chain with relay, ring, star. A record
//! never loops and, in steady state, crosses each link at most once.

use recsync_engine::{Dot, Key};
use recsync_sim::cluster::{labels, ClusterBuilder};
use recsync_sim::Cluster;
use std::collections::BTreeMap;

/// How many times each dot crossed each directed link.
fn crossings(c: &Cluster) -> BTreeMap<(usize, usize, Dot), usize> {
    let mut m = BTreeMap::new();
    for b in &c.sent {
        for (_, dot, _) in &b.versions {
            *m.entry((b.from, b.to, *dot)).or_insert(0) += 1;
        }
    }
    m
}

fn key(n: u128) -> Key {
    Key::from_u128(n)
}

#[test]
fn acceptance_topology_one_way() {
    let mut c = ClusterBuilder::new(1, 2).one_way(0, 1).build();
    c.put(0, key(1), labels("user"), b"from A");
    c.put(1, key(2), labels("user"), b"from B");
    c.run_until_settled(60_000).unwrap();
    c.run_for(10_000);
    assert!(c.node(1).get(&key(1)).is_some(), "A's write reaches B");
    assert!(
        c.node(0).get(&key(2)).is_none(),
        "B's write never reaches A"
    );
    assert!(c.sent.iter().all(|b| (b.from, b.to) == (0, 1)));
}

#[test]
fn acceptance_topology_chain_relays() {
    let mut c = ClusterBuilder::new(2, 3)
        .one_way(0, 1)
        .one_way(1, 2)
        .build();
    for n in 0..50 {
        c.put(0, key(n), labels("user"), b"x");
    }
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2]));
    assert_eq!(c.node(2).keys().count(), 50);
    // C is not a peer of A: everything it has came through B.
    assert!(c
        .sent
        .iter()
        .all(|b| (b.from, b.to) == (0, 1) || (b.from, b.to) == (1, 2)));
}

#[test]
fn acceptance_topology_ring_terminates_once_per_link() {
    // A -> B -> C -> A
    let mut c = ClusterBuilder::new(3, 3)
        .one_way(0, 1)
        .one_way(1, 2)
        .one_way(2, 0)
        .build();
    c.run_until_settled(60_000).unwrap();
    let mut writes = 0;
    for round in 0..20u128 {
        for i in 0..3 {
            c.put(i, key(round * 3 + i as u128), labels("user"), b"r");
            writes += 1;
        }
        c.run_for(50);
    }
    c.run_until_settled(60_000).expect("the ring terminates");
    // Nothing moves any more.
    let sent_before = c.sent.len();
    c.run_for(60_000);
    assert_eq!(c.sent.len(), sent_before, "no traffic once settled");
    assert!(c.digests_equal(&[0, 1, 2]));
    let x = crossings(&c);
    assert!(x.values().all(|&n| n == 1), "a record crossed a link twice");
    // Each write crosses exactly the two links that lead away from its
    // origin before reaching the node before it: 2 crossings per write.
    assert_eq!(x.len(), writes * 2);
}

#[test]
fn acceptance_topology_star_with_five_leaves() {
    let mut b = ClusterBuilder::new(4, 6);
    for leaf in 1..=5 {
        b = b.two_way(0, leaf);
    }
    let mut c = b.build();
    for leaf in 1..=5usize {
        for n in 0..10u128 {
            c.put(leaf, key(leaf as u128 * 100 + n), labels("user"), b"leaf");
        }
    }
    c.put(0, key(999), labels("user"), b"hub");
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2, 3, 4, 5]));
    assert_eq!(c.node(3).keys().count(), 51);
    let x = crossings(&c);
    assert!(x.values().all(|&n| n == 1), "a record crossed a link twice");
    // A leaf's write goes leaf -> hub, then hub -> each of the 4 other
    // leaves; the hub's own write goes to 5 leaves.
    assert_eq!(x.len(), 50 * 5 + 5);
}

#[test]
fn acceptance_topology_mesh_of_four_converges() {
    let mut c = ClusterBuilder::new(5, 4).mesh().build();
    for i in 0..4usize {
        for n in 0..25u128 {
            c.put(i, key(n), labels("user"), format!("{i}:{n}").as_bytes());
        }
    }
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2, 3]));
    let x = crossings(&c);
    assert!(x.values().all(|&n| n == 1), "a record crossed a link twice");
}
