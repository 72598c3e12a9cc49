//! What the harness records of each batch on the wire: per version its key,
//! dot and labels (what the oracle and the tests check: filters, counts,
//! crossings). Read from the frame with types that mirror the wire layout
//! of `Message::Batch` but skip what nobody checks (contexts), so recording
//! costs a fraction of a full decode. `tests` pins the mirror to the
//! engine's own decoder.

use recsync_engine::wire::{Cursor, FRAME_HEADER_LEN};
use recsync_engine::{Body, Dot, Hlc, Key, Labels, NodeId, ReplicaId};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// `Message::Batch`'s variant index (postcard writes it as one byte).
const BATCH_VARIANT: u8 = 2;

#[derive(Deserialize)]
struct BatchHead {
    _prev: Cursor,
    _next: Cursor,
    versions: Vec<VersionHead>,
}

#[derive(Deserialize)]
struct VersionHead {
    key: Key,
    dot: Dot,
    _origin: NodeId,
    _hlc: Hlc,
    _context: SkippedVersionVector,
    labels: Labels,
    _body: Body,
}

/// A version vector read over and dropped.
struct SkippedVersionVector;

impl<'de> Deserialize<'de> for SkippedVersionVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Skip;
        impl<'de> Visitor<'de> for Skip {
            type Value = SkippedVersionVector;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a version vector")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<ReplicaId, u64>()?.is_some() {}
                Ok(SkippedVersionVector)
            }
        }
        d.deserialize_map(Skip)
    }
}

/// The versions of a batch frame, or `None` for any other message. The
/// frame comes from a node's encoder, so it is neither checked (CRC) nor
/// expected to be malformed; a frame this cannot read is `None` too.
pub fn batch_versions(frame: &[u8]) -> Option<Vec<(Key, Dot, Labels)>> {
    let payload = frame.get(FRAME_HEADER_LEN..)?;
    if payload.first() != Some(&BATCH_VARIANT) {
        return None;
    }
    let b: BatchHead = postcard::from_bytes(&payload[1..]).ok()?;
    Some(
        b.versions
            .into_iter()
            .map(|v| (v.key, v.dot, v.labels))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{labels, ClusterBuilder};
    use recsync_engine::wire::{decode_frame, encode_frame, Message, FRAME_PAYLOAD_LEN_MAX};

    /// The summary of every frame a small cluster sends equals what the
    /// engine's decoder reads from it.
    #[test]
    fn summary_matches_the_full_decode() {
        let mut c = ClusterBuilder::new(3, 3).mesh().build();
        for n in 0..40u128 {
            let i = (n % 3) as usize;
            c.put(i, Key::from_u128(n % 11), labels("user"), b"meta");
            if n % 7 == 3 {
                c.delete(i, Key::from_u128(n % 11));
            }
            c.run_for(5);
        }
        c.put_recording(0, Key::from_u128(100), b"m", &[7u8; 3000]);
        c.run_until_settled(60_000).unwrap();
        // Rebuild each batch frame from what the summary recorded and from
        // the nodes' full versions: the keys, dots and labels agree.
        assert!(!c.sent.is_empty());
        let mut checked = 0;
        for b in &c.sent {
            for (key, dot, l) in &b.versions {
                let full = (0..3)
                    .filter_map(|i| c.node(i).key_state(key))
                    .flat_map(|s| s.siblings.iter().map(|s| &s.version))
                    .find(|v| v.dot == *dot);
                if let Some(v) = full {
                    assert_eq!(&v.labels, l);
                    checked += 1;
                }
            }
        }
        assert!(checked > 0);
        // And frame by frame, for every message kind.
        for m in sample_messages(&c) {
            let frame = encode_frame(&m);
            let (decoded, _) = decode_frame(&frame, FRAME_PAYLOAD_LEN_MAX).unwrap();
            let want = match decoded {
                Message::Batch(b) => Some(
                    b.versions
                        .into_iter()
                        .map(|v| (v.key, v.dot, v.labels))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            };
            assert_eq!(batch_versions(&frame), want);
        }
    }

    fn sample_messages(c: &crate::Cluster) -> Vec<Message> {
        use recsync_engine::wire::{Ack, Batch, BlobWant, Position};
        let versions: Vec<_> = (0..3)
            .flat_map(|i| {
                c.node(i)
                    .keys()
                    .flat_map(|(_, s)| s.siblings.iter().map(|s| s.version.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let cursor = Cursor {
            replica: ReplicaId::from_u128(9),
            pos: Position::Log { lsn: 5 },
        };
        vec![
            Message::Batch(Batch {
                prev: cursor,
                next: cursor,
                versions: versions.clone(),
            }),
            Message::Batch(Batch {
                prev: cursor,
                next: cursor,
                versions: Vec::new(),
            }),
            Message::Ack(Ack::of(cursor)),
            Message::BlobWant(BlobWant {
                hash: [1; 32],
                offset: 0,
                restart: false,
            }),
            Message::BlobMissing { hash: [2; 32] },
        ]
    }
}
