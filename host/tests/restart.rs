//! A node killed mid-stream (SIGKILL, no clean shutdown) and started again
//! loses no record: every input has its output, duplicates only from the
//! window that was not committed yet. Runs the real `runnel serve` binary
//! against the embedded broker of this test process.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use runnel_tests::kafka::{Rec, broker, produce, read, topics, unique, value};

use crate::common;

fn serve(brokers: &str, config: &std::path::Path) -> Child {
    common::serve(brokers, config, "warn", Stdio::inherit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_and_restarted_loses_no_record() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::identity_config(dir.path(), &input, &output, "");

    const N: usize = 3000;
    let records: Vec<Rec> = (0..N)
        .map(|i| (Some(format!("k{}", i % 97)), format!("v{i}"), vec![]))
        .collect();
    // Records keep arriving while the node runs, dies and comes back.
    let producer = {
        let (kafka, input, records) = (kafka.clone(), input.clone(), records.clone());
        tokio::spawn(async move {
            for chunk in records.chunks(100) {
                produce(&kafka, &input, chunk).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut node = serve(&kafka.brokers, &config);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = read(&kafka, &output, 1, Duration::from_millis(500))
            .await
            .len();
        if seen >= 1
            && read(&kafka, &output, 400, Duration::from_secs(2))
                .await
                .len()
                >= 400
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node produced nothing");
    }
    node.kill().unwrap(); // SIGKILL: no flush, no commit, no goodbye to the group
    node.wait().unwrap();

    let mut node = serve(&kafka.brokers, &config);
    producer.await.unwrap();
    let out = read(&kafka, &output, N, Duration::from_secs(180)).await;
    node.kill().unwrap();
    node.wait().unwrap();

    let got: BTreeSet<String> = out.iter().map(value).collect();
    let want: BTreeSet<String> = records.iter().map(|(_, v, _)| v.clone()).collect();
    let missing: Vec<&String> = want.difference(&got).take(10).collect();
    assert!(
        missing.is_empty(),
        "lost records, for example {missing:?} ({} of {N} seen)",
        got.len()
    );
    assert!(out.len() >= N, "{} outputs for {N} inputs", out.len());
    eprintln!(
        "{} outputs for {N} inputs: {} duplicates from the uncommitted window",
        out.len(),
        out.len() - N
    );
}
