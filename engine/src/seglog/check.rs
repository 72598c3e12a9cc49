//! Read-only checks of a data directory, for the operator tool
//! (`recsync inspect DIR`, `recsync verify DIR`): what the segments hold,
//! per-origin counters, blobs, and whether every checksum holds. Nothing
//! here writes; a torn tail is reported (open cuts it).

use super::blobstore::{self, verify_blob};
use super::format::{self, FrameKind, ScanEnd, HEADER_LEN};
use super::{decode_meta, BLOB_DIR, LOG_DIR, META_FILE};
use crate::disk::{Vfs, VfsFile};
use crate::ids::ReplicaId;
use crate::storage::{EntryBody, NodeMeta};
use std::collections::BTreeMap;
use std::path::Path;

/// Why a directory could not be checked at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("{0} is not a recsync data directory (no `meta` file and no `log/` folder)")]
    NotADataDir(String),
    #[error("{0}")]
    Io(String),
}

/// The first bad place found by `verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// File and byte offset.
    pub location: String,
    pub detail: String,
    /// Only the end of the last segment is bad: a crash tore the last
    /// write, and opening the log cuts it.
    pub torn_tail: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    pub name: String,
    pub size: u64,
    /// End of the valid frames.
    pub data_end: u64,
    pub entries: usize,
    pub releases: usize,
    pub sealed: bool,
    pub lsn_min: u64,
    pub lsn_max: u64,
    /// "clean", "sealed", "torn at N" or "corrupt at N: why".
    pub state: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginSummary {
    pub versions: usize,
    pub max_counter: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    pub meta: Option<NodeMeta>,
    pub segments: Vec<SegmentSummary>,
    /// Versions found in entries, by dot origin.
    pub origins: BTreeMap<ReplicaId, OriginSummary>,
    pub entries: usize,
    pub released: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub problem: Option<Problem>,
}

fn io(e: std::io::Error) -> CheckError {
    CheckError::Io(e.to_string())
}

fn ensure_data_dir<V: Vfs>(vfs: &V, shown: &str) -> Result<(), CheckError> {
    if vfs.exists(Path::new(META_FILE)) || vfs.exists(Path::new(LOG_DIR)) {
        Ok(())
    } else {
        Err(CheckError::NotADataDir(shown.to_string()))
    }
}

/// Reads everything in the directory, checking every checksum on the way;
/// the first problem is recorded and the walk goes on where it can.
pub fn inspect<V: Vfs>(vfs: &V, shown: &str) -> Result<Inspection, CheckError> {
    ensure_data_dir(vfs, shown)?;
    let mut out = Inspection::default();
    let note = |out: &mut Inspection, p: Problem| {
        if out.problem.is_none() {
            out.problem = Some(p);
        }
    };
    if vfs.exists(Path::new(META_FILE)) {
        let f = vfs.open(Path::new(META_FILE)).map_err(io)?;
        let len = f.size().map_err(io)?;
        let bytes = f.with_bytes(0, len as usize, |b| b.to_vec()).map_err(io)?;
        match decode_meta(&bytes) {
            Ok(m) => out.meta = Some(m),
            Err(detail) => note(
                &mut out,
                Problem {
                    location: format!("{META_FILE} offset 0"),
                    detail,
                    torn_tail: false,
                },
            ),
        }
    }
    let names = if vfs.exists(Path::new(LOG_DIR)) {
        vfs.list(Path::new(LOG_DIR)).map_err(io)?
    } else {
        Vec::new()
    };
    let seqs: Vec<(u64, String)> = names
        .iter()
        .filter_map(|n| format::parse_segment_name(n).map(|s| (s, n.clone())))
        .collect();
    let mut released = std::collections::BTreeSet::new();
    let mut entries = std::collections::BTreeSet::new();
    for (i, (seq, name)) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = Path::new(LOG_DIR).join(name);
        let file = vfs.open(&path).map_err(io)?;
        let size = file.size().map_err(io)?;
        let mut sum = SegmentSummary {
            name: format!("{LOG_DIR}/{name}"),
            size,
            lsn_min: u64::MAX,
            ..Default::default()
        };
        let mut problems = Vec::new();
        file.with_bytes(0, size as usize, |seg| {
            match format::decode_header(seg.get(..HEADER_LEN as usize).unwrap_or(seg)) {
                Ok(found) if found == *seq => {}
                Ok(found) => {
                    sum.state = format!("corrupt at 0: header names segment {found}");
                    problems.push((0, sum.state.clone(), false));
                    return;
                }
                Err(e) => {
                    sum.state = format!("corrupt at 0: {e}");
                    problems.push((0, e, last));
                    return;
                }
            }
            let scan = format::scan_segment(seg);
            sum.data_end = scan.end;
            match &scan.outcome {
                ScanEnd::Clean if last => sum.state = "clean (active)".into(),
                ScanEnd::Clean => {
                    sum.state = "not sealed, but later segments exist".into();
                    problems.push((scan.end, sum.state.clone(), false));
                }
                ScanEnd::Sealed => {
                    sum.state = "sealed".into();
                    sum.sealed = true;
                }
                ScanEnd::Torn { offset, detail } => {
                    sum.state = format!("torn at {offset}: {detail}");
                    problems.push((*offset, detail.clone(), last));
                }
                ScanEnd::Corrupt { offset, detail } => {
                    sum.state = format!("corrupt at {offset}: {detail}");
                    problems.push((*offset, detail.clone(), false));
                }
            }
            for f in &scan.frames {
                let payload =
                    &seg[f.offset as usize..(f.offset + f.len as u64) as usize][f.payload()];
                match f.kind {
                    FrameKind::Entry => {
                        sum.entries += 1;
                        sum.lsn_min = sum.lsn_min.min(f.lsn);
                        sum.lsn_max = sum.lsn_max.max(f.lsn);
                        entries.insert(f.lsn);
                        match postcard::from_bytes::<EntryBody>(payload) {
                            Ok(body) => {
                                for v in body.versions() {
                                    let o = out.origins.entry(v.dot.replica).or_default();
                                    o.versions += 1;
                                    o.max_counter = o.max_counter.max(v.dot.counter);
                                }
                                if let EntryBody::Remote { staged, .. } = &body {
                                    for v in staged {
                                        let o = out.origins.entry(v.dot.replica).or_default();
                                        o.versions += 1;
                                        o.max_counter = o.max_counter.max(v.dot.counter);
                                    }
                                }
                            }
                            Err(e) => problems.push((
                                f.offset,
                                format!("entry {} does not decode: {e}", f.lsn),
                                false,
                            )),
                        }
                    }
                    FrameKind::Release => {
                        sum.releases += 1;
                        for c in payload.chunks_exact(8) {
                            let mut x = [0u8; 8];
                            x.copy_from_slice(c);
                            released.insert(u64::from_le_bytes(x));
                        }
                    }
                    FrameKind::Skip | FrameKind::Seal => {}
                }
            }
        })
        .map_err(io)?;
        if sum.lsn_min == u64::MAX {
            sum.lsn_min = 0;
        }
        if let Some((offset, detail, torn_tail)) = problems.into_iter().next() {
            note(
                &mut out,
                Problem {
                    location: format!("{LOG_DIR}/{name} offset {offset}"),
                    detail,
                    torn_tail,
                },
            );
        }
        out.segments.push(sum);
    }
    out.released = released.iter().filter(|l| entries.contains(l)).count();
    out.entries = entries.len() - out.released;
    if vfs.exists(Path::new(BLOB_DIR)) {
        for name in vfs.list(Path::new(BLOB_DIR)).map_err(io)? {
            if blobstore::parse_blob_name(&name).is_none() {
                continue;
            }
            let path = Path::new(BLOB_DIR).join(&name);
            let file = vfs.open(&path).map_err(io)?;
            out.blobs += 1;
            match verify_blob(&file).map_err(io)? {
                Ok((bytes, _chunks)) => out.blob_bytes += bytes,
                Err((offset, detail)) => note(
                    &mut out,
                    Problem {
                        location: format!("{BLOB_DIR}/{name} offset {offset}"),
                        detail,
                        torn_tail: false,
                    },
                ),
            }
        }
    }
    Ok(out)
}

/// Checks every checksum: `Ok(None)` when clean, else the first problem.
pub fn verify<V: Vfs>(vfs: &V, shown: &str) -> Result<Option<Problem>, CheckError> {
    Ok(inspect(vfs, shown)?.problem)
}
