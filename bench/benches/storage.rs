//! Storage benchmarks: the segment log (`SegmentStorage` over `RealFs`) on
//! the real disk. Unlike `core.rs`, these measure the disk as much as the
//! code: every figure includes the fdatasyncs that make the work durable.
//!
//! - `storage/append_500b_periodic`: appends of ~500-byte entries in
//!   `Periodic` mode with a `sync()` every 1000 appends (elements/s).
//! - `storage/blob_1mib`: `blob_append` of 1 MiB buffers into a 1 GiB blob,
//!   then one `sync()` (bytes/s; compare with `dd ... conv=fdatasync`).
//! - `storage/group_commit/*`: 16 threads appending through `SharedLog`
//!   (`Group` mode, each append returns once durable) against one writer
//!   syncing every append (`Always`), and one writer through `SharedLog`.
//! - `storage/open/{warm,cold}_<N>mib`: `SegmentStorage::open` (the recovery
//!   scan) of a log of N MiB of ~500-byte entries in 64 MiB segments, with
//!   the segments in the page cache, and evicted from it first.
//! - `storage/compaction`: `compact()` of a log whose sealed segments are
//!   75% released; the throughput is the bytes of live entries copied (the
//!   bytes reclaimed are printed).
//!
//! Logs live in temporary directories under `CARGO_TARGET_TMPDIR`
//! (`target/tmp`, on the same disk as the workspace), or under
//! `RECSYNC_BENCH_DIR` if set; `RECSYNC_BENCH_OPEN_MB` sets the size of the
//! log the open benchmark recovers (default 1024, 64 under `--test`).
//! Lines starting with `storage-stats:` report what criterion cannot (syncs
//! per entry, bytes reclaimed); `scripts/bench_storage.sh` collects them.
//!
//! The blob, open and compaction benchmarks run one iteration per sample
//! (ten in all, plus one to warm up), so criterion's "Unable to complete 10
//! samples" warning is expected for them. The disk under a VM can vary a lot
//! from one second to the next: compare figures from the same run.

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion,
    SamplingMode, Throughput,
};
use recsync_bench::{labels, meta, remote_version};
use recsync_engine::disk::RealFs;
use recsync_engine::seglog::format::FRAME_HEADER;
use recsync_engine::seglog::{CompactStats, Durability, LogOptions, SegmentStorage, SharedLog};
use recsync_engine::storage::{BlobId, EntryBody};
use recsync_engine::Storage;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

type Log = SegmentStorage<RealFs>;

/// Encoded (postcard) size of a benchmark entry; its frame adds
/// `FRAME_HEADER` bytes.
const ENTRY_LEN: usize = 500;
/// Distinct entry bodies appended in turn.
const BODY_POOL: usize = 1024;
/// Dot counters start here, so every counter and HLC encodes to the same
/// width and every entry to exactly `ENTRY_LEN` bytes.
const COUNTER_BASE: u64 = 1 << 20;
/// The periodic benchmark syncs when the LSN is a multiple of this.
const SYNC_EVERY: u64 = 1000;
/// Appends one log takes (~130 MB) before it is replaced by a fresh one.
const APPENDS_PER_LOG: u64 = 250_000;
/// Size of a blob append.
const BLOB_LEN: usize = 1 << 20;
/// Bytes appended to one blob before the sync, and under `--test`.
const BLOB_TOTAL: u64 = 1 << 30;
const BLOB_TOTAL_TEST: u64 = 64 << 20;
/// Concurrent writers in the group commit benchmark.
const WRITERS: usize = 16;
/// Appends per writer per iteration of the group commit benchmark.
const PER_WRITER: u64 = 32;
/// Segment size of the open benchmark's log.
const OPEN_SEGMENT: u64 = 64 << 20;
/// Log size recovered by the open benchmark, MiB, by default and under
/// `--test`.
const OPEN_MB_DEFAULT: u64 = 1024;
const OPEN_MB_TEST: u64 = 64;
/// Segment size and log size (in segments' worth of entries) of the
/// compaction benchmark.
const COMPACT_SEGMENT: u64 = 16 << 20;
const COMPACT_SEGMENTS: u64 = 8;
/// Of every `COMPACT_KEEP_EVERY` entries, one stays live.
const COMPACT_KEEP_EVERY: u64 = 4;

/// Where the temporary log directories go.
fn bench_root() -> PathBuf {
    let root = std::env::var_os("RECSYNC_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    if let Err(e) = std::fs::create_dir_all(&root) {
        panic!(
            "cannot create the benchmark directory {}: {e}",
            root.display()
        );
    }
    root
}

/// A fresh, empty directory that is removed when dropped.
fn scratch() -> TempDir {
    match tempfile::Builder::new()
        .prefix("recsync-storage-")
        .tempdir_in(bench_root())
    {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    }
}

fn options(durability: Durability, segment_size: u64) -> LogOptions {
    LogOptions {
        segment_size,
        durability,
        ..LogOptions::default()
    }
}

fn open_log(dir: &Path, opts: LogOptions) -> Log {
    match SegmentStorage::open(RealFs::new(dir), opts) {
        Ok(log) => log,
        Err(e) => panic!("the log in {} opens: {e}", dir.display()),
    }
}

/// A fresh log in its own temporary directory.
struct Scratch {
    log: Log,
    appended: u64,
    // Dropped after the log, which holds files in it.
    _dir: TempDir,
}

impl Scratch {
    fn new(opts: LogOptions) -> Self {
        let dir = scratch();
        Self {
            log: open_log(dir.path(), opts),
            appended: 0,
            _dir: dir,
        }
    }
}

/// Whether criterion runs in test mode (each benchmark once).
fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// `n` local entries of one new object each, every one encoding to exactly
/// `ENTRY_LEN` bytes (the metadata takes what the rest leaves, ~430 bytes).
fn entry_bodies(n: usize) -> Vec<EntryBody> {
    let labels = labels();
    let body = |i: usize, meta_len: usize| EntryBody::Local {
        versions: vec![remote_version(
            i as u128 + 1,
            COUNTER_BASE + i as u64,
            &labels,
            &meta(meta_len),
        )],
    };
    let encoded = |b: &EntryBody| match postcard::to_allocvec(b) {
        Ok(bytes) => bytes.len(),
        Err(e) => panic!("the benchmark entry encodes: {e}"),
    };
    let mut meta_len = ENTRY_LEN.saturating_sub(encoded(&body(0, 0)));
    while meta_len > 0 && encoded(&body(0, meta_len)) > ENTRY_LEN {
        meta_len -= 1;
    }
    let bodies: Vec<EntryBody> = (0..n).map(|i| body(i, meta_len)).collect();
    for b in &bodies {
        assert_eq!(
            encoded(b),
            ENTRY_LEN,
            "every benchmark entry is {ENTRY_LEN} bytes"
        );
    }
    bodies
}

fn append(log: &mut Log, body: &EntryBody) -> u64 {
    match log.append(body) {
        Ok(lsn) => lsn,
        Err(e) => panic!("append: {e}"),
    }
}

fn sync(log: &mut Log) {
    if let Err(e) = log.sync() {
        panic!("sync: {e}");
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// A benchmark group with ten samples.
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    warm_up: Duration,
    measurement: Duration,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measurement);
    g
}

/// Appends of 500-byte entries in `Periodic` mode, a `sync()` every 1000
/// appends and one at the end of each sample, so every counted entry is
/// durable. A log is replaced (untimed) after `APPENDS_PER_LOG` appends.
fn bench_append(c: &mut Criterion) {
    let bodies = entry_bodies(BODY_POOL);
    let mut g = group(c, "storage", Duration::from_secs(1), Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    let mut current: Option<Scratch> = None;
    g.bench_function("append_500b_periodic", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if current
                    .as_ref()
                    .is_none_or(|s| s.appended >= APPENDS_PER_LOG)
                {
                    current = None;
                    current = Some(Scratch::new(options(Durability::Periodic, 64 << 20)));
                }
                let Some(s) = current.as_mut() else {
                    unreachable!("a log was just opened")
                };
                let n = left.min(APPENDS_PER_LOG - s.appended);
                let first = s.appended as usize;
                let start = Instant::now();
                for i in 0..n as usize {
                    let lsn = append(&mut s.log, &bodies[(first + i) % BODY_POOL]);
                    if lsn.is_multiple_of(SYNC_EVERY) {
                        sync(&mut s.log);
                    }
                }
                sync(&mut s.log);
                timed += start.elapsed();
                s.appended += n;
                left -= n;
            }
            timed
        });
    });
    g.finish();
}

/// `blob_append` of 1 MiB buffers to a new blob in `Periodic` mode until it
/// holds 1 GiB, then `sync()`: the same work as `dd bs=1M count=1024
/// conv=fdatasync`, which `scripts/bench_storage.sh` measures alongside. One
/// 1 GiB blob per iteration and per sample (64 MiB under `--test`); the blob
/// is removed afterwards (untimed).
fn bench_blob(c: &mut Criterion) {
    let data = meta(BLOB_LEN);
    let total = if test_mode() {
        BLOB_TOTAL_TEST
    } else {
        BLOB_TOTAL
    };
    let appends = total / BLOB_LEN as u64;
    // A tiny target time: one iteration per sample, ten samples.
    let mut g = group(
        c,
        "storage",
        Duration::from_millis(1),
        Duration::from_millis(1),
    );
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(total));
    let mut current: Option<Scratch> = None;
    let mut blob_no = 0u64;
    g.bench_function("blob_1mib", |b| {
        b.iter_custom(|iters| {
            let s = current
                .get_or_insert_with(|| Scratch::new(options(Durability::Periodic, 64 << 20)));
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                blob_no += 1;
                let mut id: BlobId = [0xB1; 32];
                id[..8].copy_from_slice(&blob_no.to_le_bytes());
                let start = Instant::now();
                for i in 0..appends {
                    if let Err(e) = s.log.blob_append(&id, i * BLOB_LEN as u64, &data) {
                        panic!("blob_append: {e}");
                    }
                }
                sync(&mut s.log);
                timed += start.elapsed();
                assert_eq!(s.log.blob_len(&id), total);
                if let Err(e) = s.log.blob_remove(&id) {
                    panic!("blob_remove: {e}");
                }
                sync(&mut s.log);
            }
            timed
        });
    });
    g.finish();
}

/// Entries and log fdatasyncs counted over a benchmark's runs.
#[derive(Default)]
struct SyncCount {
    entries: u64,
    syncs: u64,
}

impl SyncCount {
    fn print(&self, name: &str) {
        if self.syncs > 0 {
            println!(
                "storage-stats: {name}: {} entries, {} log fdatasyncs, {:.2} entries per fdatasync",
                self.entries,
                self.syncs,
                self.entries as f64 / self.syncs as f64
            );
        }
    }
}

/// Durable appends: `WRITERS` threads each appending through `SharedLog`
/// (`Group` mode: the writers share fdatasyncs, each call returns once its
/// entry is durable), against a single writer that syncs every append
/// (`Always`) and a single writer through `SharedLog`. A fresh log per
/// sample (untimed); thread start-up is timed, once per sample.
fn bench_group_commit(c: &mut Criterion) {
    let bodies = entry_bodies(BODY_POOL);
    let mut g = group(c, "storage", Duration::from_secs(1), Duration::from_secs(4));

    for writers in [WRITERS, 1] {
        let per_iter = writers as u64 * PER_WRITER;
        g.throughput(Throughput::Elements(per_iter));
        let mut count = SyncCount::default();
        let name = if writers == 1 {
            "shared_1_writer".to_string()
        } else {
            format!("shared_{writers}_writers")
        };
        g.bench_function(BenchmarkId::new("group_commit", &name), |b| {
            b.iter_custom(|iters| {
                let s = Scratch::new(options(Durability::Group, 64 << 20));
                let syncs_before = s.log.log_syncs;
                let shared = SharedLog::new(s.log);
                let bodies = &bodies;
                let shared_ref = &shared;
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for w in 0..writers {
                        scope.spawn(move || {
                            for i in 0..iters * PER_WRITER {
                                let body = &bodies[(w * 61 + i as usize) % BODY_POOL];
                                if let Err(e) = shared_ref.append(body) {
                                    panic!("shared append: {e}");
                                }
                            }
                        });
                    }
                });
                let timed = start.elapsed();
                let log = match shared.into_inner() {
                    Ok(log) => log,
                    Err(e) => panic!("shared log: {e}"),
                };
                assert_eq!(log.durable_lsn(), iters * per_iter);
                count.entries += iters * per_iter;
                count.syncs += log.log_syncs - syncs_before;
                timed
            });
        });
        count.print(&format!("group_commit/{name}"));
    }

    g.throughput(Throughput::Elements(1));
    let mut count = SyncCount::default();
    g.bench_function(BenchmarkId::new("group_commit", "always_1_writer"), |b| {
        b.iter_custom(|iters| {
            let mut s = Scratch::new(options(Durability::Always, 64 << 20));
            let syncs_before = s.log.log_syncs;
            let start = Instant::now();
            for i in 0..iters as usize {
                black_box(append(&mut s.log, &bodies[i % BODY_POOL]));
            }
            let timed = start.elapsed();
            assert_eq!(s.log.durable_lsn(), iters);
            count.entries += iters;
            count.syncs += s.log.log_syncs - syncs_before;
            timed
        });
    });
    count.print("group_commit/always_1_writer");
    g.finish();
}

/// A log built once for the open benchmark.
struct BuiltLog {
    dir: TempDir,
    entries: usize,
    segments: usize,
}

/// Appends ~`mb` MiB of 500-byte entries (frames included) in 64 MiB
/// segments, synced, and closes the log.
fn build_open_log(mb: u64, bodies: &[EntryBody]) -> BuiltLog {
    let dir = scratch();
    let entries = (mb << 20) / (ENTRY_LEN + FRAME_HEADER) as u64;
    let start = Instant::now();
    let mut log = open_log(dir.path(), options(Durability::Periodic, OPEN_SEGMENT));
    for i in 0..entries as usize {
        let lsn = append(&mut log, &bodies[i % bodies.len()]);
        if lsn.is_multiple_of(16 * SYNC_EVERY) {
            sync(&mut log);
        }
    }
    sync(&mut log);
    let segments = log.segment_count();
    println!(
        "storage-stats: open: built {entries} entries in {segments} segments ({:.0} MiB on disk) in {:.1} s",
        mib(log.disk_bytes()),
        start.elapsed().as_secs_f64()
    );
    drop(log);
    BuiltLog {
        dir,
        entries: entries as usize,
        segments,
    }
}

/// Drops the log's segments from the page cache (they are clean: synced),
/// so the next open reads them from the disk. (On a VM the host may still
/// cache them.)
fn evict(dir: &Path) {
    let log_dir = dir.join("log");
    let names = match std::fs::read_dir(&log_dir) {
        Ok(names) => names,
        Err(e) => panic!("cannot list {}: {e}", log_dir.display()),
    };
    for entry in names.flatten() {
        let path = entry.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the
        // descriptor is open for the duration of the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise({})", path.display());
    }
}

/// `SegmentStorage::open` of a ~1 GiB log (the recovery scan: every frame
/// checksummed, the index rebuilt), warm (page cache) and cold (evicted).
fn bench_open(c: &mut Criterion) {
    let mb = match std::env::var("RECSYNC_BENCH_OPEN_MB") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(mb) if mb > 0 => mb,
            _ => panic!("RECSYNC_BENCH_OPEN_MB must be a positive number of MiB, not {v:?}"),
        },
        Err(_) if test_mode() => OPEN_MB_TEST,
        Err(_) => OPEN_MB_DEFAULT,
    };
    let bodies = entry_bodies(BODY_POOL);
    let mut g = group(
        c,
        "storage",
        Duration::from_millis(1),
        Duration::from_secs(5),
    );
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(mb << 20));
    let mut built: Option<BuiltLog> = None;
    for cold in [false, true] {
        let name = format!("{}_{mb}mib", if cold { "cold" } else { "warm" });
        g.bench_function(BenchmarkId::new("open", name), |b| {
            let built = built.get_or_insert_with(|| build_open_log(mb, &bodies));
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    if cold {
                        evict(built.dir.path());
                    }
                    let start = Instant::now();
                    let log = open_log(
                        built.dir.path(),
                        options(Durability::Periodic, OPEN_SEGMENT),
                    );
                    timed += start.elapsed();
                    assert_eq!(log.recovery().entries, built.entries);
                    assert_eq!(log.recovery().segments, built.segments);
                    black_box(&log);
                }
                timed
            });
        });
    }
    g.finish();
}

/// A log of `COMPACT_SEGMENTS` 16 MiB segments' worth of entries with three
/// of every four released (and the releases synced), ready to compact.
fn build_compact_log(bodies: &[EntryBody]) -> Scratch {
    let mut s = Scratch::new(options(Durability::Periodic, COMPACT_SEGMENT));
    let entries = COMPACT_SEGMENTS * COMPACT_SEGMENT / (ENTRY_LEN + FRAME_HEADER) as u64;
    for i in 0..entries as usize {
        let lsn = append(&mut s.log, &bodies[i % bodies.len()]);
        if lsn.is_multiple_of(16 * SYNC_EVERY) {
            sync(&mut s.log);
        }
    }
    for lsn in 1..=entries {
        if !lsn.is_multiple_of(COMPACT_KEEP_EVERY) {
            if let Err(e) = s.log.release(lsn) {
                panic!("release: {e}");
            }
        }
    }
    sync(&mut s.log);
    s.appended = entries;
    s
}

fn compact(log: &mut Log) -> CompactStats {
    match log.compact() {
        Ok(stats) => stats,
        Err(e) => panic!("compact: {e}"),
    }
}

/// `compact()` of a log whose sealed segments are 75% released: copies the
/// live quarter out of them, syncs, deletes them. Throughput: bytes of live
/// entries copied. A new log is built (untimed) for every iteration; one
/// untimed probe run first finds the bytes an iteration copies.
fn bench_compaction(c: &mut Criterion) {
    let bodies = entry_bodies(BODY_POOL);
    let probe = {
        let mut s = build_compact_log(&bodies);
        let stats = compact(&mut s.log);
        assert!(
            stats.segments_removed > 0,
            "the probe compaction removes segments"
        );
        assert_eq!(s.log.retained() as u64, s.appended / COMPACT_KEEP_EVERY);
        stats
    };
    println!(
        "storage-stats: compaction: per run {} segments removed, {} entries ({:.1} MiB) copied, {:.1} MiB freed",
        probe.segments_removed,
        probe.entries_copied,
        mib(probe.bytes_copied),
        mib(probe.bytes_freed),
    );
    println!(
        "storage-stats: compaction: bytes_copied {} bytes_freed {}",
        probe.bytes_copied, probe.bytes_freed
    );
    // Each iteration builds ~128 MiB untimed: keep to one per sample.
    let mut g = group(
        c,
        "storage",
        Duration::from_millis(1),
        Duration::from_millis(1),
    );
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(probe.bytes_copied));
    g.bench_function("compaction", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let mut s = build_compact_log(&bodies);
                let start = Instant::now();
                let stats = compact(&mut s.log);
                timed += start.elapsed();
                assert_eq!(stats, probe, "every run compacts the same");
            }
            timed
        });
    });
    g.finish();
}

// The blob benchmark goes first, right after the script's dd runs, so the
// two bandwidths are measured as close together as possible.
criterion_group!(
    benches,
    bench_blob,
    bench_append,
    bench_group_commit,
    bench_open,
    bench_compaction
);
criterion_main!(benches);
