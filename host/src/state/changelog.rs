//! The changelog of a store: what its records say, and how a new owner of
//! a partition rebuilds the partition's state from them.
//!
//! Every write a processor makes is also produced to the store's changelog
//! topic (`runnel.<deployment>.<store>.changelog`, compacted, partitioned
//! like the input), to the partition of the input record that caused it.
//! Each changelog record carries:
//!
//! - the **key**: [`KEY_WRITE`] followed by the store key (so that runnel's
//!   own records, keyed [`KEY_MARKER`], never collide with a user's key);
//! - the **value**, or none for a delete (a tombstone);
//! - the header [`EPOCH`]: which ownership of the partition wrote it;
//! - the header [`CAUSE`]: the offset of the input record that caused it
//!   (absent on write-backs and markers, see below).
//!
//! # Restore
//!
//! A new owner of a partition reads the changelog from its start and keeps,
//! per key, the last write that is *committed*: caused by an input before
//! the offset the group committed (where this owner starts reading the
//! input). Writes caused at or after that offset are skipped: those inputs
//! are run again, and write again. So state changes apply once per input.
//!
//! **Owner epochs.** Each owner takes an epoch one above every epoch in the
//! changelog and writes a marker with it before it reads the rest: a writer
//! that lost the partition without knowing it (a paused node, a zombie) has
//! a lower epoch, and its records after a higher epoch are skipped. Within
//! an epoch a write is also skipped when an earlier one for the same key
//! came from a later input (a write the producer sent again after a
//! failure, out of order).
//!
//! **Write-backs.** Compaction keeps only the last record per key. When the
//! last record of a key is one restore skipped, a later compaction would
//! keep that one and drop the value restore used. So the new owner writes
//! back the restored value (or a delete) of every key a skipped record
//! touched, with its epoch and no cause, before it runs any input: the log's
//! last word on each key is then again a committed one.

use std::collections::{HashMap, HashSet};

/// The changelog topics' `min.compaction.lag.ms`: one day. Compaction must
/// not drop a key's committed value while the key's last record is a write
/// of an input that was never committed (its owner crashed before the
/// commit): the next owner's restore skips that write and needs the value
/// before it, then writes it back. So a partition whose owner crashed must
/// be restored within this long; a day covers a cluster down overnight.
/// The embedded broker's SQLite storage honours it (patched, see
/// `host/vendor/README.md`), as Kafka does.
pub const MIN_COMPACTION_LAG_MS: &str = "86400000";

/// The first byte of the changelog key of a user's write.
pub const KEY_WRITE: u8 = 1;
/// The changelog key of an owner's epoch marker.
pub const KEY_MARKER: &[u8] = &[0];
/// Header: the epoch of the owner that wrote the record (decimal).
pub const EPOCH: &str = "runnel-epoch";
/// Header: the offset of the input record that caused the write (decimal).
pub const CAUSE: &str = "runnel-cause";

/// The changelog topic of one store of a deployment.
pub fn topic(deployment: &str, store: &str) -> String {
    format!("runnel.{deployment}.{store}.changelog")
}

/// The longest topic name Kafka takes.
pub const MAX_TOPIC_NAME: usize = 249;

/// Checks that every store's changelog topic name fits Kafka's limit.
pub fn check_topic_names(deployment: &str, stores: &[String]) -> Result<(), String> {
    for store in stores {
        let t = topic(deployment, store);
        if t.len() > MAX_TOPIC_NAME {
            return Err(format!(
                "the changelog topic of store {store:?} would be named {} characters long \
                 (`runnel.<deployment>.<store>.changelog`), over Kafka's {MAX_TOPIC_NAME}: \
                 use a shorter deployment or store name",
                t.len()
            ));
        }
    }
    Ok(())
}

/// The changelog key of a store key.
pub fn key(store_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(store_key.len() + 1);
    k.push(KEY_WRITE);
    k.extend_from_slice(store_key);
    k
}

/// One changelog record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// An owner took the partition with this epoch.
    Marker { epoch: u64 },
    /// A write: `cause` is `None` for a write-back.
    Write {
        epoch: u64,
        cause: Option<i64>,
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
}

/// Why a changelog record is not runnel's: someone else wrote to the topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a changelog record of runnel's: {0}")]
pub struct Foreign(pub &'static str);

/// Decodes a record from its key, value and the values of its [`EPOCH`] and
/// [`CAUSE`] headers.
pub fn decode<'a>(
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    epoch: Option<&[u8]>,
    cause: Option<&[u8]>,
) -> Result<Entry<'a>, Foreign> {
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
    let epoch = number(epoch.ok_or(Foreign("no epoch header"))?)
        .ok_or(Foreign("the epoch header is not a number"))?;
    let key = key.ok_or(Foreign("no key"))?;
    match key.split_first() {
        Some((&KEY_WRITE, store_key)) => {
            let cause = match cause {
                None => None,
                Some(c) => Some(
                    number(c)
                        .and_then(|c| i64::try_from(c).ok())
                        .ok_or(Foreign("the cause header is not an offset"))?,
                ),
            };
            Ok(Entry::Write {
                epoch,
                cause,
                key: store_key,
                value,
            })
        }
        _ if key == KEY_MARKER => Ok(Entry::Marker { epoch }),
        _ => Err(Foreign("its key has no tag runnel knows")),
    }
}

/// What one restore saw, for the status and the logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Changelog records read.
    pub records: u64,
    /// Writes kept (the last one of a key wins).
    pub applied: u64,
    /// Writes of inputs at or after the committed offset: run again.
    pub uncommitted: u64,
    /// Writes of an owner with an older epoch, after a newer one's.
    pub fenced: u64,
    /// Writes older (by input offset) than one already kept for the key.
    pub stale: u64,
    /// Records that are not runnel's.
    pub foreign: u64,
}

#[derive(Debug)]
struct Last {
    epoch: u64,
    /// -1 for a write-back.
    cause: i64,
    value: Option<Vec<u8>>,
}

/// Rebuilds one store's state of one partition from its changelog, read in
/// order (see the module documentation).
#[derive(Debug)]
pub struct Restore {
    committed: i64,
    max_epoch: u64,
    last: HashMap<Vec<u8>, Last>,
    touched: HashSet<Vec<u8>>,
    counts: Counts,
}

/// A store's state as restore rebuilt it.
#[derive(Debug, Default)]
pub struct Restored {
    /// The entries, in no particular order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// What to write back (value, or `None` for a delete), see the module
    /// documentation.
    pub write_backs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub counts: Counts,
}

impl Restore {
    /// A restore for an owner that starts reading the input at `committed`.
    pub fn new(committed: i64) -> Self {
        Self {
            committed,
            max_epoch: 0,
            last: HashMap::new(),
            touched: HashSet::new(),
            counts: Counts::default(),
        }
    }

    /// The highest epoch seen so far.
    pub fn max_epoch(&self) -> u64 {
        self.max_epoch
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The next record of the changelog, in log order.
    pub fn feed(&mut self, entry: Result<Entry<'_>, Foreign>) {
        self.counts.records += 1;
        let (epoch, cause, key, value) = match entry {
            Err(_) => {
                self.counts.foreign += 1;
                return;
            }
            Ok(Entry::Marker { epoch }) => {
                self.max_epoch = self.max_epoch.max(epoch);
                return;
            }
            Ok(Entry::Write {
                epoch,
                cause,
                key,
                value,
            }) => (epoch, cause, key, value),
        };
        if epoch < self.max_epoch {
            self.counts.fenced += 1;
            self.touched.insert(key.to_vec());
            return;
        }
        self.max_epoch = epoch;
        if cause.is_some_and(|c| c >= self.committed) {
            self.counts.uncommitted += 1;
            self.touched.insert(key.to_vec());
            return;
        }
        let cause = cause.unwrap_or(-1);
        if let Some(last) = self.last.get(key)
            && (epoch, cause) < (last.epoch, last.cause)
        {
            self.counts.stale += 1;
            self.touched.insert(key.to_vec());
            return;
        }
        self.counts.applied += 1;
        self.last.insert(
            key.to_vec(),
            Last {
                epoch,
                cause,
                value: value.map(<[u8]>::to_vec),
            },
        );
    }

    /// The state, and the write-backs the new owner must make.
    pub fn finish(self) -> Restored {
        let write_backs = self
            .touched
            .into_iter()
            .map(|k| {
                let value = self.last.get(&k).and_then(|l| l.value.clone());
                (k, value)
            })
            .collect();
        let entries = self
            .last
            .into_iter()
            .filter_map(|(k, l)| l.value.map(|v| (k, v)))
            .collect();
        Restored {
            entries,
            write_backs,
            counts: self.counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(epoch: u64, cause: Option<i64>, key: &'a str, value: Option<&'a str>) -> Entry<'a> {
        Entry::Write {
            epoch,
            cause,
            key: key.as_bytes(),
            value: value.map(str::as_bytes),
        }
    }

    fn restore(committed: i64, log: &[Entry<'_>]) -> Restored {
        let mut r = Restore::new(committed);
        for e in log {
            r.feed(Ok(e.clone()));
        }
        let mut out = r.finish();
        out.entries.sort();
        out.write_backs.sort();
        out
    }

    fn entries(r: &Restored) -> Vec<(String, String)> {
        r.entries
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn records_round_trip_and_foreign_ones_are_named() {
        let k = key(b"user");
        assert_eq!(k[0], KEY_WRITE);
        assert_eq!(
            decode(Some(&k), Some(b"v"), Some(b"3"), Some(b"17")),
            Ok(w(3, Some(17), "user", Some("v")))
        );
        assert_eq!(
            decode(Some(&k), None, Some(b"3"), None),
            Ok(w(3, None, "user", None))
        );
        assert_eq!(
            decode(Some(KEY_MARKER), Some(b""), Some(b"9"), None),
            Ok(Entry::Marker { epoch: 9 })
        );
        assert!(decode(Some(b"\x07x"), None, Some(b"1"), None).is_err());
        assert!(decode(None, None, Some(b"1"), None).is_err());
        assert!(decode(Some(&k), None, None, None).is_err());
        assert!(decode(Some(&k), None, Some(b"\xff"), None).is_err());
        assert!(decode(Some(&k), None, Some(b"1"), Some(b"-5")).is_err());
        assert_eq!(
            topic("counter", "counts"),
            "runnel.counter.counts.changelog"
        );
    }

    #[test]
    fn writes_of_inputs_not_committed_are_skipped_and_written_back() {
        // Inputs 0..=2 committed (the group's offset is 3); the owner that
        // crashed also ran input 3 and 4 and wrote for them.
        let r = restore(
            3,
            &[
                w(1, Some(0), "a", Some("1")),
                w(1, Some(1), "b", Some("1")),
                w(1, Some(2), "a", Some("2")),
                w(1, Some(3), "a", Some("3")),
                w(1, Some(4), "c", Some("1")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "2"), ("b", "1")]));
        assert_eq!(r.counts.uncommitted, 2);
        assert_eq!(
            r.write_backs,
            vec![(b"a".to_vec(), Some(b"2".to_vec())), (b"c".to_vec(), None)]
        );
    }

    #[test]
    fn deletes_remove_and_a_later_put_restores() {
        let r = restore(
            10,
            &[
                w(1, Some(0), "a", Some("1")),
                w(1, Some(1), "a", None),
                w(1, Some(2), "b", Some("1")),
                w(1, Some(3), "b", None),
                w(1, Some(4), "b", Some("2")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("b", "2")]));
        assert!(r.write_backs.is_empty());
    }

    #[test]
    fn a_zombie_owner_is_fenced_by_the_newer_epoch() {
        // Owner 1 ran inputs 0..; owner 2 took over at 2 (marker), ran
        // 2 and 3; owner 1, paused, woke up and wrote for input 5 and 2.
        let r = restore(
            4,
            &[
                w(1, Some(0), "a", Some("1")),
                w(1, Some(1), "a", Some("2")),
                Entry::Marker { epoch: 2 },
                w(2, Some(2), "a", Some("3")),
                w(2, Some(3), "b", Some("1")),
                w(1, Some(2), "a", Some("zombie")),
                w(1, Some(3), "c", Some("zombie")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "3"), ("b", "1")]));
        assert_eq!(r.counts.fenced, 2);
        // The zombie's keys are written back: "a" to its value, "c" away.
        assert_eq!(
            r.write_backs,
            vec![(b"a".to_vec(), Some(b"3".to_vec())), (b"c".to_vec(), None)]
        );
    }

    #[test]
    fn a_write_sent_again_out_of_order_does_not_win() {
        let r = restore(
            10,
            &[
                w(1, Some(5), "a", Some("new")),
                w(1, Some(4), "a", Some("old, resent")),
                // Two writes of one input: the later wins.
                w(1, Some(6), "b", Some("1")),
                w(1, Some(6), "b", Some("2")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "new"), ("b", "2")]));
        assert_eq!(r.counts.stale, 1);
    }

    #[test]
    fn write_backs_of_a_previous_restore_are_applied_and_then_overwritten() {
        // Owner 2's restore (committed 2) wrote "a" back to 1; it then ran
        // input 2 again (a=5) and 3; owner 3 restores with committed 4.
        let r = restore(
            4,
            &[
                w(1, Some(1), "a", Some("1")),
                w(1, Some(2), "a", Some("9")),
                Entry::Marker { epoch: 2 },
                w(2, None, "a", Some("1")),
                w(2, Some(2), "a", Some("5")),
                w(2, Some(3), "b", Some("1")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "5"), ("b", "1")]));
        assert!(r.write_backs.is_empty());
        let mut r = Restore::new(0);
        r.feed(Ok(Entry::Marker { epoch: 7 }));
        r.feed(Err(Foreign("test")));
        assert_eq!(r.max_epoch(), 7);
        assert_eq!(r.counts().foreign, 1);
    }
}
