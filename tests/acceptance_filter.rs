//! Selective replication (SPEC §4): per-peer include/exclude by class,
//! tenant and group. A filtered-out record is never sent, also not through a
//! relay.

use recsync_engine::{Key, Labels, Name};
use recsync_sim::cluster::ClusterBuilder;
use recsync_sim::Cluster;

fn l(class: &str, tenant: &str, group: &str) -> Labels {
    Labels::parse(class, tenant, group).unwrap()
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Writes a grid of objects over classes, tenants and groups on node `i`.
fn write_grid(c: &mut Cluster, i: usize) -> usize {
    let mut n = 0u128;
    for class in ["user", "recording", "log"] {
        for tenant in ["acme", "globex"] {
            for group in ["sales", "support"] {
                for _ in 0..3 {
                    n += 1;
                    c.put(
                        i,
                        Key::from_u128(i as u128 * 10_000 + n),
                        l(class, tenant, group),
                        b"m",
                    );
                }
            }
        }
    }
    n as usize
}

/// Versions that crossed `from -> to` and match `pred`.
fn sent_matching(c: &Cluster, from: usize, to: usize, pred: impl Fn(&Labels) -> bool) -> usize {
    c.sent
        .iter()
        .filter(|b| b.from == from && b.to == to)
        .flat_map(|b| b.versions.iter())
        .filter(|(_, _, labels)| pred(labels))
        .count()
}

fn held_matching(c: &Cluster, i: usize, pred: impl Fn(&Labels) -> bool) -> usize {
    c.node(i)
        .keys()
        .filter(|(_, s)| s.siblings.iter().any(|s| pred(&s.version.labels)))
        .count()
}

#[test]
fn acceptance_filter_by_class() {
    let mut c = ClusterBuilder::new(11, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| {
            p.filter.include_classes.insert(name("user"));
        })
        .build();
    let total = write_grid(&mut c, 0);
    c.run_until_settled(60_000).unwrap();
    assert_eq!(sent_matching(&c, 0, 1, |l| l.class.as_str() != "user"), 0);
    assert_eq!(
        sent_matching(&c, 0, 1, |l| l.class.as_str() == "user"),
        total / 3
    );
    assert_eq!(c.node(1).keys().count(), total / 3);
    assert_eq!(
        c.node(1)
            .peer_status(&recsync_sim::cluster::node_id(0))
            .unwrap()
            .pending_versions,
        0
    );
}

#[test]
fn acceptance_filter_by_tenant() {
    let mut c = ClusterBuilder::new(12, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| {
            p.filter.exclude_tenants.insert(name("acme"));
        })
        .build();
    let total = write_grid(&mut c, 0);
    c.run_until_settled(60_000).unwrap();
    assert_eq!(sent_matching(&c, 0, 1, |l| l.tenant.as_str() == "acme"), 0);
    assert_eq!(held_matching(&c, 1, |l| l.tenant.as_str() == "acme"), 0);
    assert_eq!(c.node(1).keys().count(), total / 2);
}

#[test]
fn acceptance_filter_by_group() {
    let mut c = ClusterBuilder::new(13, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| {
            p.filter.include_groups.insert(name("support"));
            p.filter.exclude_classes.insert(name("log"));
        })
        .build();
    let total = write_grid(&mut c, 0);
    c.run_until_settled(60_000).unwrap();
    let unwanted = |l: &Labels| l.group.as_str() != "support" || l.class.as_str() == "log";
    assert_eq!(sent_matching(&c, 0, 1, unwanted), 0);
    assert_eq!(c.node(1).keys().count(), total / 2 * 2 / 3);
}

#[test]
fn acceptance_filter_not_bypassed_by_relay() {
    // A -> B carries no logs; B -> C carries no tenant acme. A's writes
    // reach C only through B.
    let mut c = ClusterBuilder::new(14, 3)
        .one_way(0, 1)
        .one_way(1, 2)
        .peer(0, 1, |p| {
            p.filter.exclude_classes.insert(name("log"));
        })
        .peer(1, 2, |p| {
            p.filter.exclude_tenants.insert(name("acme"));
        })
        .build();
    write_grid(&mut c, 0);
    write_grid(&mut c, 1);
    c.run_until_settled(60_000).unwrap();
    assert_eq!(sent_matching(&c, 0, 1, |l| l.class.as_str() == "log"), 0);
    assert_eq!(sent_matching(&c, 1, 2, |l| l.tenant.as_str() == "acme"), 0);
    assert_eq!(held_matching(&c, 2, |l| l.tenant.as_str() == "acme"), 0);
    // C holds B's non-acme records (18) and A's non-acme, non-log ones (12).
    assert_eq!(c.node(2).keys().count(), 18 + 12);
    // B's logs reach C (only A -> B excludes logs).
    assert_eq!(held_matching(&c, 2, |l| l.class.as_str() == "log"), 6);
}
