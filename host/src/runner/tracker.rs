//! Which input offsets may be committed.
//!
//! An input record is done when every record it produced (outputs, or its
//! dead letter) has been acknowledged by the broker. Records of a partition
//! are processed in order, but acknowledgements arrive in any order; the
//! committable offset of a partition is one past the longest prefix of done
//! records. Nothing past an unacknowledged output is ever committed: that is
//! the at-least-once guarantee.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

#[derive(Debug, Default)]
struct Partition {
    /// Offsets in processing order, with their unacknowledged output count.
    pending: VecDeque<(i64, u32)>,
    /// The next offset to consume: what a commit stores.
    committable: Option<i64>,
    /// Whether `committable` moved since it was last taken.
    moved: bool,
}

impl Partition {
    fn advance(&mut self) {
        while let Some(&(offset, 0)) = self.pending.front() {
            self.pending.pop_front();
            self.committable = Some(offset + 1);
            self.moved = true;
        }
    }
}

/// Offsets in flight, per (topic, partition). Keyed by topic first, so that
/// the calls made for every record look a partition up without allocating,
/// and hashed with Fx rather than SipHash: the keys are the deployment's own
/// input topics and partitions.
#[derive(Debug, Default)]
pub struct Tracker {
    topics: FxHashMap<String, FxHashMap<i32, Partition>>,
}

impl Tracker {
    /// Records that `offset` was processed and produced `outputs` records
    /// still to be acknowledged. Offsets of a partition must come in order.
    pub fn add(&mut self, topic: &str, partition: i32, offset: i64, outputs: u32) {
        self.add_many(topic, partition, [(offset, outputs)]);
    }

    /// [`Tracker::add`] for a run of records of one partition, `(offset,
    /// outputs)` in order: the partition is looked up once.
    pub fn add_many(
        &mut self,
        topic: &str,
        partition: i32,
        records: impl IntoIterator<Item = (i64, u32)>,
    ) {
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_owned(), FxHashMap::default());
        }
        let p = self
            .topics
            .get_mut(topic)
            .expect("inserted above")
            .entry(partition)
            .or_default();
        for (offset, outputs) in records {
            debug_assert!(
                p.pending.back().is_none_or(|&(last, _)| last < offset),
                "offsets out of order"
            );
            p.pending.push_back((offset, outputs));
        }
        p.advance();
    }

    /// One output of `offset` was acknowledged.
    pub fn ack(&mut self, topic: &str, partition: i32, offset: i64) {
        let Some(p) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        else {
            return;
        };
        // Offsets of a partition are consecutive but for the log's gaps, so
        // an offset is usually where its distance from the first says; the
        // search (cache misses over up to the in-flight cap's entries) is
        // for the others.
        let guess = p.pending.front().and_then(|&(first, _)| {
            let i = usize::try_from(offset.checked_sub(first)?).ok()?;
            (p.pending.get(i)?.0 == offset).then_some(i)
        });
        let found = guess.map_or_else(|| p.pending.binary_search_by_key(&offset, |&(o, _)| o), Ok);
        if let Ok(i) = found {
            p.pending[i].1 = p.pending[i].1.saturating_sub(1);
            p.advance();
        }
    }

    /// The partitions whose committable offset moved since the last call.
    pub fn take_moved(&mut self) -> Vec<(String, i32, i64)> {
        let mut moved = Vec::new();
        for (topic, partitions) in &mut self.topics {
            for (partition, p) in partitions {
                if p.moved {
                    p.moved = false;
                    if let Some(o) = p.committable {
                        moved.push((topic.clone(), *partition, o));
                    }
                }
            }
        }
        moved
    }

    /// Forgets a partition (revoked), returning its committable offset.
    pub fn remove(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let partitions = self.topics.get_mut(topic)?;
        let p = partitions.remove(&partition)?;
        if partitions.is_empty() {
            self.topics.remove(topic);
        }
        p.committable
    }

    /// Outputs not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> u64 {
        self.topics
            .values()
            .flat_map(FxHashMap::values)
            .flat_map(|p| &p.pending)
            .map(|&(_, n)| u64::from(n))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_acknowledged_prefix() {
        let mut t = Tracker::default();
        t.add("t", 0, 10, 2);
        t.add("t", 0, 11, 0);
        t.add("t", 0, 12, 1);
        assert!(t.take_moved().is_empty());
        t.ack("t", 0, 12);
        assert!(t.take_moved().is_empty(), "12 is done but 10 is not");
        t.ack("t", 0, 10);
        assert!(t.take_moved().is_empty());
        t.ack("t", 0, 10);
        assert_eq!(t.take_moved(), vec![("t".to_owned(), 0, 13)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn records_without_outputs_are_done_at_once() {
        let mut t = Tracker::default();
        t.add("t", 1, 5, 0);
        assert_eq!(t.take_moved(), vec![("t".to_owned(), 1, 6)]);
        assert_eq!(t.remove("t", 1), Some(6));
        assert_eq!(t.remove("t", 1), None);
        t.ack("t", 1, 5); // a late ack of a forgotten partition is ignored
    }

    #[test]
    fn a_run_added_at_once_is_tracked_as_one_by_one() {
        let mut t = Tracker::default();
        t.add_many("t", 0, [(10, 0), (11, 2), (12, 0)]);
        assert_eq!(
            t.take_moved(),
            vec![("t".to_owned(), 0, 11)],
            "10 has no outputs"
        );
        t.add_many("t", 0, [(13, 1)]);
        t.ack("t", 0, 11);
        t.ack("t", 0, 11);
        assert_eq!(t.take_moved(), vec![("t".to_owned(), 0, 13)], "13 waits");
        t.ack("t", 0, 13);
        assert_eq!(t.take_moved(), vec![("t".to_owned(), 0, 14)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn acks_find_their_offset_across_the_logs_gaps() {
        // A compacted log, or transaction markers: offsets that skip.
        let mut t = Tracker::default();
        t.add_many("t", 0, [(10, 1), (12, 1), (13, 1), (20, 1)]);
        // 12 is 2 past the first, where 13 is: searched, as are 13 (3 past,
        // where 20 is) and 20 (past the end).
        for offset in [12, 13, 20] {
            t.ack("t", 0, offset);
        }
        // Not in flight: before the first, in a gap, past the last.
        for offset in [9, 11, 15, 21] {
            t.ack("t", 0, offset);
        }
        assert!(t.take_moved().is_empty(), "10 is not acknowledged");
        assert_eq!(t.in_flight(), 1);
        t.ack("t", 0, 10);
        assert_eq!(t.take_moved(), vec![("t".to_owned(), 0, 21)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_ack_in_order_is_found_where_its_offset_says() {
        let mut t = Tracker::default();
        t.add_many("t", 0, (100..1100).map(|o| (o, 2)));
        for o in 100..1100 {
            t.ack("t", 0, o);
        }
        assert_eq!(t.in_flight(), 1000);
        for o in (100..1100).rev() {
            t.ack("t", 0, o);
        }
        assert_eq!(t.take_moved(), vec![("t".to_owned(), 0, 1100)]);
        assert_eq!(t.in_flight(), 0);
    }
}
