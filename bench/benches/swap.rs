//! The pause a hot swap causes, in one run on the embedded broker: two nodes
//! share one registry and run a scorer (the echo test scorer, whose model is
//! a prefix) over a steady stream. The same stream runs twice, on fresh
//! topics: once with no swap, once with the model swapped halfway through
//! the admin API. Printed side by side: the largest gap between consecutive
//! outputs (as the reader receives them), and the outputs per second in the
//! second around the swap (the same second of the no-swap run). Also the time
//! from the model's upload to its version running on both nodes.
//!
//! Run: `cargo bench -p runnel-bench --bench swap`. Nothing is asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use runnel_host::control::{ControlOptions, ControlPlane};
use runnel_host::engine::{Engine, EngineConfig};
use runnel_host::kafka::KafkaOptions;
use runnel_host::registry::RegistryTopics;
use runnel_tests::guests;
use runnel_tests::kafka::{broker, topics, unique};
use serde_json::{Value, json};

/// Records per second the stream carries: well under what a node can do, so
/// that gaps are pauses, not backlog.
const RATE: u64 = 10_000;
const SECONDS: u64 = 8;
/// When the swap starts, from the first output.
const SWAP_AT: Duration = Duration::from_secs(4);

async fn node(kafka: &KafkaOptions, registry: &str) -> ControlPlane {
    let engine = Engine::new(EngineConfig {
        cache_dir: None,
        max_instances: 64,
        ..EngineConfig::default()
    })
    .expect("engine");
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(registry),
        listen: "127.0.0.1:0".parse().expect("address"),
        ..ControlOptions::new(kafka.clone())
    };
    ControlPlane::start(options, engine, vec![])
        .await
        .expect("node")
}

async fn post(url: String, body: Vec<u8>) -> Value {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("API");
    r.json().await.expect("JSON")
}

async fn put(url: String, body: Value) -> Value {
    let r = reqwest::Client::new()
        .put(url)
        .json(&body)
        .send()
        .await
        .expect("API");
    r.json().await.expect("JSON")
}

/// Produces `RATE` records per second for `SECONDS`.
fn stream(kafka: &KafkaOptions, topic: &str) {
    let p: ThreadedProducer<DefaultProducerContext> = kafka.producer().create().expect("producer");
    let start = Instant::now();
    let total = RATE * SECONDS;
    for i in 0..total {
        let due = start + Duration::from_micros(i * 1_000_000 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let v = format!("r{i}");
        let mut r: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic).payload(v.as_bytes());
        while let Err((_, back)) = p.send(r) {
            r = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p.flush(Duration::from_secs(30)).expect("flushed");
}

/// When each output arrived, until `n` arrived.
fn arrivals(kafka: &KafkaOptions, topic: &str, n: usize, done: &AtomicBool) -> Vec<Instant> {
    let c: BaseConsumer = kafka
        .consumer(&unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < n && Instant::now() < deadline && !done.load(Ordering::SeqCst) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(10)) {
            out.push(Instant::now());
        }
    }
    out
}

struct Run {
    max_gap_ms: f64,
    around_swap_per_s: f64,
    upload_to_running_ms: Option<f64>,
    outputs: usize,
}

async fn run(kafka: &KafkaOptions, a: &ControlPlane, b: &ControlPlane, swap: bool) -> Run {
    let (input, output) = (unique("in"), unique("out"));
    topics(kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let v1 = post(format!("{}/v1/models", a.url()), b"v1:".to_vec()).await;
    let module = post(
        format!(
            "{}/v1/modules?model={}",
            a.url(),
            v1["digest"].as_str().expect("digest")
        ),
        std::fs::read(guests::ECHO_SCORER).expect("guest"),
    )
    .await;
    let name = unique("swap");
    let spec = |model: &Value| {
        json!({"module": module["digest"], "model": model["digest"], "input": [input],
               "output": output, "batch_size": 64, "linger_ms": 5, "workers": 1})
    };
    put(format!("{}/v1/deployments/{name}", a.url()), spec(&v1)).await;
    while !(a.node().names().contains(&name) && b.node().names().contains(&name)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // both in the group

    let n = (RATE * SECONDS) as usize;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (kafka, output, done) = (kafka.clone(), output.clone(), done.clone());
        std::thread::spawn(move || arrivals(&kafka, &output, n, &done))
    };
    let producer = {
        let (kafka, input) = (kafka.clone(), input.clone());
        std::thread::spawn(move || stream(&kafka, &input))
    };
    let started = Instant::now();
    tokio::time::sleep(SWAP_AT).await;
    let swap_start = Instant::now();
    let mut upload_to_running_ms = None;
    if swap {
        let v2 = post(format!("{}/v1/models", b.url()), b"v2:".to_vec()).await;
        put(format!("{}/v1/deployments/{name}", b.url()), spec(&v2)).await;
        let on_both = |cp: &ControlPlane| {
            cp.node()
                .status()
                .iter()
                .any(|s| s.name == name && s.version == 2)
        };
        while !(on_both(a) && on_both(b)) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        upload_to_running_ms = Some(swap_start.elapsed().as_secs_f64() * 1e3);
    }
    producer.join().expect("producer");
    let times = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    done.store(true, Ordering::SeqCst);
    // Gaps after the stream got going and before it ended.
    let warm = started + Duration::from_secs(1);
    let max_gap_ms = times
        .windows(2)
        .filter(|w| w[0] > warm)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    let window = (
        swap_start - Duration::from_millis(500),
        swap_start + Duration::from_millis(500),
    );
    let around = times
        .iter()
        .filter(|t| **t >= window.0 && **t < window.1)
        .count();
    Run {
        max_gap_ms,
        around_swap_per_s: around as f64,
        upload_to_running_ms,
        outputs: times.len(),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (_broker, kafka) = broker().await;
        let registry = unique("bench-reg");
        let a = node(&kafka, &registry).await;
        let b = node(&kafka, &registry).await;
        let plain = run(&kafka, &a, &b, false).await;
        let swapped = run(&kafka, &a, &b, true).await;
        println!(
            "runnel swap benchmark: two nodes, one embedded broker, {RATE} records/s for {SECONDS} s over 2 partitions; the model swapped through the API {} s in",
            SWAP_AT.as_secs()
        );
        println!();
        println!("| run | outputs | largest gap between outputs | outputs in the second around the swap | upload to running on both nodes |");
        println!("|---|---:|---:|---:|---:|");
        for (label, r) in [("no swap", &plain), ("model swapped", &swapped)] {
            println!(
                "| {label} | {} | {:.1} ms | {:.0} | {} |",
                r.outputs,
                r.max_gap_ms,
                r.around_swap_per_s,
                r.upload_to_running_ms.map_or("–".to_owned(), |ms| format!("{ms:.0} ms"))
            );
        }
        println!();
        println!(
            "the swap's own pause: {:.1} ms beyond the no-swap run's largest gap (target: at most 50 ms)",
            (swapped.max_gap_ms - plain.max_gap_ms).max(0.0)
        );
        tokio::task::spawn_blocking(move || {
            drop(a);
            drop(b);
        })
        .await
        .expect("stopped");
    });
}
