//! Per-peer replication state: the link (with reconnect backoff), the
//! outbound stream (backlog, in-flight batches, bandwidth bucket) and the
//! inbound position. Pure bookkeeping; the node drives it.

use crate::blobs::Serve;
use crate::config::PeerConfig;
use crate::ids::{Lsn, ReplicaId};
use crate::rto::Rto;
use crate::stability::PeerStability;
use crate::wire::{Cursor, FrameDecoder, Position};
use std::collections::BTreeMap;
use std::collections::VecDeque;

/// The transport link to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// No connection; ask for one at `retry_at_ms`.
    Down { retry_at_ms: u64 },
    /// Waiting for the driver to connect.
    Connecting,
    /// Connected, our Hello sent at `since_ms`, waiting for theirs.
    Handshaking { since_ms: u64 },
    /// Both Hellos exchanged.
    Up {
        /// The peer's current dot origin.
        remote_replica: ReplicaId,
        /// The peer's log, as our cursors into it name it.
        remote_log: ReplicaId,
    },
}

/// One log entry that has something for this peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacklogItem {
    pub lsn: Lsn,
    pub versions: u32,
    pub bytes: u64,
    pub written_at_ms: u64,
}

/// A batch sent and not yet acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflight {
    pub next: Cursor,
    pub sent_at_ms: u64,
    /// No batch ending at `next` was sent before in this session, so its
    /// acknowledgement times a round trip (Karn's rule).
    pub first: bool,
}

/// The stream of our log to the peer, while a session is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Where the last batch sent leaves the receiver.
    pub sent: Cursor,
    pub inflight: VecDeque<Inflight>,
    /// After a go-back: the furthest position sent before it. Batches up
    /// to here are resends.
    pub resend_upto: Option<Cursor>,
}

impl Outbound {
    pub fn new(start: Cursor) -> Self {
        Self {
            sent: start,
            inflight: VecDeque::new(),
            resend_upto: None,
        }
    }

    /// Sends again from `to`: what was in flight is forgotten.
    pub fn go_back(&mut self, to: Cursor) {
        if self.resend_upto.is_none() {
            self.resend_upto = Some(self.sent);
        }
        self.sent = to;
        self.inflight.clear();
    }

    /// Records a batch sent up to `next`; tells whether it went out for the
    /// first time.
    pub fn push_sent(&mut self, next: Cursor, now_ms: u64) -> bool {
        use std::cmp::Ordering::Greater;
        let first = match self.resend_upto {
            None => true,
            Some(h) => {
                let beyond = h.replica == next.replica
                    && matches!(next.pos.partial_order(&h.pos), Some(Greater));
                let comparable =
                    h.replica == next.replica && next.pos.partial_order(&h.pos).is_some();
                if beyond || !comparable {
                    self.resend_upto = None;
                }
                beyond
            }
        };
        self.sent = next;
        self.inflight.push_back(Inflight {
            next,
            sent_at_ms: now_ms,
            first,
        });
        first
    }
}

/// A token bucket over bytes per second (1 s burst). Goes into debt for a
/// batch larger than what is left, so big batches still move.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    tokens: f64,
    updated_ms: u64,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_s: u64, now_ms: u64) -> Self {
        assert!(rate_bytes_per_s > 0);
        Self {
            rate_bytes_per_s,
            tokens: 0.0,
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.updated_ms {
            let add = (now_ms - self.updated_ms) as f64 * self.rate_bytes_per_s as f64 / 1000.0;
            self.tokens = (self.tokens + add).min(self.rate_bytes_per_s as f64);
            self.updated_ms = now_ms;
        }
    }

    /// Whether sending may start now.
    pub fn ready(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens > 0.0
    }

    pub fn spend(&mut self, bytes: usize, now_ms: u64) {
        self.refill(now_ms);
        self.tokens -= bytes as f64;
    }

    /// When the bucket is back above zero.
    pub fn ready_at_ms(&self) -> u64 {
        if self.tokens > 0.0 {
            return self.updated_ms;
        }
        let wait = (-self.tokens * 1000.0 / self.rate_bytes_per_s as f64).ceil() as u64;
        self.updated_ms + wait.max(1)
    }
}

/// Everything the node tracks per configured peer.
#[derive(Debug)]
pub struct Peer {
    pub cfg: PeerConfig,
    pub link: Link,
    pub decoder: FrameDecoder,
    /// Since when part of a frame waits in the decoder.
    pub partial_since_ms: Option<u64>,
    pub reconnect_attempt: u32,
    /// Entries with something for the peer, after what it acknowledged.
    pub backlog: VecDeque<BacklogItem>,
    /// What the peer acknowledged of our log (durable on its side).
    pub acked: Option<Cursor>,
    pub out: Option<Outbound>,
    /// The next thing to send is a received version not yet durable here:
    /// no timer until `handle_durable` pumps again.
    pub waiting_for_durable: bool,
    /// The last go-back (to this cursor, at this time): a repeat of the same
    /// acknowledgement within an ack timeout does not go back again, or
    /// each duplicate would resend the window and each resent batch arriving
    /// out of sequence would bring another acknowledgement.
    pub last_go_back: Option<(Cursor, u64)>,
    /// Manual schedule: ship entries up to this LSN (set by sync now).
    pub sync_upto: Lsn,
    pub bucket: Option<TokenBucket>,
    pub paused: bool,
    pub last_success_ms: Option<u64>,
    /// Our durable position in the peer's log.
    pub recv_durable: Option<Cursor>,
    /// Our applied (maybe not yet durable) position in the peer's log.
    pub recv_applied: Option<Cursor>,
    /// LSN of the local entry holding `recv_applied` (kept by trimming).
    pub recv_cursor_lsn: Lsn,
    /// The peer's own dot counters it may have lost in a crash (from its
    /// Hello): its own versions in this range are sent back to it.
    pub echo_range: Vec<(ReplicaId, u64, u64)>,
    /// We hold versions in the peer's `echo_range` and owe it a snapshot
    /// that gives them back: until that snapshot is acknowledged, the
    /// peer's own position in our log does not replace it (those versions
    /// lie behind that position).
    pub reseed_owed: bool,
    /// Blobs being served to the peer, by hash.
    pub serving: BTreeMap<[u8; 32], Serve>,
    /// The link's round trip and retransmission timeout.
    pub rto: Rto,
    /// What its acknowledgements tell about tombstone stability.
    pub stability: PeerStability,
    /// Counters, for status and tests.
    pub stats: PeerStats,
}

/// Traffic counters of one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub batches_sent: u64,
    pub versions_sent: u64,
    pub bytes_sent: u64,
    pub batches_received: u64,
    pub versions_received: u64,
    pub resends: u64,
    pub sessions: u64,
    pub blob_bytes_sent: u64,
    pub blob_bytes_received: u64,
}

/// The operator's view of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub connected: bool,
    pub paused: bool,
    pub pending_versions: u64,
    pub pending_bytes: u64,
    pub oldest_pending_age_ms: Option<u64>,
    pub last_success_ms: Option<u64>,
    /// A snapshot (seeding or anti-entropy) is being streamed to the peer.
    pub seeding: bool,
    pub stats: PeerStats,
}

impl Peer {
    /// The blob to send a chunk of next, if any may go: the bytes in flight
    /// to this peer, over all blobs, stay within `window`, so a backlog of
    /// recordings queues here, not on the link.
    pub fn next_blob_chunk(&self, window: u64) -> Option<([u8; 32], u64, u64)> {
        let in_flight: u64 = self
            .serving
            .values()
            .map(|s| s.sent.saturating_sub(s.acked))
            .sum();
        if in_flight >= window {
            return None;
        }
        self.serving
            .iter()
            .find(|(_, s)| s.sent < s.len)
            .map(|(h, s)| (*h, s.sent, s.len))
    }

    pub fn new(cfg: PeerConfig, frame_payload_len_max: u32, now_ms: u64) -> Self {
        let bucket = cfg
            .bandwidth_bytes_per_s
            .map(|r| TokenBucket::new(r, now_ms));
        Self {
            cfg,
            link: Link::Down {
                retry_at_ms: now_ms,
            },
            decoder: FrameDecoder::new(frame_payload_len_max),
            partial_since_ms: None,
            waiting_for_durable: false,
            last_go_back: None,
            reconnect_attempt: 0,
            backlog: VecDeque::new(),
            acked: None,
            out: None,
            sync_upto: 0,
            bucket,
            paused: false,
            last_success_ms: None,
            recv_durable: None,
            recv_applied: None,
            recv_cursor_lsn: 0,
            echo_range: Vec::new(),
            reseed_owed: false,
            serving: BTreeMap::new(),
            rto: Rto::default(),
            stability: PeerStability::default(),
            stats: PeerStats::default(),
        }
    }

    /// Whether `v`, written by the peer itself, must still be sent to it
    /// (it lost it in a crash).
    pub fn echoes(&self, v: &crate::record::Version) -> bool {
        self.echo_range
            .iter()
            .any(|&(r, lo, hi)| v.dot.replica == r && lo < v.dot.counter && v.dot.counter <= hi)
    }

    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// Forgets the backlog up to what `cursor` covers.
    pub fn pop_acked(&mut self, cursor: &Cursor) {
        if let Position::Log { lsn } = cursor.pos {
            while self.backlog.front().is_some_and(|b| b.lsn <= lsn) {
                self.backlog.pop_front();
            }
        }
    }

    pub fn status(&self, now_ms: u64) -> PeerStatus {
        PeerStatus {
            connected: self.is_up(),
            paused: self.paused,
            pending_versions: self.backlog.iter().map(|b| b.versions as u64).sum(),
            pending_bytes: self.backlog.iter().map(|b| b.bytes).sum(),
            oldest_pending_age_ms: self
                .backlog
                .front()
                .map(|b| now_ms.saturating_sub(b.written_at_ms)),
            last_success_ms: self.last_success_ms,
            seeding: self.out.as_ref().is_some_and(|o| {
                matches!(o.sent.pos, Position::Snapshot { .. })
                    || matches!(self.acked, Some(c) if matches!(c.pos, Position::Snapshot { .. }))
            }),
            stats: self.stats,
        }
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random.
pub fn backoff_ms(attempt: u32, initial_ms: u64, max_ms: u64, unit_random: f64) -> u64 {
    let exp = initial_ms
        .saturating_mul(1u64 << attempt.min(30))
        .min(max_ms);
    let half = exp / 2;
    half + (half as f64 * unit_random) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_holds_its_rate() {
        let mut b = TokenBucket::new(1000, 0);
        let mut sent = 0u64;
        let mut t = 0;
        while t <= 60_000 {
            if b.ready(t) {
                b.spend(300, t);
                sent += 300;
            }
            t = t.max(b.ready_at_ms()).max(t + 1);
        }
        // 60 s at 1000 B/s, plus at most one batch of debt
        assert!((59_000..=61_300).contains(&sent), "{sent}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_ms(0, 200, 30_000, 0.0), 100);
        assert_eq!(backoff_ms(3, 200, 30_000, 1.0), 1600);
        assert_eq!(backoff_ms(40, 200, 30_000, 1.0), 30_000);
    }
}
