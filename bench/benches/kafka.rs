//! runnel against a hand-written native rdkafka loop, in one run, on the same
//! embedded broker, with the same client settings (runnel's): throughput and
//! CPU per record for an identity function and for a filter.
//!
//! The native loop does the same work as a node: poll, run the function,
//! produce with a delivery callback, store an offset only after its output is
//! acknowledged (runnel's own tracker), commit periodically. The broker and
//! the reader that counts outputs run in this process too, so "CPU/record"
//! includes them — equally for every row.
//!
//! Run: `cargo bench -p runnel-bench --bench kafka`. Nothing is asserted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::tracker::Tracker;
use runnel_host::runner::{Deployment, Node};
use runnel_tests::kafka::{broker, spec, topics, unique};
use runnel_tests::{engine, guests};

const N: usize = 200_000;
const PARTITIONS: i32 = 2;
/// A provenance header of the size runnel writes (`sha256:` and 64 hex digits).
const MODULE_HEADER: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (clock ticks of 10 ms).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{{\"n\":{},\"pad\":\"", i % 100).into_bytes();
    v.resize(98, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// Produces the input as fast as the client goes.
fn produce_input(kafka: &KafkaOptions, topic: &str) {
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        kafka.producer().create().expect("producer");
    for i in 0..N {
        let v = value(i);
        let k = format!("k{i}");
        let mut r = BaseRecord::to(topic).key(k.as_bytes()).payload(&v);
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
}

/// Counts records arriving on `topic` until `expect`, returning when the
/// first and the last arrived: the rate between them is the steady state,
/// without the time it takes to join the group.
fn wait_for(kafka: &KafkaOptions, topic: &str, expect: usize) -> (Instant, Instant) {
    let c: BaseConsumer = kafka
        .consumer(&unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    let mut n = 0;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while n < expect && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    assert_eq!(n, expect, "outputs on {topic}");
    (first.unwrap_or_else(Instant::now), Instant::now())
}

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

/// The native loop: same settings, same at-least-once bookkeeping.
fn native(
    kafka: &KafkaOptions,
    input: &str,
    output: &str,
    keep: fn(&[u8]) -> bool,
    expect: usize,
    provenance: bool,
) -> (Duration, f64) {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let producer: ThreadedProducer<Ctx> = kafka
        .producer()
        .create_with_context(Ctx {
            tracker: tracker.clone(),
        })
        .expect("producer");
    let consumer: BaseConsumer = kafka
        .consumer(&unique("native"))
        .create()
        .expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let cpu0 = cpu_seconds();
    let reader = {
        let (kafka, output) = (kafka.clone(), output.to_owned());
        std::thread::spawn(move || wait_for(&kafka, &output, expect))
    };
    let mut seen = 0;
    while seen < N {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        seen += 1;
        let v = m.payload().unwrap_or_default();
        let kept = keep(v);
        tracker
            .lock()
            .expect("tracker")
            .add("in", m.partition(), m.offset(), u32::from(kept));
        if kept {
            let mut r = BaseRecord::with_opaque_to(output, Box::new((m.partition(), m.offset())))
                .payload(v);
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if provenance {
                // The two headers runnel adds to every output.
                r = r.headers(
                    OwnedHeaders::new_with_capacity(2)
                        .insert(Header {
                            key: "runnel-deployment",
                            value: Some("bench"),
                        })
                        .insert(Header {
                            key: "runnel-module",
                            value: Some(MODULE_HEADER),
                        }),
                );
            }
            while let Err((_, back)) = producer.send(r) {
                r = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
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
    (last - first, cpu_seconds() - cpu0)
}

fn runnel(
    kafka: &KafkaOptions,
    input: &str,
    output: &str,
    module: &str,
    config: &[(&str, &str)],
    expect: usize,
    workers: usize,
) -> (Duration, f64) {
    let engine = engine(None);
    let mut spec = spec("bench", module, input, output, config);
    spec.batch_size = 256;
    spec.linger_ms = 5;
    spec.timeout_ms = 5000;
    spec.workers = workers;
    spec.workers = workers;
    let d = Deployment::load(&engine, spec).expect("loads");
    let cpu0 = cpu_seconds();
    let node = Node::start(kafka, vec![d]).expect("starts");
    let (first, last) = wait_for(kafka, output, expect);
    let cpu = cpu_seconds() - cpu0;
    node.stop();
    (last - first, cpu)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (_broker, kafka) = rt.block_on(broker());
    let input = unique("bench-in");
    let outs: Vec<String> = (0..8).map(|i| unique(&format!("bench-out{i}"))).collect();
    let mut all: Vec<&str> = vec![&input];
    all.extend(outs.iter().map(String::as_str));
    rt.block_on(topics(&kafka, &all, PARTITIONS));
    let t = Instant::now();
    produce_input(&kafka, &input);
    println!(
        "runnel Kafka benchmark: {N} records of 100 bytes, {PARTITIONS} partitions, embedded Tansu broker in this process"
    );
    println!("(input produced in {:.2} s)", t.elapsed().as_secs_f64());
    println!();
    let kept = N / 2;
    let filter_cfg: &[(&str, &str)] = &[("field", "n"), ("min", "50")];
    let f = guests::THRESHOLD_FILTER;
    let rows = [
        (
            "identity, native rdkafka loop",
            native(&kafka, &input, &outs[0], |_| true, N, false),
            None,
        ),
        (
            "identity, runnel, 1 worker",
            runnel(&kafka, &input, &outs[1], guests::IDENTITY_MAP, &[], N, 1),
            Some(0),
        ),
        (
            "identity, runnel, 2 workers",
            runnel(&kafka, &input, &outs[2], guests::IDENTITY_MAP, &[], N, 2),
            Some(0),
        ),
        (
            "filter n >= 50, native rdkafka loop",
            native(&kafka, &input, &outs[3], keep_half, kept, false),
            None,
        ),
        (
            "filter n >= 50, runnel, 1 worker",
            runnel(&kafka, &input, &outs[4], f, filter_cfg, kept, 1),
            Some(3),
        ),
        (
            "filter n >= 50, runnel, 2 workers",
            runnel(&kafka, &input, &outs[5], f, filter_cfg, kept, 2),
            Some(3),
        ),
        (
            "identity, native loop writing runnel's two provenance headers",
            native(&kafka, &input, &outs[6], |_| true, N, true),
            None,
        ),
        (
            "identity, runnel, 2 workers (vs the row above)",
            runnel(&kafka, &input, &outs[7], guests::IDENTITY_MAP, &[], N, 2),
            Some(6),
        ),
    ];
    println!("| pipeline | records/s | CPU µs/record | runnel/native throughput |");
    println!("|---|---:|---:|---:|");
    for (name, (wall, cpu), native) in &rows {
        // Input records per second between the first and the last output.
        let rate = N as f64 / wall.as_secs_f64();
        let ratio = native.map_or(String::new(), |i| {
            format!("{:.2}", rate / (N as f64 / rows[i].1.0.as_secs_f64()))
        });
        println!(
            "| {name} | {rate:.0} | {:.1} | {ratio} |",
            cpu * 1e6 / N as f64
        );
    }
}

/// The native filter: the same rule as threshold_filter with field=n, min=50.
fn keep_half(v: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct V {
        n: f64,
    }
    serde_json::from_slice::<V>(v).is_ok_and(|v| v.n >= 50.0)
}
