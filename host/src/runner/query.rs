//! Reading a processor's state from outside: which partitions' stores this
//! node may answer for, and the answers.
//!
//! A worker owns its partitions' stores and writes them; a query reads the
//! same store (behind its lock, between two of the worker's calls) only
//! once the store has been restored for the partition's *current*
//! assignment to this node. A partition that is assigned but not yet
//! restored answers [`Lookup::Restoring`], one that is not this node's
//! answers [`Lookup::NotHere`]: never a stale value.
//!
//! The consumer's rebalance callback keeps the assignment here
//! ([`Served::assigned`], [`Served::revoked`]); a worker that finished a
//! restore publishes the store ([`Served::publish`]) if the assignment it
//! restored for is still the current one. A query sees the writes of every
//! call that returned, committed to Kafka or not, as Kafka Streams'
//! interactive queries do.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::lock;
use crate::state::{Scanned, SharedStore, StoreError};

/// What a query finds on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// The partition is this node's and restored: the answer.
    Here(T),
    /// The partition is this node's but its store is being restored (or
    /// waits for its restore): ask again.
    Restoring,
    /// The partition is not this node's (now).
    NotHere,
}

/// The stores of one deployment that this node may answer queries from.
/// Cloned handles share one set.
#[derive(Debug, Clone, Default)]
pub struct Served {
    inner: Arc<Mutex<Inner>>,
    /// The input topic whose partitions the stores are kept for.
    topic: Arc<str>,
    /// The declared stores.
    stores: Arc<[String]>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The input's partitions this node owns now.
    assigned: HashSet<i32>,
    /// The stores restored for the current assignment of their partition.
    stores: HashMap<i32, SharedStore>,
    /// How many partitions the input topic has, once the deployment has
    /// looked.
    partitions: Option<i32>,
}

impl Served {
    /// The stores of a deployment reading `topic` (a processor reads one)
    /// and declaring `stores`.
    pub fn new(topic: &str, stores: &[String]) -> Self {
        Self {
            inner: Arc::default(),
            topic: topic.into(),
            stores: stores.into(),
        }
    }

    /// The input topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The declared stores.
    pub fn stores(&self) -> &[String] {
        &self.stores
    }

    /// Partitions given to this node: not answered for until restored.
    pub(super) fn assigned(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut s = lock(&self.inner);
        for p in partitions {
            s.stores.remove(&p);
            s.assigned.insert(p);
        }
    }

    /// Partitions taken from this node.
    pub(super) fn revoked(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut s = lock(&self.inner);
        for p in partitions {
            s.stores.remove(&p);
            s.assigned.remove(&p);
        }
    }

    /// The run of the deployment ended: nothing is this node's.
    pub(super) fn clear(&self) {
        let mut s = lock(&self.inner);
        s.stores.clear();
        s.assigned.clear();
    }

    /// A worker restored `partition`'s store: it answers queries from now
    /// on, if `current()` (checked under the lock, so that a revoke cannot
    /// slip in between) says the restore was for the current assignment.
    pub(super) fn publish(
        &self,
        partition: i32,
        store: SharedStore,
        current: impl FnOnce() -> bool,
    ) {
        let mut s = lock(&self.inner);
        if s.assigned.contains(&partition) && current() {
            s.stores.insert(partition, store);
        }
    }

    pub(super) fn set_partitions(&self, n: i32) {
        lock(&self.inner).partitions = Some(n);
    }

    /// How many partitions the input topic has, once known.
    pub fn partitions(&self) -> Option<i32> {
        lock(&self.inner).partitions
    }

    /// The partitions this node owns now, restored or not, in order.
    pub fn owned(&self) -> Vec<i32> {
        let mut v: Vec<i32> = lock(&self.inner).assigned.iter().copied().collect();
        v.sort_unstable();
        v
    }

    fn find(&self, partition: i32) -> Lookup<SharedStore> {
        let s = lock(&self.inner);
        match s.stores.get(&partition) {
            Some(store) => Lookup::Here(store.clone()),
            None if s.assigned.contains(&partition) => Lookup::Restoring,
            None => Lookup::NotHere,
        }
    }

    /// The value of `key` in store `store` of `partition`.
    pub fn get(
        &self,
        store: &str,
        partition: i32,
        key: &[u8],
    ) -> Result<Lookup<Option<Vec<u8>>>, StoreError> {
        Ok(match self.find(partition) {
            Lookup::Here(s) => Lookup::Here(lock(&s).get(store, key)?),
            Lookup::Restoring => Lookup::Restoring,
            Lookup::NotHere => Lookup::NotHere,
        })
    }

    /// Up to `limit` entries of store `store` of `partition` with keys
    /// after `after` (from the first when `None`), at most about
    /// `max_bytes` of keys and values.
    pub fn scan(
        &self,
        store: &str,
        partition: i32,
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Lookup<Scanned>, StoreError> {
        let s = match self.find(partition) {
            Lookup::Here(s) => s,
            Lookup::Restoring => return Ok(Lookup::Restoring),
            Lookup::NotHere => return Ok(Lookup::NotHere),
        };
        // The smallest key after `after` is `after` + 0x00.
        let start = after.map(|a| {
            let mut k = a.to_vec();
            k.push(0);
            k
        });
        let page = lock(&s).scan(
            store,
            start.as_deref().unwrap_or(&[]),
            None,
            limit,
            max_bytes,
        )?;
        Ok(Lookup::Here(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryStore;
    use crate::state::{Provenance, Store, Write};

    fn store(entries: &[(&str, &str)]) -> SharedStore {
        let mut s = MemoryStore::default();
        let cause = Provenance {
            topic: "in".into(),
            partition: 0,
            offset: 0,
        };
        let writes: Vec<Write> = entries
            .iter()
            .map(|(k, v)| Write {
                store: "counts".into(),
                key: k.as_bytes().to_vec(),
                value: Some(v.as_bytes().to_vec()),
                cause: cause.clone(),
            })
            .collect();
        s.apply(&writes).unwrap();
        Arc::new(Mutex::new(Box::new(s)))
    }

    #[test]
    fn only_a_store_restored_for_the_current_assignment_answers() {
        let served = Served::default();
        let s = store(&[("a", "1")]);
        assert_eq!(served.get("counts", 0, b"a").unwrap(), Lookup::NotHere);

        // Not assigned: a late restore is not published.
        served.publish(0, s.clone(), || true);
        assert_eq!(served.get("counts", 0, b"a").unwrap(), Lookup::NotHere);

        served.assigned([0, 1]);
        assert_eq!(served.get("counts", 0, b"a").unwrap(), Lookup::Restoring);
        // A restore for an assignment that is no longer current.
        served.publish(0, s.clone(), || false);
        assert_eq!(served.get("counts", 0, b"a").unwrap(), Lookup::Restoring);
        served.publish(0, s.clone(), || true);
        assert_eq!(
            served.get("counts", 0, b"a").unwrap(),
            Lookup::Here(Some(b"1".to_vec()))
        );
        assert_eq!(served.get("counts", 0, b"b").unwrap(), Lookup::Here(None));
        assert_eq!(served.get("counts", 1, b"a").unwrap(), Lookup::Restoring);
        assert_eq!(served.owned(), vec![0, 1]);

        // Assigned again (a new assignment): the old store no longer answers.
        served.assigned([0]);
        assert_eq!(served.get("counts", 0, b"a").unwrap(), Lookup::Restoring);
        served.publish(0, s.clone(), || true);
        served.revoked([0]);
        assert_eq!(served.get("counts", 0, b"a").unwrap(), Lookup::NotHere);
        served.assigned([0]);
        served.publish(0, s, || true);
        served.clear();
        assert_eq!(served.get("counts", 0, b"a").unwrap(), Lookup::NotHere);
        assert!(served.owned().is_empty());
    }

    #[test]
    fn scans_page_after_a_key() {
        let served = Served::default();
        served.assigned([2]);
        served.publish(2, store(&[("a", "1"), ("b", "2"), ("c", "3")]), || true);
        let Lookup::Here(page) = served.scan("counts", 2, None, 2, 1 << 20).unwrap() else {
            panic!("not here")
        };
        assert_eq!(page.entries.len(), 2);
        assert!(page.more);
        let last = page.entries.last().unwrap().0.clone();
        let Lookup::Here(page) = served.scan("counts", 2, Some(&last), 2, 1 << 20).unwrap() else {
            panic!("not here")
        };
        assert_eq!(page.entries, vec![(b"c".to_vec(), b"3".to_vec())]);
        assert!(!page.more);
        assert_eq!(
            served.scan("counts", 3, None, 2, 1 << 20).unwrap(),
            Lookup::NotHere
        );
    }
}
