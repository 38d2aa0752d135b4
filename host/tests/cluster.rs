//! Three `runnel serve` processes against one embedded broker, with records
//! flowing: one node is killed (SIGKILL), one is added, one stops cleanly
//! (SIGTERM). Every input has its output (checked record by record), and the
//! nodes' logs show the partitions moving between them.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runnel_tests::kafka::{broker, read, stream, topics, unique, value};

struct Node {
    child: Child,
    log: PathBuf,
}

use crate::common;

fn serve(brokers: &str, config: &Path, log: PathBuf) -> Node {
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let child = common::serve(brokers, config, "warn,runnel_host::runner=info", stderr);
    Node { child, log }
}

/// The partitions a node's log says it was assigned, in order.
fn assigned(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("partitions assigned"))
        .map(|l| l.split("partitions=").nth(1).unwrap_or("").to_owned())
        .collect()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_added_and_stopped_mid_stream_lose_no_record() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 6).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::identity_config(dir.path(), &input, &output, "workers = 1\n");
    let log = |n: &str| dir.path().join(format!("{n}.log"));

    const N: usize = 6000;
    let producer = stream(&kafka, &input, N / 100, Duration::from_millis(100));

    let mut a = serve(&kafka.brokers, &config, log("a"));
    let mut b = serve(&kafka.brokers, &config, log("b"));
    let mut c = serve(&kafka.brokers, &config, log("c"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(&kafka, &output, 600, Duration::from_secs(2))
        .await
        .len()
        < 600
    {
        assert!(Instant::now() < deadline, "the nodes produced nothing");
    }
    let a_had = assigned(&a.log);
    a.child.kill().unwrap(); // SIGKILL: no flush, no commit, no goodbye
    a.child.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut d = serve(&kafka.brokers, &config, log("d"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    sigterm(&b.child);
    let b_exit = b.child.wait().unwrap();
    assert!(b_exit.success(), "a clean stop exits 0: {b_exit}");
    producer.await.unwrap();

    // Every input has its output: the killed node's uncommitted window is
    // read again by the others (duplicates possible, losses not).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (got, total) = loop {
        let out = read(&kafka, &output, N, Duration::from_secs(5)).await;
        let got: BTreeSet<String> = out.iter().map(value).collect();
        if got.len() == N || Instant::now() > deadline {
            break (got, out.len());
        }
    };
    let missing: Vec<String> = (0..N)
        .map(|i| format!("r{i}"))
        .filter(|v| !got.contains(v))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} outputs; missing e.g. {missing:?}",
        got.len()
    );
    eprintln!("{N} inputs, {total} outputs ({} duplicates)", total - N);

    // The assignment history: partitions moved.
    assert!(!a_had.is_empty(), "node a never got partitions");
    assert!(
        !assigned(&d.log).is_empty(),
        "the added node never got partitions"
    );
    assert!(
        assigned(&c.log).len() >= 2,
        "node c's partitions never moved: {:?}",
        assigned(&c.log)
    );
    for node in [&mut c, &mut d] {
        sigterm(&node.child);
        assert!(node.child.wait().unwrap().success());
    }
}
