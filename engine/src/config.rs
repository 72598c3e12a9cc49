//! Node configuration: identity, classes and their conflict policies, peers
//! (direction, filter, schedule, bandwidth), limits and timing.

use crate::filter::Filter;
use crate::ids::{ClusterId, NodeId};
use crate::policy::ConflictPolicy;
use crate::record::Name;
use crate::schedule::Schedule;
use crate::wire::FRAME_PAYLOAD_LEN_MAX;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One peer link as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    pub node: NodeId,
    /// This node ships its log to the peer.
    pub send: bool,
    /// This node accepts the peer's log.
    pub receive: bool,
    /// What this node sends to the peer.
    pub filter: Filter,
    pub schedule: Schedule,
    /// Cap on bytes per second sent to the peer.
    pub bandwidth_bytes_per_s: Option<u64>,
}

impl PeerConfig {
    /// Both directions, everything, continuously.
    pub fn two_way(node: NodeId) -> Self {
        Self {
            node,
            send: true,
            receive: true,
            filter: Filter::all(),
            schedule: Schedule::Continuous { linger_ms: 20 },
            bandwidth_bytes_per_s: None,
        }
    }

    pub fn send_only(node: NodeId) -> Self {
        Self {
            receive: false,
            ..Self::two_way(node)
        }
    }

    pub fn receive_only(node: NodeId) -> Self {
        Self {
            send: false,
            ..Self::two_way(node)
        }
    }
}

/// Limits on everything that can grow (TigerBeetle style).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest object metadata, bytes.
    pub meta_len_max: usize,
    /// Most operations in one atomic batch.
    pub batch_ops_max: usize,
    /// Most versions in one replication batch (an atomic entry is never split).
    pub send_batch_versions_max: usize,
    /// Target bytes of one replication batch.
    pub send_batch_bytes_max: usize,
    /// Batches sent and not yet acknowledged, per peer.
    pub inflight_batches_max: usize,
    pub frame_payload_len_max: u32,
    /// Events kept for the application before the oldest are dropped (and
    /// counted in an `EventsDropped` event).
    pub events_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            meta_len_max: 64 << 10,
            batch_ops_max: 256,
            send_batch_versions_max: 512,
            send_batch_bytes_max: 1 << 20,
            inflight_batches_max: 4,
            frame_payload_len_max: FRAME_PAYLOAD_LEN_MAX,
            events_max: 1 << 20,
        }
    }
}

/// Timers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// Unacknowledged batches are sent again after this long.
    pub ack_timeout_ms: u64,
    /// Dot counters reserved durably at a time.
    pub counter_block: u64,
    /// How often dead log entries are looked for.
    pub trim_interval_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            reconnect_initial_ms: 200,
            reconnect_max_ms: 30_000,
            ack_timeout_ms: 5_000,
            counter_block: 1024,
            trim_interval_ms: 60_000,
        }
    }
}

/// Everything a node is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node: NodeId,
    pub cluster: ClusterId,
    /// The classes objects may have, each with its conflict policy.
    pub classes: BTreeMap<Name, ConflictPolicy>,
    pub peers: Vec<PeerConfig>,
    pub limits: Limits,
    pub timing: Timing,
    /// Purge tombstones once they are stable (SPEC §4; ARCHITECTURE.md,
    /// "Tombstone purge"). Needs every peer two-way and unfiltered, and
    /// the peer list to be the whole cluster; off by default, when
    /// tombstones stay for as long as their key exists. Also makes this
    /// node ship its own writes only once they are durable.
    pub tombstone_purge: bool,
}

/// A configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("peers: node {0} is this node itself")]
    PeerIsSelf(NodeId),
    #[error("peers: node {0} is listed twice")]
    DuplicatePeer(NodeId),
    #[error("peers.{0}: neither send nor receive is set")]
    PeerWithoutDirection(NodeId),
    #[error("peers.{0}.bandwidth_bytes_per_s: must be above 0")]
    ZeroBandwidth(NodeId),
    #[error("classes: at least one class is needed")]
    NoClasses,
    #[error(
        "peers.{0}: tombstone_purge needs every peer two-way (send and receive) and unfiltered"
    )]
    PurgeNeedsFullMesh(NodeId),
    #[error("limits.{field}: {why}")]
    BadLimit {
        field: &'static str,
        why: &'static str,
    },
    #[error("timing.{field}: {why}")]
    BadTiming {
        field: &'static str,
        why: &'static str,
    },
}

impl NodeConfig {
    /// A node with one class per name, all last-writer-wins, and no peers.
    pub fn new(node: NodeId, cluster: ClusterId, classes: &[&str]) -> Self {
        let classes = classes
            .iter()
            .filter_map(|c| Name::new(c).ok())
            .map(|n| (n, ConflictPolicy::LastWriterWins))
            .collect();
        Self {
            node,
            cluster,
            classes,
            peers: Vec::new(),
            limits: Limits::default(),
            timing: Timing::default(),
            tombstone_purge: false,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for p in &self.peers {
            if p.node == self.node {
                return Err(ConfigError::PeerIsSelf(p.node));
            }
            if !seen.insert(p.node) {
                return Err(ConfigError::DuplicatePeer(p.node));
            }
            if !p.send && !p.receive {
                return Err(ConfigError::PeerWithoutDirection(p.node));
            }
            if p.bandwidth_bytes_per_s == Some(0) {
                return Err(ConfigError::ZeroBandwidth(p.node));
            }
            if self.tombstone_purge && !(p.send && p.receive && p.filter == Filter::all()) {
                return Err(ConfigError::PurgeNeedsFullMesh(p.node));
            }
        }
        if self.classes.is_empty() {
            return Err(ConfigError::NoClasses);
        }
        let l = &self.limits;
        let positive = [
            ("meta_len_max", l.meta_len_max),
            ("batch_ops_max", l.batch_ops_max),
            ("send_batch_versions_max", l.send_batch_versions_max),
            ("send_batch_bytes_max", l.send_batch_bytes_max),
            ("inflight_batches_max", l.inflight_batches_max),
            ("events_max", l.events_max),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::BadLimit {
                field,
                why: "must be above 0",
            });
        }
        // The largest atomic entry must fit in one frame.
        let entry_max = l.batch_ops_max.saturating_mul(l.meta_len_max + 4096);
        if entry_max > l.frame_payload_len_max as usize {
            return Err(ConfigError::BadLimit {
                field: "batch_ops_max",
                why: "batch_ops_max x meta_len_max must fit in frame_payload_len_max",
            });
        }
        let t = &self.timing;
        if t.reconnect_initial_ms == 0 || t.reconnect_max_ms < t.reconnect_initial_ms {
            return Err(ConfigError::BadTiming {
                field: "reconnect_initial_ms",
                why: "must be above 0 and at most reconnect_max_ms",
            });
        }
        if t.ack_timeout_ms == 0 || t.counter_block == 0 || t.trim_interval_ms == 0 {
            return Err(ConfigError::BadTiming {
                field: "ack_timeout_ms",
                why: "ack_timeout_ms, counter_block and trim_interval_ms must be above 0",
            });
        }
        Ok(())
    }

    /// The configuration of one peer.
    pub fn peer(&self, node: NodeId) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.node == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let me = NodeId::from_u128(1);
        let mut c = NodeConfig::new(me, ClusterId::from_u128(9), &["user"]);
        assert_eq!(c.validate(), Ok(()));
        c.peers.push(PeerConfig::two_way(me));
        assert_eq!(c.validate(), Err(ConfigError::PeerIsSelf(me)));
        c.peers[0].node = NodeId::from_u128(2);
        c.peers[0].bandwidth_bytes_per_s = Some(0);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("bandwidth_bytes_per_s"));
        c.peers[0].bandwidth_bytes_per_s = None;
        c.limits.batch_ops_max = 1 << 20;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadLimit {
                field: "batch_ops_max",
                ..
            })
        ));
    }
}
