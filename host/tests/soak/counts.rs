//! The soak's stateful function: `running-count` over the same input, keyed
//! state kept in changelogs. Every node keeps its state in memory, so each
//! node kill and restart is also a restart with an empty state folder.
//!
//! At the end the store, read over the API (`runnel state ls`), must hold
//! every key's number of input records, and the count topic must have
//! reached that number for every key and never gone past it. A key whose
//! last count to arrive is below its highest is counted and printed, not
//! failed on: outputs are at least once, and a node frozen past its session
//! can wake with outputs already handed to its producer, which land after
//! the next owner's (`docs/state.md`, "Outputs of a zombie").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use runnel_host::kafka::KafkaOptions;

use super::PARTITIONS;

/// Each key's last count and highest count, as the count topic says them.
pub type Counts = Arc<Mutex<HashMap<String, (u64, u64)>>>;

fn reader(kafka: &KafkaOptions, client: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client)
        .set("group.id", runnel_tests::kafka::unique("soak-counts"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Follows the count topic into `counts` until `reading` turns false.
pub fn follow(kafka: &KafkaOptions, topic: &str, counts: &Counts, reading: &AtomicBool) {
    let consumer = reader(kafka, "soak-count-reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    while reading.load(Ordering::SeqCst) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let Some(n) = std::str::from_utf8(m.payload().unwrap_or_default())
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let mut counts = counts.lock().unwrap();
        let entry = counts.entry(key).or_insert((0, 0));
        *entry = (n, entry.1.max(n));
    }
}

/// How many records of each key the input topic holds: read to its end.
pub fn input_counts(kafka: &KafkaOptions, topic: &str) -> HashMap<String, u64> {
    let consumer = reader(kafka, "soak-input-reader");
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .unwrap();
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut done = 0;
    while done < ends.len() {
        let Some(Ok(m)) = consumer.poll(Duration::from_secs(5)) else {
            continue;
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        *counts.entry(key).or_default() += 1;
        if ends.get(&m.partition()) == Some(&(m.offset() + 1)) {
            done += 1;
        }
    }
    counts
}

/// What is wrong with the count topic: keys counted past their records,
/// keys whose count never reached their number of records.
pub fn check(want: &HashMap<String, u64>, got: &HashMap<String, (u64, u64)>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (key, &n) in want {
        match got.get(key) {
            None => wrong.push(format!("count: key {key} ({n} records) has no count")),
            Some(&(_, max)) if max > n => wrong.push(format!(
                "count: key {key} was counted {max} times, more than its {n} records"
            )),
            Some(&(_, max)) if max < n => wrong.push(format!(
                "count: key {key}'s count reached {max}, not its {n} records"
            )),
            Some(_) => {}
        }
    }
    wrong.sort();
    wrong
}

/// Keys whose last count to arrive is below their highest: a late
/// duplicate of an older count (at least once), as `(key, last, highest)`.
pub fn late(got: &HashMap<String, (u64, u64)>) -> Vec<(String, u64, u64)> {
    let mut late: Vec<_> = got
        .iter()
        .filter(|(_, (last, max))| last < max)
        .map(|(k, &(last, max))| (k.clone(), last, max))
        .collect();
    late.sort();
    late
}

/// Reads `runnel state ls ... --as u64` output: `key<TAB>count` lines.
pub fn parse_store(listing: &str) -> HashMap<String, u64> {
    listing
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// What is wrong with the store: keys missing, or holding another count
/// than their number of records, and keys no record had.
pub fn check_store(want: &HashMap<String, u64>, store: &HashMap<String, u64>) -> Vec<String> {
    let mut wrong: Vec<String> = want
        .iter()
        .filter_map(|(key, &n)| match store.get(key) {
            None => Some(format!(
                "store: key {key} ({n} records) is not in the store"
            )),
            Some(&v) if v != n => Some(format!("store: key {key} holds {v}, not its {n} records")),
            Some(_) => None,
        })
        .collect();
    wrong.extend(
        store
            .keys()
            .filter(|k| !want.contains_key(*k))
            .map(|k| format!("store: key {k} is in the store, but no record had it")),
    );
    wrong.sort();
    wrong
}
