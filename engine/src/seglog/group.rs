//! Group commit: many threads append to one segment log and share each
//! fdatasync. A writer appends under the log's lock, then waits until a sync
//! covers its entry; the first waiter to find no sync running becomes the
//! leader, syncs outside the log's lock (so others keep appending), and wakes
//! everyone the sync covered. A call returns only once its entry is durable.

use super::SegmentStorage;
use crate::disk::{Vfs, VfsFile};
use crate::ids::Lsn;
use crate::storage::{EntryBody, Storage, StorageError};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Rounds a leader waits for more writers, at most.
const GATHER_ROUNDS_MAX: usize = 8;
/// Yields per round.
const GATHER_YIELDS: usize = 4;

struct SyncState {
    durable: Lsn,
    leader: bool,
    failed: Option<StorageError>,
}

/// A segment log shared by concurrent writers.
pub struct SharedLog<V: Vfs + Clone> {
    log: Mutex<SegmentStorage<V>>,
    sync: Mutex<SyncState>,
    cv: Condvar,
}

fn poisoned() -> StorageError {
    StorageError::Io {
        op: "group commit",
        detail: "a writer thread panicked holding the log".into(),
    }
}

impl<V: Vfs + Clone> SharedLog<V> {
    pub fn new(log: SegmentStorage<V>) -> Self {
        let durable = log.durable_lsn();
        Self {
            log: Mutex::new(log),
            sync: Mutex::new(SyncState {
                durable,
                leader: false,
                failed: None,
            }),
            cv: Condvar::new(),
        }
    }

    fn log(&self) -> Result<MutexGuard<'_, SegmentStorage<V>>, StorageError> {
        self.log.lock().map_err(|_| poisoned())
    }

    /// Runs `f` on the log under its lock.
    pub fn with_log<R>(
        &self,
        f: impl FnOnce(&mut SegmentStorage<V>) -> R,
    ) -> Result<R, StorageError> {
        Ok(f(&mut *self.log()?))
    }

    /// Appends an entry and returns once it is durable.
    pub fn append(&self, body: &EntryBody) -> Result<Lsn, StorageError> {
        let lsn = self.log()?.append(body)?;
        self.wait_durable(lsn)?;
        Ok(lsn)
    }

    /// Blocks until `lsn` is durable, leading a sync if none is running.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), StorageError> {
        let mut st = self.sync.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.durable >= lsn {
                return Ok(());
            }
            if st.leader {
                st = self.cv.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            st.leader = true;
            drop(st);
            let outcome = self.lead_sync();
            st = self.sync.lock().map_err(|_| poisoned())?;
            st.leader = false;
            match outcome {
                Ok(durable) => st.durable = st.durable.max(durable),
                Err(e) => st.failed = Some(e),
            }
            self.cv.notify_all();
        }
    }

    fn lead_sync(&self) -> Result<Lsn, StorageError> {
        // Let writers that are about to append join this sync (the writers
        // the last sync just woke usually are): yield while the log keeps
        // growing, a bounded number of times. This is PostgreSQL's
        // commit_delay, without a clock.
        let mut last = self.log()?.last_lsn();
        for _ in 0..GATHER_ROUNDS_MAX {
            for _ in 0..GATHER_YIELDS {
                std::thread::yield_now();
            }
            let now = self.log()?.last_lsn();
            if now == last {
                break;
            }
            last = now;
        }
        let (target, file) = self.log()?.begin_sync()?;
        let result = match &file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        };
        let mut log = self.log()?;
        if file.is_none() {
            return Ok(log.durable_lsn().max(target));
        }
        log.end_sync(target, result)
    }

    pub fn into_inner(self) -> Result<SegmentStorage<V>, StorageError> {
        self.log.into_inner().map_err(|_| poisoned())
    }
}
