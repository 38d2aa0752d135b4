//! State on local disk: one redb database per (deployment, input topic,
//! partition) under the node's state folder, one table per named store.
//!
//! redb was chosen over fjall by `cargo bench -p runnel-bench --bench
//! stores` (docs/state.md has the figures and the reasons). Each call's
//! writes are one redb transaction committed without an fsync
//! (`Durability::None`): a crash loses the newest calls' writes, never half
//! of one, and [`DiskStore::flush`] (on close) makes everything durable.
//! On Kafka the changelog is the durable copy, and a node wipes a
//! partition's file before it restores the partition from it
//! ([`super::Backend::wipe`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, TableDefinition};

use super::{Backend, Scanned, Store, StoreError, Write};

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// Opens `<dir>/partition-<n>.redb` for each partition; `dir` names the
/// deployment and input topic (see [`DiskBackend::for_deployment`]).
#[derive(Debug)]
pub struct DiskBackend {
    dir: PathBuf,
}

impl DiskBackend {
    /// The folder of one deployment's state on one input topic under the
    /// node's state folder: `<state_dir>/<deployment>/<topic>/`.
    pub fn for_deployment(
        state_dir: &Path,
        deployment: &str,
        topic: &str,
    ) -> Result<Self, StoreError> {
        let safe = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        let dir = state_dir.join(safe(deployment)).join(safe(topic));
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Self { dir })
    }
}

impl DiskBackend {
    fn store_path(&self, partition: i32) -> PathBuf {
        self.dir.join(format!("partition-{partition}.redb"))
    }

    fn checkpoint_path(&self, partition: i32) -> PathBuf {
        self.dir.join(format!("partition-{partition}.checkpoint"))
    }

    /// Makes the folder's entries (a rename, a removal) durable.
    fn sync_dir(&self) -> Result<(), StoreError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError(format!("cannot sync {}: {e}", self.dir.display())))
    }
}

/// Removes `path`; gone already is fine.
fn remove(path: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError(format!("cannot remove {}: {e}", path.display()))),
    }
}

impl Backend for DiskBackend {
    fn open(&mut self, partition: i32) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(DiskStore::open(&self.store_path(partition))?))
    }

    fn wipe(&mut self, partition: i32) -> Result<(), StoreError> {
        // The checkpoint first: a checkpoint never outlives its store.
        if remove(&self.checkpoint_path(partition))? {
            self.sync_dir()?;
        }
        remove(&self.store_path(partition))?;
        Ok(())
    }

    /// Flushes the store (an fsync), closes it, then writes the checkpoint
    /// beside it, durably (written aside, synced, renamed, the folder
    /// synced): a checkpoint on disk always describes a store on disk.
    fn checkpoint(
        &mut self,
        partition: i32,
        store: Box<dyn Store>,
        checkpoint: &[u8],
    ) -> Result<(), StoreError> {
        store.flush()?;
        drop(store);
        let path = self.checkpoint_path(partition);
        let aside = path.with_extension("checkpoint.tmp");
        let fail = |e: std::io::Error| StoreError(format!("cannot write {}: {e}", aside.display()));
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&aside).map_err(fail)?;
            f.write_all(checkpoint).map_err(fail)?;
            f.sync_all().map_err(fail)?;
        }
        std::fs::rename(&aside, &path).map_err(fail)?;
        self.sync_dir()
    }

    /// Reads the checkpoint and removes it (durably) before the store is
    /// written again: after a crash from here on, the store is not trusted.
    fn take_checkpoint(&mut self, partition: i32) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.checkpoint_path(partition);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError(format!("cannot read {}: {e}", path.display()))),
        };
        remove(&path)?;
        self.sync_dir()?;
        Ok(Some(bytes))
    }
}

type Table = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The named stores of one partition, in one redb file.
pub struct DiskStore {
    /// Each store's table as of the last write (`None`: it has no table
    /// yet), opened at the first read and dropped at the next write: a read
    /// transaction per `get` cost more than the lookup itself. Declared
    /// before `db`, so that it is dropped first.
    tables: RefCell<HashMap<String, Option<Table>>>,
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.path)
            .finish()
    }
}

impl DiskStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self {
            tables: RefCell::default(),
            db,
            path: path.to_owned(),
        })
    }

    /// `f` over store `name`'s table, `None` when it has none.
    fn with_table<R>(
        &self,
        name: &str,
        f: impl FnOnce(&Table) -> Result<R, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let mut tables = self.tables.borrow_mut();
        if !tables.contains_key(name) {
            let txn = self.db.begin_read().map_err(err)?;
            let t = match txn.open_table(table(name)) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(err(e)),
            };
            tables.insert(name.to_owned(), t);
        }
        match tables.get(name) {
            Some(Some(t)) => f(t).map(Some),
            _ => Ok(None),
        }
    }

    /// Makes every applied write durable (an fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        txn.commit().map_err(err)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(path = %self.path.display(), error = %e, "state not flushed on close");
        }
    }
}

impl Store for DiskStore {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let got = self.with_table(store, |t| {
            Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec()))
        })?;
        Ok(got.flatten())
    }

    fn scan(
        &self,
        store: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        let scanned = self.with_table(store, |t| {
            let mut out = Scanned::default();
            let range = match end {
                Some(end) => t.range::<&[u8]>(start..end),
                None => t.range::<&[u8]>(start..),
            }
            .map_err(err)?;
            let mut bytes = 0usize;
            for entry in range {
                if out.entries.len() == limit || bytes >= max_bytes {
                    out.more = true;
                    break;
                }
                let (k, v) = entry.map_err(err)?;
                let (k, v) = (k.value().to_vec(), v.value().to_vec());
                bytes += k.len() + v.len();
                out.entries.push((k, v));
            }
            Ok(out)
        })?;
        Ok(scanned.unwrap_or_default())
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        // The next read sees these writes.
        self.tables.get_mut().clear();
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::None).map_err(err)?;
        for w in writes {
            let mut t = txn.open_table(table(&w.store)).map_err(err)?;
            match &w.value {
                Some(v) => {
                    t.insert(w.key.as_slice(), v.as_slice()).map_err(err)?;
                }
                None => {
                    t.remove(w.key.as_slice()).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)
    }

    fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn keys(&self, store: &str) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata as _;
        let n = self.with_table(store, |t| t.len().map_err(err))?;
        Ok(n.unwrap_or(0))
    }

    fn flush(&self) -> Result<(), StoreError> {
        DiskStore::flush(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::Provenance;
    use crate::state::memory::MemoryStore;

    fn put(store: &str, k: &str, v: Option<&str>) -> Write {
        Write {
            store: store.into(),
            key: k.as_bytes().to_vec(),
            value: v.map(|v| v.as_bytes().to_vec()),
            cause: Provenance {
                topic: Arc::from("in"),
                partition: 0,
                offset: 0,
            },
        }
    }

    /// The memory and disk stores answer alike.
    #[test]
    fn memory_and_disk_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DiskStore::open(&dir.path().join("p.redb")).unwrap();
        let mut memory = MemoryStore::default();
        let writes = [
            put("a", "k1", Some("v1")),
            put("a", "k2", Some("v2")),
            put("a", "k3", Some("v3")),
            put("b", "k1", Some("other")),
            put("a", "k2", None),
        ];
        for s in [&mut disk as &mut dyn Store, &mut memory] {
            s.apply(&writes).unwrap();
            assert_eq!(s.get("a", b"k1").unwrap(), Some(b"v1".to_vec()));
            assert_eq!(s.get("a", b"k2").unwrap(), None);
            assert_eq!(s.get("nothing", b"k1").unwrap(), None);
            let all = s.scan("a", b"", None, 10, 1 << 20).unwrap();
            assert_eq!(all.entries.len(), 2);
            assert!(!all.more);
            let one = s.scan("a", b"k", Some(b"k9"), 1, 1 << 20).unwrap();
            assert_eq!((one.entries[0].0.as_slice(), one.more), (&b"k1"[..], true));
            assert!(s.bytes() > 0);
        }
        drop(disk);
        let reopened = DiskStore::open(&dir.path().join("p.redb")).unwrap();
        assert_eq!(reopened.get("b", b"k1").unwrap(), Some(b"other".to_vec()));
    }

    /// A checkpoint is kept with its closed store, taken once, and never
    /// outlives the store: a wipe removes both.
    #[test]
    fn a_checkpoint_is_kept_with_its_store_and_taken_once() {
        use crate::state::Backend;
        let dir = tempfile::tempdir().unwrap();
        let mut backend = DiskBackend::for_deployment(dir.path(), "d", "in").unwrap();
        assert_eq!(backend.take_checkpoint(2).unwrap(), None);
        let mut store = backend.open(2).unwrap();
        store.apply(&[put("a", "k", Some("v"))]).unwrap();
        backend.checkpoint(2, store, b"at 7").unwrap();
        assert_eq!(
            backend.take_checkpoint(2).unwrap().as_deref(),
            Some(&b"at 7"[..])
        );
        assert_eq!(backend.take_checkpoint(2).unwrap(), None, "taken once");
        let store = backend.open(2).unwrap();
        assert_eq!(store.get("a", b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.keys("a").unwrap(), 1);
        backend.checkpoint(2, store, b"at 8").unwrap();
        backend.wipe(2).unwrap();
        assert_eq!(backend.take_checkpoint(2).unwrap(), None);
        assert_eq!(backend.open(2).unwrap().get("a", b"k").unwrap(), None);
    }
}
