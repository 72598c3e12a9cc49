//! Events the core reports to the application.

use crate::ids::{Dot, Key, NodeId};
use crate::keystate::ConflictReport;
use crate::wire::{FrameError, Refusal};

/// Why a session with a peer ended or was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The transport reported the connection gone.
    Disconnected,
    /// We refused the peer.
    Refused(Refusal),
    /// The peer refused us.
    RefusedByPeer(Refusal),
    /// A frame could not be decoded; only this session is dropped.
    BadFrame(FrameError),
    /// The peer was removed from the configuration (`Node::set_peers`).
    Removed,
    /// The peer's settings changed (`Node::set_peers`); a new session
    /// starts under them.
    Reconfigured,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A version received from a peer was applied (it is new here).
    RemoteApplied { from: NodeId, key: Key, dot: Dot },
    /// Concurrent versions of one object met here. Also raised at open for
    /// every object whose versions stand concurrent (siblings), so that a
    /// conflict is never silent although a restart brought back a version
    /// whose write was never confirmed (its sync failed).
    Conflict(ConflictReport),
    /// A session with the peer is established.
    PeerUp { peer: NodeId },
    /// A session with the peer ended.
    PeerDown { peer: NodeId, why: SessionEnd },
    /// A blob fetched from `from` did not match its hash and was discarded;
    /// the recording stays staged and is fetched again later.
    BlobRejected { from: NodeId, hash: [u8; 32] },
    /// These keys' deletes are stable on every member and their tombstones
    /// were purged here (each with the purged tombstone's dot): the keys
    /// read as absent from now on, and no version written before the
    /// delete can still arrive.
    TombstonesPurged { keys: Vec<(Key, Dot)> },
    /// The event queue was full; this many older events were dropped.
    EventsDropped { count: u64 },
}
