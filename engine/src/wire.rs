//! The replication protocol on the wire: serde message types, and a
//! versioned, length-prefixed, checksummed binary framing around them.
//!
//! Frame layout (all integers little-endian):
//!
//! ```text
//! 0      2        3        4            8            12
//! | "RS" | version | flags=0 | payload len | CRC32C    | payload (postcard) ...
//! ```
//!
//! The CRC32C covers bytes 0..8 of the header and the payload. Decoding
//! checks, in order: magic, version, flags, length limit, completeness,
//! checksum, then the payload; each failure is its own [`FrameError`].

use crate::ids::{ClusterId, Dot, Key, Lsn, NodeId, ReplicaId};
use crate::record::Version;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 2;
pub const FRAME_MAGIC: [u8; 2] = *b"RS";
pub const FRAME_HEADER_LEN: usize = 12;
/// Default limit on one frame's payload.
pub const FRAME_PAYLOAD_LEN_MAX: u32 = 32 << 20;

/// Where a receiver stands in one sender's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Position {
    /// Everything up to and including `lsn` of the sender's log is covered.
    Log { lsn: Lsn },
    /// Inside a snapshot of the sender's state taken at `at_lsn`: keys up to
    /// and including `after` are covered. When the snapshot ends the position
    /// becomes `Log { lsn: at_lsn }`.
    Snapshot { at_lsn: Lsn, after: Option<Key> },
}

impl Position {
    /// Orders two positions of the same sender log when they are comparable:
    /// log positions by LSN; positions in the same snapshot by key; a
    /// snapshot before the log position it ends at (or any later one).
    /// Positions of two different snapshots are not comparable.
    pub fn partial_order(&self, other: &Position) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering::*;
        match (*self, *other) {
            (Position::Log { lsn: a }, Position::Log { lsn: b }) => Some(a.cmp(&b)),
            (
                Position::Snapshot {
                    at_lsn: a,
                    after: x,
                },
                Position::Snapshot {
                    at_lsn: b,
                    after: y,
                },
            ) => (a == b).then(|| x.cmp(&y)),
            (Position::Snapshot { at_lsn, .. }, Position::Log { lsn }) => {
                (lsn >= at_lsn).then_some(Less)
            }
            (Position::Log { lsn }, Position::Snapshot { at_lsn, .. }) => {
                (lsn >= at_lsn).then_some(Greater)
            }
        }
    }
}

/// A position in a given incarnation of a sender's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// The sender's replica (its log incarnation) the position refers to.
    pub replica: ReplicaId,
    pub pos: Position,
}

/// First message on every connection, from both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster: ClusterId,
    pub node: NodeId,
    /// The speaker's current dot origin.
    pub replica: ReplicaId,
    /// The speaker's log, as cursors into it name it.
    pub log_id: ReplicaId,
    /// `Some` when the speaker wants to receive from the listener: its
    /// durable position in the listener's log (`None` inside if it has none,
    /// e.g. a new or wiped node).
    pub receive: Option<Option<Cursor>>,
    /// Dots `(lo, hi]` of the speaker's earlier origins that it may have
    /// handed out and lost with its log tail (a crash after the writes
    /// left). A listener holding any of them sends them back.
    pub lost_own_counters: Vec<(ReplicaId, u64, u64)>,
}

/// Why a session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("the peer belongs to another cluster")]
    WrongCluster,
    #[error("the peer is not the node configured for this link")]
    UnexpectedNode,
    #[error("the peer is not configured here")]
    NotConfigured,
    #[error("a frame could not be decoded")]
    BadFrame,
    #[error("the peer broke the protocol")]
    Misbehaved,
}

/// A run of what the receiver lacks: the items of one or more whole log
/// entries (or a slice of a snapshot). Applied atomically by the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The position this batch continues from.
    pub prev: Cursor,
    /// The position once this batch is applied.
    pub next: Cursor,
    pub versions: Vec<Version>,
}

/// The receiver has durably applied everything up to `cursor`. The other
/// fields are what tombstone purging needs from the receiver (see
/// `crate::stability`); a receiver that does not purge leaves its view and
/// staged count at 0 and reports a stable point of 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub cursor: Cursor,
    /// The receiver's own log head (its last LSN) when it acknowledged.
    pub head: Lsn,
    /// The last position in the receiver's log that holds something for
    /// the sender and the sender has not acknowledged (0: none; `Lsn::MAX`:
    /// unknown, e.g. a snapshot is owed).
    pub pending_for_you: Lsn,
    /// Versions the receiver held staged (waiting for a blob) then.
    pub staged: u32,
    /// The receiver's persisted stability point in its own log: every
    /// tombstone it holds at or below it can no longer meet a version
    /// written without knowledge of it (0 when it does not purge).
    pub stable: Lsn,
    /// A digest of the logs the receiver knows its cluster members by
    /// (itself included); equal digests mean equal views.
    pub view: u64,
    /// The sender has no report from the receiver yet (it started, or
    /// the receiver's log is new to it): the receiver should send one.
    pub want_report: bool,
    /// The receiver's dot origin and the last counter it handed out: the
    /// versions it wrote before acknowledging (logged below `head`).
    pub origin: Dot,
}

impl Ack {
    /// An acknowledgement carrying nothing for purging (tests, tools).
    pub fn of(cursor: Cursor) -> Self {
        Self {
            cursor,
            head: 0,
            pending_for_you: Lsn::MAX,
            staged: 0,
            stable: 0,
            view: 0,
            want_report: false,
            origin: Dot {
                replica: ReplicaId::from_u128(0),
                counter: 0,
            },
        }
    }
}

/// Receiver to sender: the blob's bytes are present up to `offset`.
/// `restart` asks to (re)send from there (first request, gap, timeout);
/// otherwise it acknowledges progress and opens the window further.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobWant {
    pub hash: [u8; 32],
    pub offset: u64,
    pub restart: bool,
}

/// A piece of a blob, with its own checksum (CRC32C of `data`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChunk {
    pub hash: [u8; 32],
    pub offset: u64,
    pub total_len: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub crc32c: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Refuse(Refusal),
    Batch(Batch),
    Ack(Ack),
    BlobWant(BlobWant),
    BlobChunk(BlobChunk),
    /// The sender does not hold this blob whole (yet); ask again later.
    BlobMissing {
        hash: [u8; 32],
    },
    /// What an acknowledgement tells about tombstone stability, repeated
    /// without new data (the cursor is the sender's durable position in
    /// the receiver's log): sent by purging nodes when it changed, so
    /// stability spreads in a quiet cluster too. Flow control ignores it.
    Stability(Ack),
}

/// Why bytes could not be decoded into a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame truncated: {have} bytes, {need} needed")]
    Truncated { have: usize, need: usize },
    #[error("bad frame magic {got:02x?}")]
    BadMagic { got: [u8; 2] },
    #[error("protocol version {got} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { got: u8 },
    #[error("unknown frame flags {got:#04x}")]
    BadFlags { got: u8 },
    #[error("frame payload of {len} bytes is over the limit of {max}")]
    Oversized { len: u32, max: u32 },
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame payload is malformed: {detail}")]
    Malformed { detail: String },
}

impl Message {
    /// About how many bytes the message encodes to (at least), so the
    /// frame's buffer is allocated once.
    fn encoded_len_hint(&self) -> usize {
        match self {
            Message::Batch(b) => 96 + b.versions.iter().map(|v| v.size_bytes()).sum::<usize>(),
            Message::BlobChunk(c) => 96 + c.data.len(),
            _ => 128,
        }
    }
}

/// Encodes one message as a frame.
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    // The payload is written after room for the header: no second copy.
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + msg.encoded_len_hint());
    buf.resize(FRAME_HEADER_LEN, 0);
    let mut out = match postcard::to_extend(msg, buf) {
        Ok(p) => p,
        Err(e) => unreachable!("in-memory serialisation of a message cannot fail: {e}"),
    };
    let len = out.len() - FRAME_HEADER_LEN;
    assert!(
        len <= FRAME_PAYLOAD_LEN_MAX as usize,
        "message of {len} bytes over the frame limit; batches are bounded below it"
    );
    out[..2].copy_from_slice(&FRAME_MAGIC);
    out[2] = PROTOCOL_VERSION;
    out[3] = 0;
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..8]), &out[FRAME_HEADER_LEN..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(
        decode_frame(&out, FRAME_PAYLOAD_LEN_MAX)
            .ok()
            .map(|(m, _)| m)
            .as_ref(),
        Some(msg)
    );
    out
}

/// Checks a frame header; returns the payload length.
fn check_header(buf: &[u8], payload_len_max: u32) -> Result<u32, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated {
            have: buf.len(),
            need: FRAME_HEADER_LEN,
        });
    }
    if buf[0..2] != FRAME_MAGIC {
        return Err(FrameError::BadMagic {
            got: [buf[0], buf[1]],
        });
    }
    if buf[2] != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { got: buf[2] });
    }
    if buf[3] != 0 {
        return Err(FrameError::BadFlags { got: buf[3] });
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > payload_len_max {
        return Err(FrameError::Oversized {
            len,
            max: payload_len_max,
        });
    }
    Ok(len)
}

/// Decodes the frame at the start of `buf`; returns the message and the
/// number of bytes it took.
pub fn decode_frame(buf: &[u8], payload_len_max: u32) -> Result<(Message, usize), FrameError> {
    let len = check_header(buf, payload_len_max)? as usize;
    let total = FRAME_HEADER_LEN + len;
    if buf.len() < total {
        return Err(FrameError::Truncated {
            have: buf.len(),
            need: total,
        });
    }
    let want = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let payload = &buf[FRAME_HEADER_LEN..total];
    if crc32c::crc32c_append(crc32c::crc32c(&buf[..8]), payload) != want {
        return Err(FrameError::Checksum);
    }
    let (msg, rest) =
        postcard::take_from_bytes::<Message>(payload).map_err(|e| FrameError::Malformed {
            detail: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed {
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok((msg, total))
}

/// Reassembles frames from a byte stream (one per connection).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    payload_len_max: u32,
}

impl FrameDecoder {
    pub fn new(payload_len_max: u32) -> Self {
        Self {
            buf: Vec::new(),
            payload_len_max,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. After
    /// an error the stream is unusable (the session must be closed).
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() >= FRAME_HEADER_LEN {
            // Reject a bad header before buffering a huge payload for it.
            check_header(&self.buf, self.payload_len_max)?;
        } else if !self.buf.is_empty() && self.buf[0] != FRAME_MAGIC[0] {
            return Err(FrameError::BadMagic {
                got: [self.buf[0], self.buf.get(1).copied().unwrap_or(0)],
            });
        }
        match decode_frame(&self.buf, self.payload_len_max) {
            Ok((msg, used)) => {
                self.buf.drain(..used);
                Ok(Some(msg))
            }
            Err(FrameError::Truncated { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes waiting for the rest of their frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Message {
        Message::Hello(Hello {
            cluster: ClusterId::from_u128(1),
            node: NodeId::from_u128(2),
            replica: ReplicaId::from_u128(3),
            log_id: ReplicaId::from_u128(4),
            receive: Some(None),
            lost_own_counters: Vec::new(),
        })
    }

    #[test]
    fn positions_order() {
        use std::cmp::Ordering::*;
        let log = |lsn| Position::Log { lsn };
        let snap = |at_lsn, k: Option<u128>| Position::Snapshot {
            at_lsn,
            after: k.map(Key::from_u128),
        };
        assert_eq!(log(3).partial_order(&log(5)), Some(Less));
        assert_eq!(snap(9, None).partial_order(&snap(9, Some(1))), Some(Less));
        assert_eq!(snap(9, Some(4)).partial_order(&log(9)), Some(Less));
        assert_eq!(log(12).partial_order(&snap(9, Some(4))), Some(Greater));
        assert_eq!(snap(9, None).partial_order(&snap(10, None)), None);
        assert_eq!(log(3).partial_order(&snap(9, None)), None);
    }

    #[test]
    fn round_trip() {
        let f = encode_frame(&hello());
        let (m, used) = decode_frame(&f, FRAME_PAYLOAD_LEN_MAX).unwrap();
        assert_eq!(m, hello());
        assert_eq!(used, f.len());
    }

    #[test]
    fn each_defect_has_its_error() {
        let f = encode_frame(&hello());
        let max = FRAME_PAYLOAD_LEN_MAX;
        assert!(matches!(
            decode_frame(&f[..5], max),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            decode_frame(&f[..f.len() - 1], max),
            Err(FrameError::Truncated { .. })
        ));
        let mut g = f.clone();
        g[0] = b'X';
        assert!(matches!(
            decode_frame(&g, max),
            Err(FrameError::BadMagic { .. })
        ));
        let mut g = f.clone();
        g[2] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode_frame(&g, max),
            Err(FrameError::UnsupportedVersion {
                got: PROTOCOL_VERSION + 1
            })
        );
        let mut g = f.clone();
        g[3] = 1;
        assert!(matches!(
            decode_frame(&g, max),
            Err(FrameError::BadFlags { .. })
        ));
        assert!(matches!(
            decode_frame(&f, 3),
            Err(FrameError::Oversized { .. })
        ));
        let mut g = f.clone();
        let last = g.len() - 1;
        g[last] ^= 0x10;
        assert_eq!(decode_frame(&g, max), Err(FrameError::Checksum));
    }

    #[test]
    fn decoder_reassembles_byte_by_byte() {
        let mut stream = encode_frame(&hello());
        stream.extend(encode_frame(&Message::Refuse(Refusal::Misbehaved)));
        let mut d = FrameDecoder::new(FRAME_PAYLOAD_LEN_MAX);
        let mut got = Vec::new();
        for b in &stream {
            d.push(&[*b]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![hello(), Message::Refuse(Refusal::Misbehaved)]);
        assert_eq!(d.buffered_len(), 0);
    }

    #[test]
    fn decoder_rejects_oversized_header_early() {
        let mut d = FrameDecoder::new(1024);
        let mut h = vec![b'R', b'S', PROTOCOL_VERSION, 0];
        h.extend_from_slice(&(1u32 << 30).to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        d.push(&h);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::Oversized { .. })
        ));
    }
}
