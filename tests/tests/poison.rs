//! A poison batch — a batch whose every record makes the function trap at
//! its deadline — costs `batch_size + 1` deadlines on its worker: the batch
//! call, then one call per record to isolate the culprits. It must not cost
//! the node anything else:
//!
//! - the consumer keeps polling, so the node stays in its group, and the
//!   partitions of the other workers keep moving (before, the consumer
//!   blocked on the poisoned worker's full queue);
//! - a rebalance completes while the batch is being isolated (before, the
//!   revoke waited for every job queued on every worker);
//! - a stop gives up the isolation between two calls (before, it ran to
//!   the end);
//! - nothing is lost: what was not run is read again by the next owner.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use runnel_host::config::DeploymentSpec;
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::{Deployment, DeploymentStatus, Node};
use runnel_tests::kafka::{broker, read, spec, topics, unique, value};
use runnel_tests::{engine, guests};

const WAIT: Duration = Duration::from_secs(90);
/// Records of the poison batch, each spinning to the deadline.
const POISON: usize = 16;
/// The deadline per call: the poison batch takes (POISON + 1) of them.
const TIMEOUT_MS: u64 = 1000;
/// Records of 512 KiB after it on the same partition: 12 MiB, more than a
/// worker's queue holds (8 MiB), so that the consumer meets a full queue.
const BIG: usize = 24;
/// Records on the other partition, another worker's.
const SMALL: usize = 50;

fn produce_to(kafka: &KafkaOptions, topic: &str, partition: i32, values: &[Vec<u8>]) {
    // Batched: the nodes resume from offsets inside the poison batch (see
    // tests/tests/broker.rs).
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for v in values {
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(v);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "{e}"
                    );
                    producer.poll(Duration::from_millis(50));
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn status_of(node: &Node) -> DeploymentStatus {
    node.status().pop().unwrap()
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node(kafka: &KafkaOptions, spec: &DeploymentSpec) -> Node {
    Node::start(
        kafka,
        vec![Deployment::load(&engine(None), spec.clone()).unwrap()],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_traps_at_the_deadline_everywhere_holds_only_its_own_worker() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output], 2).await;
    topics(&kafka, &[&dlq], 1).await;
    let mut poison: Vec<Vec<u8>> = vec![b"loop".to_vec(); POISON];
    poison.extend((0..BIG).map(|i| {
        let mut v = format!("big-{i:02}-").into_bytes();
        v.resize(512 << 10, b'x');
        v
    }));
    produce_to(&kafka, &input, 0, &poison);

    // Two workers: partition 0 runs on one, partition 1 on the other.
    let spec = DeploymentSpec {
        batch_size: POISON,
        linger_ms: 5,
        timeout_ms: TIMEOUT_MS,
        workers: 2,
        stores: Vec::new(),
        ..spec("poison", guests::HOSTILE, &input, &output, &[])
    };
    let a = node(&kafka, &spec);
    until("the poison batch is being isolated", || {
        !status_of(&a).isolating.is_empty()
    })
    .await;

    // The other worker's partition flows while the poison is isolated.
    let small: Vec<Vec<u8>> = (0..SMALL).map(|i| format!("ok-{i}").into_bytes()).collect();
    produce_to(&kafka, &input, 1, &small);
    let out = read(&kafka, &output, SMALL, WAIT).await;
    let flowed: BTreeSet<String> = out
        .iter()
        .map(value)
        .filter(|v| v.starts_with("ok-"))
        .collect();
    let isolating = status_of(&a).isolating;
    assert_eq!(flowed.len(), SMALL, "partition 1 flowed: {flowed:?}");
    assert!(
        !isolating.is_empty(),
        "partition 1 flowed only after the poison batch was done"
    );
    eprintln!("partition 1 flowed while isolating: {isolating:?}");

    // A second node joins: the rebalance completes while the batch is being
    // isolated, whichever partition moves.
    let b = node(&kafka, &spec);
    until("the second node is given a partition", || {
        !status_of(&b).partitions.is_empty()
    })
    .await;
    let (isolating_a, isolating_b) = (status_of(&a).isolating, status_of(&b).isolating);
    let traps = status_of(&a).traps;
    // Either the poisoned partition moved, and its isolation was given up
    // after a few calls, or the other one moved, and the isolation goes on.
    assert!(
        traps <= POISON as u64,
        "the rebalance completed only after the poison batch was done ({traps} traps)"
    );
    eprintln!(
        "the rebalance completed after {traps} traps; isolating: {isolating_a:?} {isolating_b:?}"
    );

    // Both stop: whoever isolates the poison gives up between two calls.
    a.stop();
    b.stop();
    let dead_lettered = read(&kafka, &dlq, POISON, Duration::from_secs(2)).await;
    let given_up: BTreeSet<String> = dead_lettered
        .iter()
        .map(|m| runnel_tests::kafka::header(m, "runnel-source-offset").unwrap())
        .collect();
    assert!(
        given_up.len() < POISON,
        "the stop waited for the whole isolation: {} dead letters",
        given_up.len()
    );

    // A new node reads what was not run again: every record is accounted
    // for, the poison in the dead-letter topic, the rest in the output.
    let c = node(&kafka, &spec);
    let dead = read(&kafka, &dlq, POISON, WAIT).await;
    let offsets: BTreeSet<String> = dead
        .iter()
        .map(|m| runnel_tests::kafka::header(m, "runnel-source-offset").unwrap())
        .collect();
    assert_eq!(offsets.len(), POISON, "every poison record dead-lettered");
    let out = read(&kafka, &output, SMALL + BIG, WAIT).await;
    let values: BTreeSet<String> = out
        .iter()
        .map(|m| value(m).chars().take(7).collect())
        .collect();
    assert_eq!(values.len(), SMALL + BIG, "every other record came out");
    c.stop();
}
