//! State in memory: for `runnel run` and tests. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};

use super::{Backend, Scanned, Store, StoreError, Write};

/// What one entry costs besides its key and value, counted against the
/// partition's quota (the map's node, the two vectors' headers).
pub const ENTRY_OVERHEAD: u64 = 64;

/// A fresh, empty [`MemoryStore`] per partition. A closed store is gone:
/// nothing is kept with a checkpoint (see [`Backend::checkpoint`]), so a
/// partition given up frees its memory at once.
#[derive(Debug, Default)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    fn open(&mut self, _partition: i32) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(MemoryStore::default()))
    }

    fn wipe(&mut self, _partition: i32) -> Result<(), StoreError> {
        Ok(()) // a closed memory store is gone already
    }
}

/// Named stores of one partition, each a `BTreeMap`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    stores: HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    bytes: u64,
}

fn size(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + ENTRY_OVERHEAD
}

impl Store for MemoryStore {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.stores.get(store).and_then(|s| s.get(key)).cloned())
    }

    fn scan(
        &self,
        store: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        let mut out = Scanned::default();
        let Some(map) = self.stores.get(store) else {
            return Ok(out);
        };
        let upper = end.map_or(Unbounded, Excluded);
        let mut bytes = 0usize;
        for (k, v) in map.range::<[u8], _>((Included(start), upper)) {
            if out.entries.len() == limit || bytes >= max_bytes {
                out.more = true;
                break;
            }
            bytes += k.len() + v.len();
            out.entries.push((k.clone(), v.clone()));
        }
        Ok(out)
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        for w in writes {
            if !self.stores.contains_key(&*w.store) {
                self.stores.insert(w.store.to_string(), BTreeMap::new());
            }
            let Some(map) = self.stores.get_mut(&*w.store) else {
                continue;
            };
            let old = match &w.value {
                Some(v) => {
                    self.bytes += size(&w.key, v);
                    map.insert(w.key.clone(), v.clone())
                }
                None => map.remove(&w.key),
            };
            if let Some(old) = old {
                self.bytes -= size(&w.key, &old);
            }
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn keys(&self, store: &str) -> Result<u64, StoreError> {
        Ok(self.stores.get(store).map_or(0, |s| s.len() as u64))
    }
}
