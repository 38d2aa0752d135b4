//! Keyed state across fail-over, the headline test: a keyed count
//! over 100,000 records and 1,000 keys on three `runnel serve` nodes; one
//! node is SIGKILLed mid-stream and one is added. Every key's final count
//! is exactly its number of records, and no count ever goes past it: state
//! changes apply once per input, however often outputs repeat.
//!
//! The counts are read twice: from the output topic's last value per key,
//! and through the state query API of one node, which forwards to the
//! others for the keys it does not hold.
//!
//! The default run is a tenth of that (10,000 records over 100 keys), to
//! keep the test command's time; `RUNNEL_STATEFUL_RECORDS=100000` runs the
//! full size (the keys are always a hundredth of the records).

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use runnel_tests::kafka::{Rec, broker, produce, topics, unique};

use crate::common;

/// Records in the run (`RUNNEL_STATEFUL_RECORDS`, default 10,000), a
/// multiple of 1,000; each key gets 100 of them.
fn records() -> usize {
    std::env::var("RUNNEL_STATEFUL_RECORDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(10_000, |n| (n / 1000).max(1) * 1000)
}

struct Node {
    child: Child,
    log: PathBuf,
}

fn serve(brokers: &str, config: &Path, log: PathBuf) -> Node {
    serve_at(brokers, config, log, "127.0.0.1:0")
}

fn serve_at(brokers: &str, config: &Path, log: PathBuf, admin: &str) -> Node {
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let child = common::serve_at(
        brokers,
        config,
        "warn,runnel_host::runner=info",
        stderr,
        admin,
    );
    Node { child, log }
}

/// A key's count through the query API, asking again while it answers 503
/// (a partition restoring or moving).
async fn query_count(url: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        if status == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(
            (status, &v["found"]),
            (200, &serde_json::json!(true)),
            "{url}: {v}"
        );
        // postcard's u64: a LEB128 varint.
        let bytes = hex::decode(v["value_hex"].as_str().unwrap()).unwrap();
        return bytes
            .iter()
            .enumerate()
            .fold(0, |n, (i, b)| n | (u64::from(b & 0x7f) << (7 * i)));
    }
}

fn lines(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// Each key's last count and highest count in `topic`, read until every
/// key's last count is `want` or `timeout` passes.
fn follow(
    brokers: &str,
    topic: &str,
    keys: usize,
    want: u64,
    timeout: Duration,
) -> HashMap<String, (u64, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut counts: HashMap<String, (u64, u64)> = HashMap::new();
    let mut at_want = 0usize;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && at_want < keys {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let n: u64 = std::str::from_utf8(m.payload().unwrap_or_default())
            .unwrap()
            .parse()
            .unwrap();
        let entry = counts.entry(key).or_insert((0, 0));
        if entry.0 == want {
            at_want -= 1;
        }
        *entry = (n, entry.1.max(n));
        if n == want {
            at_want += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_counts_are_exact_after_a_node_is_killed_and_one_added() {
    let (records, keys) = (records(), records() / 100);
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("events"), unique("counts"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 6).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runnel.toml");
    let name = unique("count");
    std::fs::write(
        &config,
        format!(
            "[[deployment]]\nname = {name:?}\nmodule = {:?}\ninput = [{input:?}]\noutput = {output:?}\nstores = [\"counts\"]\nbatch_size = 64\nworkers = 1\n",
            runnel_tests::guests::RUNNING_COUNT
        ),
    )
    .unwrap();
    let log = |n: &str| dir.path().join(format!("{n}.log"));

    let started = Instant::now();
    let mut a = serve(&kafka.brokers, &config, log("a"));
    let b_admin = common::free_admin();
    let mut b = serve_at(&kafka.brokers, &config, log("b"), &b_admin);
    let mut c = serve(&kafka.brokers, &config, log("c"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while [&a, &b, &c]
        .iter()
        .any(|n| lines(&n.log, "partitions assigned") == 0)
    {
        assert!(Instant::now() < deadline, "a node got no partition");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Chunks of 1,000 records over about 20 s.
    let chunks = records / 1000;
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (kafka, input, sent) = (kafka.clone(), input.clone(), sent.clone());
        let pause = Duration::from_millis((20_000 / chunks as u64).max(20));
        tokio::spawn(async move {
            for chunk in 0..chunks {
                let batch: Vec<Rec> = (chunk * 1000..(chunk + 1) * 1000)
                    .map(|i| (Some(format!("k{}", i % keys)), format!("r{i}"), vec![]))
                    .collect();
                produce(&kafka, &input, &batch).await;
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(pause).await;
            }
        })
    };
    // A third of the way in: a node dies without a word, and a new one joins.
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines(&a.log, "state restored") == 0 || sent.load(Ordering::SeqCst) < chunks / 3 {
        assert!(Instant::now() < deadline, "node a restored no partition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.child.kill().unwrap(); // SIGKILL: no flush, no commit
    a.child.wait().unwrap();
    let killed_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut d = serve(&kafka.brokers, &config, log("d"));
    producer.await.unwrap();
    let produced_at = started.elapsed();

    let brokers = kafka.brokers.clone();
    let counts = tokio::task::spawn_blocking(move || {
        follow(&brokers, &output, keys, 100, Duration::from_secs(600))
    })
    .await
    .unwrap();
    let want = 100;
    let over: Vec<_> = counts
        .iter()
        .filter(|(_, (_, max))| *max > want)
        .take(5)
        .collect();
    assert!(
        over.is_empty(),
        "keys counted past their {want} records: {over:?}"
    );
    let short: Vec<_> = counts
        .iter()
        .filter(|(_, (last, _))| *last != want)
        .take(5)
        .collect();
    assert_eq!(counts.len(), keys, "keys seen in the output");
    assert!(
        short.is_empty(),
        "keys whose last count is not {want}: {short:?}"
    );
    // The same through node b's query API (keys it does not hold are
    // forwarded to the node that does).
    let api = format!("http://{b_admin}/v1/deployments/{name}/state/counts");
    let mut queried = 0;
    for k in 0..keys {
        let n = query_count(&format!("{api}?key=k{k}")).await;
        assert_eq!(n, want, "key k{k} through the query API");
        queried += 1;
    }
    eprintln!(
        "{records} records over {keys} keys: node a killed at {killed_at:?}, input done at \
         {produced_at:?}, every count exact at {:?} (and all {queried} through the query API); \
         restores: b {}, c {}, d {}",
        started.elapsed(),
        lines(&b.log, "state restored"),
        lines(&c.log, "state restored"),
        lines(&d.log, "state restored"),
    );
    assert!(
        lines(&d.log, "state restored") > 0,
        "the added node restored no partition:\n{}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    for node in [&mut b, &mut c, &mut d] {
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }
}
