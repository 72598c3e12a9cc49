//! Unit tests of the segment log on the simulated disk.

use super::*;
use crate::disk::{CrashMode, SimFs};
use crate::ids::{ClusterId, NodeId};

fn body(i: u64) -> EntryBody {
    // A remote entry with no versions is the smallest body; the cursor
    // carries the payload we check.
    EntryBody::BlobReady {
        from: NodeId(uuid::Uuid::from_u64_pair(i, i)),
        hash: [i as u8; 32],
        versions: Vec::new(),
    }
}

fn opts(durability: Durability, segment_size: u64) -> LogOptions {
    LogOptions {
        segment_size,
        durability,
        blob_chunk: 1000,
        compact_dead_fraction: 0.5,
    }
}

fn open(fs: &SimFs, o: &LogOptions) -> SegmentStorage<SimFs> {
    SegmentStorage::open(fs.clone(), o.clone()).expect("open")
}

#[test]
fn entries_survive_reopen_across_segments() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 4096);
    let mut s = open(&fs, &o);
    for i in 1..=500 {
        assert_eq!(s.append(&body(i)).unwrap(), i);
    }
    s.sync().unwrap();
    assert!(s.segment_count() > 5, "rotated: {}", s.segment_count());
    drop(s);
    let s = open(&fs, &o);
    assert_eq!(s.last_lsn(), 500);
    assert_eq!(s.durable_lsn(), 500);
    let all = s.scan(1, usize::MAX).unwrap();
    assert_eq!(all.len(), 500);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.body, body(i as u64 + 1));
    }
}

#[test]
fn a_crash_loses_only_what_was_not_synced() {
    for mode in [CrashMode::LoseUnsynced, CrashMode::Torn { seed: 7 }] {
        let fs = SimFs::new();
        let o = opts(Durability::Periodic, 1 << 20);
        let mut s = open(&fs, &o);
        for i in 1..=10 {
            s.append(&body(i)).unwrap();
        }
        s.sync().unwrap();
        for i in 11..=20 {
            s.append(&body(i)).unwrap();
        }
        fs.crash(mode);
        let mut s = open(&fs, &o);
        let last = s.last_lsn();
        assert!((10..=20).contains(&last), "{mode:?}: {last}");
        assert_eq!(s.scan(1, 100).unwrap().len() as u64, last);
        // The log goes on after the cut.
        assert_eq!(s.append(&body(99)).unwrap(), last + 1);
        s.sync().unwrap();
        assert_eq!(check::verify(&fs, "sim").unwrap(), None);
    }
}

#[test]
fn always_mode_syncs_every_append() {
    let fs = SimFs::new();
    let mut s = open(&fs, &opts(Durability::Always, 1 << 20));
    let before = fs.stats().data_syncs;
    for i in 1..=5 {
        s.append(&body(i)).unwrap();
        assert_eq!(s.durable_lsn(), i);
    }
    assert_eq!(fs.stats().data_syncs - before, 5);
    fs.crash(CrashMode::LoseUnsynced);
    assert_eq!(open(&fs, &opts(Durability::Always, 1 << 20)).last_lsn(), 5);
}

#[test]
fn releases_persist_and_compaction_reclaims_space() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 4096);
    let mut s = open(&fs, &o);
    for i in 1..=400 {
        s.append(&body(i)).unwrap();
    }
    for i in 1..=400 {
        if i % 10 != 0 {
            s.release(i).unwrap();
        }
    }
    s.sync().unwrap();
    let before = s.disk_bytes();
    let stats = s.compact().unwrap();
    assert!(stats.segments_removed > 0);
    assert!(
        s.disk_bytes() < before / 2,
        "{} -> {}",
        before,
        s.disk_bytes()
    );
    let kept: Vec<u64> = s.scan(1, 1000).unwrap().iter().map(|e| e.lsn).collect();
    assert_eq!(kept, (1..=40).map(|i| i * 10).collect::<Vec<_>>());
    drop(s);
    let mut s = open(&fs, &o);
    let again: Vec<u64> = s.scan(1, 1000).unwrap().iter().map(|e| e.lsn).collect();
    assert_eq!(again, kept);
    assert_eq!(s.last_lsn(), 400);
    assert_eq!(s.first_retained_lsn(), 10);
    assert_eq!(s.append(&body(1)).unwrap(), 401, "no LSN reused");
}

#[test]
fn releasing_the_tail_then_compacting_never_reuses_lsns() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 2048);
    let mut s = open(&fs, &o);
    for i in 1..=100 {
        s.append(&body(i)).unwrap();
    }
    for i in 1..=100 {
        s.release(i).unwrap();
    }
    s.sync().unwrap();
    s.compact().unwrap();
    drop(s);
    let mut s = open(&fs, &o);
    assert_eq!(s.retained(), 0);
    assert_eq!(s.append(&body(1)).unwrap(), 101);
}

#[test]
fn skip_to_is_durable() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 1 << 20);
    let mut s = open(&fs, &o);
    s.append(&body(1)).unwrap();
    s.skip_to(50).unwrap();
    fs.crash(CrashMode::LoseUnsynced);
    let mut s = open(&fs, &o);
    assert_eq!(s.last_lsn(), 50);
    assert_eq!(s.append(&body(2)).unwrap(), 51);
}

#[test]
fn meta_is_replaced_atomically() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 1 << 20);
    let mut s = open(&fs, &o);
    assert_eq!(s.load_meta().unwrap(), None);
    let mut meta = NodeMeta {
        node: NodeId(uuid::Uuid::from_u64_pair(1, 2)),
        cluster: ClusterId(uuid::Uuid::from_u64_pair(3, 4)),
        log_id: crate::ReplicaId(uuid::Uuid::from_u64_pair(5, 6)),
        replica: crate::ReplicaId(uuid::Uuid::from_u64_pair(7, 8)),
        counters_reserved: 1000,
        lsns_reserved: 2000,
        lost_ranges: Vec::new(),
        peer_acked: BTreeMap::new(),
        stable_lsn: 7,
    };
    s.store_meta(&meta).unwrap();
    meta.counters_reserved = 3000;
    s.store_meta(&meta).unwrap();
    fs.crash(CrashMode::LoseUnsynced);
    let mut s = open(&fs, &o);
    assert_eq!(s.load_meta().unwrap(), Some(meta));
}

#[test]
fn blobs_stream_in_chunks_and_a_torn_last_chunk_is_cut() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 1 << 20);
    let mut s = open(&fs, &o);
    let id = [9u8; 32];
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    s.blob_append(&id, 0, &data[..4500]).unwrap();
    s.blob_append(&id, 4500, &data[4500..]).unwrap();
    assert!(
        s.blob_append(&id, 5, b"x").is_err(),
        "offset must be the length"
    );
    assert_eq!(s.blob_len(&id), 10_000);
    assert_eq!(s.blob_read(&id, 0, 10_000).unwrap(), data);
    assert_eq!(s.blob_read(&id, 995, 1010).unwrap(), &data[995..2005]);
    s.sync().unwrap();
    s.blob_append(&id, 10_000, &[1u8; 700]).unwrap();
    fs.crash(CrashMode::Torn { seed: 3 });
    let s = open(&fs, &o);
    let len = s.blob_len(&id);
    assert!(len == 10_000 || len == 10_700, "{len}");
    assert_eq!(s.blob_read(&id, 0, 10_000).unwrap(), data);
}

#[test]
fn a_flipped_blob_bit_is_an_error_naming_the_place() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 1 << 20);
    let mut s = open(&fs, &o);
    let id = [4u8; 32];
    s.blob_append(&id, 0, &[5u8; 3000]).unwrap();
    s.sync().unwrap();
    drop(s);
    let path = Path::new(BLOB_DIR).join(blobstore::blob_name(&id));
    fs.flip_bit(&path, 1500, 2).unwrap();
    let s = open(&fs, &o);
    let err = s.blob_read(&id, 0, 3000).unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { location, .. } if location.contains("offset 1016")),
        "{err}"
    );
    let p = check::verify(&fs, "sim").unwrap().expect("a problem");
    assert!(p.location.contains(".blob offset 1016"), "{p:?}");
}

#[test]
fn a_failed_sync_fails_the_log_for_good() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 1 << 20);
    let mut s = open(&fs, &o);
    s.append(&body(1)).unwrap();
    fs.set_faults(crate::disk::SimFaults {
        failing_syncs: 1,
        ..Default::default()
    });
    assert!(s.sync().is_err());
    assert!(s.append(&body(2)).is_err(), "no write after a failed fsync");
    assert!(s.sync().is_err());
    assert_eq!(s.durable_lsn(), 0);
}

#[test]
fn a_full_disk_is_a_typed_error() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 4096);
    let mut s = open(&fs, &o);
    fs.set_faults(crate::disk::SimFaults {
        capacity: Some(fs.used_bytes() + 100),
        ..Default::default()
    });
    let mut err = None;
    for i in 1..100 {
        if let Err(e) = s.append(&body(i)) {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(StorageError::Full { .. })), "{err:?}");
}

#[test]
fn silent_read_corruption_is_caught_never_returned() {
    let fs = SimFs::new();
    let o = opts(Durability::Periodic, 1 << 20);
    let mut s = open(&fs, &o);
    for i in 1..=5 {
        s.append(&body(i)).unwrap();
    }
    s.sync().unwrap();
    let id = [6u8; 32];
    s.blob_append(&id, 0, &[9u8; 3000]).unwrap();
    s.sync().unwrap();
    drop(s);
    // Reopen so reads go to the disk, not the write buffer.
    let s = open(&fs, &o);
    for what in ["entry", "blob"] {
        fs.set_faults(crate::disk::SimFaults {
            corrupt_reads: 1,
            ..Default::default()
        });
        match what {
            "entry" => assert!(
                matches!(s.read(3), Err(StorageError::Corrupt { .. })),
                "a flipped bit fails the frame's checksum"
            ),
            // A bad read of a chunk header shortens the view; of chunk data,
            // fails its checksum. Never wrong bytes.
            _ => match s.blob_read(&id, 0, 3000) {
                Err(StorageError::Corrupt { .. }) => {}
                Ok(b) => assert!(b.len() <= 3000 && b.iter().all(|x| *x == 9), "a prefix"),
                Err(e) => panic!("blob: {e}"),
            },
        }
        // The disk itself is fine: the next read is good.
        match what {
            "entry" => assert_eq!(s.read(3).unwrap().unwrap().body, body(3)),
            _ => assert_eq!(s.blob_read(&id, 0, 3000).unwrap(), vec![9u8; 3000]),
        }
    }
    fs.set_faults(crate::disk::SimFaults {
        short_reads: 1,
        ..Default::default()
    });
    assert!(matches!(s.read(2), Err(StorageError::Io { .. })));
    assert_eq!(s.read(2).unwrap().unwrap().body, body(2));
}

// Group commit through `SharedLog`, from one thread (its concurrency is
// tested in `group.rs`, which may start threads, and in
// tests/acceptance_storage.rs).

/// A `SharedLog` in `group` mode on a fresh simulated disk.
fn shared_log(segment_size: u64) -> (SimFs, LogOptions, SharedLog<SimFs>) {
    let fs = SimFs::new();
    let o = opts(Durability::Group, segment_size);
    let shared = SharedLog::new(open(&fs, &o));
    (fs, o, shared)
}

#[test]
fn shared_log_returns_only_durable_appends() {
    let (fs, o, shared) = shared_log(4096);
    for i in 1..=100 {
        assert_eq!(shared.append(&body(i)).unwrap(), i);
        // Durable on return, across segment rotations too.
        assert_eq!(shared.with_log(|l| l.durable_lsn()).unwrap(), i);
    }
    let log = shared.into_inner().unwrap();
    assert_eq!(log.durable_lsn(), 100);
    drop(log);
    fs.crash(CrashMode::LoseUnsynced);
    assert_eq!(open(&fs, &o).last_lsn(), 100);
}

#[test]
fn shared_log_wait_durable_covers_appends_made_under_its_lock() {
    let (fs, o, shared) = shared_log(1 << 20);
    assert!(shared.wait_durable(1).is_err(), "nothing appended yet");
    let lsn = shared.with_log(|l| l.append(&body(1))).unwrap().unwrap();
    assert_eq!(shared.with_log(|l| l.durable_lsn()).unwrap(), 0);
    shared.wait_durable(lsn).unwrap();
    assert_eq!(shared.with_log(|l| l.durable_lsn()).unwrap(), lsn);
    assert!(shared.wait_durable(lsn + 1).is_err(), "never appended");
    shared.wait_durable(lsn).unwrap();
    drop(shared);
    fs.crash(CrashMode::LoseUnsynced);
    assert_eq!(open(&fs, &o).last_lsn(), 1);
}

#[test]
fn shared_log_reports_a_failed_sync_to_every_later_call() {
    let (fs, _, shared) = shared_log(1 << 20);
    shared.append(&body(1)).unwrap();
    fs.set_faults(crate::disk::SimFaults {
        failing_syncs: 1,
        ..Default::default()
    });
    assert!(shared.append(&body(2)).is_err());
    // The fault fired once; the log still refuses (after a failed fsync
    // the page cache cannot be trusted).
    assert!(shared.append(&body(3)).is_err());
    // Every later call gets the failure, even for an entry durable before.
    assert!(shared.wait_durable(2).is_err());
    assert!(shared.wait_durable(1).is_err());
    let log = shared.into_inner().unwrap();
    assert!(log.failure().is_some());
    assert_eq!(log.durable_lsn(), 1);
}

#[test]
fn shared_log_without_appends_needs_no_sync_thread() {
    let (_, _, shared) = shared_log(1 << 20);
    assert_eq!(shared.with_log(|l| l.last_lsn()).unwrap(), 0);
    let log = shared.into_inner().unwrap();
    assert_eq!(log.last_lsn(), 0);
    drop(SharedLog::new(log));
}
