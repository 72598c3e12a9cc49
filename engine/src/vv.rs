//! Version vectors: per-replica counters summarising a causal history.

use crate::ids::{Dot, ReplicaId};
use serde::{Deserialize, Serialize};

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

/// A version vector: for each replica, the highest counter covered. Held
/// as a vector sorted by replica (vectors are short, and cloned, joined
/// and decoded on every apply); encoded as a map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(Vec<(ReplicaId, u64)>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, replica: &ReplicaId) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.cmp(replica))
    }

    /// The counter for `replica` (0 if absent).
    pub fn get(&self, replica: &ReplicaId) -> u64 {
        self.find(replica).map_or(0, |i| self.0[i].1)
    }

    /// Whether the history includes `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.replica) >= dot.counter
    }

    /// Adds one dot (and, by the vector's meaning, everything before it).
    pub fn add(&mut self, dot: &Dot) {
        match self.find(&dot.replica) {
            Ok(i) => {
                let c = &mut self.0[i].1;
                if *c < dot.counter {
                    *c = dot.counter;
                }
            }
            Err(i) => self.0.insert(i, (dot.replica, dot.counter)),
        }
    }

    /// Least upper bound, in place.
    pub fn join(&mut self, other: &VersionVector) {
        if other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        let (x, y) = (&self.0, &other.0);
        let mut merged = Vec::with_capacity(x.len().max(y.len()));
        let (mut i, mut j) = (0, 0);
        while i < x.len() && j < y.len() {
            match x[i].0.cmp(&y[j].0) {
                std::cmp::Ordering::Equal => {
                    merged.push((x[i].0, x[i].1.max(y[j].1)));
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    merged.push(x[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    merged.push(y[j]);
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&x[i..]);
        merged.extend_from_slice(&y[j..]);
        self.0 = merged;
    }

    /// Whether every entry of `other` is covered.
    pub fn dominates_or_equals(&self, other: &VersionVector) -> bool {
        let mut mine = self.0.iter().peekable();
        other.0.iter().all(|(r, c)| {
            while mine.next_if(|(m, _)| m < r).is_some() {}
            match mine.peek() {
                Some((m, have)) if m == r => have >= c,
                _ => *c == 0,
            }
        })
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
        self.0.iter().map(|(r, c)| (r, c))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    /// Later entries for the same replica replace earlier ones (as a map's
    /// would).
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut v: Vec<(ReplicaId, u64)> = iter.into_iter().collect();
        if !v.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable, so among equal replicas the last one stays last.
            v.sort_by_key(|e| e.0);
            let mut out: Vec<(ReplicaId, u64)> = Vec::with_capacity(v.len());
            for e in v {
                match out.last_mut() {
                    Some(last) if last.0 == e.0 => *last = e,
                    _ => out.push(e),
                }
            }
            v = out;
        }
        VersionVector(v)
    }
}

impl Serialize for VersionVector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(r, c)| (r, c)))
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> serde::de::Visitor<'de> for MapVisitor {
            type Value = VersionVector;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of replica ids to counters")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                // Bounded: a hostile length prefix must not reserve memory.
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(e) = map.next_entry::<ReplicaId, u64>()? {
                    v.push(e);
                }
                Ok(v.into_iter().collect())
            }
        }
        d.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv_strategy() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map(0u128..5, 0u64..6, 0..5).prop_map(|m| {
            m.into_iter()
                .map(|(r, c)| (ReplicaId::from_u128(r), c))
                .filter(|(_, c)| *c > 0)
                .collect()
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
    fn encoded_as_a_map_and_decoded_in_order() {
        let r = ReplicaId::from_u128;
        let map: std::collections::BTreeMap<ReplicaId, u64> = [(r(2), 5), (r(1), 3)].into();
        let v: VersionVector = [(r(2), 5), (r(1), 3)].into_iter().collect();
        let bytes = postcard::to_allocvec(&v).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&map).expect("encodes"));
        let back: VersionVector = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, v);
        assert_eq!(
            back.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![r(1), r(2)]
        );
        // A map out of order, with a replica twice (the last one counts, as
        // a map's would): decoded sorted and unique.
        let odd: Vec<(ReplicaId, u64)> = vec![(r(3), 1), (r(1), 9), (r(3), 4)];
        let mut enc = postcard::to_allocvec(&(odd.len() as u8)).expect("encodes");
        for e in &odd {
            enc.extend(postcard::to_allocvec(e).expect("encodes"));
        }
        let back: VersionVector = postcard::from_bytes(&enc).expect("decodes");
        assert_eq!(back, [(r(1), 9), (r(3), 4)].into_iter().collect());
        assert_eq!(back.len(), 2);
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
