//! The on-disk format of the segment log: segment headers, entry frames and
//! the scan that finds where a segment's valid data ends.
//!
//! ```text
//! segment  = header(32) frame* zeros
//! header   = "RSYNCSEG" version:u32 header_len:u32 seq:u64 reserved:u32 crc:u32
//! frame    = len:u32 crc:u32 kind:u8 pad:[0;3] lsn:u64 payload[len]
//!            crc = CRC32C(len, kind, pad, lsn, payload)
//! ```
//! Integers are little-endian. Segments are preallocated, so the end of the
//! data is the first all-zero frame header. Frame kinds: an entry (postcard
//! `EntryBody`), a release marker (LSNs the core released), a skip marker (the
//! next LSN must be above `lsn`) and a seal (the segment is complete).

use std::ops::Range;

pub const SEGMENT_MAGIC: &[u8; 8] = b"RSYNCSEG";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 32;
pub const FRAME_HEADER: usize = 20;
/// No single frame is larger than this (a sanity bound for the tail scan).
pub const MAX_PAYLOAD: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameKind {
    Entry = 1,
    Release = 2,
    Skip = 3,
    Seal = 4,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Entry),
            2 => Some(Self::Release),
            3 => Some(Self::Skip),
            4 => Some(Self::Seal),
            _ => None,
        }
    }
}

/// The name of segment `seq` inside the log directory.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

/// The sequence number in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

pub fn encode_header(seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns its sequence number.
pub fn decode_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < HEADER_LEN as usize {
        return Err("header too short".into());
    }
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("not a recsync segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32c::crc32c(&h[0..28]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    Ok(u64::from_le_bytes(seq))
}

/// Encodes one frame.
pub fn encode_frame(kind: FrameKind, lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER + payload.len());
    encode_frame_into(&mut f, kind, lsn, payload);
    f
}

/// Appends one encoded frame to `out`; returns its length.
pub fn encode_frame_into(out: &mut Vec<u8>, kind: FrameKind, lsn: u64, payload: &[u8]) -> usize {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = frame_crc(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn frame_crc(frame: &[u8]) -> u32 {
    let c = crc32c::crc32c(&frame[0..4]);
    crc32c::crc32c_append(c, &frame[8..])
}

/// A frame found valid in a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub kind: FrameKind,
    pub lsn: u64,
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Frame length, header included.
    pub len: u32,
}

impl FrameInfo {
    pub fn payload(&self) -> Range<usize> {
        FRAME_HEADER..self.len as usize
    }
}

/// What is at one position of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Frame(FrameInfo),
    /// An all-zero header: the end of the data.
    End,
    Invalid(String),
}

/// Parses the frame at `bytes[0..]` (the rest of the segment), which sits
/// at `offset`.
pub fn parse_frame(bytes: &[u8], offset: u64) -> Parsed {
    if bytes.len() < FRAME_HEADER {
        return if bytes.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Invalid("frame header runs past the end of the segment".into())
        };
    }
    let h = &bytes[..FRAME_HEADER];
    if h.iter().all(|b| *b == 0) {
        return Parsed::End;
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let Some(kind) = FrameKind::from_u8(h[8]) else {
        return Parsed::Invalid(format!("unknown frame kind {}", h[8]));
    };
    if h[9..12] != [0, 0, 0] {
        return Parsed::Invalid("frame padding is not zero".into());
    }
    let total = FRAME_HEADER as u64 + len as u64;
    if len > MAX_PAYLOAD || total > bytes.len() as u64 {
        return Parsed::Invalid(format!(
            "frame length {len} runs past the end of the segment"
        ));
    }
    let frame = &bytes[..total as usize];
    if frame_crc(frame) != crc {
        return Parsed::Invalid("frame checksum mismatch".into());
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&h[12..20]);
    Parsed::Frame(FrameInfo {
        kind,
        lsn: u64::from_le_bytes(lsn),
        offset,
        len: total as u32,
    })
}

/// How a segment's scan ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Valid frames, then zeros.
    Clean,
    /// A seal frame (everything after it is ignored).
    Sealed,
    /// An invalid frame with nothing valid after it: a torn write.
    Torn { offset: u64, detail: String },
    /// An invalid frame followed by valid data: corruption.
    Corrupt { offset: u64, detail: String },
}

/// The valid frames of a segment body and how the scan ended.
#[derive(Clone, Debug)]
pub struct SegmentScan {
    pub frames: Vec<FrameInfo>,
    /// Offset just past the last valid frame.
    pub end: u64,
    pub outcome: ScanEnd,
}

/// Scans a whole segment (`seg` holds the file from offset 0).
pub fn scan_segment(seg: &[u8]) -> SegmentScan {
    let mut frames = Vec::new();
    let mut pos = HEADER_LEN as usize;
    loop {
        let rest = seg.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            return SegmentScan {
                frames,
                end: pos as u64,
                outcome: ScanEnd::Clean,
            };
        }
        match parse_frame(rest, pos as u64) {
            Parsed::End => {
                return SegmentScan {
                    frames,
                    end: pos as u64,
                    outcome: ScanEnd::Clean,
                }
            }
            Parsed::Frame(f) => {
                pos += f.len as usize;
                let sealed = f.kind == FrameKind::Seal;
                frames.push(f);
                if sealed {
                    return SegmentScan {
                        frames,
                        end: pos as u64,
                        outcome: ScanEnd::Sealed,
                    };
                }
            }
            Parsed::Invalid(detail) => {
                let outcome = match find_valid_frame(seg, pos + 1) {
                    Some(at) => ScanEnd::Corrupt {
                        offset: pos as u64,
                        detail: format!("{detail} (valid data follows at offset {at})"),
                    },
                    None => ScanEnd::Torn {
                        offset: pos as u64,
                        detail,
                    },
                };
                return SegmentScan {
                    frames,
                    end: pos as u64,
                    outcome,
                };
            }
        }
    }
}

/// The first offset at or after `from` where a valid frame starts.
fn find_valid_frame(seg: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    while pos + FRAME_HEADER <= seg.len() {
        let h = &seg[pos..pos + FRAME_HEADER];
        // Cheap filters first; the checksum decides.
        if FrameKind::from_u8(h[8]).is_some() && h[9..12] == [0, 0, 0] && h[0..4] != [0; 4] {
            if let Parsed::Frame(_) = parse_frame(&seg[pos..], pos as u64) {
                return Some(pos);
            }
        }
        pos += 1;
    }
    None
}

/// Offset just past the last non-zero byte at or after `from`.
pub fn end_of_nonzero(seg: &[u8], from: usize) -> usize {
    seg.iter()
        .rposition(|b| *b != 0)
        .map_or(from, |p| (p + 1).max(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(frames: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut s = encode_header(7).to_vec();
        for f in frames {
            s.extend_from_slice(f);
        }
        s.resize(size, 0);
        s
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = encode_header(42);
        assert_eq!(decode_header(&h), Ok(42));
        for i in 0..h.len() {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(decode_header(&bad).is_err(), "byte {i}");
        }
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("meta"), None);
    }

    #[test]
    fn a_clean_segment_scans_to_its_zeros() {
        let f1 = encode_frame(FrameKind::Entry, 1, b"one");
        let f2 = encode_frame(FrameKind::Entry, 2, b"two!");
        let s = segment(&[f1.clone(), f2.clone()], 4096);
        let scan = scan_segment(&s);
        assert_eq!(scan.outcome, ScanEnd::Clean);
        assert_eq!(scan.frames.len(), 2);
        assert_eq!(scan.frames[1].lsn, 2);
        assert_eq!(scan.end, HEADER_LEN + (f1.len() + f2.len()) as u64);
    }

    #[test]
    fn a_cut_last_frame_is_torn_and_a_flip_before_valid_data_is_corrupt() {
        let f1 = encode_frame(FrameKind::Entry, 1, b"one");
        let f2 = encode_frame(FrameKind::Entry, 2, &[9u8; 100]);
        for cut in 1..f2.len() {
            let s = segment(&[f1.clone(), f2[..cut].to_vec()], 4096);
            let scan = scan_segment(&s);
            assert_eq!(scan.frames.len(), 1, "cut {cut}");
            assert!(
                matches!(scan.outcome, ScanEnd::Torn { offset, .. } if offset == HEADER_LEN + f1.len() as u64),
                "cut {cut}: {:?}",
                scan.outcome
            );
        }
        let mut s = segment(&[f1.clone(), f2.clone()], 4096);
        s[HEADER_LEN as usize + 5] ^= 1;
        assert!(matches!(
            scan_segment(&s).outcome,
            ScanEnd::Corrupt { offset, .. } if offset == HEADER_LEN
        ));
    }
}
