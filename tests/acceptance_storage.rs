//! Storage acceptance (SPEC §5): the segment log survives SIGKILL in
//! `always` and `group` modes, cuts a torn tail at every byte offset, reports
//! bit flips with their location, errors (never SIGBUS) on a file truncated
//! under its mapping, compacts without changing state or resume points,
//! never reuses a dot after losing a shipped tail, and shares fsyncs among
//! concurrent writers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsync_engine::disk::{CrashMode, RealFs, SimFs, Vfs};
use recsync_engine::seglog::{check, Durability, LogOptions, SegmentStorage, SharedLog, LOG_DIR};
use recsync_engine::storage::EntryBody;
use recsync_engine::{Dot, Key, NodeId, Storage, StorageError};
use recsync_sim::cluster::{labels, ClusterBuilder};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// A small entry naming `(tag, i)`; the storage does not interpret bodies.
fn body(tag: u64, i: u64) -> EntryBody {
    EntryBody::BlobReady {
        from: NodeId(uuid::Uuid::from_u64_pair(tag, i)),
        hash: [(i % 251) as u8; 32],
        versions: Vec::new(),
    }
}

fn id_of(e: &EntryBody) -> (u64, u64) {
    match e {
        EntryBody::BlobReady { from, .. } => from.0.as_u64_pair(),
        other => panic!("unexpected entry {other:?}"),
    }
}

fn opts(durability: Durability, segment_size: u64) -> LogOptions {
    LogOptions {
        segment_size,
        durability,
        ..LogOptions::default()
    }
}

fn all_ids<V: Vfs + Clone>(s: &SegmentStorage<V>) -> BTreeSet<(u64, u64)> {
    s.scan(1, usize::MAX)
        .expect("scan")
        .iter()
        .map(|e| id_of(&e.body))
        .collect()
}

// ---------------------------------------------------------------- kill -9

const CHILD_ENV: &str = "RECSYNC_KILL9_CHILD";

/// The writer the kill-9 tests run as a child process (this test binary,
/// re-run with `CHILD_ENV` set). Without the variable it does nothing.
#[test]
fn kill9_child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let dir = PathBuf::from(parts.next().expect("dir"));
    let mode = parts.next().expect("mode");
    let tag: u64 = parts.next().expect("tag").parse().expect("tag");
    let durability = match mode {
        "always" => Durability::Always,
        _ => Durability::Group,
    };
    let log = SegmentStorage::open(RealFs::new(&dir), opts(durability, 256 << 10)).expect("open");
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    if durability == Durability::Always {
        let mut log = log;
        for i in 0.. {
            log.append(&body(tag, i)).expect("append");
            // `always`: durable on return; say so.
            let mut o = out.lock().expect("stdout");
            writeln!(o, "ACK {tag} {i}").expect("stdout");
            o.flush().expect("stdout");
        }
    } else {
        let log = Arc::new(SharedLog::new(log));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let log = log.clone();
                let out = out.clone();
                std::thread::spawn(move || {
                    for i in 0.. {
                        let id = t << 32 | i;
                        log.append(&body(tag, id)).expect("append");
                        let mut o = out.lock().expect("stdout");
                        writeln!(o, "ACK {tag} {id}").expect("stdout");
                        o.flush().expect("stdout");
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn kill9(mode: &str, rounds: u64, seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut acked: BTreeSet<(u64, u64)> = BTreeSet::new();
    let exe = std::env::current_exe().expect("test binary");
    let mut torn = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill9_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{}|{mode}|{round}", dir.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let parse = |l: &str| -> Option<(u64, u64)> {
            let mut w = l.strip_prefix("ACK ")?.split(' ');
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        };
        // Kill at a random moment: after a random number of acknowledged
        // writes, plus a random pause.
        let wait_for = rng.gen_range(0..60);
        let mut seen = 0;
        while seen < wait_for {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(id) = parse(&l) {
                        acked.insert(id);
                        seen += 1;
                    }
                }
                _ => break,
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(rng.gen_range(0..3000)));
        child.kill().expect("SIGKILL");
        // Everything printed before the kill was acknowledged.
        for l in lines.map_while(Result::ok) {
            if let Some(id) = parse(&l) {
                acked.insert(id);
            }
        }
        let _ = child.wait();
        let log =
            SegmentStorage::open(RealFs::new(dir.path()), opts(Durability::Always, 256 << 10))
                .unwrap_or_else(|e| panic!("{mode} round {round}: reopen failed: {e}"));
        if log.recovery().torn_bytes > 0 {
            torn += 1;
        }
        let present = all_ids(&log);
        let missing: Vec<_> = acked.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "{mode} round {round}: acknowledged writes lost: {missing:?}"
        );
        drop(log);
        let problem = check::verify(&RealFs::new(dir.path()), "dir").expect("verify");
        assert_eq!(problem, None, "{mode} round {round}: verify after reopen");
    }
    assert!(acked.len() as u64 >= rounds, "the children wrote");
    println!(
        "{mode}: {rounds} SIGKILLs, {} acknowledged writes all present, {torn} torn tails cut",
        acked.len()
    );
}

#[test]
fn acceptance_storage_crash_kill9_always() {
    kill9("always", 200, 1);
}

#[test]
fn acceptance_storage_crash_kill9_group() {
    kill9("group", 200, 2);
}

// ---------------------------------------------------------------- torn tail

/// Builds a log of 20 synced entries plus a 21st; returns the segment path
/// and the byte range of the 21st entry's frame.
fn log_with_last_entry<V: Vfs + Clone>(vfs: &V) -> (PathBuf, u64, u64) {
    let o = opts(Durability::Always, 1 << 20);
    let mut s = SegmentStorage::open(vfs.clone(), o).expect("open");
    for i in 1..=20 {
        s.append(&body(0, i)).expect("append");
    }
    let start = check::inspect(vfs, "log").expect("inspect").segments[0].data_end;
    s.append(&body(0, 21)).expect("append");
    let end = check::inspect(vfs, "log").expect("inspect").segments[0].data_end;
    let seg = Path::new(LOG_DIR)
        .join(&check::inspect(vfs, "log").expect("inspect").segments[0].name["log/".len()..]);
    (seg, start, end)
}

fn assert_recovers_to_20<V: Vfs + Clone>(vfs: &V, what: &str) {
    let mut s = SegmentStorage::open(vfs.clone(), opts(Durability::Always, 1 << 20))
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    assert_eq!(s.last_lsn(), 20, "{what}");
    let ids: Vec<u64> = s
        .scan(1, 100)
        .expect("scan")
        .iter()
        .map(|e| id_of(&e.body).1)
        .collect();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "{what}");
    assert_eq!(
        s.append(&body(0, 99)).expect("append"),
        21,
        "{what}: the log goes on"
    );
    drop(s);
    assert_eq!(check::verify(vfs, "log").expect("verify"), None, "{what}");
}

#[test]
fn acceptance_storage_torn_tail_every_offset() {
    // On the simulated disk.
    let probe = SimFs::new();
    let (_, start, end) = log_with_last_entry(&probe);
    let frame = end - start;
    for cut in 0..frame {
        let fs = SimFs::new();
        let (seg, start, _) = log_with_last_entry(&fs);
        let bytes = fs.contents(&seg).expect("segment");
        fs.replace_contents(&seg, &bytes[..(start + cut) as usize])
            .expect("cut");
        assert_recovers_to_20(&fs, &format!("sim, cut at byte {cut} of {frame}"));
    }
    // On the real disk.
    for cut in 0..frame {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = RealFs::new(dir.path());
        let (seg, start, _) = log_with_last_entry(&fs);
        let path = dir.path().join(&seg);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(start + cut))
            .expect("cut");
        assert_recovers_to_20(&fs, &format!("real, cut at byte {cut} of {frame}"));
    }
    println!("the last entry ({frame} bytes) cut at every offset: recovered to entry 20 each time");
}

// ---------------------------------------------------------------- bit flips

/// A periodic log on the real disk in a fresh directory, with entries
/// `(tag, 1..=n)` appended (not synced).
fn real_log(
    segment_size: u64,
    tag: u64,
    n: u64,
) -> (tempfile::TempDir, RealFs, SegmentStorage<RealFs>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = RealFs::new(dir.path());
    let mut s =
        SegmentStorage::open(fs.clone(), opts(Durability::Periodic, segment_size)).expect("open");
    for i in 1..=n {
        s.append(&body(tag, i)).expect("append");
    }
    (dir, fs, s)
}

#[test]
fn acceptance_storage_corruption_is_located() {
    let (dir, fs, mut s) = real_log(4 << 10, 1, 600);
    s.sync().expect("sync");
    drop(s);
    let inspection = check::inspect(&fs, "dir").expect("inspect");
    let sealed: Vec<_> = inspection.segments.iter().filter(|s| s.sealed).collect();
    assert!(sealed.len() >= 10, "{} sealed segments", sealed.len());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let bin = env!("CARGO_BIN_EXE_recsync");
    let trials = 300;
    for trial in 0..trials {
        let seg = sealed[rng.gen_range(0..sealed.len())];
        let offset = rng.gen_range(0..seg.data_end);
        let bit = rng.gen_range(0..8u8);
        let path = dir.path().join(&seg.name);
        let mut bytes = std::fs::read(&path).expect("segment");
        bytes[offset as usize] ^= 1 << bit;
        std::fs::write(&path, &bytes).expect("flip");

        let what = format!("trial {trial}: bit {bit} of byte {offset} in {}", seg.name);
        match SegmentStorage::open(fs.clone(), opts(Durability::Periodic, 4 << 10)) {
            Err(StorageError::Corrupt { location, .. }) => {
                assert!(
                    location.starts_with(&seg.name),
                    "{what}: open blamed {location}"
                )
            }
            Err(e) => panic!("{what}: open failed oddly: {e}"),
            Ok(_) => panic!("{what}: open did not notice"),
        }
        let p = check::verify(&fs, "dir")
            .expect("verify")
            .unwrap_or_else(|| panic!("{what}: verify clean"));
        assert!(
            !p.torn_tail,
            "{what}: a sealed segment is never a torn tail"
        );
        let reported: u64 = p
            .location
            .strip_prefix(&format!("{} offset ", seg.name))
            .unwrap_or_else(|| panic!("{what}: verify blamed {}", p.location))
            .parse()
            .expect("offset");
        assert!(reported <= offset, "{what}: reported {reported}");
        if trial < 3 {
            let out = Command::new(bin)
                .arg("verify")
                .arg(dir.path())
                .output()
                .expect("recsync verify");
            assert_eq!(out.status.code(), Some(1), "{what}: exit status");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&p.location), "{what}: {text}");
        }
        bytes[offset as usize] ^= 1 << bit;
        std::fs::write(&path, &bytes).expect("unflip");
    }
    let out = Command::new(bin)
        .arg("verify")
        .arg(dir.path())
        .output()
        .expect("recsync verify");
    assert_eq!(out.status.code(), Some(0), "clean again");
    println!("{trials} bit flips in sealed segments: each reported with its segment and offset");
}

#[test]
fn acceptance_storage_corruption_tool_rejects_bad_paths() {
    let bin = env!("CARGO_BIN_EXE_recsync");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin)
        .arg("verify")
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a recsync data directory"));
    let out = Command::new(bin)
        .arg("inspect")
        .arg(dir.path().join("nope"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file or directory"));
    // A fresh log inspects cleanly and names its parts.
    let fs = RealFs::new(dir.path());
    let mut s = SegmentStorage::open(fs, opts(Durability::Always, 1 << 20)).expect("open");
    s.append(&body(0, 1)).expect("append");
    s.blob_append(&[7; 32], 0, b"audio").expect("blob");
    s.sync().expect("sync");
    drop(s);
    let out = Command::new(bin)
        .arg("inspect")
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "segments:  1",
        "entries:   1 live",
        "blobs:     1",
        "checksums: all valid",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

// ---------------------------------------------------------------- truncation

#[test]
fn acceptance_storage_truncate_under_map_errors_not_sigbus() {
    let (dir, fs, mut s) = real_log(16 << 10, 2, 500);
    let blob = [3u8; 32];
    s.blob_append(&blob, 0, &vec![5u8; 1 << 20]).expect("blob");
    s.sync().expect("sync");
    // Map everything by reading it.
    assert_eq!(s.scan(1, usize::MAX).expect("scan").len(), 500);
    assert_eq!(s.blob_read(&blob, 0, 1 << 20).expect("blob").len(), 1 << 20);

    // Another process shrinks the first segment and the blob file.
    let seg = dir.path().join(LOG_DIR).join("0000000000000001.seg");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("seg")
        .set_len(100)
        .expect("truncate");
    let blob_path = dir
        .path()
        .join("blobs")
        .join(recsync_engine::seglog::blobstore::blob_name(&blob));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob_path)
        .expect("blob")
        .set_len(100)
        .expect("truncate");

    let err = s.read(1).expect_err("entry 1 is gone");
    assert!(err.to_string().contains("past the end"), "{err}");
    assert!(s.scan(1, 10).is_err());
    let err = s.blob_read(&blob, 500_000, 1000).expect_err("blob is cut");
    assert!(err.to_string().contains("past the end"), "{err}");
    // Entries in other segments still read.
    assert!(s.read(500).expect("read").is_some());
    drop(s);
    // Reopening names the damage instead of serving a hole.
    match SegmentStorage::open(fs, opts(Durability::Periodic, 16 << 10)) {
        Err(StorageError::Corrupt { location, .. }) => {
            assert!(location.contains("0000000000000001.seg"), "{location}")
        }
        Err(e) => panic!("unexpected: {e}"),
        Ok(_) => panic!("a truncated sealed segment must not open"),
    }
}

// ---------------------------------------------------------------- compaction

#[test]
fn acceptance_storage_compaction_keeps_state_and_resume_points() {
    let log = LogOptions {
        segment_size: 16 << 10,
        durability: Durability::Periodic,
        ..LogOptions::default()
    };
    let mut c = ClusterBuilder::new(81, 3)
        .two_way(0, 1)
        .one_way(0, 2)
        .on_disk(log)
        .build();
    for round in 0..60u128 {
        for k in 0..10u128 {
            c.put(0, Key::from_u128(k), labels("user"), &round.to_le_bytes());
        }
        c.run_for(20);
        c.sync_storage(0);
    }
    c.delete(0, Key::from_u128(3));
    c.run_until_settled_syncing(60_000).expect("settles");
    c.node_mut(0).trim_log().expect("trim");
    let peers = [c.node(1).node_id(), c.node(2).node_id()];
    let digest = c.node(0).state_digest();
    let acked: Vec<_> = peers.iter().map(|p| c.node(0).peer_acked(p)).collect();
    let disk = c
        .node(0)
        .storage()
        .disk()
        .expect("on disk")
        .log
        .disk_bytes();
    let stats = c
        .node_mut(0)
        .storage_mut()
        .disk_mut()
        .expect("disk")
        .log
        .compact()
        .expect("compact");
    let after = c
        .node(0)
        .storage()
        .disk()
        .expect("on disk")
        .log
        .disk_bytes();
    println!("compaction: {stats:?}, segment bytes {disk} -> {after}");
    assert!(after < disk, "disk use fell: {disk} -> {after}");
    assert_eq!(c.node(0).state_digest(), digest);
    let acked_now: Vec<_> = peers.iter().map(|p| c.node(0).peer_acked(p)).collect();
    assert_eq!(acked_now, acked);
    // A restart rebuilds the same state and resume points from the
    // compacted log, and replication carries on from them.
    c.crash(0);
    c.restart(0);
    assert_eq!(c.node(0).state_digest(), digest);
    let acked_now: Vec<_> = peers.iter().map(|p| c.node(0).peer_acked(p)).collect();
    assert_eq!(acked_now, acked);
    c.put(0, Key::from_u128(100), labels("user"), b"after compaction");
    c.run_until_settled_syncing(60_000).expect("settles");
    assert!(c.digests_equal(&[0, 1, 2]));
    assert!(c.node(2).get(&Key::from_u128(100)).is_some());
}

// ---------------------------------------------------------------- dots

#[test]
fn acceptance_storage_dot_never_reused_after_losing_a_shipped_tail() {
    let log = LogOptions {
        durability: Durability::Periodic,
        ..LogOptions::default()
    };
    let mut c = ClusterBuilder::new(82, 2)
        .two_way(0, 1)
        .on_disk(log)
        .build();
    for k in 0..10u128 {
        c.put(0, Key::from_u128(k), labels("user"), b"durable");
    }
    c.run_until_settled_syncing(60_000).expect("settles");
    // Written, shipped and applied by node 1, but never synced on node 0.
    let mut shipped: Vec<Dot> = Vec::new();
    for k in 10..20u128 {
        shipped.extend(c.put(0, Key::from_u128(k), labels("user"), b"tail").dots);
    }
    c.run_for(2_000);
    for k in 10..20u128 {
        assert!(
            c.node(1).get(&Key::from_u128(k)).is_some(),
            "key {k} reached node 1"
        );
    }
    let last_before = c.node(0).storage().last_lsn();
    c.crash_with(0, CrashMode::LoseUnsynced);
    c.restart(0);
    assert!(
        c.node(0)
            .storage()
            .disk()
            .expect("disk")
            .log
            .recovery()
            .entries
            < last_before as usize,
        "the tail was lost"
    );
    // New writes get fresh dots, never one node 1 already holds.
    let seen_on_1: BTreeSet<Dot> = (0..20u128)
        .filter_map(|k| c.node(1).get(&Key::from_u128(k)))
        .flat_map(|v| v.siblings.iter().map(|x| x.dot).collect::<Vec<_>>())
        .collect();
    let mut fresh = Vec::new();
    for k in 10..30u128 {
        fresh.extend(
            c.put(0, Key::from_u128(k), labels("user"), b"after restart")
                .dots,
        );
    }
    for d in &fresh {
        assert!(!seen_on_1.contains(d), "dot {d:?} reused");
        assert!(!shipped.contains(d), "dot {d:?} reused");
    }
    c.run_until_settled_syncing(60_000).expect("settles");
    assert!(c.digests_equal(&[0, 1]));
    for k in 10..30u128 {
        let v = c.node(1).get(&Key::from_u128(k)).expect("present");
        assert_eq!(v.meta(), Some(&b"after restart"[..]), "key {k}");
    }
}

// ---------------------------------------------------------------- group commit

fn group_commit<V: Vfs + Clone + 'static>(vfs: V) -> (SharedLog<V>, u64, Vec<(u64, u64)>) {
    let log = SegmentStorage::open(vfs, opts(Durability::Group, 1 << 20)).expect("open");
    let syncs_before = log.log_syncs;
    let shared = Arc::new(SharedLog::new(log));
    let writes_per_thread = 300u64;
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                (0..writes_per_thread)
                    .map(|i| {
                        shared.append(&body(t, i)).expect("append");
                        (t, i)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let returned: Vec<(u64, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("writer"))
        .collect();
    let shared = Arc::into_inner(shared).expect("writers done");
    (shared, syncs_before, returned)
}

#[test]
fn acceptance_storage_group_commit_shares_fsyncs() {
    // Simulated disk: after the writers return, a crash loses everything
    // unsynced; every returned write must survive it.
    let fs = SimFs::new();
    let (shared, _, returned) = group_commit(fs.clone());
    drop(shared);
    fs.crash(CrashMode::LoseUnsynced);
    let log = SegmentStorage::open(fs.clone(), opts(Durability::Group, 1 << 20)).expect("reopen");
    let present = all_ids(&log);
    for id in &returned {
        assert!(
            present.contains(id),
            "returned write {id:?} was not durable"
        );
    }

    // Real disk: count the fdatasyncs.
    let dir = tempfile::tempdir().expect("tempdir");
    let (shared, before, returned) = group_commit(RealFs::new(dir.path()));
    let log = shared.into_inner().expect("log");
    let syncs = log.log_syncs - before;
    let writes = returned.len() as u64;
    println!("group commit: {writes} writes from 16 threads, {syncs} fdatasyncs");
    assert!(syncs * 2 < writes, "{syncs} syncs for {writes} writes");
    assert_eq!(all_ids(&log).len() as u64, writes);
}
