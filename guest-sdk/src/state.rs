//! Keyed state for processors: typed stores over the host's `state`
//! interface.
//!
//! A processor gets a [`ProcessorContext`] with each record. `ctx.store::<K, V>("name")`
//! opens a store the deployment declares; keys are encoded so that their
//! byte order is their natural order ([`Key`]), values with `postcard` (a
//! compact serde format). The host scopes every call to the record's input
//! partition, buffers the writes of a batch until it returns, and forgets
//! the writes of a record that fails.
//!
//! ```
//! use runnel_sdk::{ProcessorContext, Output, Record, Result};
//!
//! /// Counts records per key and emits the new count.
//! #[runnel_sdk::processor]
//! fn count(record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>> {
//!     let counts = ctx.store::<str, u64>("counts")?;
//!     let key = record.key_str()?;
//!     let n = counts.get(key)?.unwrap_or(0) + 1;
//!     counts.put(key, &n)?;
//!     Ok(vec![Output::new(n.to_string()).with_key(key)])
//! }
//! # fn main() {}
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// What the host gives a processor, as the generated code (or
/// [`crate::testing::TestState`]) implements it. Not for authors.
#[doc(hidden)]
pub trait StateHost {
    fn open(&self, name: &str) -> Result<u32, String>;
    fn get(&self, store: u32, record: u32, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Values of `keys` (items back to back, `lengths` each), packed alike;
    /// `u32::MAX` is an absent value.
    fn get_many(
        &self,
        store: u32,
        record: u32,
        keys: Vec<u8>,
        lengths: Vec<u32>,
    ) -> Result<(Vec<u8>, Vec<u32>), String>;
    fn put(&self, store: u32, record: u32, key: &[u8], value: &[u8]) -> Result<(), String>;
    fn delete(&self, store: u32, record: u32, key: &[u8]) -> Result<(), String>;
    fn scan(
        &self,
        store: u32,
        record: u32,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<RawPage, String>;
    fn discard(&self, record: u32);
}

/// One page of a scan, as bytes.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RawPage {
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    pub next: Option<Vec<u8>>,
}

/// What a processor is given with each record: its state.
pub struct ProcessorContext<'h> {
    host: &'h dyn StateHost,
    record: u32,
}

impl fmt::Debug for ProcessorContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorContext")
            .field("record", &self.record)
            .finish()
    }
}

impl<'h> ProcessorContext<'h> {
    #[doc(hidden)]
    pub fn new(host: &'h dyn StateHost, record: u32) -> Self {
        Self { host, record }
    }

    /// The store the deployment declares under `name`, with keys of type
    /// `K` and values of type `V`. An undeclared name is an error.
    pub fn store<K: Key + ?Sized, V: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Store<'_, K, V>> {
        let id = self
            .host
            .open(name)
            .map_err(|e| Error::msg(format!("store {name:?}: {e}")))?;
        Ok(Store {
            ctx: self,
            id,
            name: name.into(),
            types: PhantomData,
        })
    }
}

/// A store of the record's partition, with typed keys and values.
pub struct Store<'c, K: ?Sized, V> {
    ctx: &'c ProcessorContext<'c>,
    id: u32,
    name: Box<str>,
    types: PhantomData<fn(&K) -> V>,
}

impl<K: ?Sized, V> fmt::Debug for Store<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

/// A page of entries in key order, and where the next one starts.
#[derive(Debug)]
pub struct Page<K, V> {
    pub entries: Vec<(K, V)>,
    /// Pass to [`Store::resume`] for the next page; `None` at the end.
    pub cursor: Option<Cursor>,
}

/// Where a scan goes on. A page may hold fewer entries than asked for
/// (the host bounds the bytes of one page) with more to come: go on while
/// there is a cursor.
#[derive(Debug, Clone)]
pub struct Cursor {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl<K: Key + ?Sized, V: Serialize + DeserializeOwned> Store<'_, K, V> {
    fn err(&self, e: String) -> Error {
        Error::msg(format!("store {:?}: {e}", self.name))
    }

    fn value(&self, bytes: &[u8]) -> Result<V> {
        postcard::from_bytes(bytes).map_err(|e| {
            self.err(format!(
                "a stored value does not decode as this store's value type: {e}"
            ))
        })
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let got = self
            .ctx
            .host
            .get(self.id, self.ctx.record, &key.to_key())
            .map_err(|e| self.err(e))?;
        got.map(|v| self.value(&v)).transpose()
    }

    /// The values of many keys with one call to the host, in order.
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Result<Vec<Option<V>>>
    where
        K: 'k,
    {
        let (mut data, mut lengths) = (Vec::new(), Vec::new());
        for key in keys {
            let start = data.len();
            key.write_key(&mut data);
            lengths.push((data.len() - start) as u32);
        }
        let (values, lengths) = self
            .ctx
            .host
            .get_many(self.id, self.ctx.record, data, lengths)
            .map_err(|e| self.err(e))?;
        let mut at = 0usize;
        let mut out = Vec::with_capacity(lengths.len());
        for len in lengths {
            if len == u32::MAX {
                out.push(None);
                continue;
            }
            let end = at + len as usize;
            let bytes = values
                .get(at..end)
                .ok_or_else(|| self.err("the host returned short values".to_owned()))?;
            out.push(Some(self.value(bytes)?));
            at = end;
        }
        Ok(out)
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: &K, value: &V) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(|e| self.err(e.to_string()))?;
        self.ctx
            .host
            .put(self.id, self.ctx.record, &key.to_key(), &bytes)
            .map_err(|e| self.err(e))
    }

    /// Removes `key` (nothing happens if it has no value).
    pub fn delete(&self, key: &K) -> Result<()> {
        self.ctx
            .host
            .delete(self.id, self.ctx.record, &key.to_key())
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` entries from `start` (the first key when `None`) to
    /// before `end` (the last key when `None`).
    pub fn range(
        &self,
        start: Option<&K>,
        end: Option<&K>,
        limit: u32,
    ) -> Result<Page<K::Owned, V>> {
        self.resume(
            &Cursor {
                start: start.map(K::to_key).unwrap_or_default(),
                end: end.map(K::to_key),
            },
            limit,
        )
    }

    /// Up to `limit` entries whose encoded keys start with `prefix`'s
    /// (for `str` and `[u8]` keys: the keys that start with `prefix`).
    pub fn prefix(&self, prefix: &K, limit: u32) -> Result<Page<K::Owned, V>> {
        let start = prefix.to_key();
        let end = successor(&start);
        self.resume(&Cursor { start, end }, limit)
    }

    /// The page after the one that returned `cursor`.
    pub fn resume(&self, cursor: &Cursor, limit: u32) -> Result<Page<K::Owned, V>> {
        let raw = self
            .ctx
            .host
            .scan(
                self.id,
                self.ctx.record,
                &cursor.start,
                cursor.end.as_deref(),
                limit,
            )
            .map_err(|e| self.err(e))?;
        let entries = raw
            .entries
            .iter()
            .map(|(k, v)| Ok((K::read_key(k).map_err(|e| self.err(e))?, self.value(v)?)))
            .collect::<Result<_>>()?;
        Ok(Page {
            entries,
            cursor: raw.next.map(|start| Cursor {
                start,
                end: cursor.end.clone(),
            }),
        })
    }
}

/// The smallest key after every key that starts with `prefix`; `None` when
/// there is none (the prefix is empty or all 0xff).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A type that can be a state key: encoded so that the order of the bytes
/// is the order of the values, so that ranges and prefixes mean something.
pub trait Key {
    /// What a scan returns for a key of this type.
    type Owned;
    fn write_key(&self, out: &mut Vec<u8>);
    fn read_key(bytes: &[u8]) -> Result<Self::Owned, String>;
    fn to_key(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_key(&mut v);
        v
    }
}

impl Key for str {
    type Owned = String;
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn read_key(bytes: &[u8]) -> Result<String, String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("a stored key is not UTF-8: {e}"))
    }
}

impl Key for String {
    type Owned = String;
    fn write_key(&self, out: &mut Vec<u8>) {
        self.as_str().write_key(out);
    }
    fn read_key(bytes: &[u8]) -> Result<String, String> {
        str::read_key(bytes)
    }
}

impl Key for [u8] {
    type Owned = Vec<u8>;
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read_key(bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }
}

impl Key for Vec<u8> {
    type Owned = Vec<u8>;
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read_key(bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }
}

/// Big-endian, and for signed integers with the sign bit flipped, so that
/// byte order is numeric order.
macro_rules! int_keys {
    ($($t:ty => $u:ty, $flip:expr);*) => {$(
        impl Key for $t {
            type Owned = $t;
            fn write_key(&self, out: &mut Vec<u8>) {
                let raw = <$u>::from_be_bytes(self.to_be_bytes()) ^ $flip;
                out.extend_from_slice(&raw.to_be_bytes());
            }
            fn read_key(bytes: &[u8]) -> Result<$t, String> {
                let raw: [u8; size_of::<$u>()] = bytes.try_into().map_err(|_| {
                    format!("a stored key of {} bytes is not a {}", bytes.len(), stringify!($t))
                })?;
                Ok(<$t>::from_be_bytes((<$u>::from_be_bytes(raw) ^ $flip).to_be_bytes()))
            }
        }
    )*};
}

int_keys!(u32 => u32, 0; u64 => u64, 0; i32 => u32, 1 << 31; i64 => u64, 1 << 63);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_sort_as_numbers() {
        let keys = [i64::MIN, -5, -1, 0, 1, 300, i64::MAX];
        let encoded: Vec<Vec<u8>> = keys.iter().map(Key::to_key).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for (k, e) in keys.iter().zip(&encoded) {
            assert_eq!(i64::read_key(e).unwrap(), *k);
        }
        assert_eq!(u32::read_key(&7u32.to_key()).unwrap(), 7);
        assert!(u64::read_key(b"abc").is_err());
    }

    #[test]
    fn prefixes_end_at_their_successor() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff\xff"), None);
        assert_eq!(successor(b""), None);
    }
}
