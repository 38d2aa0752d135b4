//! What a deployment costs a node: threads, resident memory, CPU and open
//! connections of one node at 1, 10, 100 and 500 identity deployments, idle
//! and at 100 records/s each, and whether every deployment delivers.
//!
//! The node runs in this process (`runner::Node`, as `runnel serve` runs
//! deployments) with the embedded broker beside it, so CPU counts the
//! broker's share too: what answering an idle consumer's fetches costs is
//! part of what an idle deployment costs. Each deployment reads a topic of
//! one partition of its own and writes another, with the defaults of a
//! deployment (batch 256, linger 20 ms, one worker per core) and the
//! node's engine (an instance pool of `RUNNEL_MAX_INSTANCES`, default
//! `runnel serve`'s). Figures per
//! deployment are over the process before the node started (the runtime,
//! the broker, this harness); idle CPU is over the process's idle CPU
//! before any node, and the broker's share of it (its runtime's threads) is
//! shown apart: against a Kafka cluster it is the cluster's.
//!
//! `RUNNEL_BENCH_DEPLOYMENTS=1,10,100` picks the counts (default
//! 1,10,100,500), `RUNNEL_BENCH_KAFKA=fetch.wait.max.ms=500,...` adds
//! librdkafka properties to the node's clients (as `--kafka` does). Run: `cargo bench -p runnel-bench --bench density`.
//! Nothing is asserted; a count that does not start, or whose deployments
//! do not all deliver, says so in its row.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use runnel_bench::kafka::setup;
use runnel_bench::{cpu_seconds, stat_cpu_seconds};
use runnel_host::config::defaults;
use runnel_host::engine::{Engine, EngineConfig};
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::{Deployment, Node};
use runnel_tests::guests;
use runnel_tests::kafka::{spec, topics, unique};

/// Records per second each deployment gets in the loaded phase.
const RATE: u64 = 100;
/// How long each phase is measured.
const PHASE: Duration = Duration::from_secs(10);

/// One reading of this process.
#[derive(Debug, Clone, Copy)]
struct Reading {
    threads: u64,
    rss_kib: u64,
    /// Established connections from this process to the broker (client
    /// ends only: the broker's ends are in this process too).
    connections: u64,
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Connections to `port` on loopback that are established (`/proc/net/tcp`,
/// state 01): every client end in this process.
fn connections_to(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(2).is_some_and(|remote| remote.ends_with(&want)) && f.get(3) == Some(&"01")
        })
        .count() as u64
}

fn read(port: u16) -> Reading {
    Reading {
        threads: status_field("Threads:"),
        rss_kib: status_field("VmRSS:"),
        connections: connections_to(port),
    }
}

/// CPU seconds of this process's threads so far: the embedded broker's
/// (its runtime's `tokio-rt-worker` threads) and the rest's (the node, the
/// harness).
fn cpu_split() -> (f64, f64) {
    let (mut broker, mut rest) = (0.0, 0.0);
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let comm = stat
            .split('(')
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap_or("");
        let secs = stat_cpu_seconds(&stat);
        if comm.starts_with("tokio-rt-worker") {
            broker += secs;
        } else {
            rest += secs;
        }
    }
    (broker, rest)
}

/// CPU of this process over `d`, as a share of one core: in all, and the
/// embedded broker's part (threads that ended meanwhile are not in the
/// split).
fn cpu_over(d: Duration, during: impl FnOnce()) -> (f64, f64) {
    let (c0, (b0, _), t0) = (cpu_seconds(None), cpu_split(), Instant::now());
    during();
    std::thread::sleep(d.saturating_sub(t0.elapsed()));
    let secs = t0.elapsed().as_secs_f64();
    let (b1, _) = cpu_split();
    ((cpu_seconds(None) - c0) / secs, (b1 - b0) / secs)
}

/// Produces `RATE` records a second to each of `inputs` for `PHASE`.
fn load(kafka: &KafkaOptions, inputs: &[String]) -> u64 {
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        kafka.producer().create().expect("producer");
    let start = Instant::now();
    let ticks = PHASE.as_millis() as u64 / 100;
    let per_tick = RATE / 10;
    for tick in 0..ticks {
        for input in inputs {
            for i in 0..per_tick {
                let v = format!("{{\"n\":{}}}", tick * per_tick + i);
                let mut r = BaseRecord::<(), str>::to(input).payload(&v);
                while let Err((_, back)) = p.send(r) {
                    r = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let due = start + Duration::from_millis((tick + 1) * 100);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
    ticks * per_tick
}

/// Which of `outputs` hold `want` records, waiting up to `wait`.
fn delivered(kafka: &KafkaOptions, outputs: &[String], want: i64, wait: Duration) -> Vec<bool> {
    let c: BaseConsumer = kafka.consumer(&unique("density")).create().expect("reader");
    let deadline = Instant::now() + wait;
    let mut done = vec![false; outputs.len()];
    loop {
        for (i, o) in outputs.iter().enumerate() {
            if !done[i] {
                done[i] = c
                    .fetch_watermarks(o, 0, Duration::from_secs(10))
                    .is_ok_and(|(_, high)| high >= want);
            }
        }
        let n = done.iter().filter(|d| **d).count();
        if n == outputs.len() || Instant::now() > deadline {
            return done;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn main() {
    let counts: Vec<usize> = std::env::var("RUNNEL_BENCH_DEPLOYMENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 500]);
    let s = setup(1, 0);
    // The node's clients, with `RUNNEL_BENCH_KAFKA=key=value,...` added, as
    // `--kafka key=value` adds them to `runnel serve`'s.
    let mut node_kafka = s.kafka.clone();
    node_kafka.properties.extend(
        std::env::var("RUNNEL_BENCH_KAFKA")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())),
    );
    let port: u16 = s
        .kafka
        .brokers
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the broker's port");
    // The node's engine, as `runnel serve --max-instances N` makes it
    // (`RUNNEL_MAX_INSTANCES`, as for serve; default, serve's default).
    let max_instances = std::env::var("RUNNEL_MAX_INSTANCES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(runnel_host::engine::MAX_INSTANCES);
    let engine = Engine::new(EngineConfig {
        max_instances,
        ..EngineConfig::default()
    })
    .expect("the engine starts");
    println!(
        "one node, N identity deployments (1 partition each, {} workers each), {max_instances} instances, the embedded broker in this process; \
         idle, then {RATE} records/s each for {} s",
        defaults::workers(),
        PHASE.as_secs()
    );
    if node_kafka.properties.len() > s.kafka.properties.len() {
        println!(
            "node's librdkafka properties added: {:?}",
            &node_kafka.properties[s.kafka.properties.len()..]
        );
    }
    println!();
    println!(
        "| deployments | threads idle (per deployment) | RSS MiB (per deployment) | connections (per deployment) | CPU idle, % of a core (per deployment) | of which the broker | threads at {RATE}/s each (per deployment) | CPU at {RATE}/s each, % of a core | delivered |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (idle0, broker0) = cpu_over(Duration::from_secs(3), || {});
    let mut thread_lines = Vec::new();
    for n in counts {
        let names: Vec<(String, String)> = (0..n)
            .map(|_| (unique("density-in"), unique("density-out")))
            .collect();
        let all: Vec<&str> = names
            .iter()
            .flat_map(|(i, o)| [i.as_str(), o.as_str()])
            .collect();
        for chunk in all.chunks(100) {
            s.runtime.block_on(topics(&s.kafka, chunk, 1));
        }
        let before = read(port);
        let names_before = threads_by_name();
        let deployments: Vec<Deployment> = names
            .iter()
            .map(|(input, output)| {
                let mut spec = spec("density", guests::IDENTITY_MAP, input, output, &[]);
                spec.workers = defaults::workers();
                spec.batch_size = defaults::batch_size();
                spec.linger_ms = defaults::linger_ms();
                Deployment::load(&engine, spec).expect("the deployment loads")
            })
            .collect();
        let started = Instant::now();
        let node = match Node::start(&node_kafka, deployments) {
            Ok(node) => node,
            Err(e) => {
                println!("| {n} | the node did not start: {e:#} | | | | | | | |");
                continue;
            }
        };
        // Every deployment has its partition.
        let deadline = Instant::now() + Duration::from_secs(300);
        while node.status().iter().any(|d| d.partitions.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let assigned = node
            .status()
            .iter()
            .filter(|d| !d.partitions.is_empty())
            .count();
        eprintln!(
            "{n} deployments: {assigned} assigned after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(3));
        let (idle_cpu, idle_broker) = cpu_over(PHASE, || {});
        let (idle_cpu, idle_broker) = (idle_cpu - idle0, idle_broker - broker0);
        let idle = read(port);
        let mut by_name: Vec<String> = threads_by_name()
            .into_iter()
            .filter_map(|(name, count)| {
                let added = count.saturating_sub(names_before.get(&name).copied().unwrap_or(0));
                (added > 0).then(|| format!("{name} {:.1}", added as f64 / n as f64))
            })
            .collect();
        by_name.sort();
        thread_lines.push(format!("{n}: {}", by_name.join(", ")));
        let mut sent = 0;
        let (loaded_cpu, _) = cpu_over(PHASE, || {
            sent = load(
                &s.kafka,
                &names.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
            )
        });
        let loaded = read(port);
        let outputs: Vec<String> = names.iter().map(|(_, o)| o.clone()).collect();
        let done = delivered(&s.kafka, &outputs, sent as i64, Duration::from_secs(120));
        let ok = done.iter().filter(|d| **d).count();
        let status = node.status();
        for (i, _) in done.iter().enumerate().filter(|(_, d)| !**d).take(3) {
            if let Some(d) = status
                .iter()
                .find(|d| d.partitions.iter().any(|p| p.topic == names[i].0))
            {
                eprintln!(
                    "  not delivered: {} in {} out {} state {:?} partitions {:?} last error {:?}",
                    d.name, d.records_in, d.records_out, d.state, d.partitions, d.last_error
                );
            }
        }
        node.stop();
        let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / n as f64;
        println!(
            "| {n} | {} ({:.1}) | {:.0} ({:.2}) | {} ({:.1}) | {:.1} ({:.3}) | {:.1} ({:.3}) | {} ({:.1}) | {:.1} | {ok}/{n} |",
            idle.threads,
            per(idle.threads, before.threads),
            idle.rss_kib as f64 / 1024.0,
            per(idle.rss_kib, before.rss_kib) / 1024.0,
            idle.connections,
            per(idle.connections, before.connections),
            idle_cpu * 100.0,
            idle_cpu * 100.0 / n as f64,
            idle_broker * 100.0,
            idle_broker * 100.0 / n as f64,
            loaded.threads,
            per(loaded.threads, before.threads),
            loaded_cpu * 100.0,
        );
    }
    println!();
    println!("threads each deployment adds, by name (digits dropped), per deployment:");
    for line in thread_lines {
        println!("- {line}");
    }
}

/// This process's threads, counted by name with digits dropped
/// (`rdk:broker111` and `rdk:broker-1` are both `rdk:broker`).
fn threads_by_name() -> std::collections::BTreeMap<String, u64> {
    let mut names = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name: String = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_owned();
        *names.entry(name).or_insert(0) += 1;
    }
    names
}
