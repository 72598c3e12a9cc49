//! Objects and their versions: labels used for selective replication, the
//! body (metadata, blob reference or tombstone) and the version envelope.

use crate::hlc::Hlc;
use crate::ids::{Dot, Key, NodeId};
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest class, tenant or group name, in bytes.
pub const NAME_LEN_MAX: usize = 32;

/// A short label name (class, tenant or group): 1 to 32 bytes of
/// `[a-z0-9_.-]`. Validated on construction, so a `Name` is always well formed;
/// shared, so a clone (every version carries three) costs no allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(Arc<str>);

/// Why a string is not a valid [`Name`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long, over the limit of {NAME_LEN_MAX}")]
    TooLong { len: usize },
    #[error("name has the character {ch:?}; only a-z, 0-9, '_', '.', '-' are allowed")]
    BadChar { ch: char },
}

impl Name {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > NAME_LEN_MAX {
            return Err(NameError::TooLong { len: s.len() });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(*c)))
        {
            return Err(NameError::BadChar { ch });
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Name::new(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0.to_string()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The labels selective replication filters on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Labels {
    pub class: Name,
    pub tenant: Name,
    pub group: Name,
}

impl Labels {
    /// Builds labels from three strings, validating each.
    pub fn parse(class: &str, tenant: &str, group: &str) -> Result<Self, NameError> {
        Ok(Self {
            class: Name::new(class)?,
            tenant: Name::new(tenant)?,
            group: Name::new(group)?,
        })
    }
}

/// A reference to a content-addressed blob (a recording's audio).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// BLAKE3 of the whole content.
    pub hash: [u8; 32],
    pub len_bytes: u64,
}

impl fmt::Debug for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "blob:{:02x}{:02x}{:02x}{:02x}/{}B",
            self.hash[0], self.hash[1], self.hash[2], self.hash[3], self.len_bytes
        )
    }
}

/// What a version says about its object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// The object exists with this metadata and optional blob.
    Live {
        #[serde(with = "serde_bytes")]
        meta: Vec<u8>,
        blob: Option<BlobRef>,
    },
    /// The object was deleted.
    Tombstone,
}

impl Body {
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Body::Tombstone)
    }

    /// Approximate size on the wire, for batching and bandwidth accounting.
    pub fn size_bytes(&self) -> usize {
        match self {
            Body::Live { meta, .. } => meta.len() + 48,
            Body::Tombstone => 1,
        }
    }
}

/// One version of one object: the unit that is written, logged, shipped and
/// applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    pub key: Key,
    /// The write's unique name.
    pub dot: Dot,
    /// The node that wrote it (what the `priority` policy ranks).
    pub origin: NodeId,
    pub hlc: Hlc,
    /// Everything this version supersedes (the writer's knowledge of the key).
    pub context: VersionVector,
    pub labels: Labels,
    pub body: Body,
}

impl Version {
    /// Whether `self` causally supersedes `other`.
    pub fn supersedes(&self, other: &Version) -> bool {
        self.context.covers(&other.dot)
    }

    /// Approximate encoded size, for batching and accounting.
    pub fn size_bytes(&self) -> usize {
        64 + self.context.len() * 24 + self.body.size_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Name::new("recording").is_ok());
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("Users"), Err(NameError::BadChar { ch: 'U' }));
        assert!(matches!(
            Name::new(&"x".repeat(33)),
            Err(NameError::TooLong { len: 33 })
        ));
    }

    #[test]
    fn name_deserialisation_validates() {
        let bad = postcard::to_allocvec(&"BAD NAME".to_string()).unwrap();
        assert!(postcard::from_bytes::<Name>(&bad).is_err());
        let good = postcard::to_allocvec(&"user".to_string()).unwrap();
        assert_eq!(
            postcard::from_bytes::<Name>(&good).unwrap().as_str(),
            "user"
        );
    }
}
