//! The Kafka side of the benchmarks: producing the input, counting outputs,
//! and the hand-written native rdkafka loop runnel is compared with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::tracker::Tracker;
use runnel_tests::kafka::unique;

use crate::{cpu_seconds, thread_id, threads};

/// The provenance headers runnel adds to every output (the module's at its
/// real size: `sha256:` and 64 hex digits), for native loops that write
/// what runnel writes.
pub const PROVENANCE: &[(&str, &str)] = &[
    ("runnel-deployment", "bench"),
    ("runnel-version", "1"),
    (
        "runnel-module",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ),
];

/// The one header runnel adds with `provenance = "compact"`, at its real
/// size (`DEPLOYMENT/VERSION/sha256:` and 64 hex digits), for native loops
/// that write what runnel writes in that mode.
pub const PROVENANCE_COMPACT: &[(&str, &str)] = &[(
    "runnel-provenance",
    "bench/1/sha256:0000000000000000000000000000000000000000000000000000000000000000",
)];

/// The name of the embedded broker's threads (its runtime's), by which
/// [`Cpu::pipeline`] leaves them out.
pub const BROKER_THREADS: &str = "bench-broker";

/// A benchmark's broker: the embedded one, on a runtime of its own, with an
/// input topic and `outputs` output topics of `partitions` partitions.
#[derive(Debug)]
pub struct Setup {
    pub runtime: tokio::runtime::Runtime,
    pub broker: runnel_host::broker::EmbeddedBroker,
    pub kafka: KafkaOptions,
    pub input: String,
    pub outputs: Vec<String>,
}

pub fn setup(partitions: i32, outputs: usize) -> Setup {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(BROKER_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    let (broker, kafka) = runtime.block_on(runnel_tests::kafka::broker());
    let input = unique("bench-in");
    let outputs: Vec<String> = (0..outputs)
        .map(|i| unique(&format!("bench-out{i}")))
        .collect();
    let mut all: Vec<&str> = vec![&input];
    all.extend(outputs.iter().map(String::as_str));
    runtime.block_on(runnel_tests::kafka::topics(&kafka, &all, partitions));
    Setup {
        runtime,
        broker,
        kafka,
        input,
        outputs,
    }
}

/// Hands `record` to the producer, waiting while its queue is full.
pub fn send<K, V, C>(p: &ThreadedProducer<C>, mut record: BaseRecord<'_, K, V>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    V: rdkafka::message::ToBytes + ?Sized,
    C: ProducerContext<DeliveryOpaque = ()> + 'static,
{
    while let Err((_, back)) = p.send(record) {
        record = back;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Produces `values` (keyed `k<i>`) as fast as the client goes.
pub fn produce<V: AsRef<[u8]>>(kafka: &KafkaOptions, topic: &str, values: impl Iterator<Item = V>) {
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        kafka.producer().create().expect("producer");
    for (i, v) in values.enumerate() {
        let k = format!("k{i}");
        send(
            &p,
            BaseRecord::to(topic).key(k.as_bytes()).payload(v.as_ref()),
        );
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
}

/// Counts records arriving on `topic` until `expect`, returning when the
/// first and the last arrived: the rate between them is the steady state,
/// without the time it takes to join the group.
pub fn wait_for(kafka: &KafkaOptions, topic: &str, expect: usize) -> (Instant, Instant) {
    Reader::new(kafka, topic).count(expect)
}

/// A reader of a pipeline's output topic, counting its records. Made before
/// the pipeline starts, so that the threads of its client are known and its
/// CPU time can be told apart from the pipeline's ([`Cpu`]).
pub struct Reader {
    consumer: BaseConsumer,
    topic: String,
    /// The reader's threads: its client's, and the one counting.
    threads: Arc<Mutex<HashSet<u32>>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Reader {
    /// A client assigned every partition of `topic` from the beginning (no
    /// group to join), with its threads for the broker started.
    pub fn new(kafka: &KafkaOptions, topic: &str) -> Self {
        let before = threads();
        let consumer: BaseConsumer = kafka
            .consumer(&unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .expect("the output topic's metadata");
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("a partition");
        }
        assert!(tpl.count() > 0, "{topic} has no partitions");
        consumer.assign(&tpl).expect("assign");
        let mine = threads()
            .into_keys()
            .filter(|t| !before.contains_key(t))
            .collect();
        Self {
            consumer,
            topic: topic.to_owned(),
            threads: Arc::new(Mutex::new(mine)),
        }
    }

    /// Counts records until `expect` arrived, on the calling thread (which
    /// becomes one of the reader's); returns when the first and the last
    /// arrived.
    pub fn count(&self, expect: usize) -> (Instant, Instant) {
        if let Some(t) = thread_id() {
            self.threads.lock().expect("threads").insert(t);
        }
        let mut n = 0;
        let mut first = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        while n < expect && Instant::now() < deadline {
            if let Some(Ok(_)) = self.consumer.poll(Duration::from_millis(100)) {
                first.get_or_insert_with(Instant::now);
                n += 1;
            }
        }
        assert_eq!(n, expect, "outputs on {}", self.topic);
        (first.unwrap_or_else(Instant::now), Instant::now())
    }
}

/// CPU seconds a pipeline run took: this process's in all (the embedded
/// broker and the reader of the outputs run in it too), and the pipeline's
/// alone — every thread's but the broker's ([`BROKER_THREADS`]) and the
/// reader's, which a pipeline on a real cluster does not pay for.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pub process: f64,
    pub pipeline: f64,
    /// CPU seconds by kind of thread, for [`Cpu::threads`].
    pub by_thread: BTreeMap<String, f64>,
}

impl Cpu {
    /// Where the time went, per record: `pipeline: rdk:broker 0.37, ...;
    /// broker 0.44; reader 0.42` (µs; threads that ended before the
    /// measurement are not in it).
    pub fn threads(&self, records: usize) -> String {
        let us = |secs: f64| secs * 1e6 / records.max(1) as f64;
        let part = |class: &str| {
            self.by_thread
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(class).map(|name| (name, *v)))
                .filter(|(_, v)| us(*v) >= 0.005)
                .map(|(name, v)| format!("{name} {:.2}", us(v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "pipeline: {}; not the pipeline's: {}",
            part("pipeline "),
            part("other ")
        )
    }
}

/// Measures [`Cpu`] from [`Meter::start`] to [`Meter::stop`].
struct Meter {
    process: f64,
    threads: HashMap<u32, (String, Duration)>,
    reader: Arc<Mutex<HashSet<u32>>>,
}

impl Meter {
    fn start(reader: &Reader) -> Self {
        Self {
            process: cpu_seconds(None),
            threads: threads(),
            reader: reader.threads.clone(),
        }
    }

    /// Before the pipeline stops: the time of threads that have ended is
    /// lost to the pipeline's figure.
    fn stop(self) -> Cpu {
        let reader = self.reader.lock().expect("threads");
        let main = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        let mut cpu = Cpu {
            process: cpu_seconds(None) - self.process,
            ..Cpu::default()
        };
        for (tid, (name, t)) in threads() {
            let secs = t
                .saturating_sub(self.threads.get(&tid).map_or(Duration::ZERO, |s| s.1))
                .as_secs_f64();
            // The kind of thread: librdkafka's broker threads as one, the
            // threads named after the benchmark's binary as "main".
            let kind = if name == main.trim_end() {
                "main"
            } else if name.starts_with("rdk:broker") {
                "rdk:broker"
            } else {
                name.as_str()
            };
            let key = if name.starts_with(BROKER_THREADS) {
                "other broker".to_owned()
            } else if reader.contains(&tid) {
                "other reader".to_owned()
            } else {
                cpu.pipeline += secs;
                format!("pipeline {kind}")
            };
            *cpu.by_thread.entry(key).or_default() += secs;
        }
        cpu
    }
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

/// runnel's side of a comparison: a node running `spec` (batches of 256,
/// 5 ms linger) until `expect` outputs arrived on its output topic. Returns
/// the time between the first and the last output, and the CPU it took
/// meanwhile.
pub fn node_run(
    kafka: &KafkaOptions,
    mut spec: runnel_host::config::DeploymentSpec,
    expect: usize,
) -> (Duration, Cpu) {
    spec.batch_size = 256;
    spec.linger_ms = 5;
    node_run_as(kafka, spec, expect)
}

/// [`node_run`] with the spec's own batch size and linger.
pub fn node_run_as(
    kafka: &KafkaOptions,
    spec: runnel_host::config::DeploymentSpec,
    expect: usize,
) -> (Duration, Cpu) {
    let output = spec.output.first().to_owned();
    let d = runnel_host::runner::Deployment::load(&runnel_tests::engine(None), spec)
        .expect("the deployment loads");
    let reader = Reader::new(kafka, &output);
    let meter = Meter::start(&reader);
    let node = runnel_host::runner::Node::start(kafka, vec![d]).expect("the node starts");
    let (first, last) = reader.count(expect);
    let cpu = meter.stop();
    node.stop();
    (last - first, cpu)
}

/// What the native loop's function made of one input.
#[derive(Debug)]
pub enum Out {
    /// Nothing (a filter dropped it).
    Drop,
    /// The input, as it is (an identity, a filter keeping it): not copied.
    Same,
    /// A new value.
    New(Vec<u8>),
}

/// The native loop: runnel's client settings and its at-least-once
/// bookkeeping (an offset is stored only after its output is acknowledged,
/// with runnel's own tracker), one thread. `work` turns an input value into
/// its output; every output carries `headers`.
/// Reads `n` inputs; returns the time between the first and the last of
/// `expect` outputs, and the CPU it took meanwhile.
pub fn native_loop(
    kafka: &KafkaOptions,
    input: &str,
    output: &str,
    n: usize,
    expect: usize,
    headers: &[(&str, &str)],
    mut work: impl FnMut(&[u8]) -> Out,
) -> (Duration, Cpu) {
    let reader = Reader::new(kafka, output);
    let meter = Meter::start(&reader);
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
    let reader = std::thread::spawn(move || reader.count(expect));
    let mut seen = 0;
    while seen < n {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        seen += 1;
        let input_value = m.payload().unwrap_or_default();
        let out = work(input_value);
        let value = match &out {
            Out::Drop => None,
            Out::Same => Some(input_value),
            Out::New(v) => Some(v.as_slice()),
        };
        tracker.lock().expect("tracker").add(
            "in",
            m.partition(),
            m.offset(),
            u32::from(value.is_some()),
        );
        if let Some(v) = value {
            let mut r = BaseRecord::with_opaque_to(output, Box::new((m.partition(), m.offset())))
                .payload(v);
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if !headers.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(headers.len());
                for (key, value) in headers {
                    h = h.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    });
                }
                r = r.headers(h);
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
    (last - first, meter.stop())
}

/// End-to-end latency of a pipeline's outputs: from the moment each input
/// was handed to the producer to the moment a reader of the output topic
/// got its output.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Outputs per second the reader saw, between the first and the last.
    pub rate: f64,
}

impl Latency {
    /// A row of a latency table: `| name | offered | rate | p50 | p99 | max |`,
    /// times in milliseconds.
    pub fn row(&self, name: &str, offered: &str) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        format!(
            "| {name} | {offered} | {:.0} | {} | {} | {} |",
            self.rate,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Microseconds since the UNIX epoch: the clock the inputs' keys carry
/// (the producer, the pipeline and the reader are in one process).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Produces `n` records of `value`, each keyed with the time it is handed
/// to the producer (µs since the UNIX epoch, in decimal), `rate` records a
/// second or, with `None`, as fast as the producer takes them. A pipeline
/// that keeps its input's key (runnel and the native loop do) carries the
/// time to its output, where [`read_latency`] reads it.
pub fn produce_timed(kafka: &KafkaOptions, topic: &str, n: usize, value: &[u8], rate: Option<u32>) {
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        kafka.producer().create().expect("producer");
    let start = Instant::now();
    // Paced every 5 ms or so (at 10,000/s every 50 records), every record
    // at a low rate.
    let step = rate.map_or(1, |r| (r as usize / 200).max(1));
    for i in 0..n {
        if let Some(rate) = rate
            && i % step == 0
        {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let key = now_micros().to_string();
        let mut r = BaseRecord::to(topic).key(key.as_bytes()).payload(value);
        while let Err((_, back)) = p.send(r) {
            r = back;
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
}

/// Records every pipeline of a latency row gets first, untimed, so that it
/// has joined its group before the timed records start.
pub const WARM_UP: usize = 100;

/// One latency row: fresh input and output topics of `partitions`, the
/// pipeline `run` (given the input, the output and how many outputs to wait
/// for) on a thread of its own, [`WARM_UP`] records of `value` through it,
/// then `n` timed ones ([`produce_timed`]) at `rate` (or as fast as they
/// go). The pipeline must keep each input's key on its output.
pub fn latency_row(
    setup: &Setup,
    partitions: i32,
    value: &[u8],
    n: usize,
    rate: Option<u32>,
    run: impl FnOnce(&KafkaOptions, &str, &str, usize) + Send + 'static,
) -> Latency {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (input, output) = (unique("latency-in"), unique("latency-out"));
    setup.runtime.block_on(runnel_tests::kafka::topics(
        &setup.kafka,
        &[&input, &output],
        partitions,
    ));
    let expect = WARM_UP + n;
    let kafka = setup.kafka.clone();
    let pipeline = {
        let (kafka, input, output) = (kafka.clone(), input.clone(), output.clone());
        std::thread::spawn(move || run(&kafka, &input, &output, expect))
    };
    let seen = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (kafka, output, seen) = (kafka.clone(), output.clone(), seen.clone());
        std::thread::spawn(move || read_latency(&kafka, &output, expect, &seen))
    };
    produce(&kafka, &input, (0..WARM_UP).map(|_| value));
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.load(Ordering::Relaxed) < WARM_UP {
        assert!(
            Instant::now() < deadline,
            "the warm-up records did not come out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    produce_timed(&kafka, &input, n, value, rate);
    let latency = reader.join().expect("reader");
    pipeline.join().expect("pipeline");
    latency
}

/// Reads outputs on `topic` until `expect` arrived, and the latency of those
/// whose key is a time from [`produce_timed`] (others, such as warm-up
/// records, only count). `seen` says how many arrived so far.
pub fn read_latency(
    kafka: &KafkaOptions,
    topic: &str,
    expect: usize,
    seen: &std::sync::atomic::AtomicUsize,
) -> Latency {
    let c: BaseConsumer = kafka
        .consumer(&unique("latency"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    let mut micros = Vec::with_capacity(expect);
    let (mut n, mut first) = (0, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let now = now_micros();
            first.get_or_insert_with(Instant::now);
            n += 1;
            seen.store(n, std::sync::atomic::Ordering::Relaxed);
            if let Some(sent) = m
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.parse::<u64>().ok())
            {
                micros.push(now.saturating_sub(sent));
            }
        }
    }
    assert_eq!(n, expect, "outputs on {topic}");
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len().max(1)) - 1;
        Duration::from_micros(micros.get(i).copied().unwrap_or(0))
    };
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
        rate: n as f64 / elapsed.as_secs_f64().max(1e-9),
    }
}
