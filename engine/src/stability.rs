//! Tombstone stability: what a node learns from its peers'
//! acknowledgements about which of its tombstones can be purged (SPEC §4,
//! "causal stability, never a timer"). Pure bookkeeping; the node feeds it
//! and reads two positions in its own log from it.
//!
//! The rule (ARCHITECTURE.md, "Tombstone purge"), for a cluster where every
//! member is every other's two-way, unfiltered peer:
//! - a *mark* is an acknowledgement from peer P saying P holds everything in
//!   our log up to `covered` that is for P, that P's log then ended at
//!   `head`, that P's log held nothing for us beyond `pending_for_us` we had
//!   not acknowledged, that P held nothing staged, and P's view of the
//!   members' logs;
//! - our log is *stable* up to `covered` with respect to P once we hold P's
//!   log durably up to `pending_for_us` and P's view equals ours: whatever
//!   P logged before it held our entries up to `covered` has reached us;
//! - it is *purgeable* up to `covered` with respect to P once, in addition,
//!   P reported its own stability point at or past `head`: P is stable for
//!   the same tombstones, so P also treats a later write that does not know
//!   a tombstone as written after its purge.

use crate::ids::{Lsn, ReplicaId};
use crate::wire::Ack;
use std::collections::VecDeque;

/// Marks kept per peer; a newer one replaces the newest beyond this.
const MARKS_MAX: usize = 64;

/// One acknowledgement usable for stability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Our log up to here holds nothing for the peer it lacks.
    pub covered: Lsn,
    /// The peer's log, as our cursors into it name it.
    pub log: ReplicaId,
    /// The peer's log head then.
    pub head: Lsn,
    /// The end of what the peer's log held for us then (0: nothing).
    pub pending_for_us: Lsn,
    /// The peer's view of the members' logs.
    pub view: u64,
}

/// Stability knowledge about one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStability {
    marks: VecDeque<Mark>,
    stable_upto: Lsn,
    purge_upto: Lsn,
    /// The peer's reported stability point, in its log.
    reported: Option<(ReplicaId, Lsn)>,
    /// What we last reported to the peer (a `Stability` message goes out
    /// only when it would say something new, or when owed).
    pub last_report: Option<Ack>,
    /// The last acknowledgement or report the peer sent us.
    last_received: Option<Ack>,
    /// The peer told us something new since we last reported: it may
    /// need a report made after that (our coverage of its log counts
    /// from when our report arrives), so the next one goes out even if
    /// it says what the last one said.
    pub report_owed: bool,
    /// Purge passes since our last report: a report is repeated every
    /// `REPORT_REFRESH_PASSES` (reports are not acknowledged, and one lost
    /// on the way would otherwise stall purging in a quiet cluster).
    pub passes_since_report: u32,
}

/// See `PeerStability::passes_since_report`.
pub const REPORT_REFRESH_PASSES: u32 = 10;

impl PeerStability {
    /// Records an acknowledgement: its reported stability point, and the
    /// mark it makes (if it makes one: a log position, nothing staged).
    pub fn on_ack(&mut self, ack: &Ack, mark: Option<Mark>, log: ReplicaId, stable: Lsn) {
        if self.last_received.as_ref() != Some(ack) {
            self.last_received = Some(ack.clone());
            self.report_owed = true;
        }
        self.reported = match self.reported {
            Some((l, s)) if l == log => Some((l, s.max(stable))),
            _ => Some((log, stable)),
        };
        let Some(m) = mark else { return };
        if self.marks.back().is_some_and(|b| *b == m) {
            return;
        }
        if self.marks.len() >= MARKS_MAX {
            self.marks.pop_back();
        }
        self.marks.push_back(m);
    }

    /// Re-evaluates the marks: `peer_log` is the peer's current log,
    /// `received` our durable position in it (a log position; 0 if none),
    /// `view` ours. Marks of an older log of the peer are dropped.
    pub fn advance(&mut self, peer_log: Option<ReplicaId>, received: Lsn, view: u64) {
        let reported = self.reported;
        for m in &self.marks {
            if Some(m.log) != peer_log || m.view != view {
                continue;
            }
            if m.pending_for_us <= received {
                self.stable_upto = self.stable_upto.max(m.covered);
                if reported.is_some_and(|(l, s)| l == m.log && m.head <= s) {
                    self.purge_upto = self.purge_upto.max(m.covered);
                }
            }
        }
        let (stable, purge) = (self.stable_upto, self.purge_upto);
        self.marks
            .retain(|m| Some(m.log) == peer_log && (m.covered > stable || m.covered > purge));
    }

    /// Whether the peer has told us nothing yet (about its current log).
    pub fn needs_report(&self) -> bool {
        self.reported.is_none()
    }

    /// Our log is stable up to here with respect to this peer.
    pub fn stable_upto(&self) -> Lsn {
        self.stable_upto
    }

    /// Our log is purgeable up to here with respect to this peer.
    pub fn purge_upto(&self) -> Lsn {
        self.purge_upto
    }

    /// Marks waiting (for status and tests).
    pub fn marks(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur() -> crate::wire::Cursor {
        crate::wire::Cursor {
            replica: log(9),
            pos: crate::wire::Position::Log { lsn: 1 },
        }
    }

    fn log(n: u128) -> ReplicaId {
        ReplicaId::from_u128(n)
    }

    fn mark(covered: Lsn, head: Lsn, pending: Lsn) -> Mark {
        Mark {
            covered,
            log: log(1),
            head,
            pending_for_us: pending,
            view: 7,
        }
    }

    #[test]
    fn stable_once_we_hold_what_the_peer_had_for_us() {
        let mut s = PeerStability::default();
        s.on_ack(&Ack::of(cur()), Some(mark(10, 40, 30)), log(1), 0);
        s.advance(Some(log(1)), 29, 7);
        assert_eq!(s.stable_upto(), 0);
        s.advance(Some(log(1)), 30, 7);
        assert_eq!(s.stable_upto(), 10);
        // Not purgeable: the peer has not reported itself stable past 40.
        assert_eq!(s.purge_upto(), 0);
        s.on_ack(&Ack::of(cur()), None, log(1), 40);
        s.advance(Some(log(1)), 30, 7);
        assert_eq!(s.purge_upto(), 10);
        assert_eq!(s.marks(), 0);
    }

    #[test]
    fn other_views_and_old_logs_do_not_count() {
        let mut s = PeerStability::default();
        s.on_ack(&Ack::of(cur()), Some(mark(10, 40, 0)), log(1), 100);
        s.advance(Some(log(1)), 0, 8);
        assert_eq!(s.stable_upto(), 0, "the views differ");
        s.advance(Some(log(2)), 1000, 7);
        assert_eq!(s.stable_upto(), 0, "the peer's log changed");
        assert_eq!(s.marks(), 0, "marks of its old log are dropped");
        // A report from the new log replaces the old one.
        s.on_ack(
            &Ack::of(cur()),
            Some(Mark {
                log: log(2),
                ..mark(12, 5, 0)
            }),
            log(2),
            4,
        );
        s.advance(Some(log(2)), 0, 7);
        assert_eq!((s.stable_upto(), s.purge_upto()), (12, 0));
        s.on_ack(&Ack::of(cur()), None, log(2), 5);
        s.advance(Some(log(2)), 0, 7);
        assert_eq!(s.purge_upto(), 12);
    }

    #[test]
    fn something_new_from_the_peer_owes_it_a_report() {
        let mut s = PeerStability::default();
        assert!(s.needs_report());
        let a = Ack::of(cur());
        s.on_ack(&a, None, log(1), 0);
        assert!(s.report_owed && !s.needs_report());
        s.report_owed = false;
        s.on_ack(&a, None, log(1), 0);
        assert!(!s.report_owed, "the same again owes nothing");
        s.on_ack(&Ack { head: 3, ..a }, None, log(1), 0);
        assert!(s.report_owed);
    }

    #[test]
    fn positions_never_go_back_and_marks_stay_bounded() {
        let mut s = PeerStability::default();
        for i in 1..=200 {
            s.on_ack(&Ack::of(cur()), Some(mark(i, i, i)), log(1), 0);
        }
        assert!(s.marks() <= MARKS_MAX);
        s.advance(Some(log(1)), 200, 7);
        assert_eq!(s.stable_upto(), 200);
        s.advance(Some(log(1)), 0, 7);
        assert_eq!(s.stable_upto(), 200);
    }
}
