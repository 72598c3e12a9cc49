//! Bad frames: 10,000 random, truncated, bit-flipped, oversized,
//! future-version and malformed frames into the decoder, and thousands more
//! into live sessions of a running cluster. Every one gives a typed error (or,
//! for an incomplete frame, a request for more bytes), nothing panics, the
//! node's replicated state does not change, and only the session that carried
//! the bad bytes is refused: the other sessions stay up, the refused one
//! reconnects by itself, and the cluster keeps converging.
//!
//! An incomplete frame leaves its session waiting for the rest. The live test
//! then either delivers the rest (a valid frame from a peer breaking the
//! protocol: refused or ignored, never applied) or cuts the connection, as a
//! transport does when the peer dies mid-frame. It does not let genuine
//! traffic follow a partial frame: after a 4- or 5-byte prefix the next real
//! frame reads as a length of about 86 KB or 22 MB (under the limit), and the
//! session waits for those bytes with no timeout.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsync_engine::wire::{
    decode_frame, encode_frame, Ack, Batch, Cursor, FrameDecoder, FrameError, Hello, Message,
    Position, Refusal, FRAME_HEADER_LEN, FRAME_MAGIC, FRAME_PAYLOAD_LEN_MAX, PROTOCOL_VERSION,
};
use recsync_engine::{
    BlobRef, Body, ClusterId, Dot, Event, Hlc, Key, NodeId, ReplicaId, SessionEnd, SessionError,
    Version, VersionVector,
};
use recsync_sim::cluster::{index_of, labels, node_id, ClusterBuilder, CLASSES, EPOCH_MS};
use recsync_sim::Cluster;
use std::collections::BTreeMap;
use std::ops::Range;

const MAX: u32 = FRAME_PAYLOAD_LEN_MAX;

/// The ways a frame goes bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Random bytes of random length (half of them behind a plausible header,
    /// so the length and checksum checks are reached too).
    Random,
    /// A valid frame cut short.
    Truncated,
    /// A valid frame with 1 to 3 bits flipped.
    BitFlip,
    /// A header claiming a payload over the limit.
    Oversized,
    /// A valid frame with another protocol version byte (CRC recomputed).
    Version,
    /// A well-formed, correctly checksummed frame whose payload is not one
    /// message: garbage appended inside the length, or the payload cut.
    Malformed,
}

const KINDS: [Kind; 6] = [
    Kind::Random,
    Kind::Truncated,
    Kind::BitFlip,
    Kind::Oversized,
    Kind::Version,
    Kind::Malformed,
];

// ----- valid messages ------------------------------------------------------

fn cursor(rng: &mut ChaCha8Rng) -> Cursor {
    let pos = if rng.gen_bool(0.5) {
        Position::Log {
            lsn: rng.gen_range(0..1_000_000),
        }
    } else {
        Position::Snapshot {
            at_lsn: rng.gen_range(0..1_000_000),
            after: rng.gen_bool(0.5).then(|| Key::from_u128(rng.gen())),
        }
    };
    Cursor {
        replica: ReplicaId::from_u128(rng.gen()),
        pos,
    }
}

/// Random bytes, of a length drawn from `len`.
fn bytes(rng: &mut ChaCha8Rng, len: Range<usize>) -> Vec<u8> {
    let mut v = vec![0u8; rng.gen_range(len)];
    rng.fill(&mut v[..]);
    v
}

fn version(rng: &mut ChaCha8Rng) -> Version {
    let mut context = VersionVector::new();
    for _ in 0..rng.gen_range(0..4) {
        context.add(&Dot {
            replica: ReplicaId::from_u128(rng.gen()),
            counter: rng.gen_range(1..10_000),
        });
    }
    let body = match rng.gen_range(0..3) {
        0 => Body::Tombstone,
        1 => Body::Live {
            meta: bytes(rng, 0..200),
            blob: None,
        },
        _ => {
            let mut hash = [0u8; 32];
            rng.fill(&mut hash);
            Body::Live {
                meta: bytes(rng, 0..64),
                blob: Some(BlobRef {
                    hash,
                    len_bytes: rng.gen(),
                }),
            }
        }
    };
    Version {
        key: Key::from_u128(rng.gen()),
        dot: Dot {
            replica: ReplicaId::from_u128(rng.gen()),
            counter: rng.gen_range(1..u64::MAX),
        },
        origin: NodeId::from_u128(rng.gen()),
        hlc: Hlc {
            wall_ms: EPOCH_MS + rng.gen_range(0..10_000_000),
            logical: rng.gen_range(0..10),
        },
        context,
        labels: labels(CLASSES[rng.gen_range(0..CLASSES.len())]),
        body,
    }
}

/// A random valid message of each kind: Hello, Batch, Ack, Refuse.
fn message(rng: &mut ChaCha8Rng) -> Message {
    match rng.gen_range(0..4) {
        0 => Message::Hello(Hello {
            cluster: ClusterId::from_u128(rng.gen()),
            node: NodeId::from_u128(rng.gen()),
            replica: ReplicaId::from_u128(rng.gen()),
            log_id: ReplicaId::from_u128(rng.gen()),
            receive: match rng.gen_range(0..3) {
                0 => None,
                1 => Some(None),
                _ => Some(Some(cursor(rng))),
            },
            lost_own_counters: (0..rng.gen_range(0..3))
                .map(|_| (ReplicaId::from_u128(rng.gen()), rng.gen(), rng.gen()))
                .collect(),
        }),
        1 => Message::Batch(Batch {
            prev: cursor(rng),
            next: cursor(rng),
            versions: (0..rng.gen_range(0..6)).map(|_| version(rng)).collect(),
        }),
        2 => Message::Ack(Ack {
            cursor: cursor(rng),
            head: rng.gen(),
            pending_for_you: rng.gen(),
            staged: rng.gen(),
            stable: rng.gen(),
            view: rng.gen(),
            want_report: rng.gen(),
            origin: recsync_engine::Dot {
                replica: ReplicaId::from_u128(rng.gen()),
                counter: rng.gen(),
            },
        }),
        _ => Message::Refuse(
            [
                Refusal::WrongCluster,
                Refusal::UnexpectedNode,
                Refusal::NotConfigured,
                Refusal::BadFrame,
                Refusal::Misbehaved,
            ][rng.gen_range(0..5)],
        ),
    }
}

/// A valid frame, checked to round-trip (the generators start from these).
fn valid_frame(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let msg = message(rng);
    let f = encode_frame(&msg);
    assert_eq!(
        decode_frame(&f, MAX),
        Ok((msg, f.len())),
        "control: a valid frame decodes"
    );
    f
}

/// Writes the payload length and recomputes the CRC32C of a frame.
fn reseal(f: &mut [u8]) {
    let len = (f.len() - FRAME_HEADER_LEN) as u32;
    f[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c_of(&f[..8], &f[FRAME_HEADER_LEN..]);
    f[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C (Castagnoli) of `a` then `b`, bitwise (the test does not trust the
/// engine's own helper for this).
fn crc32c_of(a: &[u8], b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in a.iter().chain(b) {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ----- bad frames -------------------------------------------------------------

/// One bad input, of one kind.
struct Bad {
    kind: Kind,
    bytes: Vec<u8>,
    /// The valid frame it was made from (for a truncated one: the whole).
    original: Vec<u8>,
}

fn bad(rng: &mut ChaCha8Rng, kind: Kind) -> Bad {
    let original = valid_frame(rng);
    let mut f = original.clone();
    match kind {
        Kind::Random => {
            f = bytes(rng, 0..4096);
            if f.len() >= FRAME_HEADER_LEN && rng.gen_bool(0.5) {
                // Behind a plausible header, often with an in-range length.
                f[..2].copy_from_slice(&FRAME_MAGIC);
                f[2] = PROTOCOL_VERSION;
                f[3] = 0;
                if rng.gen_bool(0.7) {
                    let len = rng.gen_range(0..=(f.len() - FRAME_HEADER_LEN) as u32 + 64);
                    f[4..8].copy_from_slice(&len.to_le_bytes());
                }
            }
        }
        Kind::Truncated => f.truncate(rng.gen_range(0..f.len())),
        Kind::BitFlip => {
            let bits = f.len() * 8;
            let n = rng.gen_range(1..=3);
            let mut flipped: Vec<usize> = Vec::new();
            while flipped.len() < n {
                let b = rng.gen_range(0..bits);
                if !flipped.contains(&b) {
                    flipped.push(b);
                }
            }
            for b in flipped {
                f[b / 8] ^= 1 << (b % 8);
            }
        }
        Kind::Oversized => {
            let len = rng.gen_range(MAX + 1..=u32::MAX);
            f[4..8].copy_from_slice(&len.to_le_bytes());
            if rng.gen_bool(0.5) {
                let crc = crc32c_of(&f[..8], &f[FRAME_HEADER_LEN..]);
                f[8..12].copy_from_slice(&crc.to_le_bytes());
            }
            // The header alone, or with some (or all) of the payload.
            f.truncate(rng.gen_range(FRAME_HEADER_LEN..=f.len()));
        }
        Kind::Version => {
            // Mostly future versions, sometimes 0.
            f[2] = if rng.gen_bool(0.9) {
                rng.gen_range(PROTOCOL_VERSION + 1..=u8::MAX)
            } else {
                0
            };
            reseal(&mut f);
        }
        Kind::Malformed => {
            let payload_len = f.len() - FRAME_HEADER_LEN;
            if payload_len == 0 || rng.gen_bool(0.6) {
                let extra = bytes(rng, 1..64);
                f.extend_from_slice(&extra);
            } else {
                f.truncate(FRAME_HEADER_LEN + rng.gen_range(0..payload_len));
            }
            reseal(&mut f);
        }
    }
    Bad {
        kind,
        bytes: f,
        original,
    }
}

/// The variant name of a decoder outcome, for counting.
fn outcome_name(r: &Result<Option<Message>, FrameError>) -> &'static str {
    match r {
        Ok(None) => "more-needed",
        Ok(Some(_)) => "MESSAGE",
        Err(e) => error_name(e),
    }
}

fn error_name(e: &FrameError) -> &'static str {
    match e {
        FrameError::Truncated { .. } => "Truncated",
        FrameError::BadMagic { .. } => "BadMagic",
        FrameError::UnsupportedVersion { .. } => "UnsupportedVersion",
        FrameError::BadFlags { .. } => "BadFlags",
        FrameError::Oversized { .. } => "Oversized",
        FrameError::Checksum => "Checksum",
        FrameError::Malformed { .. } => "Malformed",
    }
}

/// Checks what `decode_frame` says about one bad input; returns its error.
fn check_decode_frame(b: &Bad) -> FrameError {
    let r = decode_frame(&b.bytes, MAX);
    let hex = hex(&b.bytes);
    let e = match r {
        Err(e) => e,
        Ok((m, used)) => panic!(
            "{:?} input decoded as a message ({used} bytes): {m:?}\ninput: {hex}",
            b.kind
        ),
    };
    match b.kind {
        Kind::Random | Kind::BitFlip => {}
        Kind::Truncated => {
            let need = if b.bytes.len() < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN
            } else {
                b.original.len()
            };
            assert_eq!(
                e,
                FrameError::Truncated {
                    have: b.bytes.len(),
                    need
                },
                "input: {hex}"
            );
        }
        Kind::Oversized => {
            let len = u32::from_le_bytes([b.bytes[4], b.bytes[5], b.bytes[6], b.bytes[7]]);
            assert_eq!(e, FrameError::Oversized { len, max: MAX }, "input: {hex}");
        }
        Kind::Version => assert_eq!(
            e,
            FrameError::UnsupportedVersion { got: b.bytes[2] },
            "input: {hex}"
        ),
        Kind::Malformed => assert!(
            matches!(e, FrameError::Malformed { .. }),
            "{e:?} for input: {hex}"
        ),
    }
    e
}

/// What a fresh stream decoder says about the whole input at once.
fn decoder_outcome(bytes: &[u8]) -> Result<Option<Message>, FrameError> {
    let mut d = FrameDecoder::new(MAX);
    d.push(bytes);
    d.next_message()
}

/// Checks the stream decoder against `decode_frame` on one bad input, fed
/// whole and in random chunks.
fn check_frame_decoder(rng: &mut ChaCha8Rng, b: &Bad, frame_err: &FrameError) -> &'static str {
    let hex = hex(&b.bytes);
    let whole = decoder_outcome(&b.bytes);
    match (&whole, frame_err) {
        // Incomplete: the decoder waits for more (or rejects a bad first
        // byte early).
        (Ok(None), FrameError::Truncated { .. }) => {}
        (Err(FrameError::BadMagic { .. }), FrameError::Truncated { .. })
            if b.bytes.len() < FRAME_HEADER_LEN && b.bytes[0] != FRAME_MAGIC[0] => {}
        (Err(e), fe) if e == fe => {}
        _ => panic!(
            "{:?}: the stream decoder says {whole:?}, decode_frame {frame_err:?}\ninput: {hex}",
            b.kind
        ),
    }
    if b.kind == Kind::Truncated {
        assert_eq!(whole, Ok(None), "a truncated frame waits for more: {hex}");
    }
    // The same bytes in random chunks, polling after each: the same verdict
    // (a bad magic may be seen with fewer bytes, so compare variants only).
    let mut d = FrameDecoder::new(MAX);
    let mut rest = &b.bytes[..];
    let mut chunked = Ok(None);
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(700));
        d.push(&rest[..n]);
        rest = &rest[n..];
        chunked = d.next_message();
        if !matches!(chunked, Ok(None)) {
            break;
        }
    }
    assert_eq!(
        outcome_name(&chunked),
        outcome_name(&whole),
        "{:?}: chunked {chunked:?}, whole {whole:?}\ninput: {hex}",
        b.kind
    );
    outcome_name(&whole)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn acceptance_bad_frames_decoder() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x0BAD_F8A3);
    let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut outcomes: BTreeMap<(Kind, &'static str, &'static str), usize> = BTreeMap::new();
    let (mut trailing, mut cut_short) = (0usize, 0usize);
    for _ in 0..10_000 {
        let kind = KINDS[rng.gen_range(0..KINDS.len())];
        let b = bad(&mut rng, kind);
        let e = check_decode_frame(&b);
        let stream = check_frame_decoder(&mut rng, &b, &e);
        if let FrameError::Malformed { detail } = &e {
            if detail.contains("trailing") {
                trailing += 1;
            } else {
                cut_short += 1;
            }
        }
        *by_kind.entry(kind).or_default() += 1;
        *outcomes.entry((kind, error_name(&e), stream)).or_default() += 1;
    }
    eprintln!("outcomes (kind, decode_frame, FrameDecoder): {outcomes:#?}");
    for kind in KINDS {
        let n = by_kind.get(&kind).copied().unwrap_or(0);
        assert!(n >= 500, "{kind:?} exercised only {n} times");
    }
    // Random inputs reach every check, not only the magic.
    for name in ["BadMagic", "Oversized", "Checksum", "Truncated"] {
        assert!(
            outcomes
                .keys()
                .any(|(k, e, _)| *k == Kind::Random && *e == name),
            "random inputs never gave {name}"
        );
    }
    // Both malformed shapes were seen: trailing garbage, payload cut short.
    assert!(
        trailing >= 100 && cut_short >= 100,
        "{trailing} / {cut_short}"
    );
}

// ----- live sessions ------------------------------------------------------------

const N: usize = 3;

/// Whether node `i` has its session with `j` up.
fn up(c: &Cluster, i: usize, j: usize) -> bool {
    c.node(i)
        .peer_status(&node_id(j))
        .is_some_and(|s| s.connected)
}

/// Every directed session's state, `[i][j]` = node `i`'s view of `j`.
fn links(c: &Cluster) -> [[bool; N]; N] {
    let mut m = [[false; N]; N];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = i != j && up(c, i, j);
        }
    }
    m
}

fn digests(c: &Cluster) -> [[u8; 32]; N] {
    [0, 1, 2].map(|i| c.node(i).state_digest())
}

fn event_counts(c: &Cluster) -> [usize; N] {
    [0, 1, 2].map(|i| c.events(i).len())
}

/// Writes `n` new objects on node `i`; returns their keys.
fn write(c: &mut Cluster, next_key: &mut u128, i: usize, n: usize) -> Vec<Key> {
    (0..n)
        .map(|_| {
            *next_key += 1;
            let key = Key::from_u128(*next_key);
            c.put(i, key, labels("recording"), &next_key.to_le_bytes());
            key
        })
        .collect()
}

/// Lets refused sessions reconnect and everything replicate.
fn settle(c: &mut Cluster, why: &str) {
    if let Err(l) = c.run_until_settled(120_000) {
        panic!("cluster does not settle ({why}): {l:?}");
    }
    assert!(c.digests_equal(&[0, 1, 2]), "digests differ ({why})");
    assert_eq!(
        links(c),
        [
            [false, true, true],
            [true, false, true],
            [true, true, false]
        ],
        "every session is back up ({why})"
    );
}

#[test]
fn acceptance_bad_frames_live_session() {
    const INJECTIONS: usize = 2_400;
    let mut rng = ChaCha8Rng::seed_from_u64(0x5E55_0BAD);
    let mut c = ClusterBuilder::new(0x0BAD_5E55, N).mesh().build();
    let mut next_key = 0u128;
    let mut keys = Vec::new();
    for i in 0..N {
        keys.extend(write(&mut c, &mut next_key, i, 10));
    }
    settle(&mut c, "initial replication");

    let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut outcomes: BTreeMap<(Kind, &'static str), usize> = BTreeMap::new();
    let mut refused = 0usize;
    let mut completed = 0usize;
    let mut cut = 0usize;
    let mut into_down = 0usize;
    let mut refreshes = 0usize;
    let mut next_write = 0usize;
    while by_kind.values().sum::<usize>() < INJECTIONS {
        let live: Vec<(usize, usize)> = (0..N)
            .flat_map(|t| (0..N).map(move |f| (t, f)))
            .filter(|&(t, f)| t != f && up(&c, t, f))
            .collect();
        if live.is_empty() || rng.gen_bool(0.05) {
            // Refused sessions come back by themselves; now and then a
            // write keeps traffic flowing on them (the digests stay cheap).
            if refreshes >= next_write {
                next_write += 8;
                keys.extend(write(&mut c, &mut next_key, refreshes % N, 1));
            }
            settle(&mut c, "between injections");
            refreshes += 1;
            continue;
        }
        let (t, f) = live[rng.gen_range(0..live.len())];
        let kind = KINDS[rng.gen_range(0..KINDS.len())];
        let b = bad(&mut rng, kind);
        let expected = decoder_outcome(&b.bytes);
        let (links0, digests0, events0) = (links(&c), digests(&c), event_counts(&c));

        let r = c.inject(t, f, &b.bytes);

        let hex = hex(&b.bytes);
        let ctx = format!("{kind:?} into node {t} from {f}: {r:?}\ninput: {hex}");
        *by_kind.entry(kind).or_default() += 1;
        *outcomes.entry((kind, outcome_name(&expected))).or_default() += 1;
        assert_eq!(digests(&c), digests0, "state changed: {ctx}");
        let events1 = event_counts(&c);
        match expected {
            Ok(Some(m)) => panic!("a bad input is a valid message {m:?}: {ctx}"),
            Err(e) => {
                assert_eq!(r, Err(SessionError::Frame(e.clone())), "{ctx}");
                refused += 1;
                // Only that session was refused, on both ends.
                let mut want = links0;
                want[t][f] = false;
                want[f][t] = false;
                assert_eq!(links(&c), want, "other sessions stay up: {ctx}");
                let new_t = &c.events(t)[events0[t]..];
                assert!(
                    new_t.contains(&Event::PeerDown {
                        peer: node_id(f),
                        why: SessionEnd::BadFrame(e),
                    }),
                    "the target reports the bad frame: {new_t:?}, {ctx}"
                );
                for (i, new) in (0..N).map(|i| (i, &c.events(i)[events0[i]..])) {
                    for ev in new {
                        let Event::PeerDown { peer, .. } = ev else {
                            panic!("node {i} reported {ev:?}: {ctx}");
                        };
                        let pair = (i, index_of(*peer));
                        assert!(
                            pair == (t, f) || pair == (f, t),
                            "node {i} lost an untouched session: {ev:?}, {ctx}"
                        );
                    }
                }
                // Bytes on a refused (down) session are ignored.
                if rng.gen_bool(0.2) {
                    let kind = KINDS[rng.gen_range(0..KINDS.len())];
                    let more = bad(&mut rng, kind);
                    let r = c.inject(t, f, &more.bytes);
                    assert_eq!(r, Ok(()), "bytes on a down session: {ctx}");
                    assert_eq!(digests(&c), digests0, "state changed: {ctx}");
                    assert_eq!(links(&c), want, "{ctx}");
                    assert_eq!(event_counts(&c), events1, "{ctx}");
                    into_down += 1;
                }
            }
            Ok(None) => {
                // An incomplete frame: the decoder waits for the rest.
                assert_eq!(r, Ok(()), "{ctx}");
                assert_eq!(links(&c), links0, "{ctx}");
                assert_eq!(events1, events0, "{ctx}");
                if kind == Kind::Truncated && rng.gen_bool(0.5) {
                    // The rest arrives: a valid frame from a peer that does
                    // not follow the protocol (random ids and cursors). It
                    // may be refused, never applied.
                    let rest = &b.original[b.bytes.len()..];
                    let r = c.inject(t, f, rest);
                    assert!(
                        matches!(r, Ok(()) | Err(SessionError::Refused(_))),
                        "the completed frame: {r:?}, {ctx}"
                    );
                    assert_eq!(digests(&c), digests0, "state changed: {ctx}");
                    completed += 1;
                } else {
                    // The connection died mid-frame.
                    c.cut(t, f);
                    cut += 1;
                }
            }
        }
    }
    eprintln!(
        "live: {by_kind:?}\noutcomes: {outcomes:#?}\nrefused {refused}, completed {completed}, \
         cut mid-frame {cut}, into down sessions {into_down}, refreshes {refreshes}"
    );
    for kind in KINDS {
        let n = by_kind.get(&kind).copied().unwrap_or(0);
        assert!(n >= 300, "{kind:?} injected only {n} times");
    }
    assert!(refused >= 1_500, "{refused} sessions refused");

    // Only sessions were refused, never the nodes: they reconnect, take new
    // writes everywhere and converge.
    settle(&mut c, "after the injections");
    for i in 0..N {
        keys.extend(write(&mut c, &mut next_key, i, 5));
    }
    settle(&mut c, "after the final writes");
    for i in 0..N {
        for k in &keys {
            assert!(c.node(i).get(k).is_some(), "node {i} lacks {k:?}");
        }
        let bad_frames = c
            .events(i)
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::PeerDown {
                        why: SessionEnd::BadFrame(_),
                        ..
                    }
                )
            })
            .count();
        assert!(bad_frames > 0, "node {i} never saw a bad frame");
    }
}
