//! Tombstone purge (SPEC §4): with `tombstone_purge` on, a delete's
//! tombstone is forgotten once it is stable on every member; nothing it
//! superseded comes back, not through a late message nor a restart; a key
//! written again after the purge replicates as a fresh key everywhere.

use recsync_engine::storage::EntryBody;
use recsync_engine::{BlobRef, PutRequest, WriteOp};
use recsync_engine::{
    ConfigError, ConflictPolicy, Event, Key, Name, OpenError, PeerConfig, Storage,
};
use recsync_sim::cluster::{labels, node_id, Cluster, ClusterBuilder};

fn purging(seed: u64, n: usize) -> ClusterBuilder {
    ClusterBuilder::new(seed, n).mesh().all_nodes(|c| {
        c.tombstone_purge = true;
        c.timing.trim_interval_ms = 1_000;
    })
}

/// One put of an atomic batch.
fn put_op(key: Key, class: &str, meta: &[u8], blob: Option<BlobRef>) -> WriteOp {
    WriteOp::Put(PutRequest {
        key,
        labels: labels(class),
        meta: meta.to_vec(),
        blob,
    })
}

fn purged_at(c: &Cluster, i: usize, key: Key) -> bool {
    c.events(i).iter().any(|e| match e {
        Event::TombstonesPurged { keys } => keys.iter().any(|(k, _)| *k == key),
        _ => false,
    })
}

/// Runs until every node purged `key` (or gives up after `max_ms`).
fn run_until_purged(c: &mut Cluster, key: Key, max_ms: u64) {
    let until = c.now_ms() + max_ms;
    while c.now_ms() < until && !(0..c.len()).all(|i| purged_at(c, i, key)) {
        c.run_for(500);
    }
}

#[test]
fn a_stable_delete_is_purged_everywhere_and_its_log_released() {
    let mut c = purging(1, 3).build();
    let k = Key::from_u128(1);
    for round in 0..5u8 {
        c.put(round as usize % 3, k, labels("user"), &[round]);
        c.run_for(200);
    }
    c.put(0, Key::from_u128(2), labels("user"), b"stays");
    c.run_until_settled(60_000).unwrap();
    c.delete(1, k);
    run_until_purged(&mut c, k, 60_000);
    for i in 0..3 {
        assert!(purged_at(&c, i, k), "node {i} did not purge");
        assert!(c.node(i).get(&k).is_none(), "node {i} still holds the key");
        assert!(c.node(i).key_state(&k).is_none());
        c.node_mut(i).trim_log().unwrap();
    }
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2]));
    for i in 0..3 {
        // No retained entry holds a version of the purged key any more
        // (what stays: the live key's entry, the peers' resume points, and
        // the Purged entry while an entry older than its tombstone stays).
        let st = c.node(i).storage();
        let entries = st.scan(st.first_retained_lsn(), usize::MAX).unwrap();
        let holding: Vec<_> = entries
            .iter()
            .filter(|e| e.body.versions().iter().any(|v| v.key == k))
            .map(|e| e.lsn)
            .collect();
        // An entry may still hold it only while it holds a peer's resume
        // point; a retained Purged entry after it then names the key.
        let purged_after = |lsn: u64| {
            entries.iter().any(|e| {
                e.lsn > lsn
                    && matches!(&e.body, EntryBody::Purged { keys, .. } if keys.iter().any(|(x, _)| *x == k))
            })
        };
        assert!(
            holding.len() <= 1,
            "node {i}: entries {holding:?} still hold the key"
        );
        assert!(
            holding.iter().all(|l| purged_after(*l)),
            "node {i}: {holding:?} in {:#?}",
            entries.iter().map(|e| (e.lsn, &e.body)).collect::<Vec<_>>()
        );
        assert!(
            entries.len() <= 4,
            "node {i} keeps {} entries",
            entries.len()
        );
        assert_eq!(
            c.node(i).get(&Key::from_u128(2)).unwrap().meta(),
            Some(&b"stays"[..])
        );
    }
    // A restart rebuilds without the key.
    c.crash(2);
    c.restart(2);
    assert!(c.node(2).key_state(&k).is_none());
}

#[test]
fn no_purge_while_a_member_is_unreachable_and_concurrent_edits_still_conflict() {
    let mut c = purging(2, 3).build();
    let k = Key::from_u128(7);
    c.put(0, k, labels("user"), b"v1");
    c.run_until_settled(60_000).unwrap();
    c.partition(&[&[0, 1], &[2]]);
    c.delete(0, k);
    c.put(2, k, labels("user"), b"edit on the far side");
    c.run_for(30_000);
    for i in 0..3 {
        assert!(
            !purged_at(&c, i, k),
            "node {i} purged while node 2 was away"
        );
    }
    c.heal();
    c.run_until_settled(60_000).unwrap();
    c.run_for(20_000);
    // The delete and the edit are concurrent: both stand (reported as a
    // conflict), so there is no lone tombstone to purge.
    for i in 0..3 {
        assert!(!purged_at(&c, i, k));
        assert_eq!(c.node(i).key_state(&k).unwrap().siblings.len(), 2);
        assert!(c
            .events(i)
            .iter()
            .any(|e| matches!(e, Event::Conflict(r) if r.key == k)));
    }
    assert!(c.digests_equal(&[0, 1, 2]));
}

#[test]
fn a_key_written_again_after_the_purge_is_a_fresh_key_everywhere() {
    // The deleter outranks everyone: had the new write met the tombstone
    // as a concurrent version anywhere, the tombstone would win there.
    let mut c = purging(3, 3)
        .all_nodes(|cfg| {
            cfg.classes.insert(
                Name::new("user").unwrap(),
                ConflictPolicy::Priority(vec![node_id(0), node_id(1), node_id(2)]),
            );
        })
        // Slow, unequal timers: the nodes purge at different times.
        .node(0, |cfg| cfg.timing.trim_interval_ms = 30_000)
        .node(1, |cfg| cfg.timing.trim_interval_ms = 20_000)
        .build();
    let k = Key::from_u128(9);
    c.put(1, k, labels("user"), b"first life");
    c.run_until_settled(60_000).unwrap();
    c.delete(0, k);
    // The first node to purge writes the key again at once, while the
    // others still hold the (stable) tombstone.
    let until = c.now_ms() + 300_000;
    let first = loop {
        c.run_for(100);
        if let Some(j) = (0..3).find(|&j| purged_at(&c, j, k)) {
            break j;
        }
        assert!(c.now_ms() < until, "nobody purged");
    };
    let holding: Vec<usize> = (0..3)
        .filter(|&i| c.node(i).key_state(&k).is_some())
        .collect();
    assert!(!holding.is_empty(), "everyone purged at once");
    c.put(first, k, labels("user"), b"second life");
    c.run_until_settled(60_000).unwrap();
    c.run_for(10_000);
    for i in 0..3 {
        let view = c.node(i).get(&k).expect("the key exists again");
        assert_eq!(view.meta(), Some(&b"second life"[..]), "node {i}");
        assert_eq!(
            view.siblings.len(),
            1,
            "node {i}: no conflict with the purged delete"
        );
        assert!(!c
            .events(i)
            .iter()
            .any(|e| matches!(e, Event::Conflict(r) if r.key == k)));
    }
    assert!(c.digests_equal(&[0, 1, 2]));
}

#[test]
fn an_older_version_in_a_retained_entry_does_not_come_back_after_a_restart() {
    let mut c = purging(4, 2).build();
    let (k, other) = (Key::from_u128(1), Key::from_u128(2));
    // One atomic entry holds the first version of k and a key that stays.
    c.try_write(
        0,
        vec![
            put_op(k, "user", b"old", None),
            put_op(other, "user", b"live", None),
        ],
    )
    .unwrap();
    c.run_until_settled(60_000).unwrap();
    c.delete(0, k);
    run_until_purged(&mut c, k, 60_000);
    for i in 0..2 {
        assert!(purged_at(&c, i, k));
        c.node_mut(i).trim_log().unwrap();
    }
    for i in 0..2 {
        c.crash(i);
        c.restart(i);
        assert!(
            c.node(i).get(&k).is_none(),
            "node {i}: the old version is back"
        );
        assert!(c.node(i).get(&other).is_some());
    }
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1]));
}

#[test]
fn purge_needs_every_peer_two_way_and_unfiltered() {
    let mut cfg =
        recsync_engine::NodeConfig::new(node_id(0), recsync_sim::cluster::cluster_id(), &["user"]);
    cfg.tombstone_purge = true;
    cfg.peers.push(PeerConfig::send_only(node_id(1)));
    assert_eq!(
        cfg.validate(),
        Err(ConfigError::PurgeNeedsFullMesh(node_id(1)))
    );
    cfg.peers[0] = PeerConfig::two_way(node_id(1));
    cfg.peers[0]
        .filter
        .exclude_classes
        .insert(Name::new("user").unwrap());
    assert!(matches!(
        recsync_engine::Node::open(
            cfg.clone(),
            recsync_engine::MemStorage::new(recsync_engine::MemSync::Immediate),
            0,
            0
        ),
        Err(OpenError::Config(ConfigError::PurgeNeedsFullMesh(_)))
    ));
    cfg.peers[0] = PeerConfig::two_way(node_id(1));
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn a_purged_recording_staged_in_a_retained_entry_stays_gone_after_a_restart() {
    let mut c = purging(5, 3).build();
    let (rec, other) = (Key::from_u128(0x1001), Key::from_u128(0x1002));
    // One entry on the receivers stages the recording (its blob follows)
    // and applies a key that stays: the entry is kept after the purge.
    let blob = c.upload_blob(0, &[7u8; 5000]);
    c.try_write(
        0,
        vec![
            put_op(rec, "recording", b"call", Some(blob)),
            put_op(other, "user", b"live", None),
        ],
    )
    .unwrap();
    c.run_until_settled(60_000).unwrap();
    c.delete(1, rec);
    run_until_purged(&mut c, rec, 60_000);
    for i in 0..3 {
        assert!(purged_at(&c, i, rec), "node {i} did not purge");
        c.node_mut(i).trim_log().unwrap();
    }
    for i in 0..3 {
        c.crash(i);
        c.restart(i);
    }
    c.run_until_settled(60_000).unwrap();
    c.run_for(5_000);
    for i in 0..3 {
        assert!(
            c.node(i).get(&rec).is_none(),
            "node {i}: the recording is back"
        );
        assert_eq!(c.node(i).staged_versions(), 0, "node {i}");
        assert!(c.node(i).get(&other).is_some());
    }
    assert!(c.digests_equal(&[0, 1, 2]));
}
