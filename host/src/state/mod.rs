//! Keyed state of processors: the stores, and the buffer that holds one
//! call's writes until the call returns.
//!
//! Owns the [`Store`] trait (one store per deployment, input topic and
//! partition; named stores inside it), its two implementations ([`memory`]
//! for `runnel run` and tests, [`disk`] on redb under `--state-dir`), and
//! [`State`], what the engine lends a processor's instance for each call.
//! It knows nothing of wasm or Kafka: the engine calls it with keys and
//! record positions, and the runner (next slice: changelog, restore) will
//! call it with offsets.
//!
//! # Writes are per call
//!
//! A call's writes go to a journal, not to the store. Reads see them. When
//! the call returns, [`State::commit`] applies the journal to each
//! partition's store in one atomic step; when it traps, [`State::abort`]
//! drops it, so a trapped batch leaves none of its writes (the engine then
//! runs the batch record by record, each record a call of its own). A
//! record that fails (the function's `Err`) has its writes discarded as it
//! fails ([`State::discard`]), so a dead-lettered record changes no state.
//!
//! Every write keeps the record that caused it ([`Provenance`]: input
//! topic, partition, offset) and the journal keeps every write in order,
//! not only the last per key: a changelog can be written from it as it is.

pub mod changelog;
pub mod disk;
mod journal;
pub mod memory;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use journal::Journal;

use crate::rules;

/// The input record that caused a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// One change to one named store of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The store's declared name.
    pub store: Arc<str>,
    pub key: Vec<u8>,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    pub cause: Provenance,
}

/// What a store failed at. Not the function's fault: a full disk, an I/O
/// error, a corrupt file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// One page of a store's entries, in key order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the range holds more entries after the last one returned.
    pub more: bool,
}

/// The state of one partition of one deployment's input topic: named
/// stores of byte keys and values, ordered by key.
pub trait Store: Send + fmt::Debug {
    fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Entries with keys in `start..end` (`..` to the last when `end` is
    /// `None`): at most `limit`, and stopping after the entry that brings
    /// the keys' and values' bytes to `max_bytes` or more.
    fn scan(
        &self,
        store: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError>;

    /// Applies `writes` in order, all or none.
    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError>;

    /// About how many bytes the store takes (keys, values and overhead),
    /// for the quota of state per partition.
    fn bytes(&self) -> u64;

    /// How many keys store `store` holds.
    fn keys(&self, store: &str) -> Result<u64, StoreError>;

    /// Makes every applied write durable. Nothing to do in memory.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One partition's store, shared by the worker that writes it and the
/// queries that read it (`runner::query`).
pub type SharedStore = Arc<Mutex<Box<dyn Store>>>;

/// Opens the store of each partition of one deployment's input topic.
pub trait Backend: Send + fmt::Debug {
    fn open(&mut self, partition: i32) -> Result<Box<dyn Store>, StoreError>;

    /// Deletes what a partition's store keeps (it is not open), so that the
    /// next [`Backend::open`] starts empty: before a restore. A checkpoint
    /// of the partition goes too.
    fn wipe(&mut self, partition: i32) -> Result<(), StoreError>;

    /// Closes a partition's store, keeping it with `checkpoint` (the
    /// runner's record of what the store is current to), so that a later
    /// [`Backend::take_checkpoint`] and [`Backend::open`] find it as it is.
    /// By default nothing is kept: the store is dropped.
    fn checkpoint(
        &mut self,
        partition: i32,
        store: Box<dyn Store>,
        checkpoint: &[u8],
    ) -> Result<(), StoreError> {
        let _ = (partition, checkpoint);
        store.flush()?;
        Ok(())
    }

    /// The checkpoint kept with a closed store, removed as it is taken: the
    /// store is written again from here on, so the checkpoint no longer
    /// holds, whatever happens next.
    fn take_checkpoint(&mut self, partition: i32) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = partition;
        Ok(None)
    }
}

/// Why a state call failed; the engine turns it into the WIT `state-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("no store named {name:?} is declared for this deployment ({declared})")]
    UnknownStore { name: String, declared: String },
    #[error("{0}")]
    BadArgument(String),
    #[error("{0}")]
    Limit(String),
    #[error("the state store failed: {0}")]
    Store(String),
}

/// The host's bounds on state: per key, value, call and partition. The
/// defaults are the figures in [`rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Bytes of writes one call may buffer (keys, values and
    /// [`rules::STATE_WRITE_OVERHEAD`] per write).
    pub max_write_bytes_per_call: usize,
    /// Bytes one `get-many` or `scan` may return.
    pub max_read_bytes_per_call: usize,
    pub max_keys_per_get: usize,
    pub max_scan_entries: usize,
    /// Bytes of state one partition may hold; puts past it fail, deletes
    /// still work.
    pub max_partition_bytes: u64,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: rules::STATE_MAX_KEY_BYTES,
            max_value_bytes: rules::STATE_MAX_VALUE_BYTES,
            max_write_bytes_per_call: rules::STATE_WRITE_BYTES_PER_CALL,
            max_read_bytes_per_call: rules::STATE_READ_BYTES_PER_CALL,
            max_keys_per_get: rules::STATE_KEYS_PER_GET,
            max_scan_entries: rules::STATE_SCAN_ENTRIES,
            max_partition_bytes: rules::STATE_PARTITION_BYTES,
        }
    }
}

/// Checks a deployment's store names: a few, short, of `[a-z0-9_-]`, no
/// two alike.
pub fn check_store_names(names: &[String]) -> Result<(), String> {
    if names.len() > rules::STATE_STORES {
        return Err(format!(
            "{} stores are declared, over the limit of {}",
            names.len(),
            rules::STATE_STORES
        ));
    }
    for (i, name) in names.iter().enumerate() {
        let ok = !name.is_empty()
            && name.len() <= rules::STATE_STORE_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!(
                "store name {name:?} is not 1 to {} characters of a-z, 0-9, `_` and `-`",
                rules::STATE_STORE_NAME_BYTES
            ));
        }
        if names[..i].contains(name) {
            return Err(format!("store {name:?} is declared twice"));
        }
    }
    Ok(())
}

/// The state of one deployment on one input topic, as a processor's calls
/// see it: its declared stores, the stores of the partitions opened so
/// far, and the current call's journal.
#[derive(Debug)]
pub struct State {
    topic: Arc<str>,
    declared: Vec<Arc<str>>,
    backend: Box<dyn Backend>,
    open: HashMap<i32, SharedStore>,
    limits: StateLimits,
    /// (partition, offset) of each record of the current call.
    batch: Vec<(i32, i64)>,
    journal: Journal,
}

/// A page of a scan as the guest gets it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the next page starts; `None` when the range is done.
    pub next: Option<Vec<u8>>,
}

impl State {
    /// State with these stores (names checked by [`check_store_names`]).
    pub fn new(
        topic: &str,
        stores: &[String],
        backend: Box<dyn Backend>,
        limits: StateLimits,
    ) -> Result<Self, String> {
        check_store_names(stores)?;
        Ok(Self {
            topic: topic.into(),
            declared: stores.iter().map(|s| Arc::from(s.as_str())).collect(),
            backend,
            open: HashMap::new(),
            limits,
            batch: Vec::new(),
            journal: Journal::default(),
        })
    }

    pub fn limits(&self) -> &StateLimits {
        &self.limits
    }

    /// Starts a call over records at these (partition, offset).
    pub fn begin(&mut self, records: impl IntoIterator<Item = (i32, i64)>) {
        self.journal.clear();
        self.batch.clear();
        self.batch.extend(records);
    }

    /// Applies the call's writes, partition by partition (each partition's
    /// all or none), and ends the call. Returns them, in the order they
    /// were made: what the changelog is told.
    pub fn commit(&mut self) -> Result<Vec<Write>, StoreError> {
        let mut by_partition: HashMap<i32, Vec<Write>> = HashMap::new();
        for w in self.journal.drain() {
            let (partition, offset) = self.batch[w.record as usize];
            by_partition.entry(partition).or_default().push(Write {
                store: self.declared[w.store as usize].clone(),
                key: w.key,
                value: w.value,
                cause: Provenance {
                    topic: self.topic.clone(),
                    partition,
                    offset,
                },
            });
        }
        self.batch.clear();
        for (partition, writes) in &by_partition {
            self.store(*partition)?.apply(writes)?;
        }
        // Each partition's writes in the order they were made.
        Ok(by_partition.into_values().flatten().collect())
    }

    /// The input topic whose partitions this state is kept for.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The declared stores, in declaration order (a store's handle is its
    /// place here).
    pub fn stores(&self) -> &[Arc<str>] {
        &self.declared
    }

    /// Replaces what partition `partition` holds by `stores` (the entries of
    /// each declared store, in declaration order): a restore. The old store
    /// is closed and wiped first.
    pub fn replace(
        &mut self,
        partition: i32,
        stores: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<(), StoreError> {
        /// Writes per transaction: bounded memory, few commits.
        const CHUNK: usize = 10_000;
        self.open.remove(&partition);
        self.backend.wipe(partition)?;
        let cause = Provenance {
            topic: self.topic.clone(),
            partition,
            offset: -1,
        };
        for (name, mut entries) in self.declared.clone().into_iter().zip(stores) {
            // In key order: a B-tree fills fastest that way.
            entries.sort_unstable();
            let mut chunk = Vec::with_capacity(CHUNK.min(entries.len()));
            for (key, value) in entries {
                chunk.push(Write {
                    store: name.clone(),
                    key,
                    value: Some(value),
                    cause: cause.clone(),
                });
                if chunk.len() == CHUNK {
                    self.store(partition)?.apply(&chunk)?;
                    chunk.clear();
                }
            }
            if !chunk.is_empty() {
                self.store(partition)?.apply(&chunk)?;
            }
        }
        // Opened even when empty: reads of a restored partition need no
        // further work.
        drop(self.store(partition)?);
        Ok(())
    }

    /// Closes `partition`'s store and keeps it with `checkpoint` (see
    /// [`Backend::checkpoint`]). False, with the store closed and nothing
    /// kept, when a query still holds it.
    pub fn checkpoint(&mut self, partition: i32, checkpoint: &[u8]) -> Result<bool, StoreError> {
        let Some(shared) = self.open.remove(&partition) else {
            return Ok(false);
        };
        let Ok(store) = Arc::try_unwrap(shared) else {
            return Ok(false);
        };
        let store = store.into_inner().unwrap_or_else(PoisonError::into_inner);
        self.backend.checkpoint(partition, store, checkpoint)?;
        Ok(true)
    }

    /// Takes the checkpoint kept with `partition`'s closed store, if any:
    /// see [`Backend::take_checkpoint`].
    pub fn take_checkpoint(&mut self, partition: i32) -> Result<Option<Vec<u8>>, StoreError> {
        if self.open.contains_key(&partition) {
            return Ok(None);
        }
        self.backend.take_checkpoint(partition)
    }

    /// Opens `partition`'s store as it was kept (a restore from a local
    /// checkpoint); returns how many keys it holds.
    pub fn resume(&mut self, partition: i32) -> Result<u64, StoreError> {
        let declared = self.declared.clone();
        let store = self.store(partition)?;
        let mut keys = 0;
        for name in &declared {
            keys += store.keys(name)?;
        }
        Ok(keys)
    }

    /// Closes `partition`'s store, which is no longer this worker's; its
    /// next owner here restores it.
    pub fn close(&mut self, partition: i32) {
        self.open.remove(&partition);
    }

    /// Ends the call and forgets its writes.
    pub fn abort(&mut self) {
        self.journal.clear();
        self.batch.clear();
    }

    /// The handle of a declared store.
    pub fn open(&self, name: &str) -> Result<u32, StateError> {
        self.declared
            .iter()
            .position(|d| **d == *name)
            .map(|i| i as u32)
            .ok_or_else(|| StateError::UnknownStore {
                name: name.to_owned(),
                declared: if self.declared.is_empty() {
                    "it declares none: declare each store the function uses (`--store NAME`)"
                        .to_owned()
                } else {
                    format!(
                        "declared: {}",
                        self.declared
                            .iter()
                            .map(|d| format!("{d:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            })
    }

    pub fn get(
        &mut self,
        store: u32,
        record: u32,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let (name, partition) = self.scope(store, record)?;
        self.check_key(key)?;
        if let Some(v) = self.journal.get(store, partition, key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        let value = self.store(partition)?.get(&name, key)?;
        Ok(value)
    }

    /// The values of `keys`, in order.
    pub fn get_many<'k>(
        &mut self,
        store: u32,
        record: u32,
        keys: impl ExactSizeIterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let (name, partition) = self.scope(store, record)?;
        if keys.len() > self.limits.max_keys_per_get {
            return Err(StateError::Limit(format!(
                "get-many of {} keys, over the limit of {} keys per call",
                keys.len(),
                self.limits.max_keys_per_get
            )));
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for key in keys {
            self.check_key(key)?;
            let value = match self.journal.get(store, partition, key) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => self.store(partition)?.get(&name, key)?,
            };
            bytes += value.as_ref().map_or(0, Vec::len);
            if bytes > self.limits.max_read_bytes_per_call {
                return Err(StateError::Limit(format!(
                    "get-many would return more than {} bytes of values, the limit per call: \
                     ask for fewer keys at once",
                    self.limits.max_read_bytes_per_call
                )));
            }
            out.push(value);
        }
        Ok(out)
    }

    pub fn put(
        &mut self,
        store: u32,
        record: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StateError> {
        let (_, partition) = self.scope(store, record)?;
        self.check_key(key)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(StateError::Limit(format!(
                "a value of {} bytes, over the limit of {} bytes",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        let quota = self.limits.max_partition_bytes;
        let held = self.store(partition)?.bytes();
        let pending = self.journal.bytes();
        if held.saturating_add(pending as u64) > quota {
            return Err(StateError::Limit(format!(
                "the state of partition {partition} holds {held} bytes (and this call {pending} \
                 more), over its quota of {quota} bytes: delete keys, or keep less state per key"
            )));
        }
        self.write(store, record, partition, key, Some(value))
    }

    pub fn delete(&mut self, store: u32, record: u32, key: &[u8]) -> Result<(), StateError> {
        let (_, partition) = self.scope(store, record)?;
        self.check_key(key)?;
        self.write(store, record, partition, key, None)
    }

    fn write(
        &mut self,
        store: u32,
        record: u32,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StateError> {
        let cost = journal::cost(key, value);
        let max = self.limits.max_write_bytes_per_call;
        if self.journal.bytes() + cost > max {
            return Err(StateError::Limit(format!(
                "this call's writes would take more than {max} bytes, the limit per call \
                 (each write counts its key, its value and {} bytes)",
                rules::STATE_WRITE_OVERHEAD
            )));
        }
        self.journal.push(record, store, partition, key, value);
        Ok(())
    }

    /// Up to `limit` entries of `start..end`, the call's own writes included.
    pub fn scan(
        &mut self,
        store: u32,
        record: u32,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<Page, StateError> {
        let (name, partition) = self.scope(store, record)?;
        let limit = limit as usize;
        if limit > self.limits.max_scan_entries {
            return Err(StateError::Limit(format!(
                "a scan of up to {limit} entries, over the limit of {} per page: page through \
                 the range with `next`",
                self.limits.max_scan_entries
            )));
        }
        if limit == 0 {
            return Ok(Page {
                entries: Vec::new(),
                next: Some(start.to_vec()),
            });
        }
        let max_bytes = self.limits.max_read_bytes_per_call;
        let stored = self
            .store(partition)?
            .scan(&name, start, end, limit, max_bytes)?;
        // What the store returned covers keys up to its last one when it
        // stopped early, the whole range otherwise; the journal is merged
        // over the same span.
        let covered_to = match (stored.more, stored.entries.last()) {
            (true, Some((k, _))) => Bound::Including(k.clone()),
            _ => end.map_or(Bound::Open, |e| Bound::Excluding(e.to_vec())),
        };
        let mut merged = self
            .journal
            .merge(store, partition, start, &covered_to, stored.entries);
        let mut bytes = 0usize;
        let mut cut = merged.len();
        for (i, (k, v)) in merged.iter().enumerate() {
            if i == limit || bytes >= max_bytes {
                cut = i;
                break;
            }
            bytes += k.len() + v.len();
        }
        let next = if cut < merged.len() {
            Some(merged[cut].0.clone())
        } else if let Bound::Including(last) = covered_to {
            let mut after = last;
            after.push(0);
            Some(after)
        } else {
            None
        };
        merged.truncate(cut);
        Ok(Page {
            entries: merged,
            next,
        })
    }

    /// Forgets the current call's writes made for `record`, newest first,
    /// back to the first write of another record.
    pub fn discard(&mut self, record: u32) {
        self.journal.discard(record);
    }

    /// The store's name and the record's partition.
    fn scope(&self, store: u32, record: u32) -> Result<(Arc<str>, i32), StateError> {
        let name = self.declared.get(store as usize).ok_or_else(|| {
            StateError::BadArgument(format!("store handle {store} was not returned by `open`"))
        })?;
        let &(partition, _) = self.batch.get(record as usize).ok_or_else(|| {
            if self.batch.is_empty() {
                StateError::BadArgument(
                    "state is only available while a batch is processed (not in `init`)".to_owned(),
                )
            } else {
                StateError::BadArgument(format!(
                    "record {record} is not in the current batch of {} records",
                    self.batch.len()
                ))
            }
        })?;
        Ok((name.clone(), partition))
    }

    fn check_key(&self, key: &[u8]) -> Result<(), StateError> {
        if key.len() > self.limits.max_key_bytes {
            return Err(StateError::Limit(format!(
                "a key of {} bytes, over the limit of {} bytes",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    fn store(&mut self, partition: i32) -> Result<MutexGuard<'_, Box<dyn Store>>, StoreError> {
        if !self.open.contains_key(&partition) {
            let store = self.backend.open(partition)?;
            self.open.insert(partition, Arc::new(Mutex::new(store)));
        }
        let store = self.open.get(&partition).expect("inserted above");
        Ok(store.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The store of `partition`, if open: for queries to read.
    pub fn shared_store(&self, partition: i32) -> Option<SharedStore> {
        self.open.get(&partition).cloned()
    }
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        StateError::Store(e.0)
    }
}

/// The upper end of the span a scan's page covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bound {
    Open,
    Excluding(Vec<u8>),
    Including(Vec<u8>),
}

impl Bound {
    fn admits(&self, key: &[u8]) -> bool {
        match self {
            Bound::Open => true,
            Bound::Excluding(e) => key < e.as_slice(),
            Bound::Including(e) => key <= e.as_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryBackend;
    use super::*;

    fn state() -> State {
        let stores = ["a".to_owned(), "b".to_owned()];
        State::new(
            "in",
            &stores,
            Box::new(MemoryBackend),
            StateLimits::default(),
        )
        .unwrap()
    }

    fn keys(page: &Page) -> Vec<&str> {
        page.entries
            .iter()
            .map(|(k, _)| std::str::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn store_names_are_checked() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_store_names(&names(&["counts", "seen-2", "a_b"])).is_ok());
        for bad in [&["Counts"][..], &[""], &["a b"], &["x", "x"]] {
            assert!(check_store_names(&names(bad)).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
        assert!(check_store_names(&many).is_err());
    }

    #[test]
    fn calls_outside_a_batch_or_with_bad_arguments_are_errors() {
        let mut s = state();
        let err = s.get(0, 0, b"k").unwrap_err();
        assert!(err.to_string().contains("not in `init`"), "{err}");
        s.begin([(0, 10)]);
        assert!(matches!(s.get(0, 1, b"k"), Err(StateError::BadArgument(_))));
        assert!(matches!(s.get(9, 0, b"k"), Err(StateError::BadArgument(_))));
        assert!(matches!(s.open("c"), Err(StateError::UnknownStore { .. })));
        assert_eq!(s.open("b").unwrap(), 1);
    }

    type Log = Arc<Mutex<Vec<Write>>>;

    /// Stores in memory that also keep every write they were given.
    #[derive(Debug, Default)]
    struct Recording(Log);

    #[derive(Debug)]
    struct RecordingStore(memory::MemoryStore, Log);

    impl Backend for Recording {
        fn open(&mut self, _: i32) -> Result<Box<dyn Store>, StoreError> {
            Ok(Box::new(RecordingStore(
                memory::MemoryStore::default(),
                self.0.clone(),
            )))
        }
        fn wipe(&mut self, _: i32) -> Result<(), StoreError> {
            Ok(())
        }
    }

    impl Store for RecordingStore {
        fn get(&self, store: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(store, key)
        }
        fn scan(
            &self,
            store: &str,
            start: &[u8],
            end: Option<&[u8]>,
            limit: usize,
            max_bytes: usize,
        ) -> Result<Scanned, StoreError> {
            self.0.scan(store, start, end, limit, max_bytes)
        }
        fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
            self.1.lock().unwrap().extend_from_slice(writes);
            self.0.apply(writes)
        }
        fn bytes(&self) -> u64 {
            self.0.bytes()
        }
        fn keys(&self, store: &str) -> Result<u64, StoreError> {
            self.0.keys(store)
        }
    }

    #[test]
    fn every_write_reaches_the_store_in_order_with_its_provenance() {
        let recording = Recording::default();
        let log = recording.0.clone();
        let stores = ["a".to_owned()];
        let mut s = State::new("in", &stores, Box::new(recording), StateLimits::default()).unwrap();
        s.begin([(3, 10), (3, 11)]);
        s.put(0, 0, b"k", b"1").unwrap();
        s.put(0, 1, b"k", b"2").unwrap();
        s.delete(0, 1, b"j").unwrap();
        s.commit().unwrap();
        type Seen = (Vec<u8>, Option<Vec<u8>>, i32, i64);
        let seen: Vec<Seen> = log
            .lock()
            .unwrap()
            .iter()
            .map(|w| {
                assert_eq!((&*w.store, &*w.cause.topic), ("a", "in"));
                (
                    w.key.clone(),
                    w.value.clone(),
                    w.cause.partition,
                    w.cause.offset,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (b"k".to_vec(), Some(b"1".to_vec()), 3, 10),
                (b"k".to_vec(), Some(b"2".to_vec()), 3, 11),
                (b"j".to_vec(), None, 3, 11),
            ]
        );
    }

    #[test]
    fn a_restore_replaces_a_partitions_stores_and_commits_return_the_writes() {
        let mut s = state();
        s.begin([(0, 10), (1, 11)]);
        s.put(0, 0, b"old", b"1").unwrap();
        s.put(1, 1, b"other", b"2").unwrap();
        let writes = s.commit().unwrap();
        assert_eq!(writes.len(), 2);
        assert!(
            writes
                .iter()
                .any(|w| w.cause.partition == 1 && w.cause.offset == 11)
        );
        s.replace(
            0,
            vec![
                vec![(b"k".to_vec(), b"v".to_vec())],
                vec![(b"x".to_vec(), b"y".to_vec())],
            ],
        )
        .unwrap();
        s.begin([(0, 12), (1, 13)]);
        assert_eq!(s.get(0, 0, b"old").unwrap(), None, "replaced, not merged");
        assert_eq!(s.get(0, 0, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.get(1, 0, b"x").unwrap(), Some(b"y".to_vec()));
        assert_eq!(
            s.get(1, 1, b"other").unwrap(),
            Some(b"2".to_vec()),
            "partition 1 untouched"
        );
        s.abort();
    }

    #[test]
    fn a_disk_restore_wipes_the_partitions_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let backend = disk::DiskBackend::for_deployment(dir.path(), "d", "in").unwrap();
        let stores = ["a".to_owned()];
        let mut s = State::new("in", &stores, Box::new(backend), StateLimits::default()).unwrap();
        s.begin([(3, 1)]);
        s.put(0, 0, b"stale", b"1").unwrap();
        s.commit().unwrap();
        s.replace(3, vec![vec![(b"fresh".to_vec(), b"2".to_vec())]])
            .unwrap();
        s.begin([(3, 2)]);
        assert_eq!(s.get(0, 0, b"stale").unwrap(), None);
        assert_eq!(s.get(0, 0, b"fresh").unwrap(), Some(b"2".to_vec()));
        s.abort();
    }

    #[test]
    fn commits_apply_per_partition_and_aborts_drop_the_calls_writes() {
        let mut s = state();
        s.begin([(0, 10), (1, 11)]);
        s.put(0, 0, b"k", b"v0").unwrap();
        s.put(0, 1, b"k", b"v1").unwrap();
        s.commit().unwrap();
        s.begin([(0, 12), (1, 13)]);
        assert_eq!(s.get(0, 0, b"k").unwrap(), Some(b"v0".to_vec()));
        assert_eq!(s.get(0, 1, b"k").unwrap(), Some(b"v1".to_vec()));
        s.delete(0, 0, b"k").unwrap();
        assert_eq!(s.get(0, 0, b"k").unwrap(), None);
        s.abort();
        s.begin([(0, 14)]);
        assert_eq!(s.get(0, 0, b"k").unwrap(), Some(b"v0".to_vec()));
    }

    #[test]
    fn scans_page_over_stored_entries_and_the_calls_writes() {
        let mut s = state();
        s.begin([(0, 0)]);
        for k in ["a1", "a2", "a3", "a4", "b1"] {
            s.put(0, 0, k.as_bytes(), b"x").unwrap();
        }
        s.commit().unwrap();
        s.begin([(0, 1)]);
        s.delete(0, 0, b"a2").unwrap();
        s.put(0, 0, b"a25", b"new").unwrap();
        let mut seen = Vec::new();
        let mut start = b"a".to_vec();
        loop {
            let page = s.scan(0, 0, &start, Some(b"b"), 2).unwrap();
            seen.extend(keys(&page).into_iter().map(str::to_owned));
            match page.next {
                Some(n) => start = n,
                None => break,
            }
        }
        assert_eq!(seen, ["a1", "a25", "a3", "a4"]);
        let all = s.scan(0, 0, b"", None, 100).unwrap();
        assert_eq!(keys(&all), ["a1", "a25", "a3", "a4", "b1"]);
        assert_eq!(all.next, None);
        // The other store is empty.
        assert!(s.scan(1, 0, b"", None, 100).unwrap().entries.is_empty());
    }

    #[test]
    fn a_discarded_record_leaves_the_others_writes() {
        let mut s = state();
        s.begin([(0, 0), (0, 1)]);
        s.put(0, 0, b"k", b"first").unwrap();
        s.put(0, 1, b"k", b"second").unwrap();
        s.put(0, 1, b"other", b"x").unwrap();
        s.discard(1);
        assert_eq!(s.get(0, 1, b"k").unwrap(), Some(b"first".to_vec()));
        s.commit().unwrap();
        s.begin([(0, 2)]);
        assert_eq!(s.get(0, 0, b"other").unwrap(), None);
    }
}
