//! The embedded broker as a consumer sees it: a fetch from an offset inside
//! a record batch returns that batch, and the client skips the records
//! before the offset, as Kafka does. Tansu 0.6.0 returned only the batches
//! after it, so a consumer resuming from a committed offset inside a batch
//! lost the rest of the batch, or, inside the last one, every record until
//! the next batch came (see host/vendor/README.md).

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use runnel_tests::kafka::{broker, topics, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_inside_a_batch_returns_the_rest_of_that_batch() {
    let (_broker, kafka) = broker().await;
    let topic = unique("batched");
    topics(&kafka, &[&topic], 1).await;
    // Offsets 0..=22 in one batch (linger), then 23 in a batch of its own.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "200")
        .create()
        .unwrap();
    for i in 0..23 {
        let value = format!("v{i}");
        send(&producer, &topic, &value);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    send(&producer, &topic, "v23");
    producer.flush(Duration::from_secs(30)).unwrap();

    for start in [0, 3, 20, 22, 23] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", unique("reader"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(start))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.last() != Some(&23) && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                seen.push(m.offset());
            }
        }
        let want: Vec<i64> = (start..=23).collect();
        assert_eq!(seen, want, "fetching from offset {start}");
    }
}

/// The end of a partition (what `ListOffsets` answers for "latest", and so
/// librdkafka's watermarks) is one past its last record. Tansu 0.6.0
/// answered one past the base offset of the newest batch: with a batch of
/// 23 records, 1 (see host/vendor/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_partition_is_one_past_its_last_record() {
    let (_broker, kafka) = broker().await;
    let topic = unique("batched");
    topics(&kafka, &[&topic], 1).await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "200")
        .create()
        .unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", unique("reader"))
        .create()
        .unwrap();
    let end = || {
        consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .unwrap()
    };
    assert_eq!(end(), (0, 0), "empty");
    let mut sent = 0;
    for batch in [23, 1, 7] {
        for i in 0..batch {
            let value = format!("v{i}");
            send(&producer, &topic, &value);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        sent += batch;
        assert_eq!(end(), (0, sent), "after a batch of {batch}");
    }
}

/// A fetch answers as soon as records arrive, and one that finds none waits
/// for them (up to `fetch.wait.max.ms`), as Kafka's does. Tansu 0.6.0 slept
/// out the rest of the wait after every look, records found or not: with a
/// 20 s wait, a record produced while the consumer waited arrived 10 to 20
/// s later (see host/vendor/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_answers_when_records_arrive() {
    let (_broker, kafka) = broker().await;
    let topic = unique("long-poll");
    topics(&kafka, &[&topic], 1).await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", unique("reader"))
        .set("fetch.wait.max.ms", "20000")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    // Its first fetch finds nothing and waits.
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(2) {
        assert!(consumer.poll(Duration::from_millis(100)).is_none());
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for i in 0..3 {
        let sent = Instant::now();
        let value = format!("v{i}");
        send(&producer, &topic, &value);
        producer.flush(Duration::from_secs(30)).unwrap();
        let got = loop {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                break m.unwrap().offset();
            }
            assert!(
                sent.elapsed() < Duration::from_secs(8),
                "record {i} did not arrive within 8 s of its produce, with the consumer's fetch \
                 waiting up to 20 s: the broker did not answer the waiting fetch when it came"
            );
        };
        assert_eq!(got, i);
    }
}

/// Produces `value` to partition 0 of `topic`.
fn send(producer: &BaseProducer, topic: &str, value: &str) {
    producer
        .send(BaseRecord::<(), str>::to(topic).partition(0).payload(value))
        .map_err(|(e, _)| e)
        .unwrap();
}
