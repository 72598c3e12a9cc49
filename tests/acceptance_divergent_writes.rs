//! The classic divergent-writes table (SPEC §3), for every conflict policy.
//!
//! Before the partition users 1, 3, 4, 5, 6, 7 exist on A and B. During it
//! (times in ms after the partition):
//!
//! | t   | A                     | B                         |
//! |-----|-----------------------|---------------------------|
//! | 100 | write users/1         |                           |
//! | 110 |                       | write users/2             |
//! | 120 | write users/3         |                           |
//! | 130 |                       | write users/3             |
//! | 140 | delete users/4        |                           |
//! | 150 |                       | delete users/5            |
//! | 160 | delete users/6        |                           |
//! | 170 |                       | write users/6             |
//! | 175 | write users/7         |                           |
//! | 180 | batch: all active     |                           |
//! |     | (1, 3, 5, 7)          |                           |
//! | 200 |                       | batch: delete all         |
//! |     |                       | (1, 2, 3, 4, 6, 7)        |
//! | 210 |                       | write users/8             |
//!
//! Then heal. Concurrent pairs: users 1, 3, 5, 7 (A's "active" against B's
//! delete) and 4, 6 (two deletes: identical content). Users 2 and 8 only
//! ever changed on B.

use recsync_engine::{ConflictPolicy, Dot, Event, Key, Name, Resolution, WriteOp, WriteReceipt};
use recsync_sim::cluster::{labels, node_id, put_req, ClusterBuilder};
use recsync_sim::Cluster;
use std::collections::{BTreeMap, BTreeSet};

const A: usize = 0;
const B: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The visible value is this metadata.
    Value(&'static str),
    Deleted,
    /// Manual policy: this many siblings wait for the application.
    Siblings(usize),
}
use Outcome::*;

fn user(n: u128) -> Key {
    Key::from_u128(n)
}

/// The last version each side wrote per user during the partition.
type Finals = BTreeMap<u128, [Option<Dot>; 2]>;

fn note(finals: &mut Finals, side: usize, keys: &[u128], r: &WriteReceipt) {
    assert_eq!(keys.len(), r.dots.len());
    for (k, d) in keys.iter().zip(&r.dots) {
        finals.entry(*k).or_default()[side] = Some(*d);
    }
}

fn run_table(policy: ConflictPolicy) -> (Cluster, Finals) {
    let mut f = Finals::new();
    let mut c = ClusterBuilder::new(7, 2)
        .two_way(A, B)
        .all_nodes(|cfg| {
            cfg.classes
                .insert(Name::new("user").unwrap(), policy.clone());
        })
        .build();
    for n in [1, 3, 4, 5, 6, 7] {
        c.put(A, user(n), labels("user"), b"initial");
    }
    c.run_until_settled(60_000)
        .expect("initial replication settles");
    assert!(c.digests_equal(&[A, B]));

    c.partition(&[&[A], &[B]]);
    let t0 = c.now_ms();
    let at = |c: &mut Cluster, dt: u64| c.run_until(t0 + dt);
    let u = || labels("user");
    at(&mut c, 100);
    let r = c.put(A, user(1), u(), b"A:1");
    note(&mut f, A, &[1], &r);
    at(&mut c, 110);
    let r = c.put(B, user(2), u(), b"B:2");
    note(&mut f, B, &[2], &r);
    at(&mut c, 120);
    let r = c.put(A, user(3), u(), b"A:3");
    note(&mut f, A, &[3], &r);
    at(&mut c, 130);
    let r = c.put(B, user(3), u(), b"B:3");
    note(&mut f, B, &[3], &r);
    at(&mut c, 140);
    let r = c.delete(A, user(4));
    note(&mut f, A, &[4], &r);
    at(&mut c, 150);
    let r = c.delete(B, user(5));
    note(&mut f, B, &[5], &r);
    at(&mut c, 160);
    let r = c.delete(A, user(6));
    note(&mut f, A, &[6], &r);
    at(&mut c, 170);
    let r = c.put(B, user(6), u(), b"B:6");
    note(&mut f, B, &[6], &r);
    at(&mut c, 175);
    let r = c.put(A, user(7), u(), b"A:7");
    note(&mut f, A, &[7], &r);
    at(&mut c, 180);
    let keys = live_users(&c, A);
    assert_eq!(keys, [1, 3, 5, 7].map(user).to_vec(), "the users A knows");
    let active = keys
        .iter()
        .map(|k| WriteOp::Put(put_req(*k, u(), b"active")));
    let r = c.try_write(A, active.collect()).expect("batch on A");
    note(&mut f, A, &[1, 3, 5, 7], &r);
    at(&mut c, 200);
    let keys = live_users(&c, B);
    assert_eq!(
        keys,
        [1, 2, 3, 4, 6, 7].map(user).to_vec(),
        "the users B knows"
    );
    let delete_all = keys.iter().map(|k| WriteOp::Delete(*k));
    let r = c.try_write(B, delete_all.collect()).expect("batch on B");
    note(&mut f, B, &[1, 2, 3, 4, 6, 7], &r);
    at(&mut c, 210);
    let r = c.put(B, user(8), u(), b"B:8");
    note(&mut f, B, &[8], &r);

    c.heal();
    c.run_until_settled(120_000)
        .expect("replication settles after heal");
    (c, f)
}

/// The live users a node knows, in key order.
fn live_users(c: &Cluster, i: usize) -> Vec<Key> {
    c.node(i)
        .keys()
        .filter(|(k, _)| {
            c.node(i)
                .get(k)
                .is_some_and(|o| !o.is_deleted() && o.winner.is_some())
        })
        .map(|(k, _)| *k)
        .collect()
}

fn outcome(c: &Cluster, i: usize, n: u128) -> Outcome {
    let o = c.node(i).get(&user(n)).expect("key exists");
    match o.value() {
        None => Siblings(o.siblings.len()),
        Some(v) if v.body.is_tombstone() => Deleted,
        Some(_) => Value(match o.meta().unwrap_or_default() {
            b"active" => "active",
            b"B:8" => "B:8",
            other => panic!("unexpected value {:?}", String::from_utf8_lossy(other)),
        }),
    }
}

/// Per key, the pairs of concurrent dots reported on node `i`, and the
/// resolution of the last report.
fn conflicts(c: &Cluster, i: usize) -> BTreeMap<u128, (BTreeSet<(Dot, Dot)>, Resolution)> {
    let mut out: BTreeMap<u128, (BTreeSet<(Dot, Dot)>, Resolution)> = BTreeMap::new();
    for e in c.events(i) {
        let Event::Conflict(r) = e else { continue };
        let entry = out
            .entry(r.key.0.as_u128())
            .or_insert_with(|| (BTreeSet::new(), r.resolution));
        entry.1 = r.resolution;
        for a in r.versions.iter().filter(|v| v.origin == node_id(A)) {
            for b in r.versions.iter().filter(|v| v.origin == node_id(B)) {
                entry.0.insert((a.dot, b.dot));
            }
        }
    }
    out
}

fn check(policy: ConflictPolicy, expected: [(u128, Outcome); 8], resolution: Resolution) {
    let (c, finals) = run_table(policy);
    assert!(c.digests_equal(&[A, B]), "A and B must end byte-identical");
    for (n, want) in expected {
        for i in [A, B] {
            assert_eq!(outcome(&c, i, n), want, "users/{n} on node {i}");
        }
    }
    for i in [A, B] {
        let got = conflicts(&c, i);
        let keys: Vec<u128> = got.keys().copied().collect();
        assert_eq!(keys, vec![1, 3, 4, 5, 6, 7], "keys in conflict on node {i}");
        for (n, (pairs, last)) in got {
            let [Some(a), Some(b)] = finals[&n] else {
                panic!("users/{n} changed on both sides")
            };
            assert!(
                pairs.contains(&(a, b)),
                "users/{n}: final versions reported on node {i}"
            );
            let want = if n == 4 || n == 6 {
                Resolution::Identical
            } else {
                resolution
            };
            assert_eq!(last, want, "users/{n}: resolution on node {i}");
        }
    }
}

#[test]
fn acceptance_divergent_writes_last_writer_wins() {
    // B's delete-all (t=200) is later than A's batch (t=180), except for
    // users/5, which B deleted at t=150, before A set it active.
    check(
        ConflictPolicy::LastWriterWins,
        [
            (1, Deleted),
            (2, Deleted),
            (3, Deleted),
            (4, Deleted),
            (5, Value("active")),
            (6, Deleted),
            (7, Deleted),
            (8, Value("B:8")),
        ],
        Resolution::LastWriterWins,
    );
}

#[test]
fn acceptance_divergent_writes_priority_a_over_b() {
    check(
        ConflictPolicy::Priority(vec![node_id(A), node_id(B)]),
        [
            (1, Value("active")),
            (2, Deleted),
            (3, Value("active")),
            (4, Deleted),
            (5, Value("active")),
            (6, Deleted),
            (7, Value("active")),
            (8, Value("B:8")),
        ],
        Resolution::Priority,
    );
}

#[test]
fn acceptance_divergent_writes_priority_b_over_a() {
    check(
        ConflictPolicy::Priority(vec![node_id(B), node_id(A)]),
        [
            (1, Deleted),
            (2, Deleted),
            (3, Deleted),
            (4, Deleted),
            (5, Deleted),
            (6, Deleted),
            (7, Deleted),
            (8, Value("B:8")),
        ],
        Resolution::Priority,
    );
}

#[test]
fn acceptance_divergent_writes_manual() {
    check(
        ConflictPolicy::Manual,
        [
            (1, Siblings(2)),
            (2, Deleted),
            (3, Siblings(2)),
            (4, Deleted),
            (5, Siblings(2)),
            (6, Deleted),
            (7, Siblings(2)),
            (8, Value("B:8")),
        ],
        Resolution::Manual,
    );
}

#[test]
fn acceptance_divergent_writes_manual_resolution_converges() {
    let (mut c, _) = run_table(ConflictPolicy::Manual);
    let mut unresolved = c.node(A).unresolved_conflicts();
    assert_eq!(unresolved, [1, 3, 5, 7].map(user).to_vec());
    // The application on B settles each by writing over the siblings.
    for k in unresolved.drain(..) {
        c.put(B, k, labels("user"), b"active");
    }
    c.run_until_settled(60_000).expect("settles");
    assert!(c.digests_equal(&[A, B]));
    for i in [A, B] {
        assert!(c.node(i).unresolved_conflicts().is_empty());
        for n in [1, 3, 5, 7] {
            assert_eq!(outcome(&c, i, n), Value("active"));
        }
    }
}
