//! One call's writes, in order, with an index by key for reads.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Included, Unbounded};

use super::Bound;
use crate::rules::STATE_WRITE_OVERHEAD;

/// What a write costs against the bytes one call may buffer: its key twice
/// (the journal and the index each keep it), its value and a fixed overhead.
pub(super) fn cost(key: &[u8], value: Option<&[u8]>) -> usize {
    2 * key.len() + value.map_or(0, <[u8]>::len) + STATE_WRITE_OVERHEAD
}

#[derive(Debug)]
pub(super) struct Entry {
    pub record: u32,
    pub store: u32,
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    /// The write of the same key before this one in the call, if any.
    previous: Option<usize>,
}

/// A store of a partition: (store, partition).
type Scope = (u32, i32);

#[derive(Debug, Default)]
pub(super) struct Journal {
    entries: Vec<Entry>,
    /// The newest entry for each key written, by store and partition.
    newest: HashMap<Scope, BTreeMap<Vec<u8>, usize>>,
    bytes: usize,
}

impl Journal {
    pub fn clear(&mut self) {
        self.entries.clear();
        self.newest.clear();
        self.bytes = 0;
    }

    /// Bytes buffered so far, as [`cost`] counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(
        &mut self,
        record: u32,
        store: u32,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) {
        self.bytes += cost(key, value);
        let at = self.entries.len();
        let previous = self
            .newest
            .entry((store, partition))
            .or_default()
            .insert(key.to_vec(), at);
        self.entries.push(Entry {
            record,
            store,
            partition,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
            previous,
        });
    }

    /// `Some(value)` when the call wrote `key` (`Some(None)`: deleted it).
    pub fn get(&self, store: u32, partition: i32, key: &[u8]) -> Option<Option<&[u8]>> {
        let at = *self.newest.get(&(store, partition))?.get(key)?;
        Some(self.entries[at].value.as_deref())
    }

    /// Undoes the newest writes while they were made for `record`.
    pub fn discard(&mut self, record: u32) {
        while self.entries.last().is_some_and(|e| e.record == record) {
            let Some(e) = self.entries.pop() else { break };
            self.bytes -= cost(&e.key, e.value.as_deref());
            let Some(keys) = self.newest.get_mut(&(e.store, e.partition)) else {
                continue;
            };
            match e.previous {
                Some(p) => {
                    keys.insert(e.key, p);
                }
                None => {
                    keys.remove(&e.key);
                }
            }
        }
    }

    /// Every write, oldest first, emptying the journal.
    pub fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.newest.clear();
        self.bytes = 0;
        self.entries.drain(..)
    }

    /// `stored` (entries of a store from `start` up to `to`, in order) with
    /// this call's writes to the same span laid over it.
    pub fn merge(
        &self,
        store: u32,
        partition: i32,
        start: &[u8],
        to: &Bound,
        stored: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(keys) = self.newest.get(&(store, partition)) else {
            return stored;
        };
        let written: Vec<(&[u8], Option<&[u8]>)> = keys
            .range::<[u8], _>((Included(start), Unbounded))
            .take_while(|(k, _)| to.admits(k))
            .map(|(k, &at)| (k.as_slice(), self.entries[at].value.as_deref()))
            .collect();
        if written.is_empty() {
            return stored;
        }
        let mut out = Vec::with_capacity(stored.len() + written.len());
        let mut stored = stored.into_iter().peekable();
        let mut written = written.into_iter().peekable();
        loop {
            let order = match (stored.peek(), written.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((sk, _)), Some((wk, _))) => sk.as_slice().cmp(wk),
            };
            if order == Ordering::Less {
                out.extend(stored.next());
                continue;
            }
            if order == Ordering::Equal {
                // The call's write replaces (or deletes) the stored entry.
                stored.next();
            }
            if let Some((wk, Some(wv))) = written.next() {
                out.push((wk.to_vec(), wv.to_vec()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn writes_lie_over_stored_entries() {
        let mut j = Journal::default();
        j.push(0, 0, 0, b"b", Some(b"B2"));
        j.push(0, 0, 0, b"c", None);
        j.push(1, 0, 0, b"e", Some(b"E"));
        j.push(1, 1, 0, b"d", Some(b"other store"));
        let stored = vec![kv("a", "A"), kv("b", "B"), kv("c", "C"), kv("f", "F")];
        let merged = j.merge(0, 0, b"", &Bound::Open, stored);
        assert_eq!(
            merged,
            vec![kv("a", "A"), kv("b", "B2"), kv("e", "E"), kv("f", "F")]
        );
        let merged = j.merge(
            0,
            0,
            b"",
            &Bound::Excluding(b"e".to_vec()),
            vec![kv("a", "A")],
        );
        assert_eq!(merged, vec![kv("a", "A"), kv("b", "B2")]);
    }

    #[test]
    fn discard_undoes_one_records_writes() {
        let mut j = Journal::default();
        j.push(0, 0, 0, b"k", Some(b"1"));
        let after_first = j.bytes();
        j.push(1, 0, 0, b"k", Some(b"2"));
        j.push(1, 0, 0, b"new", Some(b"x"));
        assert_eq!(j.get(0, 0, b"k"), Some(Some(&b"2"[..])));
        j.discard(1);
        assert_eq!(j.get(0, 0, b"k"), Some(Some(&b"1"[..])));
        assert_eq!(j.get(0, 0, b"new"), None);
        assert_eq!(j.bytes(), after_first);
        j.discard(0);
        assert_eq!(j.get(0, 0, b"k"), None);
        assert_eq!(j.bytes(), 0);
    }
}
