//! The state of one key: its causal frontier (the versions no other applied
//! version supersedes: one, or several concurrent siblings) and everything
//! the node has seen of the key (a version vector).
//!
//! Convergence rests on one fact: the frontier is a function of the *set* of
//! versions applied, never of their order or path. Conflict policies do not
//! discard siblings; they pick the visible winner *from the frontier*, which
//! is again a function of the set. (Discarding losers on arrival is only
//! order-independent when the policy's order extends causality: true for
//! last-writer-wins over an HLC, false for `priority`.) A new write supersedes
//! every sibling it saw, so siblings never outlive the next edit.

use crate::ids::{Dot, Key, Lsn};
use crate::policy::{lww_cmp, ConflictPolicy, Resolution};
use crate::record::Version;
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};

/// A standing version and the position of the local log entry holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    pub version: Version,
    pub lsn: Lsn,
}

/// One key's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Every dot applied or superseded for this key.
    pub seen: VersionVector,
    /// The causal frontier, sorted by dot; no sibling supersedes another.
    pub siblings: Vec<Sibling>,
}

/// A conflict, reported to the application whatever its resolution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictReport {
    pub key: Key,
    /// The version whose arrival made the conflict.
    pub arrived: Dot,
    /// All standing concurrent versions (the arrived one included), by dot.
    pub versions: Vec<Version>,
    /// The version that is visible now, or `None` when the siblings are left
    /// for the application (manual policy).
    pub winner: Option<Dot>,
    pub resolution: Resolution,
    /// Reported again when the node opened (the conflict stands; it may
    /// have been reported before the restart, or never, if the version
    /// came back from an entry whose write was not confirmed).
    pub at_open: bool,
}

impl ConflictReport {
    /// The versions not chosen (all but the winner; none under manual).
    pub fn losers(&self) -> impl Iterator<Item = &Version> {
        self.versions
            .iter()
            .filter(move |v| self.winner.is_some_and(|w| w != v.dot))
    }
}

/// What applying one version did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Known already, or superseded by something seen: nothing changed.
    Ignored,
    /// New, and it supersedes every standing version.
    Applied,
    /// New, and concurrent with at least one standing version.
    Conflict(ConflictReport),
}

/// What absorbing one version did (`ApplyOutcome` without the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absorbed {
    Ignored,
    Applied,
    Concurrent,
}

/// The visible outcome of a key's frontier under a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visible<'a> {
    /// One version wins (it may be a tombstone).
    Winner(&'a Version),
    /// Manual policy with unresolved siblings.
    Siblings(Vec<&'a Version>),
}

impl KeyState {
    /// Whether `dot` was already applied or superseded here.
    pub fn has_seen(&self, dot: &Dot) -> bool {
        self.seen.covers(dot)
    }

    /// Applies a version without building a conflict report (a replay,
    /// where reports went out long ago): the state changes exactly as with
    /// `apply`.
    pub fn absorb(&mut self, version: Version, lsn: Lsn) -> Absorbed {
        self.absorb_noting(version, lsn, |_| {})
    }

    /// `absorb`, telling `superseded` the log position of each standing
    /// version the new one replaces.
    pub fn absorb_noting(
        &mut self,
        version: Version,
        lsn: Lsn,
        mut superseded: impl FnMut(Lsn),
    ) -> Absorbed {
        if self.seen.covers(&version.dot) {
            return Absorbed::Ignored;
        }
        self.seen.join(&version.context);
        self.seen.add(&version.dot);
        self.siblings.retain(|s| {
            let stays = !version.supersedes(&s.version);
            if !stays {
                superseded(s.lsn);
            }
            stays
        });
        let concurrent = !self.siblings.is_empty();
        let pos = match self
            .siblings
            .binary_search_by(|s| s.version.dot.cmp(&version.dot))
        {
            Ok(_) => unreachable!("a dot not covered by `seen` cannot be standing"),
            Err(pos) => pos,
        };
        self.siblings.insert(pos, Sibling { version, lsn });
        if concurrent {
            Absorbed::Concurrent
        } else {
            Absorbed::Applied
        }
    }

    /// Applies one version (local or remote). `policy_for` maps a version to
    /// the conflict policy of its class.
    pub fn apply<'p>(
        &mut self,
        version: Version,
        lsn: Lsn,
        policy_for: impl Fn(&Version) -> &'p ConflictPolicy,
    ) -> ApplyOutcome {
        self.apply_noting(version, lsn, policy_for, |_| {})
    }

    /// `apply`, telling `superseded` the log position of each standing
    /// version the new one replaces.
    pub fn apply_noting<'p>(
        &mut self,
        version: Version,
        lsn: Lsn,
        policy_for: impl Fn(&Version) -> &'p ConflictPolicy,
        superseded: impl FnMut(Lsn),
    ) -> ApplyOutcome {
        let arrived = version.dot;
        match self.absorb_noting(version, lsn, superseded) {
            Absorbed::Ignored => return ApplyOutcome::Ignored,
            Absorbed::Applied => return ApplyOutcome::Applied,
            Absorbed::Concurrent => {}
        }
        let (winner, resolution) = self.settle(policy_for);
        ApplyOutcome::Conflict(ConflictReport {
            key: self.siblings[0].version.key,
            arrived,
            versions: self.siblings.iter().map(|s| s.version.clone()).collect(),
            winner,
            resolution,
            at_open: false,
        })
    }

    /// The report of the key's standing conflict, if its versions stand
    /// concurrent: all of them, `arrived` being the one applied last here.
    /// (A node reports these again at open; see `Node::open`.)
    pub fn standing_conflict<'p>(
        &self,
        policy_for: impl Fn(&Version) -> &'p ConflictPolicy,
    ) -> Option<ConflictReport> {
        if self.siblings.len() < 2 {
            return None;
        }
        let last = self.siblings.iter().max_by_key(|s| s.lsn)?;
        let (winner, resolution) = self.settle(policy_for);
        Some(ConflictReport {
            key: last.version.key,
            arrived: last.version.dot,
            versions: self.siblings.iter().map(|s| s.version.clone()).collect(),
            winner,
            resolution,
            at_open: true,
        })
    }

    /// The policy that governs this key: the one of the class of the
    /// last-writer among the siblings (a function of the frontier only).
    fn governing_policy<'p>(
        &self,
        policy_for: impl Fn(&Version) -> &'p ConflictPolicy,
    ) -> Option<&'p ConflictPolicy> {
        self.siblings
            .iter()
            .map(|s| &s.version)
            .max_by(|a, b| lww_cmp(a, b))
            .map(policy_for)
    }

    /// The winner among the siblings (if any is chosen) and how.
    pub fn settle<'p>(
        &self,
        policy_for: impl Fn(&Version) -> &'p ConflictPolicy,
    ) -> (Option<Dot>, Resolution) {
        let Some(policy) = self.governing_policy(policy_for) else {
            return (None, Resolution::Manual);
        };
        let first = &self.siblings[0].version;
        let identical = self
            .siblings
            .iter()
            .all(|s| s.version.body == first.body && s.version.labels == first.labels);
        let (order, resolution): (&ConflictPolicy, Resolution) = if identical {
            (&ConflictPolicy::LastWriterWins, Resolution::Identical)
        } else {
            match policy.automatic() {
                Some(r) => (policy, r),
                None => return (None, Resolution::Manual),
            }
        };
        let winner = self
            .siblings
            .iter()
            .map(|s| &s.version)
            .max_by(|a, b| order.cmp(a, b))
            .map(|v| v.dot);
        (winner, resolution)
    }

    /// What a read sees.
    pub fn visible<'p>(&self, policy_for: impl Fn(&Version) -> &'p ConflictPolicy) -> Visible<'_> {
        match self.settle(policy_for) {
            (Some(dot), _) => match self.siblings.iter().find(|s| s.version.dot == dot) {
                Some(s) => Visible::Winner(&s.version),
                None => unreachable!("the winner is one of the siblings"),
            },
            (None, _) if self.siblings.len() == 1 => Visible::Winner(&self.siblings[0].version),
            (None, _) => Visible::Siblings(self.siblings.iter().map(|s| &s.version).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::ids::{NodeId, ReplicaId};
    use crate::record::{Body, Labels};
    use proptest::prelude::*;

    fn version(
        replica: u128,
        counter: u64,
        wall: u64,
        context: VersionVector,
        tomb: bool,
    ) -> Version {
        Version {
            key: Key::from_u128(7),
            dot: Dot {
                replica: ReplicaId::from_u128(replica),
                counter,
            },
            origin: NodeId::from_u128(replica),
            hlc: Hlc {
                wall_ms: wall,
                logical: 0,
            },
            context,
            labels: Labels::parse("user", "t", "g").unwrap(),
            body: if tomb {
                Body::Tombstone
            } else {
                Body::Live {
                    meta: vec![replica as u8, counter as u8],
                    blob: None,
                }
            },
        }
    }

    fn ctx(dots: &[(u128, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (r, c) in dots {
            v.add(&Dot {
                replica: ReplicaId::from_u128(*r),
                counter: *c,
            });
        }
        v
    }

    const LWW: ConflictPolicy = ConflictPolicy::LastWriterWins;
    const MANUAL: ConflictPolicy = ConflictPolicy::Manual;

    #[test]
    fn superseding_version_replaces() {
        let mut s = KeyState::default();
        let v1 = version(1, 1, 10, ctx(&[]), false);
        assert_eq!(s.apply(v1.clone(), 1, |_| &LWW), ApplyOutcome::Applied);
        let v2 = version(2, 1, 5, ctx(&[(1, 1)]), false);
        assert_eq!(s.apply(v2, 2, |_| &LWW), ApplyOutcome::Applied);
        assert_eq!(s.siblings.len(), 1);
        assert_eq!(s.apply(v1, 3, |_| &LWW), ApplyOutcome::Ignored);
    }

    #[test]
    fn concurrent_versions_conflict_and_lww_shows_latest() {
        let mut s = KeyState::default();
        s.apply(version(1, 1, 10, ctx(&[]), false), 1, |_| &LWW);
        let ApplyOutcome::Conflict(r) = s.apply(version(2, 1, 20, ctx(&[]), true), 2, |_| &LWW)
        else {
            panic!("expected a conflict")
        };
        assert_eq!(r.versions.len(), 2);
        assert_eq!(r.resolution, Resolution::LastWriterWins);
        let Visible::Winner(w) = s.visible(|_| &LWW) else {
            panic!("lww must choose")
        };
        assert!(w.body.is_tombstone());
        assert_eq!(r.winner, Some(w.dot));
        assert_eq!(r.losers().count(), 1);
    }

    #[test]
    fn manual_keeps_siblings_until_covered() {
        let mut s = KeyState::default();
        s.apply(version(1, 1, 10, ctx(&[]), false), 1, |_| &MANUAL);
        s.apply(version(2, 1, 20, ctx(&[]), false), 2, |_| &MANUAL);
        assert!(matches!(s.visible(|_| &MANUAL), Visible::Siblings(v) if v.len() == 2));
        let fix = version(3, 1, 30, ctx(&[(1, 1), (2, 1)]), false);
        assert_eq!(s.apply(fix, 3, |_| &MANUAL), ApplyOutcome::Applied);
        assert_eq!(s.siblings.len(), 1);
    }

    /// The priority-policy trap: X (high) beats W (mid) beats L (low), and L
    /// supersedes X. Discarding losers on arrival would diverge here.
    #[test]
    fn priority_is_order_independent_when_a_loser_supersedes_a_winner() {
        let p = ConflictPolicy::Priority(vec![
            NodeId::from_u128(1),
            NodeId::from_u128(2),
            NodeId::from_u128(3),
        ]);
        let x = version(1, 1, 10, ctx(&[]), false);
        let w = version(2, 1, 20, ctx(&[]), false);
        let l = version(3, 1, 30, ctx(&[(1, 1)]), false);
        let mut a = KeyState::default();
        for v in [&w, &l, &x] {
            a.apply(v.clone(), 0, |_| &p);
        }
        let mut b = KeyState::default();
        for v in [&x, &w, &l] {
            b.apply(v.clone(), 0, |_| &p);
        }
        assert_eq!(a, b);
        assert!(matches!(a.visible(|_| &p), Visible::Winner(v) if v.dot == w.dot));
    }

    /// A causally consistent history: replicas write with their knowledge
    /// as context, and learn from each other by merging whole states.
    fn histories() -> impl Strategy<Value = Vec<Version>> {
        proptest::collection::vec((0u8..3, 1u128..4, 1u128..4, 0u64..50, any::<bool>()), 1..14)
            .prop_map(|ops| {
                let mut know: Vec<VersionVector> = vec![VersionVector::new(); 4];
                let mut counters = [0u64; 4];
                let mut out = Vec::new();
                for (kind, r, s, wall, tomb) in ops {
                    if kind == 0 {
                        know[r as usize] = {
                            let mut k = know[r as usize].clone();
                            k.join(&know[s as usize].clone());
                            k
                        };
                    } else {
                        counters[r as usize] += 1;
                        let v = version(
                            r,
                            counters[r as usize],
                            wall,
                            know[r as usize].clone(),
                            tomb,
                        );
                        know[r as usize].add(&v.dot);
                        out.push(v);
                    }
                }
                out
            })
    }

    fn apply_all(vs: &[Version], policy: &ConflictPolicy) -> KeyState {
        let mut s = KeyState::default();
        for v in vs {
            s.apply(v.clone(), 0, |_| policy);
        }
        s
    }

    fn policies() -> Vec<ConflictPolicy> {
        vec![
            LWW,
            MANUAL,
            ConflictPolicy::Priority(vec![NodeId::from_u128(2), NodeId::from_u128(1)]),
        ]
    }

    proptest! {
        /// Commutative: any order of the same versions gives the same state.
        #[test]
        fn apply_order_does_not_matter(vs in histories(), perm in any::<u64>()) {
            for p in policies() {
                let a = apply_all(&vs, &p);
                let mut shuffled = vs.clone();
                let n = shuffled.len();
                let mut x = perm;
                for i in (1..n).rev() {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    shuffled.swap(i, (x >> 33) as usize % (i + 1));
                }
                let b = apply_all(&shuffled, &p);
                prop_assert_eq!(&b, &a);
                prop_assert_eq!(b.settle(|_| &p), a.settle(|_| &p));
            }
        }

        /// Idempotent: applying everything twice changes nothing.
        #[test]
        fn apply_is_idempotent(vs in histories()) {
            for p in policies() {
                let mut twice = vs.clone();
                twice.extend(vs.iter().cloned());
                prop_assert_eq!(&apply_all(&twice, &p), &apply_all(&vs, &p));
            }
        }

        /// Associative: merging a state built from one part with the rest
        /// equals building from everything.
        #[test]
        fn apply_in_parts(vs in histories(), cut in 0usize..14) {
            for p in policies() {
                let cut = cut.min(vs.len());
                let (x, y) = vs.split_at(cut);
                let mut s = apply_all(y, &p);
                for v in x { s.apply(v.clone(), 0, |_| &p); }
                prop_assert_eq!(&s, &apply_all(&vs, &p));
            }
        }
    }
}
