//! Blob (recording audio) transfer state: what a receiver is fetching,
//! what a sender is serving, and local uploads. Blobs move in checksummed
//! chunks in their own lane, behind small records, with a small window of
//! chunks in flight; they resume from the bytes already present. A version
//! carrying a blob is staged until the blob is whole and its BLAKE3 hash
//! verified; only then is it applied (visible, relayed).

use crate::ids::NodeId;
use crate::storage::BlobId;

/// Size of one blob chunk on the wire.
pub const BLOB_CHUNK_BYTES: usize = 64 << 10;
/// Chunks sent ahead of the receiver's acknowledged offset.
pub const BLOB_WINDOW_CHUNKS: u64 = 4;
/// Read size when verifying a whole blob's hash.
pub const BLOB_VERIFY_READ_BYTES: usize = 1 << 20;

/// A blob this node is fetching for staged versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub len: u64,
    /// The peer asked (the one that sent the version, or another if it is down).
    pub source: NodeId,
    /// Ask again at this time if nothing arrives before.
    pub deadline_ms: u64,
    /// Whole copies that failed verification (backs the retries off).
    pub failures: u32,
    /// Deadlines passed in a row with nothing arriving (backs the asks
    /// off: the source may be busy serving others over a slow link).
    pub stalls: u32,
    /// The last restart asked after a gap: (from offset, at time). One per
    /// offset per ack timeout, or every chunk of a window in flight past a
    /// gap would restart the sender again, and each restart resends the
    /// window: the requests would multiply.
    pub restart_asked: Option<(u64, u64)>,
}

/// A blob this node is serving to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serve {
    pub len: u64,
    /// The receiver holds bytes up to here.
    pub acked: u64,
    /// Bytes sent so far.
    pub sent: u64,
    pub last_progress_ms: u64,
}

/// A local upload in progress: the application streams the blob in, then
/// names it in a put.
#[derive(Clone, Debug)]
pub struct BlobUpload {
    pub(crate) id: BlobId,
    pub(crate) hasher: blake3::Hasher,
    pub(crate) len: u64,
}

impl BlobUpload {
    /// Bytes written so far.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }
}

/// Why a blob could not be read or uploaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("blob is not held whole here")]
    NotFound,
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
}
