//! Live peer reconfiguration (`Node::set_peers`): peers added, removed and
//! edited while the node runs, without a restart. An added peer catches up
//! from what it acknowledged, a removed one gets nothing more and no longer
//! holds back trimming, an edited one follows its new settings at once.

use recsync_engine::{ConfigError, Filter, Key, PeerConfig, ReconfigureError, SessionEnd};
use recsync_engine::{Event, Name};
use recsync_sim::cluster::{labels, node_id, ClusterBuilder};
use recsync_sim::Cluster;

fn key(n: u128) -> Key {
    Key::from_u128(n)
}

/// Versions sent from `from` to `to` so far.
fn sent(c: &Cluster, from: usize, to: usize) -> usize {
    c.sent
        .iter()
        .filter(|b| (b.from, b.to) == (from, to))
        .map(|b| b.versions.len())
        .sum()
}

fn peers_without(c: &Cluster, i: usize, gone: usize) -> Vec<PeerConfig> {
    let mut peers = c.node_config(i).peers.clone();
    peers.retain(|p| p.node != node_id(gone));
    peers
}

fn peers_with(c: &Cluster, i: usize, extra: PeerConfig) -> Vec<PeerConfig> {
    let mut peers = c.node_config(i).peers.clone();
    peers.push(extra);
    peers
}

#[test]
fn an_added_peer_catches_up_without_a_restart() {
    let mut c = ClusterBuilder::new(1, 3).two_way(0, 1).build();
    for n in 0..40 {
        c.put(n as usize % 2, key(n), labels("user"), b"before");
    }
    c.run_until_settled(60_000).unwrap();
    let origins: Vec<_> = (0..3).map(|i| c.node(i).replica_id()).collect();
    // C joins as a two-way peer of A.
    let to_c = peers_with(&c, 0, PeerConfig::two_way(node_id(2)));
    let changed = c.set_peers(0, to_c).unwrap();
    assert_eq!(changed.added, vec![node_id(2)]);
    c.set_peers(2, vec![PeerConfig::two_way(node_id(0))])
        .unwrap();
    c.put(2, key(100), labels("user"), b"from C");
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2]));
    assert_eq!(c.node(2).keys().count(), 41);
    // No node restarted: each kept its dot origin.
    let after: Vec<_> = (0..3).map(|i| c.node(i).replica_id()).collect();
    assert_eq!(origins, after);
}

#[test]
fn a_removed_peer_gets_nothing_more_and_releases_the_log() {
    let mut c = ClusterBuilder::new(2, 2).two_way(0, 1).build();
    c.put(0, key(1), labels("user"), b"shared");
    c.run_until_settled(60_000).unwrap();
    let before = sent(&c, 0, 1);
    // B is down; A keeps a backlog for it and may not trim it.
    c.crash(1);
    for round in 0..20u128 {
        c.put(0, key(2), labels("user"), &round.to_le_bytes());
    }
    c.run_for(5_000);
    c.node_mut(0).trim_log().unwrap();
    let held = c.node(0).storage().retained();
    assert!(held >= 20, "the backlog for B is kept: {held} entries");
    // Removing B releases what it held back.
    let changed = c.set_peers(0, peers_without(&c, 0, 1)).unwrap();
    assert_eq!(changed.removed, vec![node_id(1)]);
    assert!(c.node(0).peer_status(&node_id(1)).is_none());
    c.node_mut(0).trim_log().unwrap();
    let left = c.node(0).storage().retained();
    assert!(left <= 2, "{left} of {held} entries kept after the removal");
    c.restart(1);
    c.put(0, key(3), labels("user"), b"after the removal");
    c.run_for(30_000);
    assert_eq!(sent(&c, 0, 1), before, "nothing more went to B");
    assert!(c.node(1).get(&key(3)).is_none());
}

#[test]
fn removing_a_connected_peer_closes_its_session() {
    let mut c = ClusterBuilder::new(3, 2).two_way(0, 1).build();
    c.put(0, key(1), labels("user"), b"x");
    c.run_until_settled(60_000).unwrap();
    c.set_peers(0, Vec::new()).unwrap();
    assert!(c.events(0).iter().any(|e| matches!(
        e,
        Event::PeerDown {
            why: SessionEnd::Removed,
            ..
        }
    )));
    // B saw its session end, and its reconnects are refused from now on.
    assert!(c
        .events(1)
        .iter()
        .any(|e| matches!(e, Event::PeerDown { .. })));
    c.put(1, key(2), labels("user"), b"y");
    c.run_for(30_000);
    assert!(c.node(0).get(&key(2)).is_none());
    assert!(c
        .node(1)
        .peer_status(&node_id(0))
        .is_some_and(|s| !s.connected && s.pending_versions == 1));
}

#[test]
fn a_peer_added_back_resumes_from_what_it_acknowledged() {
    let mut c = ClusterBuilder::new(4, 2).one_way(0, 1).build();
    for n in 0..30 {
        c.put(0, key(n), labels("user"), b"first");
    }
    c.run_until_settled(60_000).unwrap();
    // Trimming persists the acknowledged positions.
    c.node_mut(0).trim_log().unwrap();
    let first = sent(&c, 0, 1);
    assert_eq!(first, 30);
    let original = c.node_config(0).peers.clone();
    c.set_peers(0, Vec::new()).unwrap();
    for n in 30..40 {
        c.put(0, key(n), labels("user"), b"while removed");
    }
    c.run_for(5_000);
    c.set_peers(0, original).unwrap();
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1]));
    // Only what B lacked went again: never the 30 it acknowledged.
    assert_eq!(sent(&c, 0, 1) - first, 10);
}

#[test]
fn an_edited_filter_applies_at_once() {
    let mut c = ClusterBuilder::new(5, 2).one_way(0, 1).build();
    c.put(0, key(1), labels("recording"), b"r1");
    c.run_until_settled(60_000).unwrap();
    let mut peers = c.node_config(0).peers.clone();
    peers[0].filter = Filter {
        exclude_classes: [Name::new("recording").unwrap()].into_iter().collect(),
        ..Filter::all()
    };
    let changed = c.set_peers(0, peers).unwrap();
    assert_eq!(changed.changed, vec![node_id(1)]);
    c.put(0, key(2), labels("recording"), b"r2");
    c.put(0, key(3), labels("user"), b"u3");
    c.run_until_settled(60_000).unwrap();
    assert!(c.node(1).get(&key(1)).is_some());
    assert!(c.node(1).get(&key(2)).is_none(), "filtered out");
    assert!(c.node(1).get(&key(3)).is_some());
    assert!(c
        .sent
        .iter()
        .flat_map(|b| &b.versions)
        .all(|(k, _, _)| *k != key(2)));
}

#[test]
fn an_invalid_list_changes_nothing() {
    let mut c = ClusterBuilder::new(6, 2).two_way(0, 1).build();
    let before = c.node_config(0).peers.clone();
    let bad = peers_with(&c, 0, PeerConfig::two_way(node_id(0)));
    assert_eq!(
        c.set_peers(0, bad).unwrap_err(),
        ReconfigureError::Config(ConfigError::PeerIsSelf(node_id(0)))
    );
    assert_eq!(c.node_config(0).peers, before);
    assert_eq!(c.node(0).config().peers, before);
    c.put(0, key(1), labels("user"), b"still replicating");
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1]));
}

#[test]
fn a_live_change_leaves_the_same_backlog_as_a_restart() {
    // The same history on two clusters; one adds a peer live, the other by
    // a restart with the new list: the new peer's pending work is equal.
    let build = || {
        let mut c = ClusterBuilder::new(7, 3).two_way(0, 1).build();
        for n in 0..25 {
            c.put(n as usize % 2, key(n), labels("user"), b"v");
            c.run_for(10);
        }
        c.run_until_settled(60_000).unwrap();
        c.crash(2);
        c
    };
    let mut live = build();
    let mut restarted = build();
    let extra = PeerConfig::two_way(node_id(2));
    let peers = peers_with(&live, 0, extra);
    live.set_peers(0, peers.clone()).unwrap();
    restarted.reconfigure(0, |cfg| cfg.peers = peers);
    let a = live.node(0).peer_status(&node_id(2)).unwrap();
    let b = restarted.node(0).peer_status(&node_id(2)).unwrap();
    assert_eq!(a.pending_versions, b.pending_versions);
    assert_eq!(a.pending_bytes, b.pending_bytes);
    assert_eq!(a.pending_versions, 25);
}

#[test]
fn a_peer_added_back_is_asked_only_for_what_we_lack() {
    let mut c = ClusterBuilder::new(8, 2).two_way(0, 1).build();
    for n in 0..30 {
        c.put(1, key(n), labels("user"), b"from B");
    }
    c.run_until_settled(60_000).unwrap();
    let first = sent(&c, 1, 0);
    assert_eq!(first, 30);
    // A drops B and takes it back later: A's resume point in B's log comes
    // from A's own log, so B streams only what came after it.
    let original = c.node_config(0).peers.clone();
    c.set_peers(0, Vec::new()).unwrap();
    for n in 30..40 {
        c.put(1, key(n), labels("user"), b"while removed");
    }
    c.run_for(5_000);
    c.set_peers(0, original).unwrap();
    c.run_until_settled(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1]));
    assert_eq!(sent(&c, 1, 0) - first, 10);
}

#[test]
fn an_edited_peer_stays_paused_and_keeps_its_position() {
    let mut c = ClusterBuilder::new(9, 2).one_way(0, 1).build();
    let k1 = c.put(0, key(1), labels("user"), b"x");
    c.run_until_settled(60_000).unwrap();
    assert!(c.node_mut(0).pause_peer(node_id(1)));
    let acked = c.node(0).peer_acked(&node_id(1));
    let mut peers = c.node_config(0).peers.clone();
    peers[0].bandwidth_bytes_per_s = Some(1_000_000);
    let changed = c.set_peers(0, peers).unwrap();
    assert_eq!(changed.changed, vec![node_id(1)]);
    assert!(c.events(0).iter().any(|e| matches!(
        e,
        Event::PeerDown {
            why: SessionEnd::Reconfigured,
            ..
        }
    )));
    let status = c.node(0).peer_status(&node_id(1)).unwrap();
    assert!(status.paused, "the edit does not resume a paused peer");
    assert_eq!(c.node(0).peer_acked(&node_id(1)), acked);
    assert_eq!(c.node(0).copies(&key(1), &k1.dots[0]).len(), 2);
    c.put(0, key(2), labels("user"), b"while paused");
    c.run_for(10_000);
    assert!(c.node(1).get(&key(2)).is_none());
    let now = c.now_ms();
    c.node_mut(0).resume_peer(now, node_id(1));
    c.run_until_settled(60_000).unwrap();
    assert!(c.node(1).get(&key(2)).is_some());
}

#[test]
fn a_peer_added_back_keeps_its_durable_acknowledgement() {
    let mut c = ClusterBuilder::new(10, 2).one_way(0, 1).build();
    let w = c.put(0, key(1), labels("user"), b"x");
    c.run_until_settled(60_000).unwrap();
    c.node_mut(0).trim_log().unwrap();
    assert!(c.node(0).copies(&key(1), &w.dots[0]).contains(&node_id(1)));
    let original = c.node_config(0).peers.clone();
    c.crash(1);
    c.set_peers(0, Vec::new()).unwrap();
    c.set_peers(0, original).unwrap();
    // B is down: what A knows of its copies comes from the position B
    // acknowledged durably before it was removed.
    assert!(c.node(0).copies(&key(1), &w.dots[0]).contains(&node_id(1)));
}

#[test]
fn an_added_peer_resumes_from_our_durable_position_in_its_log() {
    // A receives from B; B's last batch is applied at A but not durable
    // when A drops B and takes it back: A must ask for it again.
    let mut c = ClusterBuilder::new(11, 2)
        .one_way(1, 0)
        .explicit_sync()
        .build();
    for n in 0..5 {
        c.put(1, key(n), labels("user"), b"from B");
    }
    c.sync_storage(1);
    c.run_for(2_000);
    assert_eq!(c.node(0).keys().count(), 5, "applied at A, not synced");
    let before = sent(&c, 1, 0);
    let original = c.node_config(0).peers.clone();
    c.set_peers(0, Vec::new()).unwrap();
    c.set_peers(0, original).unwrap();
    c.run_until_settled_syncing(60_000).unwrap();
    assert!(c.digests_equal(&[0, 1]));
    assert_eq!(
        sent(&c, 1, 0) - before,
        5,
        "the batch not durable at A came again"
    );
}
