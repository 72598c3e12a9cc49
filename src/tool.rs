//! `recsync inspect DIR` and `recsync verify DIR`: the operator's view of a
//! node's data directory (segments, entries, per-origin counters, blobs) and
//! a full checksum pass. Both only read; neither needs the node stopped,
//! though a live node's active segment may show a half-written tail.

use recsync_engine::disk::RealFs;
use recsync_engine::seglog::check::{self, CheckError, Inspection, Problem};
use std::path::Path;
use std::process::ExitCode;

/// `verify` found corruption.
pub const EXIT_CORRUPT: u8 = 1;
/// `verify` found only a torn tail in the last segment (a crash; opening
/// the log cuts it).
pub const EXIT_TORN_TAIL: u8 = 3;
/// The path is missing or not a data directory.
pub const EXIT_NOT_DATA: u8 = 4;

fn open_dir(dir: &str) -> Result<RealFs, ExitCode> {
    let path = Path::new(dir);
    if !path.exists() {
        eprintln!("recsync: {dir}: no such file or directory");
        return Err(ExitCode::from(EXIT_NOT_DATA));
    }
    if !path.is_dir() {
        eprintln!("recsync: {dir}: not a directory (give the node's data directory)");
        return Err(ExitCode::from(EXIT_NOT_DATA));
    }
    Ok(RealFs::new(path))
}

fn check_failed(e: CheckError) -> ExitCode {
    eprintln!("recsync: {e}");
    ExitCode::from(EXIT_NOT_DATA)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn problem_line(p: &Problem) -> String {
    if p.torn_tail {
        format!(
            "torn tail at {}: {} (a crash cut the last write; opening the log cuts it)",
            p.location, p.detail
        )
    } else {
        format!("CORRUPT at {}: {}", p.location, p.detail)
    }
}

fn print_inspection(dir: &str, i: &Inspection) {
    println!("data directory: {dir}");
    match &i.meta {
        Some(m) => {
            println!("node:      {}", m.node);
            println!("cluster:   {}", m.cluster);
            println!("log id:    {}", m.log_id.0);
            println!("dot origin (this incarnation): {}", m.replica.0);
            println!(
                "reserved:  counters up to {}, log positions up to {}",
                m.counters_reserved, m.lsns_reserved
            );
            println!(
                "lost dot ranges: {}   peers with a recorded ack: {}",
                m.lost_ranges.len(),
                m.peer_acked.len()
            );
        }
        None => println!("meta:      none (the node never opened here)"),
    }
    let allocated: u64 = i.segments.iter().map(|s| s.size).sum();
    let data: u64 = i.segments.iter().map(|s| s.data_end).sum();
    println!(
        "segments:  {} ({} allocated, {} written)",
        i.segments.len(),
        mib(allocated),
        mib(data)
    );
    for s in &i.segments {
        let lsns = if s.entries == 0 {
            "-".to_string()
        } else {
            format!("{}..{}", s.lsn_min, s.lsn_max)
        };
        println!(
            "  {}  {:>10} B  entries {:>7}  releases {:>4}  lsn {:<15} {}",
            s.name, s.data_end, s.entries, s.releases, lsns, s.state
        );
    }
    println!("entries:   {} live, {} released", i.entries, i.released);
    println!(
        "origins:   {} (dot origin: versions, highest counter)",
        i.origins.len()
    );
    for (origin, o) in &i.origins {
        println!("  {}  {:>8}  {:>8}", origin.0, o.versions, o.max_counter);
    }
    println!("blobs:     {} ({})", i.blobs, mib(i.blob_bytes));
    match &i.problem {
        None => println!("checksums: all valid"),
        Some(p) => println!("checksums: {}", problem_line(p)),
    }
}

pub fn inspect(dir: &str) -> ExitCode {
    let fs = match open_dir(dir) {
        Ok(fs) => fs,
        Err(code) => return code,
    };
    match check::inspect(&fs, dir) {
        Ok(i) => {
            print_inspection(dir, &i);
            ExitCode::SUCCESS
        }
        Err(e) => check_failed(e),
    }
}

pub fn verify(dir: &str) -> ExitCode {
    let fs = match open_dir(dir) {
        Ok(fs) => fs,
        Err(code) => return code,
    };
    match check::inspect(&fs, dir) {
        Ok(i) => match &i.problem {
            None => {
                println!(
                    "{dir}: clean ({} segments, {} entries, {} blobs; every checksum valid)",
                    i.segments.len(),
                    i.entries + i.released,
                    i.blobs
                );
                ExitCode::SUCCESS
            }
            Some(p) => {
                println!("{dir}: {}", problem_line(p));
                ExitCode::from(if p.torn_tail {
                    EXIT_TORN_TAIL
                } else {
                    EXIT_CORRUPT
                })
            }
        },
        Err(e) => check_failed(e),
    }
}
