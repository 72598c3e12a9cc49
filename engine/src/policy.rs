//! Conflict policies and the deterministic winner they pick.
//!
//! Every automatic policy is a *total order* over versions; the visible
//! winner of a key is the greatest of its standing siblings under it. The
//! siblings themselves are never discarded by a policy (see keystate.rs: the
//! frontier is a function of the set of versions applied, and picking the
//! maximum of a set is order-independent), so every node shows the same
//! winner whatever the arrival order, for `priority` as for last-writer-wins.

use crate::ids::NodeId;
use crate::record::Version;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// How concurrent versions of one object are settled (per class).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictPolicy {
    /// Greatest (HLC timestamp, origin node) wins.
    LastWriterWins,
    /// The version from the node earliest in the list wins; nodes not in the
    /// list rank below all listed ones; ties by last-writer-wins.
    Priority(Vec<NodeId>),
    /// Keep every sibling; the application resolves by writing a version
    /// whose context covers them.
    Manual,
}

/// How a reported conflict was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resolution {
    /// The concurrent versions carried the same content: kept one, nothing lost.
    Identical,
    LastWriterWins,
    Priority,
    /// Left as siblings for the application.
    Manual,
}

/// The last-writer-wins order: HLC, then origin node, then dot (a total order:
/// two distinct versions never compare equal).
pub fn lww_cmp(a: &Version, b: &Version) -> Ordering {
    (a.hlc, a.origin, a.dot).cmp(&(b.hlc, b.origin, b.dot))
}

impl ConflictPolicy {
    fn rank(&self, v: &Version) -> usize {
        match self {
            ConflictPolicy::Priority(order) => order
                .iter()
                .position(|n| *n == v.origin)
                .map(|i| order.len() - i)
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// The total order this policy ranks versions by.
    pub fn cmp(&self, a: &Version, b: &Version) -> Ordering {
        self.rank(a).cmp(&self.rank(b)).then_with(|| lww_cmp(a, b))
    }

    /// The resolution an automatic policy reports; `None` for manual.
    pub fn automatic(&self) -> Option<Resolution> {
        match self {
            ConflictPolicy::LastWriterWins => Some(Resolution::LastWriterWins),
            ConflictPolicy::Priority(_) => Some(Resolution::Priority),
            ConflictPolicy::Manual => None,
        }
    }
}
