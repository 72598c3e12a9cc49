//! Identities: nodes (configured, stable), replicas (one per storage
//! incarnation, the origin of dots), clusters, object keys, and dots.
//!
//! A node keeps its `NodeId` for life (it is how peers are configured). A
//! `ReplicaId` is drawn when a node's storage is created: a node whose data
//! folder was wiped comes back with a fresh replica id, so it can never reuse
//! a dot that peers already hold (RavenDB's database-id lesson).

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Builds an id from its 16 bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
            /// Builds an id from a u128 (handy for tests and simulations).
            pub const fn from_u128(v: u128) -> Self {
                Self(Uuid::from_u128(v))
            }
            /// The 16 bytes of the id.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let s = self.0.simple().to_string();
                write!(f, concat!($prefix, ":{}"), &s[s.len() - 8..])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A configured node: stable for the life of the deployment.
    NodeId,
    "node"
);
uuid_id!(
    /// One incarnation of a node's storage; the origin named by dots.
    ReplicaId,
    "replica"
);
uuid_id!(
    /// The cluster a node belongs to; peers from another cluster are refused.
    ClusterId,
    "cluster"
);
uuid_id!(
    /// An object key (a UUID, never an auto-increment).
    Key,
    "key"
);

/// The unique name of one write: `(replica, counter)`, never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub replica: ReplicaId,
    pub counter: u64,
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}#{}", self.replica, self.counter)
    }
}

/// A position in one node's own log (log sequence number, starts at 1).
pub type Lsn = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_round_trip() {
        let k = Key::from_u128(0x1234);
        let parsed: Key = k.to_string().parse().unwrap();
        assert_eq!(parsed, k);
        assert!(format!("{k:?}").starts_with("key:"));
        assert!("not-a-uuid".parse::<Key>().is_err());
    }
}
