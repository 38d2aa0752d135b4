//! A node whose consumer stalls past `max.poll.interval.ms` (a process
//! paused, or starved) is put out of its group, and its partitions go to
//! another node, which commits past them. When the stalled node comes back,
//! librdkafka hands it its partitions as *lost*, not revoked: it must not
//! commit them, or it would move the group's offsets back over what the new
//! owner did.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use runnel_host::config::DeploymentSpec;
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::fault::{Site, arm_stall, is_armed};
use runnel_host::runner::{Deployment, Node};
use runnel_tests::kafka::{Rec, broker, produce, read, spec, topics, unique};
use runnel_tests::{engine, guests};

const WAIT: Duration = Duration::from_secs(90);
/// Longer than the stalled node's `max.poll.interval.ms` (10 s, the least
/// librdkafka takes with a 10 s session), and long enough for the other
/// node to take the partition over and commit.
const STALL: Duration = Duration::from_secs(22);

fn committed(kafka: &KafkaOptions, spec: &DeploymentSpec, input: &str) -> i64 {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", spec.group())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(input, 0);
    let offsets = probe
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match offsets.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => -1,
    }
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn records(range: std::ops::Range<usize>) -> Vec<Rec> {
    range.map(|i| (None, format!("r{i}"), vec![])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_a_stall_does_not_commit_the_partitions_it_lost() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 1).await;
    let spec = spec("lost", guests::IDENTITY_FILTER, &input, &output, &[]);
    let load = || Deployment::load(&engine(None), spec.clone()).unwrap();

    let mut stalling = kafka.clone();
    stalling
        .properties
        .push(("max.poll.interval.ms".into(), "10000".into()));
    let a = Node::start(&stalling, vec![load()]).unwrap();
    produce(&kafka, &input, &records(0..100)).await;
    assert_eq!(read(&kafka, &output, 100, WAIT).await.len(), 100);
    until("the first node commits 100", || {
        committed(&kafka, &spec, &input) == 100
    })
    .await;

    // The first node's consumer stalls; the second takes the partition
    // over, runs 100 more records and commits them.
    // Both nodes run the same deployment: the first must take the stall
    // before the second starts (its loop passes the point at least every
    // idle poll), or the second would.
    arm_stall(&spec.name, Site::Consumer, STALL);
    until("the first node stalls", || {
        !is_armed(&spec.name, Site::Consumer)
    })
    .await;
    let stalled = Instant::now();
    let b = Node::start(&kafka, vec![load()]).unwrap();
    until("the second node is given the partition", || {
        !b.status()[0].partitions.is_empty()
    })
    .await;
    produce(&kafka, &input, &records(100..200)).await;
    until("the second node commits 200", || {
        committed(&kafka, &spec, &input) == 200
    })
    .await;
    assert!(
        stalled.elapsed() < STALL,
        "the stall ended before the second node committed; make STALL longer"
    );

    // The first node comes back and finds its partition lost.
    tokio::time::sleep(STALL.saturating_sub(stalled.elapsed()) + Duration::from_secs(3)).await;
    until("the first node holds no partition", || {
        a.status()[0].partitions.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed(&kafka, &spec, &input),
        200,
        "the node that lost its partition moved the group's offset back"
    );
    b.stop();
    a.stop();
}
