//! A node frozen (SIGSTOP) past its group session, with records in hand,
//! wakes up after another node has taken its partition over and run on.
//! It must not send the outputs of what it held: for a keyed count, they
//! would land after the new owner's, and a reader's last count for the key
//! would be a stale one (the chaos soak saw `174` after the rightful `199`).

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runnel_tests::kafka::{Rec, broker, key, produce, read, topics, unique, value};

use crate::common;

const WAIT: Duration = Duration::from_secs(90);

fn signal(node: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &node.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig}");
}

fn records(range: std::ops::Range<usize>) -> Vec<Rec> {
    range
        .map(|i| (Some("k".to_owned()), format!("r{i}"), vec![]))
        .collect()
}

/// The key's counts, in the order the count topic holds them.
async fn counts(kafka: &runnel_host::kafka::KafkaOptions, topic: &str) -> Vec<u64> {
    let mut out = read(kafka, topic, 1, Duration::from_secs(3)).await;
    out.sort_by_key(rdkafka::Message::offset);
    out.iter()
        .inspect(|m| assert_eq!(key(m), "k"))
        .map(|m| value(m).parse().unwrap())
        .collect()
}

async fn until_last(kafka: &runnel_host::kafka::KafkaOptions, topic: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = counts(kafka, topic).await;
        if seen.last() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the count never reached {want}: its last counts are {:?}",
            &seen[seen.len().saturating_sub(5)..]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_woken_from_a_freeze_does_not_send_what_its_partitions_next_owner_ran() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("counts"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runnel.toml");
    // A long linger keeps the records the node has fetched in its hands
    // for a while: the freeze catches them there.
    std::fs::write(
        &config,
        format!(
            "[[deployment]]\nname = {:?}\nmodule = {:?}\ninput = [{input:?}]\noutput = {output:?}\n\
             stores = [\"counts\"]\nbatch_size = 1000\nlinger_ms = 2000\n",
            unique("count"),
            runnel_tests::guests::RUNNING_COUNT
        ),
    )
    .unwrap();
    let mut a = common::serve(&kafka.brokers, &config, "warn", Stdio::inherit());
    produce(&kafka, &input, &records(0..50)).await;
    until_last(&kafka, &output, 50).await;

    // Ten records fetched and waiting in the node's batch when it freezes.
    produce(&kafka, &input, &records(50..60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&a, "-STOP");
    let frozen = Instant::now();

    // Another node takes the partition over once the session times out
    // (10 s), runs those ten and forty more, and commits.
    let mut b = common::serve(&kafka.brokers, &config, "warn", Stdio::inherit());
    produce(&kafka, &input, &records(60..100)).await;
    until_last(&kafka, &output, 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = counts(&kafka, &output).await.len();

    // The frozen node wakes, its batch still in hand, its partition lost.
    signal(&a, "-CONT");
    eprintln!("the first node was frozen for {:?}", frozen.elapsed());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let seen = counts(&kafka, &output).await;
    assert!(a.try_wait().unwrap().is_none(), "the woken node runs on");
    let _ = (a.kill(), b.kill(), a.wait(), b.wait());
    assert_eq!(
        seen.last(),
        Some(&100),
        "the woken node sent outputs after the new owner's: {:?}",
        &seen[before.saturating_sub(3)..]
    );
    assert_eq!(
        seen.len(),
        before,
        "outputs after the new owner's last: {:?}",
        &seen[before..]
    );
}
