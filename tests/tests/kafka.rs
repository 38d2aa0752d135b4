//! Deployments against the embedded broker: real Kafka protocol, random topic
//! and group names per test.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use runnel_host::config::DeploymentSpec;
use runnel_host::engine::Engine;
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::{Deployment, Node};
use runnel_tests::kafka::{Rec, broker, header, key, produce, read, spec, topics, unique, value};
use runnel_tests::{engine, guests};

fn deploy(engine: &Engine, spec: DeploymentSpec) -> Deployment {
    Deployment::load(engine, spec).unwrap()
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_and_a_map_give_exactly_the_expected_outputs() {
    let (_broker, kafka) = broker().await;
    let (input, kept, copied) = (unique("in"), unique("kept"), unique("copied"));
    topics(&kafka, &[&input, &kept, &copied], 3).await;
    let records: Vec<Rec> = (0..300)
        .map(|i| (Some(format!("k{i}")), format!("{{\"n\":{i}}}"), vec![]))
        .collect();
    produce(&kafka, &input, &records).await;

    let engine = engine(None);
    let filter = spec(
        "filter",
        guests::THRESHOLD_FILTER,
        &input,
        &kept,
        &[("field", "n"), ("min", "100")],
    );
    let map = spec("map", guests::IDENTITY_MAP, &input, &copied, &[]);
    let filter_name = filter.name.clone();
    let node = Node::start(&kafka, vec![deploy(&engine, filter), deploy(&engine, map)]).unwrap();

    let out = read(&kafka, &kept, 200, WAIT).await;
    let keys: Vec<String> = out.iter().map(key).collect();
    let unique_keys: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique_keys.len(), 200, "every kept record once");
    assert_eq!(keys.len(), 200, "and no duplicate in a clean run");
    let expected: BTreeSet<String> = (100..300).map(|i| format!("k{i}")).collect();
    assert_eq!(
        unique_keys.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    let m = &out[0];
    assert_eq!(
        header(m, "runnel-deployment").as_deref(),
        Some(filter_name.as_str())
    );
    assert!(header(m, "runnel-module").unwrap().starts_with("sha256:"));

    let out = read(&kafka, &copied, 300, WAIT).await;
    assert_eq!(out.len(), 300);
    let pairs: BTreeSet<(String, String)> = out.iter().map(|m| (key(m), value(m))).collect();
    let expected: BTreeSet<(String, String)> = records
        .iter()
        .map(|(k, v, _)| (k.clone().unwrap(), v.clone()))
        .collect();
    assert_eq!(pairs, expected);

    let status = node.status();
    assert_eq!(status[0].records_in, 300, "{status:?}");
    assert_eq!(
        (status[0].records_out, status[0].filtered),
        (200, 100),
        "{status:?}"
    );

    // The status's lag: each partition's end as the consumer last fetched
    // it, against the offset committed; 300 records read, none behind.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = node.status();
        let partitions = &status
            .iter()
            .find(|s| s.name == filter_name)
            .unwrap()
            .partitions;
        let ends: i64 = partitions.iter().filter_map(|p| p.high_watermark).sum();
        let lags: Vec<Option<i64>> = partitions.iter().map(|p| p.lag).collect();
        if partitions.len() == 3 && ends == 300 && lags.iter().all(|l| *l == Some(0)) {
            break;
        }
        if std::time::Instant::now() > deadline {
            panic!("no lag of 0 at the end of 300 records: {partitions:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic_and_the_rest_flow() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 1).await;
    let mut records: Vec<Rec> = (0..50)
        .map(|i| (Some(format!("k{i}")), format!("ok-{i}"), vec![]))
        .collect();
    records[10].1 = "panic".into();
    records[20].1 = "error".into();
    records[30] = (
        Some("k30".into()),
        "panic".into(),
        vec![("trace".into(), "t-30".into())],
    );
    produce(&kafka, &input, &records).await;

    let engine = engine(None);
    let hostile = spec("hostile", guests::HOSTILE, &input, &output, &[]);
    let name = hostile.name.clone();
    let node = Node::start(&kafka, vec![deploy(&engine, hostile)]).unwrap();

    let out = read(&kafka, &output, 47, WAIT).await;
    let values: BTreeSet<String> = out.iter().map(value).collect();
    assert_eq!(values.len(), 47);
    assert!(!values.contains("panic") && !values.contains("error"));

    let dead = read(&kafka, &dlq, 3, WAIT).await;
    assert_eq!(
        dead.len(),
        3,
        "{:?}",
        dead.iter().map(value).collect::<Vec<_>>()
    );
    let by_offset: BTreeMap<String, &rdkafka::message::OwnedMessage> = dead
        .iter()
        .map(|m| (header(m, "runnel-source-offset").unwrap(), m))
        .collect();
    assert_eq!(
        by_offset.keys().cloned().collect::<Vec<_>>(),
        vec!["10", "20", "30"]
    );
    let panic = by_offset["10"];
    assert_eq!(header(panic, "runnel-error-kind").as_deref(), Some("trap"));
    assert!(
        header(panic, "runnel-error").unwrap().contains("panicked"),
        "{:?}",
        header(panic, "runnel-error")
    );
    assert_eq!(
        header(panic, "runnel-deployment").as_deref(),
        Some(name.as_str())
    );
    assert_eq!(
        header(panic, "runnel-source-topic").as_deref(),
        Some(input.as_str())
    );
    assert_eq!(
        header(panic, "runnel-source-partition").as_deref(),
        Some("0")
    );
    assert_eq!(key(panic), "k10");
    let error = by_offset["20"];
    assert_eq!(header(error, "runnel-error-kind").as_deref(), Some("error"));
    assert_eq!(
        header(error, "runnel-error").as_deref(),
        Some("asked to fail")
    );
    assert_eq!(
        header(by_offset["30"], "trace").as_deref(),
        Some("t-30"),
        "the record's own headers are kept"
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_deployment_does_not_stop_another() {
    let (_broker, kafka) = broker().await;
    let (bad_in, bad_out, good_in, good_out) = (
        unique("bad-in"),
        unique("bad-out"),
        unique("good-in"),
        unique("good-out"),
    );
    let bad_dlq = format!("{bad_out}.dlq");
    topics(
        &kafka,
        &[&bad_in, &bad_out, &bad_dlq, &good_in, &good_out],
        1,
    )
    .await;
    let loops: Vec<Rec> = (0..20).map(|_| (None, "loop".to_owned(), vec![])).collect();
    produce(&kafka, &bad_in, &loops).await;
    let fine: Vec<Rec> = (0..200).map(|i| (None, format!("v{i}"), vec![])).collect();
    produce(&kafka, &good_in, &fine).await;

    let engine = engine(None);
    let mut bad = spec("bad", guests::HOSTILE, &bad_in, &bad_out, &[]);
    bad.timeout_ms = 200;
    let good = spec("good", guests::IDENTITY_FILTER, &good_in, &good_out, &[]);
    let node = Node::start(&kafka, vec![deploy(&engine, bad), deploy(&engine, good)]).unwrap();
    let out = read(&kafka, &good_out, 200, WAIT).await;
    assert_eq!(out.len(), 200);
    // Meanwhile the hostile one is stopped at every record, and says so.
    let deadline = std::time::Instant::now() + WAIT;
    while node.status()[0].dead_lettered < 20 {
        assert!(std::time::Instant::now() < deadline, "{:?}", node.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = node.status();
    assert!(status[0].traps >= 20, "{status:?}");
    let dead = read(&kafka, &bad_dlq, 20, WAIT).await;
    assert_eq!(dead.len(), 20);
    assert!(
        header(&dead[0], "runnel-error")
            .unwrap()
            .contains("ran past its deadline of 200ms")
    );
    node.stop();
}

/// The stateless deployments of a node share one producer. One of them
/// writes to a topic that does not exist, so its outputs wait in that
/// producer (librdkafka waits `topic.metadata.propagation.max.ms` for a
/// topic to appear): the other still delivers all of its records, and a
/// swap of it, which waits for its outputs in flight, returns while the
/// first one's are still waiting. In the end the wedged outputs go to their
/// dead-letter topic, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_deployment_does_not_hold_another_on_the_shared_producer() {
    let (_broker, kafka) = broker().await;
    let kafka = KafkaOptions {
        properties: vec![(
            "topic.metadata.propagation.max.ms".into(),
            PROPAGATION.as_millis().to_string(),
        )],
        ..kafka
    };
    let (wedged_in, missing, good_in, good_out) = (
        unique("wedged-in"),
        unique("missing"),
        unique("good-in"),
        unique("good-out"),
    );
    let wedged_dlq = format!("{missing}.dlq");
    topics(&kafka, &[&wedged_in, &wedged_dlq, &good_in, &good_out], 1).await;
    let records = |n: usize| -> Vec<Rec> {
        (0..n)
            .map(|i| (Some(format!("k{i}")), format!("v{i}"), vec![]))
            .collect()
    };
    produce(&kafka, &wedged_in, &records(50)).await;
    produce(&kafka, &good_in, &records(200)).await;

    let engine = engine(None);
    let wedged = spec("wedged", guests::IDENTITY_FILTER, &wedged_in, &missing, &[]);
    let good = spec("good", guests::IDENTITY_FILTER, &good_in, &good_out, &[]);
    let (wedged_name, good_name) = (wedged.name.clone(), good.name.clone());
    let node = std::sync::Arc::new(
        Node::start(
            &kafka,
            vec![deploy(&engine, wedged), deploy(&engine, good.clone())],
        )
        .unwrap(),
    );
    let status = |name: &str| node.status().into_iter().find(|s| s.name == name).unwrap();

    assert_eq!(read(&kafka, &good_out, 200, WAIT).await.len(), 200);
    let deadline = std::time::Instant::now() + WAIT;
    while status(&wedged_name).in_flight < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            status(&wedged_name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The swap waits for the good deployment's outputs only.
    produce(&kafka, &good_in, &records(100)).await;
    let swapped = tokio::task::spawn_blocking({
        let (node, engine, name) = (node.clone(), engine.clone(), good_name.clone());
        move || node.swap(&name, deploy(&engine, good))
    })
    .await
    .unwrap();
    let report = swapped.expect("the swap went through");
    let w = status(&wedged_name);
    assert_eq!(
        (w.in_flight, w.dead_lettered),
        (50, 0),
        "the swap (version {}) returned while the wedged outputs still wait: {w:?}",
        report.version
    );
    assert_eq!(read(&kafka, &good_out, 300, WAIT).await.len(), 300);

    // Once the topic's wait is over, each wedged output is a dead letter.
    let dead = read(&kafka, &wedged_dlq, 50, PROPAGATION + WAIT).await;
    assert_eq!(dead.len(), 50);
    assert_eq!(
        header(&dead[0], "runnel-error-kind").as_deref(),
        Some("topic-missing")
    );
    let keys: BTreeSet<String> = dead.iter().map(key).collect();
    assert_eq!(keys.len(), 50, "every wedged record once");
    node.stop_all();
}

/// How long the wedged test's outputs wait for their topic to appear.
const PROPAGATION: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_refuses_its_config_backs_off_and_says_so() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output], 1).await;
    produce(&kafka, &input, &[(None, "{}".into(), vec![])]).await;
    let engine = engine(None);
    // No `field`: the threshold filter's init refuses to start.
    let d = spec("refused", guests::THRESHOLD_FILTER, &input, &output, &[]);
    let node = Node::start(&kafka, vec![deploy(&engine, d)]).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = node.status().remove(0);
        if let runnel_host::runner::DeploymentState::BackingOff { error, .. } = &s.state {
            assert!(error.contains("missing config `field`"), "{error}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never backed off: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_between_nodes_without_losing_a_record() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 4).await;
    const N: usize = 2000;
    let records: Vec<Rec> = (0..N)
        .map(|i| (Some(format!("k{i}")), format!("v{i}"), vec![]))
        .collect();
    let engine = engine(None);
    let d = spec("moving", guests::IDENTITY_MAP, &input, &output, &[]);

    // Node A alone, then B joins (partitions move to it), then A leaves
    // cleanly (its partitions move back to B), while records keep coming.
    let a = Node::start(&kafka, vec![deploy(&engine, d.clone())]).unwrap();
    produce(&kafka, &input, &records[..N / 2]).await;
    read(&kafka, &output, 200, WAIT).await;
    let b = Node::start(&kafka, vec![deploy(&engine, d)]).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce(&kafka, &input, &records[N / 2..]).await;
    tokio::task::spawn_blocking(move || a.stop()).await.unwrap();
    let out = read(&kafka, &output, N, WAIT).await;
    let got: BTreeSet<String> = out.iter().map(value).collect();
    assert_eq!(
        got.len(),
        N,
        "{} distinct of {N}, {} outputs",
        got.len(),
        out.len()
    );
    let b_in = b.status()[0].records_in;
    assert!(b_in > 0, "node B never got a partition");
    b.stop();
}
