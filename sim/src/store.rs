//! The storage a simulated node runs on: the in-memory storage, or the real
//! segment log on the simulated disk (so the simulator exercises the
//! on-disk format, crash recovery included).

use recsync_engine::disk::{CrashMode, SimFs, Vfs};
use recsync_engine::seglog::blobstore::{blob_name, CHUNK_HEADER};
use recsync_engine::seglog::{LogOptions, SegmentStorage, BLOB_DIR};
use recsync_engine::storage::{BlobId, EntryBody, LogEntry, NodeMeta};
use recsync_engine::{Lsn, MemStorage, MemSync, Storage, StorageError};
use std::path::Path;

/// Which storage new nodes get.
#[derive(Clone, Debug)]
pub enum StoreKind {
    Mem(MemSync),
    /// The segment log over a fresh simulated disk per node.
    Disk(LogOptions),
}

/// A node's segment log and the simulated disk under it.
pub struct DiskStore {
    pub fs: SimFs,
    pub log: SegmentStorage<SimFs>,
}

/// A simulated node's storage. (One per node, moved rarely: the size
/// difference between the variants does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum SimStore {
    Mem(MemStorage),
    Disk(DiskStore),
}

impl StoreKind {
    /// Empty storage of this kind.
    pub fn fresh(&self) -> Result<SimStore, StorageError> {
        Ok(match self {
            StoreKind::Mem(sync) => SimStore::Mem(MemStorage::new(*sync)),
            StoreKind::Disk(opts) => {
                let fs = SimFs::new();
                let log = SegmentStorage::open(fs.clone(), opts.clone())?;
                SimStore::Disk(DiskStore { fs, log })
            }
        })
    }
}

impl SimStore {
    /// Makes everything appended durable; returns the durable LSN.
    pub fn sync(&mut self) -> Result<Lsn, StorageError> {
        match self {
            SimStore::Mem(m) => Ok(m.sync()),
            SimStore::Disk(d) => d.log.sync(),
        }
    }

    /// The process dies: unsynced data is lost (on disk, per `mode`), and
    /// the storage is opened again as a restart would.
    pub fn crash(self, mode: CrashMode) -> Result<SimStore, StorageError> {
        match self {
            SimStore::Mem(mut m) => {
                m.crash();
                Ok(SimStore::Mem(m))
            }
            SimStore::Disk(d) => {
                let opts = d.log.options().clone();
                drop(d.log);
                d.fs.crash(mode);
                let log = SegmentStorage::open(d.fs.clone(), opts)?;
                Ok(SimStore::Disk(DiskStore { fs: d.fs, log }))
            }
        }
    }

    /// A synced, independent copy (an operator's backup).
    pub fn backup(&mut self) -> Result<SimStore, StorageError> {
        self.sync()?;
        Ok(match self {
            SimStore::Mem(m) => SimStore::Mem(m.clone()),
            SimStore::Disk(d) => {
                let fs = d.fs.deep_clone();
                let log = SegmentStorage::open(fs.clone(), d.log.options().clone())?;
                SimStore::Disk(DiskStore { fs, log })
            }
        })
    }

    /// Whether the log refuses writes after a failed write or sync (the
    /// in-memory storage never fails).
    pub fn failed(&self) -> bool {
        match self {
            SimStore::Mem(_) => false,
            SimStore::Disk(d) => d.log.failure().is_some(),
        }
    }

    /// Number of retained log entries.
    pub fn retained(&self) -> usize {
        match self {
            SimStore::Mem(m) => m.retained(),
            SimStore::Disk(d) => d.log.retained(),
        }
    }

    /// Flips one bit of a stored blob, at byte `offset` of its content.
    pub fn corrupt_blob(&mut self, id: &BlobId, offset: usize) {
        match self {
            SimStore::Mem(m) => m.corrupt_blob(id, offset),
            SimStore::Disk(d) => {
                let chunk = d.log.options().blob_chunk;
                let file_offset =
                    (offset / chunk) * (chunk + CHUNK_HEADER) + CHUNK_HEADER + offset % chunk;
                let path = Path::new(BLOB_DIR).join(blob_name(id));
                if d.fs.exists(&path) {
                    // The blob may be shorter than `offset`: then nothing flips.
                    let _ = d.fs.flip_bit(&path, file_offset as u64, 0);
                }
            }
        }
    }

    pub fn disk(&self) -> Option<&DiskStore> {
        match self {
            SimStore::Disk(d) => Some(d),
            SimStore::Mem(_) => None,
        }
    }

    pub fn disk_mut(&mut self) -> Option<&mut DiskStore> {
        match self {
            SimStore::Disk(d) => Some(d),
            SimStore::Mem(_) => None,
        }
    }

    fn inner(&self) -> &dyn Storage {
        match self {
            SimStore::Mem(m) => m,
            SimStore::Disk(d) => &d.log,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Storage {
        match self {
            SimStore::Mem(m) => m,
            SimStore::Disk(d) => &mut d.log,
        }
    }
}

impl Storage for SimStore {
    fn load_meta(&mut self) -> Result<Option<NodeMeta>, StorageError> {
        self.inner_mut().load_meta()
    }
    fn store_meta(&mut self, meta: &NodeMeta) -> Result<(), StorageError> {
        self.inner_mut().store_meta(meta)
    }
    fn append(&mut self, body: &EntryBody) -> Result<Lsn, StorageError> {
        self.inner_mut().append(body)
    }
    fn durable_lsn(&self) -> Lsn {
        self.inner().durable_lsn()
    }
    fn last_lsn(&self) -> Lsn {
        self.inner().last_lsn()
    }
    fn read(&self, lsn: Lsn) -> Result<Option<LogEntry>, StorageError> {
        self.inner().read(lsn)
    }
    fn scan(&self, from: Lsn, limit: usize) -> Result<Vec<LogEntry>, StorageError> {
        self.inner().scan(from, limit)
    }
    fn visit(
        &self,
        from: Lsn,
        f: &mut dyn FnMut(Lsn, &EntryBody) -> bool,
    ) -> Result<(), StorageError> {
        self.inner().visit(from, f)
    }
    fn release(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        self.inner_mut().release(lsn)
    }
    fn first_retained_lsn(&self) -> Lsn {
        self.inner().first_retained_lsn()
    }
    fn skip_to(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        self.inner_mut().skip_to(lsn)
    }
    fn blob_append(&mut self, id: &BlobId, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.inner_mut().blob_append(id, offset, data)
    }
    fn blob_len(&self, id: &BlobId) -> u64 {
        self.inner().blob_len(id)
    }
    fn blob_read(&self, id: &BlobId, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        self.inner().blob_read(id, offset, len)
    }
    fn blob_rename(&mut self, from: &BlobId, to: &BlobId) -> Result<(), StorageError> {
        self.inner_mut().blob_rename(from, to)
    }
    fn blob_remove(&mut self, id: &BlobId) -> Result<(), StorageError> {
        self.inner_mut().blob_remove(id)
    }
}
