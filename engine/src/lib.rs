//! recsync-engine: the core of recsync, a multi-master asynchronous
//! replication engine for call-recording servers.
//!
//! The core is a synchronous, sans-IO state machine ([`Node`]): time,
//! received bytes and application calls go in; bytes to send, connection
//! requests, timers and events come out. Storage is reached through the
//! [`Storage`] trait. See `ARCHITECTURE.md` at the repository root.

pub mod blobs;
pub mod canary;
pub mod config;
pub mod disk;
pub mod event;
pub mod filter;
pub mod hlc;
pub mod ids;
pub mod keystate;
pub mod node;
pub mod peer;
pub mod policy;
pub mod record;
pub mod rto;
pub mod schedule;
pub mod seglog;
pub mod stability;
pub mod storage;
pub mod vv;
pub mod wire;

pub use blobs::{BlobError, BlobUpload};
pub use config::{ConfigError, Limits, NodeConfig, PeerConfig, Timing};
pub use event::{Event, SessionEnd};
pub use filter::Filter;
pub use hlc::Hlc;
pub use ids::{ClusterId, Dot, Key, Lsn, NodeId, ReplicaId};
pub use keystate::{ConflictReport, KeyState};
pub use node::{
    Node, ObjectView, OpenError, Output, PeerPurgeStatus, PeersChanged, PurgeStatus, PutRequest,
    ReconfigureError, SessionError, WriteError, WriteOp, WriteReceipt,
};
pub use peer::PeerStatus;
pub use policy::{ConflictPolicy, Resolution};
pub use record::{BlobRef, Body, Labels, Name, Version};
pub use schedule::{Schedule, Window};
pub use storage::{MemStorage, MemSync, Storage, StorageError};
pub use vv::VersionVector;
