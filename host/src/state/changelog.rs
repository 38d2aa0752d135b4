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
//! per key, the write that is the **newest committed word** on the key:
//!
//! - each write says how far into the input its value reaches: a write
//!   caused by input `c` holds the key's value after every input up to and
//!   including `c` (it reaches `c + 1`); a write-back (below) holds the
//!   value before the offset in its [`UPTO`] header;
//! - writes that reach past the offset the group committed (where this
//!   owner starts reading the input) are skipped: those inputs run again,
//!   and write again. So state changes apply once per input;
//! - of the others, the one that reaches furthest wins; on a tie, the one of
//!   the newer owner epoch, then the later in the log.
//!
//! **Why reach, not owner, decides.** Every owner of a partition runs the
//! same inputs in the same order from a correct state (its own restore), so
//! what any of them wrote for input `c` is the key's value after input `c`
//! (for a processor that is deterministic, as the state model asks). That
//! holds for an owner that lost the partition without knowing it (a paused
//! node, a node that had not yet heard of a rebalance, a zombie) as much as
//! for the rightful one. It is what makes restore exact whichever owner's
//! commit the group kept: a commit says that the committing owner's writes
//! for every input before it are in the log, and those are the writes this
//! rule picks. An older rule fenced a former owner's writes by epoch; when
//! that owner's commit stood anyway (the embedded broker's missing join
//! barrier, found by the chaos soak) the state lost its increments.
//!
//! **Owner epochs.** Each owner takes an epoch one above every epoch in the
//! changelog and writes a marker with it before it reads the rest. Epochs
//! break ties and tell, in the restore's counts, writes of a former owner
//! that came after a newer owner's marker (`late`).
//!
//! **Write-backs.** Compaction keeps only the last record per key. When the
//! last record of a key is not the one restore kept (a write of an input
//! that was not committed, or one sent again out of order), a later
//! compaction would keep that one and drop the value restore used. So the
//! new owner writes back the restored value (or a delete) of every such
//! key, with its epoch and an [`UPTO`] of its committed offset, before it
//! runs any input: the log's last word on each key is then again a
//! committed one.

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
/// Header of a write-back: the value is the key's before this input offset
/// (decimal), the committed offset of the restore that wrote it back.
pub const UPTO: &str = "runnel-upto";

/// The changelog topic of one store of a deployment.
pub fn topic(deployment: &str, store: &str) -> String {
    topic_at(deployment, store, 0)
}

/// The changelog topic of a store in state generation `generation`: the
/// first is [`topic`]'s, `runnel.<deployment>.<store>.changelog`; each swap
/// that resets the state starts the next, `runnel.<deployment>.<store>.g<N>.changelog`.
pub fn topic_at(deployment: &str, store: &str, generation: u64) -> String {
    match generation {
        0 => format!("runnel.{deployment}.{store}.changelog"),
        g => format!("runnel.{deployment}.{store}.g{g}.changelog"),
    }
}

/// The longest topic name Kafka takes.
pub const MAX_TOPIC_NAME: usize = 249;

/// Checks that every store's changelog topic name fits Kafka's limit.
pub fn check_topic_names(deployment: &str, stores: &[String]) -> Result<(), String> {
    check_topic_names_at(deployment, stores, 0)
}

/// [`check_topic_names`] in state generation `generation`.
pub fn check_topic_names_at(
    deployment: &str,
    stores: &[String],
    generation: u64,
) -> Result<(), String> {
    for store in stores {
        let t = topic_at(deployment, store, generation);
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
    /// A write whose value is the key's before input offset `upto` (see
    /// the module documentation).
    Write {
        epoch: u64,
        upto: i64,
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
}

/// Why a changelog record is not runnel's: someone else wrote to the topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a changelog record of runnel's: {0}")]
pub struct Foreign(pub &'static str);

/// The values of a changelog record's headers runnel reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tags<'a> {
    pub epoch: Option<&'a [u8]>,
    pub cause: Option<&'a [u8]>,
    pub upto: Option<&'a [u8]>,
}

impl<'a> Tags<'a> {
    /// Keeps a header's value if it is one of runnel's.
    pub fn take(&mut self, name: &str, value: Option<&'a [u8]>) {
        match name {
            EPOCH => self.epoch = value,
            CAUSE => self.cause = value,
            UPTO => self.upto = value,
            _ => {}
        }
    }
}

/// Decodes a record from its key, value and runnel's headers.
pub fn decode<'a>(
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    tags: Tags<'_>,
) -> Result<Entry<'a>, Foreign> {
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
    let offset = |b: &[u8]| number(b).and_then(|n| i64::try_from(n).ok());
    let epoch = number(tags.epoch.ok_or(Foreign("no epoch header"))?)
        .ok_or(Foreign("the epoch header is not a number"))?;
    let key = key.ok_or(Foreign("no key"))?;
    match key.split_first() {
        Some((&KEY_WRITE, store_key)) => {
            let upto = match (tags.cause, tags.upto) {
                (Some(c), _) => offset(c)
                    .and_then(|c| c.checked_add(1))
                    .ok_or(Foreign("the cause header is not an offset"))?,
                (None, Some(u)) => offset(u).ok_or(Foreign("the upto header is not an offset"))?,
                // A write-back of a version that did not say how far it
                // reached: before any input.
                (None, None) => 0,
            };
            Ok(Entry::Write {
                epoch,
                upto,
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
    /// Writes of an owner with an older epoch after a newer one's marker
    /// (kept or skipped by the same rules as any other).
    pub late: u64,
    /// Writes that reach less far into the input than one already kept
    /// for the key.
    pub stale: u64,
    /// Records that are not runnel's.
    pub foreign: u64,
}

#[derive(Debug)]
struct Last {
    upto: i64,
    epoch: u64,
    value: Option<Vec<u8>>,
}

/// Rebuilds one store's state of one partition from its changelog, read in
/// order (see the module documentation).
#[derive(Debug)]
pub struct Restore {
    committed: i64,
    max_epoch: u64,
    /// The write kept per key.
    last: HashMap<Vec<u8>, Last>,
    /// The keys whose last record in the log is not the one kept.
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
        let (epoch, upto, key, value) = match entry {
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
                upto,
                key,
                value,
            }) => (epoch, upto, key, value),
        };
        if epoch < self.max_epoch {
            self.counts.late += 1;
        }
        self.max_epoch = self.max_epoch.max(epoch);
        if upto > self.committed {
            self.counts.uncommitted += 1;
            self.touched.insert(key.to_vec());
            return;
        }
        if let Some(last) = self.last.get(key)
            && (upto, epoch) < (last.upto, last.epoch)
        {
            self.counts.stale += 1;
            // The same word on the key from an older owner (one that ran the
            // input too) may stay the last record: it says the same.
            if (upto, value) != (last.upto, last.value.as_deref()) {
                self.touched.insert(key.to_vec());
            }
            return;
        }
        self.counts.applied += 1;
        self.touched.remove(key);
        self.last.insert(
            key.to_vec(),
            Last {
                upto,
                epoch,
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

    /// A write caused by input `cause`.
    fn w<'a>(epoch: u64, cause: i64, key: &'a str, value: Option<&'a str>) -> Entry<'a> {
        Entry::Write {
            epoch,
            upto: cause + 1,
            key: key.as_bytes(),
            value: value.map(str::as_bytes),
        }
    }

    /// A write-back of a restore that started at input `upto`.
    fn back<'a>(epoch: u64, upto: i64, key: &'a str, value: Option<&'a str>) -> Entry<'a> {
        Entry::Write {
            epoch,
            upto,
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

    fn tags<'a>(epoch: &'a [u8], cause: Option<&'a [u8]>, upto: Option<&'a [u8]>) -> Tags<'a> {
        Tags {
            epoch: Some(epoch),
            cause,
            upto,
        }
    }

    #[test]
    fn records_round_trip_and_foreign_ones_are_named() {
        let k = key(b"user");
        assert_eq!(k[0], KEY_WRITE);
        assert_eq!(
            decode(Some(&k), Some(b"v"), tags(b"3", Some(b"17"), None)),
            Ok(w(3, 17, "user", Some("v")))
        );
        // A write-back says how far it reaches; one of an older version
        // that did not, reaches nothing.
        assert_eq!(
            decode(Some(&k), None, tags(b"3", None, Some(b"40"))),
            Ok(back(3, 40, "user", None))
        );
        assert_eq!(
            decode(Some(&k), None, tags(b"3", None, None)),
            Ok(back(3, 0, "user", None))
        );
        assert_eq!(
            decode(Some(KEY_MARKER), Some(b""), tags(b"9", None, None)),
            Ok(Entry::Marker { epoch: 9 })
        );
        let mut t = Tags::default();
        for (name, value) in [(EPOCH, "2"), ("other", "x"), (CAUSE, "5"), (UPTO, "1")] {
            t.take(name, Some(value.as_bytes()));
        }
        assert_eq!(decode(Some(&k), None, t), Ok(back(2, 6, "user", None)));
        assert!(decode(Some(b"\x07x"), None, tags(b"1", None, None)).is_err());
        assert!(decode(None, None, tags(b"1", None, None)).is_err());
        assert!(decode(Some(&k), None, Tags::default()).is_err());
        assert!(decode(Some(&k), None, tags(b"\xff", None, None)).is_err());
        assert!(decode(Some(&k), None, tags(b"1", Some(b"-5"), None)).is_err());
        assert!(decode(Some(&k), None, tags(b"1", None, Some(b"x"))).is_err());
        // The last offset there is cannot be a cause: it reaches past it.
        let max = i64::MAX.to_string();
        assert!(decode(Some(&k), None, tags(b"1", Some(max.as_bytes()), None)).is_err());
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
                w(1, 0, "a", Some("1")),
                w(1, 1, "b", Some("1")),
                w(1, 2, "a", Some("2")),
                w(1, 3, "a", Some("3")),
                w(1, 4, "c", Some("1")),
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
                w(1, 0, "a", Some("1")),
                w(1, 1, "a", None),
                w(1, 2, "b", Some("1")),
                w(1, 3, "b", None),
                w(1, 4, "b", Some("2")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("b", "2")]));
        assert!(r.write_backs.is_empty());
    }

    #[test]
    fn a_former_owners_writes_count_when_its_commit_stood() {
        // What the chaos soak found. Owner 1 ran inputs from 0. Owner 2
        // took the partition at 2 (its marker), ran input 2, and lost it
        // again; owner 1 never learnt it had lost it, went on with inputs 2
        // to 5 and committed 6. The next owner must see every one of owner
        // 1's counts: fencing them by epoch left the count short.
        let r = restore(
            6,
            &[
                w(1, 0, "a", Some("1")),
                w(1, 1, "a", Some("2")),
                Entry::Marker { epoch: 2 },
                w(2, 2, "a", Some("3")),
                w(1, 2, "a", Some("3")),
                w(1, 3, "a", Some("4")),
                w(1, 4, "b", Some("1")),
                w(1, 5, "a", Some("5")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "5"), ("b", "1")]));
        assert_eq!(r.counts.late, 4);
        assert!(r.write_backs.is_empty());
    }

    #[test]
    fn a_former_owners_writes_past_the_commit_are_skipped_and_written_back() {
        // Owner 2 took over at 2 and committed 4; owner 1, paused, woke up
        // and ran inputs 2 to 5 again, its commit refused. Its writes below
        // 4 are what owner 2 wrote; those past it do not count.
        let r = restore(
            4,
            &[
                w(1, 0, "a", Some("1")),
                w(1, 1, "a", Some("2")),
                Entry::Marker { epoch: 2 },
                back(2, 2, "a", Some("2")),
                w(2, 2, "a", Some("3")),
                w(2, 3, "b", Some("1")),
                w(1, 2, "a", Some("3")),
                w(1, 3, "b", Some("1")),
                w(1, 4, "a", Some("4")),
                w(1, 5, "c", Some("1")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "3"), ("b", "1")]));
        assert_eq!(r.counts.uncommitted, 2);
        // The keys whose last record was skipped: "a" back to its value,
        // "c" away.
        assert_eq!(
            r.write_backs,
            vec![(b"a".to_vec(), Some(b"3".to_vec())), (b"c".to_vec(), None)]
        );
    }

    #[test]
    fn on_a_tie_the_newer_owner_wins() {
        let r = restore(
            10,
            &[
                Entry::Marker { epoch: 2 },
                w(2, 4, "a", Some("newer")),
                w(1, 4, "a", Some("older")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "newer")]));
        assert_eq!(r.counts.stale, 1);
        // Its last record is not the one kept: written back.
        assert_eq!(
            r.write_backs,
            vec![(b"a".to_vec(), Some(b"newer".to_vec()))]
        );
    }

    #[test]
    fn a_write_sent_again_out_of_order_does_not_win() {
        let r = restore(
            10,
            &[
                w(1, 5, "a", Some("new")),
                w(1, 4, "a", Some("old, resent")),
                // Two writes of one input: the later wins.
                w(1, 6, "b", Some("1")),
                w(1, 6, "b", Some("2")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "new"), ("b", "2")]));
        assert_eq!(r.counts.stale, 1);
        assert_eq!(r.write_backs, vec![(b"a".to_vec(), Some(b"new".to_vec()))]);
    }

    #[test]
    fn write_backs_of_a_previous_restore_are_applied_and_then_overwritten() {
        // Owner 2's restore (committed 2) wrote "a" back to 1; it then ran
        // input 2 again (a=5) and 3; owner 3 restores with committed 4.
        let r = restore(
            4,
            &[
                w(1, 1, "a", Some("1")),
                w(1, 2, "a", Some("9")),
                Entry::Marker { epoch: 2 },
                back(2, 2, "a", Some("1")),
                w(2, 2, "a", Some("5")),
                w(2, 3, "b", Some("1")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "5"), ("b", "1")]));
        assert!(r.write_backs.is_empty());
        // With committed 2 again, the write-back is the word on "a".
        let r = restore(
            2,
            &[
                w(1, 1, "a", Some("1")),
                w(1, 2, "a", Some("9")),
                Entry::Marker { epoch: 2 },
                back(2, 2, "a", Some("1")),
            ],
        );
        assert_eq!(entries(&r), kv(&[("a", "1")]));
        assert!(r.write_backs.is_empty());
        let mut r = Restore::new(0);
        r.feed(Ok(Entry::Marker { epoch: 7 }));
        r.feed(Err(Foreign("test")));
        assert_eq!(r.max_epoch(), 7);
        assert_eq!(r.counts().foreign, 1);
    }
}
