//! Keyed state on Kafka: runnel's keyed count against a hand-written
//! native rdkafka loop doing the same work, then restore and fail-over
//! with a million keys of state, in one run on the embedded broker.
//!
//! Part 1 counts 1,000,000 records over 10,000 keys (2 partitions) with
//! the `running-count` example, and with a native loop (run first and
//! last) that does what a
//! node does for it: poll, get and put the key's count in runnel's memory
//! store, produce the changelog write (runnel's key and headers) and the
//! output (runnel's three provenance headers), store an input offset only
//! once both are acknowledged (runnel's tracker), one request in flight
//! (as runnel's processors produce, to keep writes in order).
//!
//! Part 2 counts 1,000,000 records with distinct keys (1 partition), so
//! the changelog holds a million keys; stops the node; produces one more
//! record; and starts a fresh node (memory store, then a redb store under
//! a state directory), then restarts that last node on its state
//! directory, where its clean stop left a local checkpoint: the fail-over
//! time is from the node's start to that record's output, and the
//! restore's own report gives keys and changelog records per second.
//!
//! Run: `cargo bench -p runnel-bench --bench state_kafka`. Nothing is
//! asserted: the tables are the result.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_bench::cpu_seconds;
use runnel_bench::kafka::{Cpu, PROVENANCE, Setup, node_run, setup, wait_for};
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::tracker::Tracker;
use runnel_host::runner::{Deployment, Node};
use runnel_host::state::memory::MemoryStore;
use runnel_host::state::{Provenance, Store, Write, changelog};
use runnel_tests::guests;
use runnel_tests::kafka::{spec, unique};

const N: usize = 1_000_000;
const KEYS: usize = 10_000;
const PARTITIONS: i32 = 2;

struct Ctx {
    tracker: Arc<Mutex<Tracker>>,
}
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<(i32, i64)>;
    fn delivery(&self, r: &DeliveryResult<'_>, o: Box<(i32, i64)>) {
        if r.is_ok() {
            self.tracker.lock().expect("tracker").ack("in", o.0, o.1);
        }
    }
}

fn send(producer: &ThreadedProducer<Ctx>, mut r: BaseRecord<'_, [u8], [u8], Box<(i32, i64)>>) {
    while let Err((_, back)) = producer.send(r) {
        r = back;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The native keyed count (see the module documentation). Returns the time
/// between the first and the last output, and the CPU seconds used.
fn native_count(kafka: &KafkaOptions, input: &str, output: &str, log: &str) -> (Duration, f64) {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let producer: ThreadedProducer<Ctx> = kafka
        .producer()
        .set("max.in.flight.requests.per.connection", "1")
        .create_with_context(Ctx {
            tracker: tracker.clone(),
        })
        .expect("producer");
    let consumer: BaseConsumer = kafka
        .consumer(&unique("native-count"))
        .create()
        .expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let mut store = MemoryStore::default();
    let topic: Arc<str> = input.into();
    let cpu0 = cpu_seconds(None);
    let reader = {
        let (kafka, output) = (kafka.clone(), output.to_owned());
        std::thread::spawn(move || wait_for(&kafka, &output, N))
    };
    let mut seen = 0;
    while seen < N {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        seen += 1;
        let key = m.key().unwrap_or_default();
        let count = store
            .get("counts", key)
            .expect("get")
            .map_or(0, |v| postcard::from_bytes::<u64>(&v).expect("a count"))
            + 1;
        let value = postcard::to_allocvec(&count).expect("encoded");
        store
            .apply(&[Write {
                store: "counts".into(),
                key: key.to_vec(),
                value: Some(value.clone()),
                cause: Provenance {
                    topic: topic.clone(),
                    partition: m.partition(),
                    offset: m.offset(),
                },
            }])
            .expect("applied");
        tracker
            .lock()
            .expect("tracker")
            .add("in", m.partition(), m.offset(), 2);
        let cause = m.offset().to_string();
        let log_key = changelog::key(key);
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: changelog::EPOCH,
                value: Some("1"),
            })
            .insert(Header {
                key: changelog::CAUSE,
                value: Some(&cause),
            });
        send(
            &producer,
            BaseRecord::with_opaque_to(log, Box::new((m.partition(), m.offset())))
                .partition(m.partition())
                .key(log_key.as_slice())
                .payload(value.as_slice())
                .headers(headers),
        );
        let text = count.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(PROVENANCE.len());
        for (k, v) in PROVENANCE {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        send(
            &producer,
            BaseRecord::with_opaque_to(output, Box::new((m.partition(), m.offset())))
                .key(key)
                .payload(text.as_bytes())
                .headers(headers),
        );
        if seen % 256 == 0 {
            let moved = tracker.lock().expect("tracker").take_moved();
            let mut tpl = TopicPartitionList::new();
            for (_, p, o) in moved {
                let _ = tpl.add_partition_offset(input, p, Offset::Offset(o));
            }
            let _ = consumer.store_offsets(&tpl);
        }
    }
    let (first, last) = reader.join().expect("reader");
    let _ = producer.flush(Duration::from_secs(30));
    (last - first, cpu_seconds(None) - cpu0)
}

fn count_spec(input: &str, output: &str, workers: usize) -> runnel_host::config::DeploymentSpec {
    let mut s = spec("count", guests::RUNNING_COUNT, input, output, &[]);
    s.stores = vec!["counts".into()];
    s.batch_size = 256;
    s.linger_ms = 5;
    s.timeout_ms = 5000;
    s.workers = workers;
    s
}

/// A reader of `topic` from its end now on.
fn reader_at_end(kafka: &KafkaOptions, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = kafka
        .consumer(&unique("tail"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    // Each partition's end, read now: a logical `Offset::End` is resolved
    // later, and falls back to the reset policy (the start) if that fails.
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("the end of the partition");
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(high));
    }
    c.assign(&tpl).expect("assign");
    c
}

fn main() {
    let Setup {
        runtime: _runtime,
        broker: _broker,
        kafka,
        input,
        outputs,
    } = setup(PARTITIONS, 6);
    let t = Instant::now();
    let keyed = (0..N).map(|i| (format!("k{}", i % KEYS), format!("r{i}")));
    produce_keyed(&kafka, &input, keyed);
    println!(
        "runnel keyed-state benchmark on the embedded Tansu broker in this process (input produced in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    println!();
    println!("Part 1: a keyed count of {N} records over {KEYS} keys, {PARTITIONS} partitions");
    println!();
    // The native loop runs first and last, and runnel is measured against
    // the two runs' mean: each row adds two million records to the broker
    // in this process, which then serves later rows a little slower.
    let native = native_count(&kafka, &input, &outputs[0], &outputs[1]);
    let process = |(d, cpu): (Duration, Cpu)| (d, cpu.process);
    let one = process(node_run(&kafka, count_spec(&input, &outputs[2], 1), N));
    let two = process(node_run(&kafka, count_spec(&input, &outputs[3], 2), N));
    let native_again = native_count(&kafka, &input, &outputs[4], &outputs[5]);
    println!("| keyed count | records/s | CPU µs/record | runnel / native (mean of both runs) |");
    println!("|---|---:|---:|---:|");
    let rate = |d: Duration| N as f64 / d.as_secs_f64();
    let native_rate = (rate(native.0) + rate(native_again.0)) / 2.0;
    for (name, (d, cpu)) in [
        (
            "native loop (memory store, changelog, 3 headers), first",
            native,
        ),
        ("runnel, 1 worker", one),
        ("runnel, 2 workers", two),
        ("native loop, last", native_again),
    ] {
        let ratio = if name.starts_with("native") {
            String::new()
        } else {
            format!("{:.2}", rate(d) / native_rate)
        };
        println!(
            "| {name} | {:.0} | {:.1} | {ratio} |",
            rate(d),
            cpu * 1e6 / N as f64
        );
    }
    println!();

    // Part 2: a million keys of state in one partition.
    let input = unique("bench-keys");
    let output = unique("bench-keys-out");
    _runtime.block_on(runnel_tests::kafka::topics(&kafka, &[&input, &output], 1));
    produce_keyed(
        &kafka,
        &input,
        (0..N).map(|i| (format!("key-{i:09}"), "x".to_owned())),
    );
    let spec = count_spec(&input, &output, 1);
    let name = spec.name.clone();
    let (d, _) = node_run(&kafka, spec.clone(), N);
    println!(
        "Part 2: {N} distinct keys in one partition, counted at {:.0} records/s",
        rate(d)
    );
    println!();
    println!(
        "| a fresh node takes the partition over | fail-over (start to the next output) | restore | keys/s | changelog records/s |"
    );
    println!("|---|---:|---:|---:|---:|");
    // The last row restarts the node of the row before on its state
    // folder, which the clean stop left with a local checkpoint.
    let dir = tempfile::tempdir().expect("a state dir");
    for (row, disk, fresh) in [
        ("memory store", false, true),
        ("redb store (--state-dir)", true, true),
        (
            "redb store, restarted on its folder (local checkpoint)",
            true,
            false,
        ),
    ] {
        if fresh {
            for e in std::fs::read_dir(dir.path()).expect("a state dir") {
                let path = e.expect("an entry").path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
        let tail = reader_at_end(&kafka, &output, 1);
        produce_keyed(
            &kafka,
            &input,
            std::iter::once((format!("after-{row}"), "x".to_owned())),
        );
        let d = Deployment::load(&runnel_tests::engine(None), spec.clone()).expect("loads");
        let started = Instant::now();
        let node = Node::new(&kafka).with_state_dir(disk.then(|| dir.path().to_owned()));
        node.add(d).expect("starts");
        let deadline = Instant::now() + Duration::from_secs(600);
        let wanted = format!("after-{row}");
        loop {
            assert!(Instant::now() < deadline, "no output after the fail-over");
            if let Some(Ok(m)) = tail.poll(Duration::from_millis(20))
                && m.key() == Some(wanted.as_bytes())
            {
                break;
            }
        }
        let failover = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(30);
        let restore = loop {
            let status = node.status();
            let s = status.iter().find(|s| s.name == name).expect("runs");
            if let Some(r) = s.last_restore.clone() {
                break r;
            }
            assert!(Instant::now() < deadline, "no restore report: {s:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        node.stop();
        let secs = restore.ms / 1e3;
        println!(
            "| {row} | {:.2} s | {:.2} s ({} keys, {} records) | {:.0} | {:.0} |",
            failover.as_secs_f64(),
            secs,
            restore.keys,
            restore.counts.records,
            restore.keys as f64 / secs,
            restore.counts.records as f64 / secs
        );
    }
}

/// Produces (key, value) records as fast as the client goes.
fn produce_keyed(
    kafka: &KafkaOptions,
    topic: &str,
    records: impl Iterator<Item = (String, String)>,
) {
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        kafka.producer().create().expect("producer");
    for (k, v) in records {
        let mut r = BaseRecord::to(topic)
            .key(k.as_bytes())
            .payload(v.as_bytes());
        while let Err((_, back)) = p.send(r) {
            r = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
}
