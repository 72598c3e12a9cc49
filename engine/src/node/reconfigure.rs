//! Live reconfiguration of a node's peers: an operator adds, removes or
//! edits a peer while the recorder runs, without a restart (which would
//! replay the whole log and start a new dot origin).
//!
//! The peers that stay as they were keep their sessions untouched. A
//! removed peer's session is closed and it no longer holds back trimming
//! (SPEC §4: removing a peer releases what it held back). An added peer
//! starts as it would after a restart with the new list: from the position
//! it durably acknowledged, with its backlog and our durable resume point
//! in its log read from the retained log. A peer whose settings changed
//! starts a new session the same way, and keeps what a restart would not
//! lose for no reason: paused or not, a pending sync now, the position it
//! acknowledged, its last success and its counters.

use super::{Node, Output};
use crate::config::{ConfigError, PeerConfig};
use crate::event::{Event, SessionEnd};
use crate::ids::{Lsn, NodeId};
use crate::peer::{Link, Peer, PeerStats};
use crate::stability::PeerStability;
use crate::storage::{EntryBody, Storage, StorageError};
use crate::wire::{Cursor, Position};
use std::collections::BTreeMap;

/// Why a new peer list was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReconfigureError {
    /// The list is invalid; nothing changed.
    #[error("invalid peer list: {0}")]
    Config(#[from] ConfigError),
    /// Reading the log for an added peer failed; the node has failed (as
    /// on any storage error) and must be reopened.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// What an edited peer keeps across its restart.
struct Kept {
    paused: bool,
    sync_upto: Lsn,
    acked: Option<Cursor>,
    last_success_ms: Option<u64>,
    stats: PeerStats,
    stability: PeerStability,
}

impl Kept {
    fn of(p: &Peer) -> Self {
        Self {
            paused: p.paused,
            sync_upto: p.sync_upto,
            acked: p.acked,
            last_success_ms: p.last_success_ms,
            stats: p.stats,
            stability: p.stability.clone(),
        }
    }

    fn restore(&self, p: &mut Peer) {
        p.paused = self.paused;
        p.sync_upto = self.sync_upto;
        // What the peer acknowledged it holds durably; at least as far as
        // the position the log's metadata keeps.
        if self.acked.is_some() {
            p.acked = self.acked;
        }
        p.last_success_ms = self.last_success_ms;
        p.stats = self.stats;
        // What its acknowledgements told stays true; our next report
        // goes out afresh.
        p.stability = self.stability.clone();
        p.stability.last_report = None;
    }
}

/// What a reconfiguration changed, by peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeersChanged {
    pub added: Vec<NodeId>,
    pub removed: Vec<NodeId>,
    /// Settings changed: the session restarts under the new ones.
    pub changed: Vec<NodeId>,
}

impl<S: Storage> Node<S> {
    /// Replaces the peer list while running (see the module comment).
    /// The list is validated as at open; an invalid one changes nothing.
    pub fn set_peers(
        &mut self,
        now_ms: u64,
        peers: Vec<PeerConfig>,
    ) -> Result<PeersChanged, ReconfigureError> {
        self.advance(now_ms);
        if let Some(e) = &self.failed {
            return Err(ReconfigureError::Storage(e.clone()));
        }
        let mut cfg = self.cfg.clone();
        cfg.peers = peers;
        cfg.validate()?;
        let old: BTreeMap<NodeId, &PeerConfig> =
            self.cfg.peers.iter().map(|p| (p.node, p)).collect();
        let new: BTreeMap<NodeId, &PeerConfig> = cfg.peers.iter().map(|p| (p.node, p)).collect();
        let mut change = PeersChanged::default();
        for (id, was) in &old {
            match new.get(id) {
                None => change.removed.push(*id),
                Some(now) if now != was => change.changed.push(*id),
                Some(_) => {}
            }
        }
        change.added = new
            .keys()
            .filter(|id| !old.contains_key(id))
            .copied()
            .collect();
        let starting: Vec<PeerConfig> = cfg
            .peers
            .iter()
            .filter(|p| change.added.contains(&p.node) || change.changed.contains(&p.node))
            .cloned()
            .collect();
        // An edited peer keeps what the operator and the peer told us:
        // paused or not, a pending sync now, its acknowledged position,
        // its last success and its counters.
        let kept: BTreeMap<NodeId, Kept> = change
            .changed
            .iter()
            .filter_map(|id| self.peers.get(id).map(|p| (*id, Kept::of(p))))
            .collect();
        for id in &change.removed {
            self.drop_peer(*id, SessionEnd::Removed);
        }
        for id in &change.changed {
            self.drop_peer(*id, SessionEnd::Reconfigured);
        }
        self.cfg = cfg;
        for pc in starting {
            let id = pc.node;
            if let Err(e) = self.start_peer(pc) {
                self.fail(e.clone());
                return Err(ReconfigureError::Storage(e));
            }
            if let (Some(k), Some(p)) = (kept.get(&id), self.peers.get_mut(&id)) {
                k.restore(p);
            }
        }
        self.pump_all();
        Ok(change)
    }

    /// Ends the session with `id` and forgets the peer.
    fn drop_peer(&mut self, id: NodeId, why: SessionEnd) {
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        let was_up = p.is_up();
        if !matches!(p.link, Link::Down { .. }) {
            self.outputs.push_back(Output::Close { peer: id });
        }
        self.link_down(id, None);
        self.peers.remove(&id);
        if was_up {
            self.push_event(Event::PeerDown { peer: id, why });
        }
        // Blobs fetched from it turn to another source at once.
        let now = self.now_ms;
        for f in self.fetches.values_mut().filter(|f| f.source == id) {
            f.deadline_ms = now;
        }
    }

    /// Starts a peer as an open would: its durable acknowledgement, its
    /// backlog and our durable position in its log, from the retained log.
    fn start_peer(&mut self, pc: PeerConfig) -> Result<(), StorageError> {
        let id = pc.node;
        let mut p = Peer::new(pc, self.cfg.limits.frame_payload_len_max, self.now_ms);
        if let Some(lsn) = self.meta.peer_acked.get(&id) {
            p.acked = Some(Cursor {
                replica: self.meta.log_id,
                pos: Position::Log { lsn: *lsn },
            });
        }
        self.peers.insert(id, p);
        let durable = self.storage.durable_lsn();
        let first = self.storage.first_retained_lsn();
        self.for_each_entry(first, |node, e| {
            let Some(p) = node.peers.get_mut(&id) else {
                return;
            };
            if let EntryBody::Remote { from, cursor, .. } = &e.body {
                // Only a durable entry's cursor may be claimed as held.
                if *from == id && e.lsn <= durable {
                    p.recv_applied = Some(*cursor);
                    p.recv_durable = Some(*cursor);
                    p.recv_cursor_lsn = e.lsn;
                }
            }
            super::push_entry_backlog(p, &e);
        })
    }
}
