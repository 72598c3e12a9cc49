//! recsync-sim: runs whole recsync clusters in one thread from one seed.
//!
//! [`cluster::Cluster`] is the deterministic harness: N real engine nodes on
//! in-memory storage, a message network with controllable latency,
//! reordering, drops, duplicates, cuts and partitions, and injected time.
//! The acceptance tests, the demo and (later) the swarm simulator build on it.

pub mod cluster;
pub mod net;
pub mod sent;
pub mod store;
pub mod swarm;

pub use cluster::{Cluster, ClusterBuilder, Livelock, SentBatch};
pub use net::NetConfig;
pub use store::{SimStore, StoreKind};
