//! Backpressure with one slow partition among fast ones, two ways in one
//! run: a full worker queue pausing only the partitions whose batches wait
//! for it (runnel's way), and pausing every partition of the deployment.
//!
//! One deployment of the `hostile` test filter, 2 workers, an input of 4
//! partitions produced before it starts: partition 0 holds slow records (4
//! KiB values starting `nap`: 1 ms each, 5 s of work in all, more than a
//! worker's 8 MiB queue), partitions 1, 2 and 3 fast ones. Partition `p`
//! goes to worker `p % 2`, so worker 0 has the slow partition and the fast
//! partition 2, worker 1 the fast partitions 1 and 3. The table says when
//! each finished, from the first output: worker 1's partitions should not
//! wait for worker 0.
//!
//! Run: `cargo bench -p runnel-bench --bench backpressure`. Nothing is
//! asserted about time.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use runnel_bench::kafka::{Setup, send, setup};
use runnel_host::kafka::KafkaOptions;
use runnel_tests::guests;
use runnel_tests::kafka::{spec, unique};

const SLOW: usize = 5_000;
const SLOW_BYTES: usize = 4096;
const FAST: usize = 600_000;

fn produce(kafka: &KafkaOptions, topic: &str) {
    let p: ThreadedProducer<DefaultProducerContext> = kafka.producer().create().expect("producer");
    let nap = {
        let mut v = b"nap".to_vec();
        v.resize(SLOW_BYTES, b'z');
        v
    };
    let send = |partition: i32, value: &[u8]| {
        send(
            &p,
            BaseRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(value),
        );
    };
    for i in 0..FAST.max(SLOW) {
        if i < SLOW {
            send(0, &nap);
        }
        if i < FAST {
            for partition in 1..4 {
                send(partition, format!("p{partition}:{i}").as_bytes());
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
}

/// Seconds from the first output until each input partition's last one.
fn run(kafka: &KafkaOptions, input: &str, output: &str, every: bool) -> [f64; 4] {
    runnel_host::runner::set_pause_every_partition(every);
    let mut spec = spec("bench", guests::HOSTILE, input, output, &[]);
    spec.workers = 2;
    spec.timeout_ms = 5000;
    let d = runnel_host::runner::Deployment::load(&runnel_tests::engine(None), spec)
        .expect("the deployment loads");
    let reader: BaseConsumer = kafka
        .consumer(&unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    reader.subscribe(&[output]).expect("subscribe");
    let node = runnel_host::runner::Node::start(kafka, vec![d]).expect("the node starts");
    let expect = [SLOW, FAST, FAST, FAST];
    let mut seen = [0usize; 4];
    let mut done = [0f64; 4];
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen != expect && Instant::now() < deadline {
        let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let start = *first.get_or_insert_with(Instant::now);
        let value = m.payload().unwrap_or_default();
        let p = match value.get(..2) {
            Some(b"p1") => 1,
            Some(b"p2") => 2,
            Some(b"p3") => 3,
            _ => 0,
        };
        seen[p] += 1;
        if seen[p] == expect[p] {
            done[p] = start.elapsed().as_secs_f64();
        }
    }
    node.stop();
    runnel_host::runner::set_pause_every_partition(false);
    assert_eq!(seen, expect, "outputs per input partition");
    done
}

fn main() {
    let Setup {
        runtime: _runtime,
        broker: _broker,
        kafka,
        input,
        outputs,
    } = setup(4, 2);
    produce(&kafka, &input);
    println!(
        "backpressure: partition 0 {SLOW} slow records (1 ms, {SLOW_BYTES} B each), partitions 1-3 {FAST} fast ones each; 2 workers (0: partitions 0, 2; 1: partitions 1, 3); seconds from the first output until each partition's last:"
    );
    println!();
    let held = run(&kafka, &input, &outputs[0], false);
    let every = run(&kafka, &input, &outputs[1], true);
    println!(
        "| a full worker queue pauses | partition 0 (slow) | partition 2 (fast, worker 0) | partitions 1 and 3 (fast, worker 1) |"
    );
    println!("|---|---:|---:|---:|");
    let row = |name: &str, d: [f64; 4]| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            d[0],
            d[2],
            d[1].max(d[3])
        );
    };
    row("only the partitions waiting for it (runnel)", held);
    row("every partition of the deployment", every);
    println!();
}
