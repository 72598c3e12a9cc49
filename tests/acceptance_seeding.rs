//! Seeding (SPEC §4): a new node and a wiped node converge from an existing
//! cluster of 3, by snapshot then log tail.

use recsync_engine::{Key, PeerConfig};
use recsync_sim::cluster::{labels, node_id, ClusterBuilder};
use recsync_sim::Cluster;

fn populate(c: &mut Cluster, base: u128) {
    for i in 0..3usize {
        for n in 0..40u128 {
            let k = Key::from_u128(base + n);
            c.put(i, k, labels("user"), format!("{i}/{n}").as_bytes());
        }
        // Some deletes and some conflicts too.
        c.delete(i, Key::from_u128(base + i as u128));
    }
}

#[test]
fn acceptance_seeding_new_node_joins_cluster_of_three() {
    // Node 3 exists but is not linked yet.
    let mut c = ClusterBuilder::new(41, 4)
        .two_way(0, 1)
        .two_way(1, 2)
        .two_way(0, 2)
        .build();
    populate(&mut c, 0);
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2]));
    assert_eq!(c.node(3).keys().count(), 0);
    // Add node 3, linked both ways to every other node.
    for i in 0..3 {
        c.reconfigure(i, |cfg| cfg.peers.push(PeerConfig::two_way(node_id(3))));
    }
    c.reconfigure(3, |cfg| {
        cfg.peers = (0..3).map(|i| PeerConfig::two_way(node_id(i))).collect();
    });
    // Writes keep flowing while it seeds.
    populate(&mut c, 1000);
    c.run_until_settled(120_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2, 3]));
    assert_eq!(c.node(3).keys().count(), c.node(0).keys().count());
}

#[test]
fn acceptance_seeding_wiped_node_converges() {
    let mut c = ClusterBuilder::new(42, 3).mesh().build();
    populate(&mut c, 0);
    c.run_until_settled(60_000).unwrap();
    let old_replica = c.node(1).replica_id();
    c.wipe(1);
    assert_ne!(
        c.node(1).replica_id(),
        old_replica,
        "a wiped node is a new replica"
    );
    assert_eq!(c.node(1).keys().count(), 0);
    populate(&mut c, 2000);
    c.run_until_settled(120_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2]));
    // Its own pre-wipe writes came back from the others.
    let k = Key::from_u128(20);
    assert_eq!(
        c.node(1).get(&k).unwrap().meta(),
        c.node(0).get(&k).unwrap().meta()
    );
    // And new writes on it flow out again under its new identity.
    c.put(1, Key::from_u128(9999), labels("user"), b"after wipe");
    c.run_until_settled(60_000).unwrap();
    assert!(c.node(2).get(&Key::from_u128(9999)).is_some());
    assert!(c.digests_equal(&[0, 1, 2]));
}
