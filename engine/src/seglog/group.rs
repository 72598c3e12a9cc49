//! Group commit: many threads append to one segment log and share each
//! fdatasync.
//!
//! Design. One sync thread, owned by the `SharedLog`, does every
//! fdatasync; writers only append and wait. Time is cut into rounds. Under
//! the one lock (the log and the round state together: one lock per
//! append) a writer appends and counts itself into the open round, then
//! blocks on the round's gate, an `RwLock` the sync thread write-locks
//! before the round opens and releases when the round's sync is over: the
//! read lock is granted only then, and one futex wake lets the whole round
//! through, with no herd on a mutex and no writer of a later round woken.
//! The sync thread gathers, then under the lock writes out the buffer
//! (`begin_sync`) and opens the next round, syncs outside the lock (writers
//! arriving meanwhile count into the next round), publishes the durable LSN
//! and releases the gate.
//!
//! Gathering counts instead of guessing: the writers of the last round
//! (those it covered plus those who arrived during its sync) are expected
//! back, so the sync thread yields until that many are in, or for about one
//! sync's duration at most (a writer left); with nobody waiting it sleeps.
//! Waiting for the whole round beats starting the next sync at once, which
//! splits the writers into two cohorts each waiting for two syncs, as long
//! as the writers take less than a sync to come back.
//!
//! A writer alone (the last round had one writer, nobody waits, no sync
//! runs) syncs on its own thread instead, like `Durability::Always`: a hand
//! over to the sync thread and back would cost two wake-ups per append.
//! Either way, one fdatasync at a time: of two concurrent ones on a file,
//! only one may be told of a write-back error.
//!
//! A sync error (or a write error in `begin_sync`) fails the log for good:
//! every waiter and every later call gets it. `into_inner` and drop stop
//! and join the sync thread.

use super::SegmentStorage;
use crate::disk::{Vfs, VfsFile};
use crate::ids::Lsn;
use crate::storage::{EntryBody, Storage, StorageError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Gates in rotation: round `r` uses gate `r % GATES`. A gate is locked
/// for a new round only once every writer of its last round has passed it
/// (`Inner::passing`); with four, the sync thread rarely has to wait for a
/// writer slow to get there.
const GATES: usize = 4;
/// Bounds of how long a gather waits for writers that do not come back:
/// the average duration of a sync, within these.
const GATHER_MIN: Duration = Duration::from_micros(50);
const GATHER_MAX: Duration = Duration::from_millis(10);

/// What the lock guards: the log and the rounds.
struct Locked<V: Vfs + Clone> {
    log: SegmentStorage<V>,
    durable: Lsn,
    failed: Option<StorageError>,
    /// The open round: a writer counted in now waits for its sync.
    round: u64,
    /// Writers counted in the open round.
    waiting: usize,
    /// Writers expected in the open round: those of the last one.
    expected: usize,
    /// The sync thread waits on `Inner::idle`, for a writer or for an
    /// inline sync to end.
    sleeping: bool,
    /// The sync thread has begun a sync and not ended it.
    syncing: bool,
    /// A writer syncs on its own thread (`Inner::sync_inline`).
    inline: bool,
    stop: bool,
}

struct Inner<V: Vfs + Clone> {
    locked: Mutex<Locked<V>>,
    idle: Condvar,
    gates: [RwLock<()>; GATES],
    /// Writers counted into a gate's round that have not passed it yet.
    passing: [AtomicUsize; GATES],
    /// Copies of `Locked` fields, read without the lock: by a writer past
    /// its gate, by the sync thread while it gathers.
    durable: AtomicU64,
    failed: AtomicBool,
    waiting: AtomicUsize,
    stop: AtomicBool,
}

/// The gates the sync thread holds, by index.
type Held<'a> = [Option<RwLockWriteGuard<'a, ()>>; GATES];

/// A segment log shared by concurrent writers.
pub struct SharedLog<V: Vfs + Clone + 'static> {
    inner: Arc<Inner<V>>,
    /// The sync thread, started by the first append or wait.
    syncer: Mutex<Option<JoinHandle<()>>>,
    started: AtomicBool,
}

fn poisoned() -> StorageError {
    StorageError::Io {
        op: "group commit",
        detail: "a thread panicked holding the log".into(),
    }
}

fn gate_index(round: u64) -> usize {
    (round % GATES as u64) as usize
}

impl<V: Vfs + Clone> Inner<V> {
    fn lock(&self) -> Result<MutexGuard<'_, Locked<V>>, StorageError> {
        self.locked.lock().map_err(|_| poisoned())
    }

    /// Counts a writer into the open round (the caller holds the lock and
    /// has checked that its entry is not durable yet); returns the round.
    fn count_in(&self, st: &mut Locked<V>) -> u64 {
        st.waiting += 1;
        self.waiting.store(st.waiting, Ordering::Release);
        self.passing[gate_index(st.round)].fetch_add(1, Ordering::AcqRel);
        if st.sleeping {
            st.sleeping = false;
            self.idle.notify_one();
        }
        st.round
    }

    fn append(&self, body: &EntryBody) -> Result<Lsn, StorageError> {
        let (lsn, round) = {
            let mut st = self.lock()?;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            // No sync can have covered it: syncs begin under this lock.
            let lsn = st.log.append(body)?;
            if st.expected <= 1 && st.waiting == 0 && !st.syncing && !st.inline {
                // Alone: sync here rather than hand over to the sync
                // thread and back (two wake-ups per append).
                self.sync_inline(st)?;
                return Ok(lsn);
            }
            (lsn, self.count_in(&mut st))
        };
        self.wait_round(lsn, round)?;
        Ok(lsn)
    }

    /// Syncs on the caller's thread what is appended so far. Writers who
    /// come meanwhile count into the open round as usual; the sync thread
    /// waits for this sync to end before it begins its own.
    fn sync_inline(&self, mut st: MutexGuard<'_, Locked<V>>) -> Result<(), StorageError> {
        st.inline = true;
        let begun = st.log.begin_sync();
        drop(st);
        let synced = begun.map(|(target, file)| (target, file.map(|f| f.sync_data())));
        // Clear `inline` even if a panic poisoned the lock: the sync thread
        // waits for it.
        let (mut st, poisoned_now) = match self.locked.lock() {
            Ok(st) => (st, false),
            Err(p) => (p.into_inner(), true),
        };
        st.inline = false;
        if st.sleeping {
            st.sleeping = false;
            self.idle.notify_one();
        }
        if poisoned_now {
            return Err(poisoned());
        }
        let durable = match synced {
            Ok((target, Some(result))) => st.log.end_sync(target, result),
            Ok((target, None)) => Ok(st.log.durable_lsn().max(target)),
            Err(e) => Err(e),
        };
        match durable {
            Ok(durable) => {
                st.durable = st.durable.max(durable);
                self.durable.store(st.durable, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                if st.failed.is_none() {
                    st.failed = Some(e.clone());
                }
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Blocks until `round` is over; then `lsn` (counted in it) is durable
    /// unless the log failed.
    fn wait_round(&self, lsn: Lsn, round: u64) -> Result<(), StorageError> {
        // The round's gate is locked from before the round opened until its
        // sync ended, so the read lock comes only after that; and it is not
        // locked again for a later round before this writer has passed.
        let gate = gate_index(round);
        let passed = self.gates[gate].read().is_ok();
        self.passing[gate].fetch_sub(1, Ordering::AcqRel);
        if self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        if !passed || self.failed.load(Ordering::Acquire) {
            let st = self.locked.lock().unwrap_or_else(PoisonError::into_inner);
            return Err(st.failed.clone().unwrap_or_else(poisoned));
        }
        Err(StorageError::Io {
            op: "group commit",
            detail: format!("entry {lsn} is not durable after its round"),
        })
    }

    /// The sync thread's loop, holding the open round's gate in `held`.
    fn run<'a>(&'a self, held: &mut Held<'a>) {
        let mut sync_time = GATHER_MIN;
        loop {
            match self.round(held, &mut sync_time) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    // Fail first, then open every gate: a writer let through
                    // sees the failure.
                    self.fail(e);
                    *held = Default::default();
                    self.wait_for_stop();
                    return;
                }
            }
        }
    }

    /// One round: waits for writers, gathers, syncs, releases the round's
    /// gate. `Ok(false)` once stopped.
    fn round<'a>(
        &'a self,
        held: &mut Held<'a>,
        sync_time: &mut Duration,
    ) -> Result<bool, StorageError> {
        // One deadline for the round's whole gather.
        let deadline = Instant::now() + (*sync_time).clamp(GATHER_MIN, GATHER_MAX);
        let mut st = self.lock()?;
        if st.waiting == 0 && st.expected > 1 {
            // The writers just woken are on their way back: wait for them
            // here, awake, so the first does not find the sync thread
            // asleep and sync alone.
            let expected = st.expected;
            drop(st);
            self.gather(expected, deadline);
            st = self.lock()?;
        }
        if st.waiting == 0 {
            // Nobody came back: an idle spell, after which concurrency is
            // learnt again from one.
            st.expected = 1;
        }
        while st.waiting == 0 {
            if st.stop {
                return Ok(false);
            }
            st.sleeping = true;
            st = self.idle.wait(st).map_err(|_| poisoned())?;
        }
        st.sleeping = false;
        if st.waiting < st.expected {
            let expected = st.expected;
            drop(st);
            self.gather(expected, deadline);
            st = self.lock()?;
        }
        // Never two fdatasyncs at once: of two concurrent ones on a file,
        // only one may be told of a write-back error.
        while st.inline {
            st.sleeping = true;
            st = self.idle.wait(st).map_err(|_| poisoned())?;
        }
        st.sleeping = false;

        let (target, file) = st.log.begin_sync()?;
        let round = st.round;
        let covered = st.waiting;
        // Lock the next round's gate before anyone can count into it, once
        // the writers of its last round are through (they need no lock to
        // pass: this waits for them to be scheduled, no longer).
        let next = gate_index(round + 1);
        while self.passing[next].load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
        held[next] = Some(self.gates[next].write().map_err(|_| poisoned())?);
        st.round = round + 1;
        st.waiting = 0;
        st.syncing = true;
        self.waiting.store(0, Ordering::Release);
        drop(st);

        let started = Instant::now();
        let result = file.as_ref().map(|f| f.sync_data());
        // A moving average, so one stalled sync does not set the deadline.
        *sync_time = (*sync_time * 7 + started.elapsed()) / 8;

        let mut st = self.lock()?;
        st.syncing = false;
        let durable = match result {
            Some(r) => st.log.end_sync(target, r)?,
            None => st.log.durable_lsn().max(target),
        };
        st.durable = st.durable.max(durable);
        self.durable.store(st.durable, Ordering::Release);
        st.expected = (covered + st.waiting).max(1);
        drop(st);
        held[gate_index(round)] = None;
        Ok(true)
    }

    /// Yields until `expected` writers are counted in, or the deadline.
    fn gather(&self, expected: usize, deadline: Instant) {
        while self.waiting.load(Ordering::Acquire) < expected
            && !self.stop.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
    }

    /// Records a failure: no writer counts in after this.
    fn fail(&self, e: StorageError) {
        let mut st = self.locked.lock().unwrap_or_else(PoisonError::into_inner);
        if st.failed.is_none() {
            st.failed = Some(e);
        }
        self.failed.store(true, Ordering::Release);
    }

    fn wait_for_stop(&self) {
        let mut st = self.locked.lock().unwrap_or_else(PoisonError::into_inner);
        while !st.stop {
            st.sleeping = true;
            st = self.idle.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Fails the log if the sync thread unwinds, before its gates open.
struct FailOnUnwind<'a, V: Vfs + Clone>(&'a Inner<V>);

impl<V: Vfs + Clone> Drop for FailOnUnwind<'_, V> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(StorageError::Io {
                op: "group commit",
                detail: "the sync thread panicked".into(),
            });
        }
    }
}

impl<V: Vfs + Clone + 'static> SharedLog<V> {
    pub fn new(log: SegmentStorage<V>) -> Self {
        let durable = log.durable_lsn();
        Self {
            inner: Arc::new(Inner {
                locked: Mutex::new(Locked {
                    log,
                    durable,
                    failed: None,
                    round: 0,
                    waiting: 0,
                    expected: 1,
                    sleeping: false,
                    syncing: false,
                    inline: false,
                    stop: false,
                }),
                idle: Condvar::new(),
                gates: Default::default(),
                passing: Default::default(),
                durable: AtomicU64::new(durable),
                failed: AtomicBool::new(false),
                waiting: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            }),
            syncer: Mutex::new(None),
            started: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the log under its lock.
    pub fn with_log<R>(
        &self,
        f: impl FnOnce(&mut SegmentStorage<V>) -> R,
    ) -> Result<R, StorageError> {
        Ok(f(&mut self.inner.lock()?.log))
    }

    /// Appends an entry and returns once it is durable.
    pub fn append(&self, body: &EntryBody) -> Result<Lsn, StorageError> {
        self.start_syncer()?;
        self.inner.append(body)
    }

    /// Blocks until `lsn` is durable; an error if it was never appended.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), StorageError> {
        self.start_syncer()?;
        let round = {
            let mut st = self.inner.lock()?;
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.durable >= lsn {
                return Ok(());
            }
            if lsn > st.log.last_lsn() {
                return Err(StorageError::Io {
                    op: "group commit",
                    detail: format!("entry {lsn} was never appended"),
                });
            }
            self.inner.count_in(&mut st)
        };
        self.inner.wait_round(lsn, round)
    }

    /// Starts the sync thread unless it runs; returns once it holds the
    /// open round's gate.
    fn start_syncer(&self) -> Result<(), StorageError> {
        if self.started.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut syncer = self.syncer.lock().map_err(|_| poisoned())?;
        if syncer.is_some() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("recsync-group-sync".into())
            .spawn(move || {
                let mut held: Held<'_> = Default::default();
                // Declared after `held`, so dropped before it.
                let _fail = FailOnUnwind(&inner);
                let round = match inner.lock() {
                    Ok(st) => st.round,
                    Err(_) => return,
                };
                match inner.gates[gate_index(round)].write() {
                    Ok(g) => held[gate_index(round)] = Some(g),
                    Err(_) => return,
                }
                if ready_tx.send(()).is_err() {
                    return;
                }
                inner.run(&mut held);
            })
            .map_err(|e| StorageError::Io {
                op: "group commit",
                detail: format!("cannot start the sync thread: {e}"),
            })?;
        if ready_rx.recv().is_err() {
            // It ended without starting; nothing to report from the join.
            let _ = handle.join();
            return Err(StorageError::Io {
                op: "group commit",
                detail: "the sync thread did not start".into(),
            });
        }
        *syncer = Some(handle);
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops and joins the sync thread, if it runs.
    fn stop(&mut self) -> Result<(), StorageError> {
        let handle = match self.syncer.get_mut() {
            Ok(h) => h.take(),
            Err(p) => p.into_inner().take(),
        };
        let Some(handle) = handle else {
            return Ok(());
        };
        {
            let mut st = self
                .inner
                .locked
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.stop = true;
            self.inner.stop.store(true, Ordering::Release);
            self.inner.idle.notify_one();
        }
        handle.join().map_err(|_| StorageError::Io {
            op: "group commit",
            detail: "the sync thread panicked".into(),
        })
    }

    /// Stops the sync thread and returns the log.
    pub fn into_inner(mut self) -> Result<SegmentStorage<V>, StorageError> {
        self.stop()?;
        let inner = self.inner.clone();
        drop(self);
        let inner = Arc::try_unwrap(inner).map_err(|_| StorageError::Io {
            op: "group commit",
            detail: "the log is still shared".into(),
        })?;
        let locked = inner.locked.into_inner().map_err(|_| poisoned())?;
        Ok(locked.log)
    }
}

impl<V: Vfs + Clone + 'static> Drop for SharedLog<V> {
    fn drop(&mut self) {
        // A panicked sync thread has failed the log already; a drop has no
        // one to tell.
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{CrashMode, SimFaults, SimFs};
    use crate::ids::NodeId;
    use crate::seglog::{Durability, LogOptions};

    fn body(i: u64) -> EntryBody {
        EntryBody::BlobReady {
            from: NodeId(uuid::Uuid::from_u64_pair(i, i)),
            hash: [i as u8; 32],
            versions: Vec::new(),
        }
    }

    /// A `SharedLog` in `group` mode on a fresh simulated disk.
    fn group_log(segment_size: u64) -> (SimFs, LogOptions, SharedLog<SimFs>) {
        let fs = SimFs::new();
        let o = LogOptions {
            segment_size,
            durability: Durability::Group,
            ..LogOptions::default()
        };
        let shared = SharedLog::new(SegmentStorage::open(fs.clone(), o.clone()).expect("open"));
        (fs, o, shared)
    }

    #[test]
    fn writers_that_come_and_go_get_only_durable_appends() {
        let (fs, o, shared) = group_log(1 << 16);
        let mut returned = Vec::new();
        // Alone, then many (some leaving early), then alone again: the
        // inline path, rounds, rounds missing writers.
        for (phase, writers) in [1u64, 8, 1, 3].into_iter().enumerate() {
            let phase = phase as u64;
            let got: Vec<Lsn> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..writers)
                    .map(|t| {
                        let shared = &shared;
                        s.spawn(move || {
                            (0..50 + 30 * t)
                                .map(|i| {
                                    let lsn = shared.append(&body(phase << 48 | t << 32 | i));
                                    let lsn = lsn.expect("append");
                                    let durable = shared.with_log(|l| l.durable_lsn());
                                    assert!(durable.expect("log") >= lsn, "{lsn} not durable");
                                    lsn
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("writer"))
                    .collect()
            });
            returned.extend(got);
        }
        drop(shared);
        fs.crash(CrashMode::LoseUnsynced);
        let log = SegmentStorage::open(fs, o).expect("reopen");
        assert_eq!(log.last_lsn(), returned.len() as u64);
        for lsn in returned {
            assert!(log.read(lsn).expect("read").is_some(), "entry {lsn} lost");
        }
    }

    #[test]
    fn a_failed_sync_reaches_every_writer_and_only_durable_appends_return() {
        let (fs, o, shared) = group_log(1 << 20);
        let returned: Vec<Lsn> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..8u64)
                .map(|t| {
                    let shared = &shared;
                    s.spawn(move || {
                        let mut ok = Vec::new();
                        for i in 0..100_000u64 {
                            match shared.append(&body(t << 32 | i)) {
                                Ok(lsn) => ok.push(lsn),
                                Err(_) => return (ok, true),
                            }
                        }
                        (ok, false)
                    })
                })
                .collect();
            // Let some rounds go by, then fail the next sync.
            while shared.with_log(|l| l.durable_lsn()).expect("log") < 50 {
                std::thread::yield_now();
            }
            fs.set_faults(SimFaults {
                failing_syncs: 1,
                ..Default::default()
            });
            writers
                .into_iter()
                .flat_map(|w| {
                    let (ok, failed) = w.join().expect("writer");
                    assert!(failed, "every writer sees the failure");
                    ok
                })
                .collect()
        });
        let log = shared.into_inner().expect("log");
        assert!(log.failure().is_some());
        let durable = log.durable_lsn();
        assert!(returned.len() >= 50);
        assert!(returned.iter().all(|&lsn| lsn <= durable));
        drop(log);
        fs.crash(CrashMode::LoseUnsynced);
        let log = SegmentStorage::open(fs, o).expect("reopen");
        for lsn in returned {
            assert!(log.read(lsn).expect("read").is_some(), "entry {lsn} lost");
        }
    }
}
