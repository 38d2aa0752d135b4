//! Helpers for testing functions natively, without a host: build records the
//! way the host would and call your function directly.
//!
//! ```
//! use runnel_sdk::testing::TestRecord;
//!
//! fn is_big(r: &runnel_sdk::Record) -> runnel_sdk::Result<bool> {
//!     Ok(r.value_str()?.len() > 3)
//! }
//!
//! let record = TestRecord::value("hello").with_key("k");
//! assert!(is_big(&record.view()).unwrap());
//! ```
//!
//! A processor runs against a [`TestState`]:
//!
//! ```
//! use runnel_sdk::testing::{TestRecord, TestState};
//! use runnel_sdk::{ProcessorContext, Output, Record, Result};
//!
//! fn count(r: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>> {
//!     let counts = ctx.store::<str, u64>("counts")?;
//!     let n = counts.get(r.key_str()?)?.unwrap_or(0) + 1;
//!     counts.put(r.key_str()?, &n)?;
//!     Ok(vec![Output::new(n.to_string())])
//! }
//!
//! let state = TestState::new(&["counts"]);
//! let record = TestRecord::value("x").with_key("k");
//! state.process(&record, count).unwrap();
//! let out = state.process(&record, count).unwrap();
//! assert_eq!(out[0].value(), Some(&b"2"[..]));
//! assert_eq!(state.get::<str, u64>(0, "counts", "k"), Some(2));
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

use runnel_abi::{BatchBuilder, BatchRef, Frame};
use serde::de::DeserializeOwned;

use crate::state::{RawPage, StateHost};
use crate::{Key, Output, ProcessorContext, Record, Result};

/// An owned record that lends out [`Record`] views, as a batch from the host would.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    packed: BatchBuilder,
}

impl TestRecord {
    /// A record with this value, no key, partition 0, offset 0.
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
        .pack()
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self.pack()
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), Some(value.into())));
        self.pack()
    }

    pub fn at(mut self, partition: i32, offset: i64) -> Self {
        self.partition = partition;
        self.offset = offset;
        self.pack()
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self.pack()
    }

    fn pack(mut self) -> Self {
        let headers: Vec<(&str, Option<&[u8]>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect();
        let mut packed = BatchBuilder::default();
        packed.push(&Frame {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &headers,
        });
        self.packed = packed;
        self
    }

    /// The record as your function sees it.
    pub fn view(&self) -> Record<'_> {
        let batch = BatchRef::new(self.packed.data(), self.packed.index());
        Record::new(
            batch
                .get(0)
                .expect("a TestRecord always packs one valid frame"),
        )
    }
}

/// Packs values into a batch's two buffers, as the host sends them.
pub fn batch(values: &[&[u8]]) -> (Vec<u8>, Vec<u32>) {
    BatchBuilder::of_values(values.iter().copied()).into_parts()
}

type Stores = BTreeMap<(i32, String), BTreeMap<Vec<u8>, Vec<u8>>>;

/// Keyed state in memory for native tests of processors, with the host's
/// rules: stores are declared, state is per partition, and a record that
/// fails leaves no write behind.
#[derive(Debug)]
pub struct TestState {
    declared: Vec<String>,
    stores: RefCell<Stores>,
    partition: Cell<i32>,
}

impl TestState {
    /// State with these stores declared, all empty.
    pub fn new(stores: &[&str]) -> Self {
        Self {
            declared: stores.iter().map(|s| (*s).to_owned()).collect(),
            stores: RefCell::default(),
            partition: Cell::new(0),
        }
    }

    /// Runs `f` on `record` as the host would: with a [`ProcessorContext`] on this
    /// state scoped to the record's partition, keeping its writes only if
    /// it succeeds.
    pub fn process(
        &self,
        record: &TestRecord,
        f: impl FnOnce(&Record<'_>, &mut ProcessorContext<'_>) -> Result<Vec<Output>>,
    ) -> Result<Vec<Output>> {
        let before = self.stores.borrow().clone();
        self.partition.set(record.partition);
        let view = record.view();
        let mut ctx = ProcessorContext::new(self, 0);
        let result = f(&view, &mut ctx);
        if result.is_err() {
            *self.stores.borrow_mut() = before;
        }
        result
    }

    /// The value of `key` in `store` of `partition`, if any (and if it
    /// decodes as `V`).
    pub fn get<K: Key + ?Sized, V: DeserializeOwned>(
        &self,
        partition: i32,
        store: &str,
        key: &K,
    ) -> Option<V> {
        let stores = self.stores.borrow();
        let bytes = stores
            .get(&(partition, store.to_owned()))?
            .get(&key.to_key())?;
        postcard::from_bytes(bytes).ok()
    }

    fn name(&self, store: u32) -> Result<(i32, String), String> {
        let name = self
            .declared
            .get(store as usize)
            .ok_or_else(|| format!("store handle {store} was not returned by `open`"))?;
        Ok((self.partition.get(), name.clone()))
    }
}

impl StateHost for TestState {
    fn open(&self, name: &str) -> Result<u32, String> {
        self.declared
            .iter()
            .position(|d| d == name)
            .map(|i| i as u32)
            .ok_or_else(|| {
                format!(
                    "no store named {name:?} is declared for this deployment (declared: {:?})",
                    self.declared
                )
            })
    }

    fn get(&self, store: u32, _record: u32, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let slot = self.name(store)?;
        Ok(self
            .stores
            .borrow()
            .get(&slot)
            .and_then(|s| s.get(key))
            .cloned())
    }

    fn get_many(
        &self,
        store: u32,
        record: u32,
        keys: Vec<u8>,
        lengths: Vec<u32>,
    ) -> Result<(Vec<u8>, Vec<u32>), String> {
        let (mut data, mut out) = (Vec::new(), Vec::with_capacity(lengths.len()));
        let mut at = 0usize;
        for len in lengths {
            let key = keys
                .get(at..at + len as usize)
                .ok_or("the packed keys are short")?;
            at += len as usize;
            match StateHost::get(self, store, record, key)? {
                Some(v) => {
                    out.push(v.len() as u32);
                    data.extend_from_slice(&v);
                }
                None => out.push(u32::MAX),
            }
        }
        Ok((data, out))
    }

    fn put(&self, store: u32, _record: u32, key: &[u8], value: &[u8]) -> Result<(), String> {
        let slot = self.name(store)?;
        self.stores
            .borrow_mut()
            .entry(slot)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, store: u32, _record: u32, key: &[u8]) -> Result<(), String> {
        let slot = self.name(store)?;
        if let Some(s) = self.stores.borrow_mut().get_mut(&slot) {
            s.remove(key);
        }
        Ok(())
    }

    fn scan(
        &self,
        store: u32,
        _record: u32,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<RawPage, String> {
        let slot = self.name(store)?;
        let stores = self.stores.borrow();
        let Some(s) = stores.get(&slot) else {
            return Ok(RawPage::default());
        };
        let upper = end.map_or(Unbounded, Excluded);
        let mut range = s.range::<[u8], _>((Included(start), upper));
        let entries: Vec<_> = range
            .by_ref()
            .take(limit as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(RawPage {
            entries,
            next: range.next().map(|(k, _)| k.clone()),
        })
    }

    fn discard(&self, _record: u32) {}
}
