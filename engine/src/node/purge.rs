//! Tombstone purge (SPEC §4): the node's side of `crate::stability`.
//!
//! A key whose only standing version is a tombstone T is purged here once
//! T's entry lies at or below the *purge point*: every peer acknowledged
//! it, we hold durably what each peer logged before it held it (so every
//! version written without knowledge of T has reached us), and every peer
//! reported itself stable past T too. Purging appends a `Purged` entry
//! (so a replay drops older versions of the key that retained entries
//! still hold) and forgets the key. A version that later arrives for a key
//! whose lone tombstone is stable here, and that does not supersede it,
//! was written after some member purged T (nothing written without
//! knowledge of T can still arrive): the tombstone is purged first and the
//! version applies to a fresh key, as it does on the members that purged.
//! ARCHITECTURE.md ("Tombstone purge") has the argument and its limits.

use super::Node;
use crate::canary::{self, Canary};
use crate::event::Event;
use crate::ids::{Dot, Key, Lsn, NodeId, ReplicaId};
use crate::keystate::KeyState;
use crate::peer::{Link, Peer};
use crate::record::Version;
use crate::stability::{Mark, REPORT_REFRESH_PASSES};
use crate::storage::{EntryBody, Storage, StorageError};
use crate::vv::VersionVector;
use crate::wire::{Ack, Cursor, Position};

/// Entries `covered_past` looks at per acknowledgement, at most.
const COVER_SCAN_MAX: usize = 1024;
/// Keys one `Purged` entry names, at most.
const PURGED_KEYS_PER_ENTRY: usize = 4096;

/// The LSN of the key's entry if its only standing version is a tombstone.
pub(super) fn lone_tombstone(st: &KeyState) -> Option<Lsn> {
    match st.siblings.as_slice() {
        [s] if s.version.body.is_tombstone() => Some(s.lsn),
        _ => None,
    }
}

/// The peer's log as we know it now (from its Hello, else from our
/// position in it).
fn known_log(p: &Peer) -> Option<ReplicaId> {
    match p.link {
        Link::Up { remote_log, .. } => Some(remote_log),
        _ => p.recv_durable.map(|c| c.replica),
    }
}

/// Our durable log position in the peer's current log (0 if none).
fn received(p: &Peer, log: Option<ReplicaId>) -> Lsn {
    match p.recv_durable {
        Some(Cursor {
            replica,
            pos: Position::Log { lsn },
        }) if Some(replica) == log => lsn,
        _ => 0,
    }
}

impl<S: Storage> Node<S> {
    /// A digest of the logs this node knows the members by, itself
    /// included: two members' digests are equal when their views are.
    pub(super) fn members_view(&self) -> u64 {
        let mut members: Vec<([u8; 16], [u8; 16])> = self
            .peers
            .values()
            .map(|p| {
                let log = known_log(p).map_or([0; 16], |l| *l.as_bytes());
                (*p.cfg.node.as_bytes(), log)
            })
            .collect();
        members.push((*self.cfg.node.as_bytes(), *self.meta.log_id.as_bytes()));
        members.sort_unstable();
        let mut h = blake3::Hasher::new();
        for (n, l) in &members {
            h.update(n);
            h.update(l);
        }
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d.as_bytes()[..8]);
        u64::from_le_bytes(b)
    }

    /// The acknowledgement of `cursor` to `peer`, with what purging needs.
    pub(super) fn ack_to(&self, peer: &Peer, cursor: Cursor, view: u64, staged: u32) -> Ack {
        let mine = self.meta.log_id;
        let streaming_log = matches!(
            peer.acked,
            Some(Cursor { replica, pos: Position::Log { .. } }) if replica == mine
        );
        // While a snapshot goes out to it, what it lacks is not a log range.
        let snapshot_out = peer
            .out
            .as_ref()
            .is_some_and(|o| matches!(o.sent.pos, Position::Snapshot { .. }));
        let pending_for_you = if streaming_log && !snapshot_out {
            peer.backlog.back().map_or(0, |b| b.lsn)
        } else {
            Lsn::MAX
        };
        Ack {
            cursor,
            head: self.storage.last_lsn(),
            pending_for_you,
            staged,
            stable: self.meta.stable_lsn,
            view,
            want_report: self.cfg.tombstone_purge && peer.stability.needs_report(),
            origin: Dot {
                replica: self.meta.replica,
                counter: self.counter,
            },
        }
    }

    /// Versions staged here, over all blobs.
    pub(super) fn staged_count(&self) -> u32 {
        let n: usize = self.staged.values().map(Vec::len).sum();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether a version of `key` waits for its blob here.
    fn staged_key(&self, key: &Key) -> bool {
        self.staged
            .values()
            .any(|w| w.iter().any(|(_, _, v)| v.key == *key))
    }

    /// Takes what an acknowledgement from `peer` says about stability.
    pub(super) fn note_ack_stability(&mut self, peer: &NodeId, a: &Ack) {
        if !self.cfg.tombstone_purge {
            return;
        }
        let mine = self.meta.log_id;
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        let Some(log) = known_log(p) else { return };
        let mark = match a.cursor {
            Cursor {
                replica,
                pos: Position::Log { lsn },
            } if replica == mine && a.staged == 0 => Some(Mark {
                covered: self.covered_past(lsn, *peer, log, a),
                log,
                head: a.head,
                pending_for_us: a.pending_for_you,
                view: a.view,
            }),
            _ => None,
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.stability.on_ack(a, mark, log, a.stable);
        if a.want_report {
            p.stability.report_owed = true;
        }
    }

    /// How far past `lsn` (acknowledged by `peer` in `a`) our log holds
    /// nothing the peer lacked *when it acknowledged*: entries of versions
    /// it sent us from its log at or below `a.head`, versions it wrote
    /// itself before then (its dot counter in `a`), and `Purged` entries.
    /// An entry with anything else for the peer ends the run, whatever the
    /// backlog says (a late or repeated acknowledgement must not vouch for
    /// what came after it).
    fn covered_past(&self, lsn: Lsn, peer: NodeId, peer_log: ReplicaId, a: &Ack) -> Lsn {
        let mut covered = lsn;
        let mut budget = COVER_SCAN_MAX;
        let peers_own =
            |v: &Version| v.dot.replica == a.origin.replica && v.dot.counter <= a.origin.counter;
        // Everything we received from the peer lay in its log at or below
        // this (the staging entries of a `BlobReady` from it, too).
        let received_from =
            self.peers
                .get(&peer)
                .and_then(|p| p.recv_applied)
                .map_or(0, |c| match c.pos {
                    Position::Log { lsn } if c.replica == peer_log => lsn,
                    _ => Lsn::MAX,
                });
        let visit = self.storage.visit(lsn.saturating_add(1), &mut |at, body| {
            if budget == 0 {
                return false;
            }
            budget -= 1;
            let vouched = match body {
                EntryBody::Purged { .. } => true,
                EntryBody::Remote {
                    from,
                    versions,
                    staged,
                    cursor,
                } if *from == peer => {
                    matches!(cursor, Cursor { replica, pos: Position::Log { lsn } }
                        if *replica == peer_log && *lsn <= a.head)
                        || versions.iter().chain(staged).all(peers_own)
                }
                EntryBody::BlobReady { from, versions, .. } if *from == peer => {
                    received_from <= a.head || versions.iter().all(peers_own)
                }
                body => body.versions().iter().all(peers_own),
            };
            if vouched {
                covered = at;
            }
            vouched
        });
        match visit {
            Ok(()) => covered,
            Err(_) => lsn,
        }
    }

    /// Advances the stability and purge points and purges the keys whose
    /// lone tombstone lies at or below the purge point. Returns how many.
    pub(super) fn purge_pass(&mut self) -> Result<usize, StorageError> {
        if !self.cfg.tombstone_purge || self.failed.is_some() {
            return Ok(0);
        }
        let view = self.members_view();
        for p in self.peers.values_mut() {
            let log = known_log(p);
            let at = received(p, log);
            p.stability.advance(log, at, view);
        }
        let durable = self.storage.durable_lsn();
        let stable = self
            .peers
            .values()
            .map(|p| p.stability.stable_upto())
            .min()
            .unwrap_or(Lsn::MAX)
            .min(durable);
        if stable > self.meta.stable_lsn {
            let mut meta = self.meta.clone();
            meta.stable_lsn = stable;
            self.store_meta(&meta)?;
            self.meta = meta;
        }
        self.report_stability(view);
        let purge = if canary::on(Canary::PurgeBeforePeersStable) {
            self.meta.stable_lsn
        } else {
            self.peers
                .values()
                .map(|p| p.stability.purge_upto())
                .min()
                .unwrap_or(Lsn::MAX)
                .min(self.meta.stable_lsn)
        };
        let due: Vec<Key> = self
            .lone_tombstones
            .iter()
            .take_while(|(lsn, _)| *lsn <= purge)
            .map(|(_, k)| *k)
            .filter(|k| !self.staged_key(k))
            .collect();
        self.purge_keys(&due)?;
        Ok(due.len())
    }

    /// Tells every connected peer what our acknowledgement of its log
    /// would say now, if that changed since we last told it.
    fn report_stability(&mut self, view: u64) {
        let staged = self.staged_count();
        let mut out = Vec::new();
        for p in self.peers.values_mut() {
            p.stability.passes_since_report = p.stability.passes_since_report.saturating_add(1);
        }
        for (id, p) in &self.peers {
            let Link::Up { remote_log, .. } = p.link else {
                continue;
            };
            let Some(cursor) = p.recv_durable.filter(|c| c.replica == remote_log) else {
                continue;
            };
            let ack = self.ack_to(p, cursor, view, staged);
            let refresh = p.stability.passes_since_report >= REPORT_REFRESH_PASSES;
            if refresh || p.stability.report_owed || p.stability.last_report.as_ref() != Some(&ack)
            {
                out.push((*id, ack));
            }
        }
        for (id, ack) in out {
            let frame = crate::wire::encode_frame(&crate::wire::Message::Stability(ack.clone()));
            if let Some(p) = self.peers.get_mut(&id) {
                p.stability.last_report = Some(ack);
                p.stability.report_owed = false;
                p.stability.passes_since_report = 0;
            }
            self.outputs
                .push_back(crate::node::Output::Transmit { peer: id, frame });
        }
    }

    /// The arrival rule: before versions apply, purges the stable lone
    /// tombstones they do not supersede (see the module documentation).
    pub(super) fn purge_for_arrivals(&mut self, versions: &[Version]) -> Result<(), StorageError> {
        if !self.cfg.tombstone_purge {
            return Ok(());
        }
        let stable = self.meta.stable_lsn;
        let mut due: Vec<Key> = Vec::new();
        for v in versions {
            let Some(st) = self.keys.get(&v.key) else {
                continue;
            };
            let Some(lsn) = lone_tombstone(st) else {
                continue;
            };
            let t = &st.siblings[0].version;
            if lsn <= stable
                && !st.has_seen(&v.dot)
                && !v.context.covers(&t.dot)
                && !due.contains(&v.key)
                && !self.staged_key(&v.key)
            {
                due.push(v.key);
            }
        }
        self.purge_keys(&due)
    }

    /// Purges these keys (each a lone tombstone): logs a `Purged` entry
    /// per chunk, forgets the keys, tells the application.
    fn purge_keys(&mut self, keys: &[Key]) -> Result<(), StorageError> {
        for chunk in keys.chunks(PURGED_KEYS_PER_ENTRY) {
            let mut upto = 0;
            let mut named: Vec<(Key, VersionVector)> = Vec::with_capacity(chunk.len());
            for k in chunk {
                let Some(st) = self.keys.get(k) else { continue };
                let Some(lsn) = lone_tombstone(st) else {
                    continue;
                };
                upto = upto.max(lsn);
                named.push((*k, st.seen.clone()));
            }
            if named.is_empty() {
                continue;
            }
            let lsn = self.append(&EntryBody::Purged {
                upto,
                keys: named.clone(),
            })?;
            self.purged_entries.insert(lsn, upto);
            let mut report = Vec::with_capacity(named.len());
            for (k, _) in named {
                if let Some(st) = self.forget_key(&k) {
                    report.extend(st.siblings.iter().map(|s| (k, s.version.dot)));
                }
            }
            self.push_event(Event::TombstonesPurged { keys: report });
        }
        Ok(())
    }

    /// Replays a `Purged` entry: drops each named key's state if the entry
    /// covers all of it (versions of retained older entries).
    pub(super) fn replay_purged(&mut self, lsn: Lsn, upto: Lsn, keys: &[(Key, VersionVector)]) {
        self.purged_entries.insert(lsn, upto);
        for (k, seen) in keys {
            let covered = self
                .keys
                .get(k)
                .is_some_and(|st| st.siblings.iter().all(|s| seen.covers(&s.version.dot)));
            if covered {
                self.forget_key(k);
            }
            // Versions a retained entry staged again, which the tombstone
            // had superseded: nothing may apply them to the fresh key.
            self.staged.retain(|_, waiting| {
                waiting.retain(|(_, _, v)| !(v.key == *k && seen.covers(&v.dot)));
                !waiting.is_empty()
            });
        }
        let staged = &self.staged;
        self.fetches.retain(|hash, _| staged.contains_key(hash));
    }

    /// What `track_lone` needs from before a change of `key`'s state
    /// (nothing when the node does not purge: no lookup on the hot path).
    pub(super) fn lone_before(&self, key: &Key) -> Option<Lsn> {
        if !self.cfg.tombstone_purge {
            return None;
        }
        self.keys.get(key).and_then(lone_tombstone)
    }

    /// Forgets a purged key's state; its entries may be trimmed now.
    fn forget_key(&mut self, k: &Key) -> Option<KeyState> {
        let st = self.keys.remove(k)?;
        for s in &st.siblings {
            self.lone_tombstones.remove(&(s.lsn, *k));
            self.trim_candidates.insert(s.lsn);
        }
        Some(st)
    }

    /// Keeps `lone_tombstones` in step after `key`'s state changed; `before`
    /// is what `lone_tombstone` said before the change.
    pub(super) fn track_lone(&mut self, key: Key, before: Option<Lsn>) {
        if !self.cfg.tombstone_purge {
            return;
        }
        let after = self.keys.get(&key).and_then(lone_tombstone);
        if before != after {
            if let Some(l) = before {
                self.lone_tombstones.remove(&(l, key));
            }
            if let Some(l) = after {
                self.lone_tombstones.insert((l, key));
            }
        }
    }

    /// Releases the `Purged` entries no retained entry needs any more
    /// (none at or below their `upto` is left), and tells up to where
    /// entries must stay because a `Purged` entry that covers them is not
    /// yet durable.
    pub(super) fn release_purged_entries(&mut self) -> Result<(), StorageError> {
        loop {
            let first = self.storage.first_retained_lsn();
            let Some((&lsn, &upto)) = self.purged_entries.iter().next() else {
                return Ok(());
            };
            // The first (oldest) Purged entry is the one whose own LSN may
            // be the first retained; others wait behind it.
            let others_first = if first == lsn {
                self.storage
                    .scan(lsn + 1, 1)?
                    .first()
                    .map_or(Lsn::MAX, |e| e.lsn)
            } else {
                first
            };
            if others_first <= upto || lsn > self.storage.durable_lsn() {
                return Ok(());
            }
            self.storage.release(lsn)?;
            self.purged_entries.remove(&lsn);
        }
    }

    /// Entries at or below this must not be released yet: a `Purged`
    /// entry that covers them is not durable (a crash would bring their
    /// key back without it). 0 when there is none.
    pub(super) fn purge_volatile_upto(&self) -> Lsn {
        let durable = self.storage.durable_lsn();
        self.purged_entries
            .range(durable + 1..)
            .map(|(_, u)| *u)
            .max()
            .unwrap_or(0)
    }
}

impl<S: Storage> Node<S> {
    /// Tombstone purge status, for operators: the stable point in our log,
    /// and how many keys stand as lone tombstones waiting to be purged.
    pub fn purge_status(&self) -> PurgeStatus {
        PurgeStatus {
            enabled: self.cfg.tombstone_purge,
            stable_lsn: self.meta.stable_lsn,
            waiting: self.lone_tombstones.len(),
            per_peer: self
                .peers
                .iter()
                .map(|(id, p)| PeerPurgeStatus {
                    peer: *id,
                    stable_upto: p.stability.stable_upto(),
                    purge_upto: p.stability.purge_upto(),
                    marks: p.stability.marks(),
                })
                .collect(),
        }
    }
}

/// See `Node::purge_status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeStatus {
    pub enabled: bool,
    /// Tombstones in our log at or below this are stable here.
    pub stable_lsn: Lsn,
    /// Keys whose only standing version is a tombstone (purge on only).
    pub waiting: usize,
    pub per_peer: Vec<PeerPurgeStatus>,
}

/// What one peer's acknowledgements allow so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPurgeStatus {
    pub peer: crate::ids::NodeId,
    /// Our log is stable up to here with respect to the peer.
    pub stable_upto: Lsn,
    /// And purgeable up to here (the peer is stable there too).
    pub purge_upto: Lsn,
    /// Its acknowledgements that wait to count.
    pub marks: usize,
}
