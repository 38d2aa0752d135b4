//! Many nodes, in one run on one embedded broker, with real `runnel serve`
//! processes: the throughput of one node against two on the same backlog
//! (the machine has 2 cores, which the broker, the reader and the nodes
//! share: read the ratio with that in mind), and the time from a node's
//! SIGKILL to the first record processed again from each of its partitions.
//!
//! Run: `cargo bench -p runnel-host --bench cluster`. Nothing is asserted.

#![allow(clippy::unwrap_used)] // a benchmark stops loudly on a broken setup

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use runnel_host::kafka::KafkaOptions;
use runnel_tests::guests;
use runnel_tests::kafka::{broker, topics, unique};

const PARTITIONS: i32 = 4;
const BACKLOG: usize = 200_000;

fn serve(brokers: &str, config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["serve", "--brokers", brokers, "--config"])
        .arg(config)
        .args(["--admin", "127.0.0.1:0"])
        .env("RUNNEL_LOG", "error")
        .env("RUNNEL_CACHE_DIR", config.parent().unwrap().join("cache"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn config(dir: &Path, name: &str, input: &str, output: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[[deployment]]\nname = {name:?}\nmodule = {:?}\ninput = [{input:?}]\noutput = {output:?}\nbatch_size = 256\nlinger_ms = 5\n",
            guests::IDENTITY_MAP
        ),
    )
    .unwrap();
    path
}

/// Produces `n` records `p<partition>-<seq>`, spread over the partitions,
/// at `rate` records/s (0: as fast as the client goes).
fn produce(kafka: &KafkaOptions, topic: &str, n: usize, rate: u64) {
    let p: ThreadedProducer<DefaultProducerContext> = kafka.producer().create().unwrap();
    let start = Instant::now();
    for i in 0..n {
        if let Some(us) = (i as u64 * 1_000_000).checked_div(rate)
            && let Some(wait) =
                (start + Duration::from_micros(us)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        let partition = i as i32 % PARTITIONS;
        let v = format!("p{partition}-{i}");
        let mut r: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic)
            .payload(v.as_bytes())
            .partition(partition);
        while let Err((_, back)) = p.send(r) {
            r = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Reads `topic` until `n` records or `timeout`; each record's input
/// partition (from its value) and when it arrived.
fn arrivals(kafka: &KafkaOptions, topic: &str, n: usize, timeout: Duration) -> Vec<(i32, Instant)> {
    let c: BaseConsumer = kafka
        .consumer(&unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(10)) {
            let v = std::str::from_utf8(m.payload().unwrap_or_default()).unwrap_or("");
            let p = v[1..]
                .split('-')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1);
            out.push((p, Instant::now()));
        }
    }
    out
}

fn throughput(kafka: &KafkaOptions, dir: &Path, input: &str, nodes: usize) -> f64 {
    let output = unique("out");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(topics(
        kafka,
        &[&output, &format!("{output}.dlq")],
        PARTITIONS,
    ));
    let cfg = config(dir, &unique("copy"), input, &output);
    let mut children: Vec<Child> = (0..nodes).map(|_| serve(&kafka.brokers, &cfg)).collect();
    let times = arrivals(kafka, &output, BACKLOG, Duration::from_secs(300));
    for c in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let _ = c.wait();
    }
    assert_eq!(times.len(), BACKLOG, "outputs");
    BACKLOG as f64 / (times[times.len() - 1].1 - times[0].1).as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_broker, kafka) = rt.block_on(broker());
    let dir = tempfile::tempdir().unwrap();
    let input = unique("in");
    rt.block_on(topics(&kafka, &[&input], PARTITIONS));
    produce(&kafka, &input, BACKLOG, 0);

    // Throughput on the same backlog: one node, then two.
    let one = throughput(&kafka, dir.path(), &input, 1);
    let two = throughput(&kafka, dir.path(), &input, 2);

    // Fail-over: two nodes on a steady stream, one killed.
    let (stream_in, output) = (unique("live"), unique("out"));
    rt.block_on(topics(
        &kafka,
        &[&stream_in, &output, &format!("{output}.dlq")],
        PARTITIONS,
    ));
    let cfg = config(dir.path(), &unique("live"), &stream_in, &output);
    let mut a = serve(&kafka.brokers, &cfg);
    let mut b = serve(&kafka.brokers, &cfg);
    const RATE: u64 = 4_000;
    const SECONDS: u64 = 30;
    let producer = {
        let (kafka, topic) = (kafka.clone(), stream_in.clone());
        std::thread::spawn(move || produce(&kafka, &topic, (RATE * SECONDS) as usize, RATE))
    };
    let reader = {
        let (kafka, output) = (kafka.clone(), output.clone());
        std::thread::spawn(move || {
            arrivals(
                &kafka,
                &output,
                (RATE * SECONDS) as usize,
                Duration::from_secs(SECONDS + 90),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(8));
    let killed = Instant::now();
    a.kill().unwrap();
    a.wait().unwrap();
    producer.join().unwrap();
    let times = reader.join().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status();
    let _ = b.wait();

    // Per partition: the longest silence that spans the kill.
    let mut silence: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut last: BTreeMap<i32, Instant> = BTreeMap::new();
    for (p, t) in &times {
        if let Some(prev) = last.insert(*p, *t)
            && prev <= killed + Duration::from_secs(1)
            && *t > killed
        {
            let gap = *t - killed.max(prev);
            let e = silence.entry(*p).or_default();
            *e = (*e).max(gap);
        }
    }
    let worst = silence.values().max().copied().unwrap_or_default();
    println!(
        "runnel cluster benchmark: embedded broker, {PARTITIONS} partitions, identity map, `runnel serve` processes"
    );
    println!();
    println!("| nodes | records/s on a {BACKLOG}-record backlog | vs one node |");
    println!("|---:|---:|---:|");
    println!("| 1 | {one:.0} | 1.00 |");
    println!("| 2 | {two:.0} | {:.2} |", two / one);
    println!();
    println!(
        "fail-over: {RATE} records/s; one of two nodes killed with SIGKILL; from the kill to the first record processed again, per partition:"
    );
    for (p, gap) in &silence {
        println!("  partition {p}: {:.2} s", gap.as_secs_f64());
    }
    println!(
        "  slowest: {:.2} s (the group's session timeout is 10 s; outputs received: {} of {})",
        worst.as_secs_f64(),
        times.len(),
        RATE * SECONDS
    );
}
