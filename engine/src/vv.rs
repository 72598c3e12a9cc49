//! Version vectors: per-replica counters summarising a causal history.

use crate::ids::{Dot, ReplicaId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left side is strictly older.
    Before,
    /// The left side is strictly newer.
    After,
    Concurrent,
}

/// A version vector: for each replica, the highest counter covered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ReplicaId, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `replica` (0 if absent).
    pub fn get(&self, replica: &ReplicaId) -> u64 {
        self.0.get(replica).copied().unwrap_or(0)
    }

    /// Whether the history includes `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.replica) >= dot.counter
    }

    /// Adds one dot (and, by the vector's meaning, everything before it).
    pub fn add(&mut self, dot: &Dot) {
        let e = self.0.entry(dot.replica).or_insert(0);
        if *e < dot.counter {
            *e = dot.counter;
        }
    }

    /// Least upper bound, in place.
    pub fn join(&mut self, other: &VersionVector) {
        for (r, c) in &other.0 {
            let e = self.0.entry(*r).or_insert(0);
            if *e < *c {
                *e = *c;
            }
        }
    }

    /// Whether every entry of `other` is covered.
    pub fn dominates_or_equals(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(r, c)| self.get(r) >= *c)
    }

    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (
            self.dominates_or_equals(other),
            other.dominates_or_equals(self),
        ) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaId, &u64)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv_strategy() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map(0u128..5, 0u64..6, 0..5).prop_map(|m| {
            VersionVector(
                m.into_iter()
                    .map(|(r, c)| (ReplicaId::from_u128(r), c))
                    .filter(|(_, c)| *c > 0)
                    .collect(),
            )
        })
    }

    fn joined(a: &VersionVector, b: &VersionVector) -> VersionVector {
        let mut x = a.clone();
        x.join(b);
        x
    }

    proptest! {
        #[test]
        fn join_is_commutative(a in vv_strategy(), b in vv_strategy()) {
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        }

        #[test]
        fn join_is_associative(a in vv_strategy(), b in vv_strategy(), c in vv_strategy()) {
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        }

        #[test]
        fn join_is_idempotent_and_an_upper_bound(a in vv_strategy(), b in vv_strategy()) {
            prop_assert_eq!(joined(&a, &a), a.clone());
            let j = joined(&a, &b);
            prop_assert!(j.dominates_or_equals(&a) && j.dominates_or_equals(&b));
        }

        #[test]
        fn compare_is_antisymmetric(a in vv_strategy(), b in vv_strategy()) {
            let expected = match a.compare(&b) {
                Causality::Equal => Causality::Equal,
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                Causality::Concurrent => Causality::Concurrent,
            };
            prop_assert_eq!(b.compare(&a), expected);
        }
    }

    #[test]
    fn covers_and_add() {
        let r = ReplicaId::from_u128(1);
        let mut v = VersionVector::new();
        assert!(!v.covers(&Dot {
            replica: r,
            counter: 1
        }));
        v.add(&Dot {
            replica: r,
            counter: 3,
        });
        assert!(v.covers(&Dot {
            replica: r,
            counter: 2
        }));
        assert!(!v.covers(&Dot {
            replica: r,
            counter: 4
        }));
    }
}
