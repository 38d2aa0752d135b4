//! Processors on Kafka: keyed state kept in a changelog topic per store,
//! rebuilt by the next owner of a partition, exact whatever the changelog
//! holds past the committed offsets, and kept across a swap.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use runnel_host::config::DeploymentSpec;
use runnel_host::runner::{Deployment, Node, RestoreSource};
use runnel_host::state::changelog;
use runnel_tests::kafka::{Rec, broker, key, produce, read, spec, topics, unique, value};
use runnel_tests::{engine, guests};

const WAIT: Duration = Duration::from_secs(90);

fn counter(input: &str, output: &str) -> DeploymentSpec {
    DeploymentSpec {
        stores: vec!["counts".to_owned()],
        ..spec("count", guests::RUNNING_COUNT, input, output, &[])
    }
}

/// `n` records from `from` on, keyed `k0..k{keys}` in turn.
fn keyed(from: usize, n: usize, keys: usize) -> Vec<Rec> {
    (from..from + n)
        .map(|i| (Some(format!("k{}", i % keys)), format!("r{i}"), vec![]))
        .collect()
}

/// Each key's counts as the output says them, in the order written (per
/// partition, and a key lives in one).
fn counts(out: &[rdkafka::message::OwnedMessage]) -> BTreeMap<String, Vec<u64>> {
    let mut by_key: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    for m in out {
        by_key
            .entry(key(m))
            .or_default()
            .push((m.offset(), value(m).parse().unwrap()));
    }
    by_key
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable();
            (k, v.into_iter().map(|(_, c)| c).collect())
        })
        .collect()
}

/// Waits until every key's last count is `want`; fails on a count above it.
async fn until_counts(
    kafka: &runnel_host::kafka::KafkaOptions,
    output: &str,
    keys: usize,
    want: u64,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = read(kafka, output, 1, Duration::from_secs(3)).await;
        let counts = counts(&out);
        for (k, seen) in &counts {
            let max = seen.iter().max().copied().unwrap_or(0);
            assert!(
                max <= want,
                "key {k} was counted {max} times, more than its {want} records: {seen:?}"
            );
        }
        let done = counts.len() == keys && counts.values().all(|v| v.last() == Some(&want));
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every key reached {want}: {:?}",
            counts
                .iter()
                .filter(|(_, v)| v.last() != Some(&want))
                .take(5)
                .map(|(k, v)| (k, v.last()))
                .collect::<Vec<_>>()
        );
    }
}

/// A raw changelog record: key, value, headers.
type Raw<'a> = (Vec<u8>, Option<Vec<u8>>, Vec<(&'a str, &'a str)>);

/// Writes raw records into every partition of a changelog topic, as
/// someone with write access to it could.
async fn forge(
    kafka: &runnel_host::kafka::KafkaOptions,
    topic: &str,
    partitions: i32,
    records: &[Raw<'_>],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    for p in 0..partitions {
        for (k, v, hs) in records {
            let mut headers = OwnedHeaders::new();
            for (hk, hv) in hs {
                headers = headers.insert(Header {
                    key: hk,
                    value: Some(hv.as_bytes()),
                });
            }
            let mut r = FutureRecord::to(topic).partition(p).key(k).headers(headers);
            if let Some(v) = v {
                r = r.payload(v);
            }
            producer
                .send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_owner_restores_exact_counts_from_the_changelog_whatever_it_holds() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("counts"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 3).await;
    let engine = engine(None);
    let spec = counter(&input, &output);
    let name = spec.name.clone();
    const KEYS: usize = 30;

    // First owner: 600 records, 20 per key.
    produce(&kafka, &input, &keyed(0, 600, KEYS)).await;
    let node = Node::start(
        &kafka,
        vec![Deployment::load(&engine, spec.clone()).unwrap()],
    )
    .unwrap();
    until_counts(&kafka, &output, KEYS, 20).await;
    let status = node.status();
    assert_eq!(status[0].state_writes, 600, "{status:?}");
    assert!(status[0].restores >= 1, "{status:?}");
    node.stop();

    // The changelog has the input's partitions and a write per record.
    let topic = changelog::topic(&name, "counts");
    let log = read(&kafka, &topic, 600, Duration::from_secs(30)).await;
    assert!(log.len() >= 600, "{} changelog records", log.len());
    assert!(log.iter().all(|m| (0..3).contains(&m.partition())));

    // What a crashed owner, a paused one and a stranger could leave there:
    // - a write caused by an input past the committed offset (run again by
    //   the next owner, so it must not count);
    // - a write of an owner with an older epoch than the last (a zombie);
    // - records that are not runnel's at all.
    let k0 = changelog::key(b"k0");
    forge(
        &kafka,
        &topic,
        3,
        &[
            (
                k0.clone(),
                Some(vec![0xe7, 0x07]),
                vec![(changelog::EPOCH, "1"), (changelog::CAUSE, "100000")],
            ),
            (
                k0.clone(),
                Some(vec![0x88, 0x27]),
                vec![(changelog::EPOCH, "0"), (changelog::CAUSE, "1")],
            ),
            (b"\x05garbage".to_vec(), Some(b"x".to_vec()), vec![]),
            (
                k0.clone(),
                Some(b"\xff\xff".to_vec()),
                vec![(changelog::EPOCH, "not a number")],
            ),
        ],
    )
    .await;

    // Second owner, fresh memory: 600 more records, then a swap, then 600.
    produce(&kafka, &input, &keyed(600, 600, KEYS)).await;
    let node = Node::start(
        &kafka,
        vec![Deployment::load(&engine, spec.clone()).unwrap()],
    )
    .unwrap();
    until_counts(&kafka, &output, KEYS, 40).await;
    let status = node.status();
    let restore = status[0].last_restore.clone().expect("a restore report");
    assert!(restore.keys > 0, "{restore:?}");
    assert!(
        restore.epoch >= 2,
        "a new owner takes a newer epoch: {restore:?}"
    );
    let report = format!("{status:?}");
    let mut next = Deployment::load(&engine, spec).unwrap();
    next.version = 2;
    node.swap(&name, next).unwrap();
    produce(&kafka, &input, &keyed(1200, 600, KEYS)).await;
    until_counts(&kafka, &output, KEYS, 60).await;
    let status = node.status();
    assert_eq!(status[0].version, 2, "{status:?}");
    node.stop();
    eprintln!("second owner: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_is_refused_where_its_state_cannot_be_kept() {
    let (_broker, kafka) = broker().await;
    let engine = engine(None);
    let mut two_inputs = counter("a", "out");
    two_inputs.input.push("b".to_owned());
    let e = Node::start(&kafka, vec![Deployment::load(&engine, two_inputs).unwrap()]).unwrap_err();
    assert!(
        format!("{e:#}").contains("exactly one input topic"),
        "{e:#}"
    );
    let stores_on_a_map = DeploymentSpec {
        stores: vec!["counts".to_owned()],
        ..spec("map", guests::IDENTITY_MAP, "a", "out", &[])
    };
    let e = Node::start(
        &kafka,
        vec![Deployment::load(&engine, stores_on_a_map).unwrap()],
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("only a processor keeps state"),
        "{e:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_large_for_the_changelog_fails_its_record_not_the_deployment() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 1).await;
    let engine = engine(None);
    let spec = DeploymentSpec {
        stores: vec!["main".to_owned()],
        ..spec("probe", guests::STATE_PROBE, &input, &output, &[])
    };
    // 990,000 bytes: under the 1 MiB the store once allowed, over what one
    // Kafka record takes by default.
    let records: Vec<Rec> = ["big-value 990000", "put a 1", "get a"]
        .iter()
        .map(|v| (Some("x".to_owned()), (*v).to_owned(), vec![]))
        .collect();
    produce(&kafka, &input, &records).await;
    let node = Node::start(&kafka, vec![Deployment::load(&engine, spec).unwrap()]).unwrap();
    let out = read(&kafka, &output, 2, WAIT).await;
    let values: Vec<String> = out.iter().map(value).collect();
    assert_eq!(values, ["ok", "1"], "the records after it run");
    let dead = read(&kafka, &dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let error = runnel_tests::kafka::header(&dead[0], "runnel-error").unwrap_or_default();
    assert!(
        error.contains("a value of 990003 bytes, over the limit of 983040 bytes"),
        "{error}"
    );
    let status = node.status();
    assert_eq!(status[0].failures, 0, "{status:?}");
    node.stop();
}

/// Starts `spec` on a node keeping its stores under `dir` (in memory when
/// `None`).
fn node_at(
    kafka: &runnel_host::kafka::KafkaOptions,
    dir: Option<&std::path::Path>,
    spec: &DeploymentSpec,
) -> Node {
    let node = Node::new(kafka).with_state_dir(dir.map(std::path::Path::to_owned));
    node.add(Deployment::load(&engine(None), spec.clone()).unwrap())
        .unwrap();
    node
}

/// The local checkpoints under a node's state folder.
fn checkpoints(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "checkpoint") {
                found.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

/// A node stopped cleanly leaves a checkpoint per partition; restarted on
/// the same state folder it keeps its stores and reads no changelog. Once
/// another owner has run a partition meanwhile, its checkpoint no longer
/// holds, and the restore reads the changelog: counts stay exact either
/// way (trusting a stale checkpoint would leave every key 20 short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_local_state_while_its_checkpoint_holds() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("counts"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 3).await;
    let spec = counter(&input, &output);
    let dir = tempfile::tempdir().unwrap();
    const KEYS: usize = 30;

    produce(&kafka, &input, &keyed(0, 600, KEYS)).await;
    let node = node_at(&kafka, Some(dir.path()), &spec);
    until_counts(&kafka, &output, KEYS, 20).await;
    node.stop();
    assert_eq!(
        checkpoints(dir.path()),
        [
            "partition-0.checkpoint",
            "partition-1.checkpoint",
            "partition-2.checkpoint"
        ]
    );

    // Restarted on the same folder: every partition kept, none read.
    produce(&kafka, &input, &keyed(600, 600, KEYS)).await;
    let node = node_at(&kafka, Some(dir.path()), &spec);
    until_counts(&kafka, &output, KEYS, 40).await;
    let status = node.status();
    assert_eq!(status[0].restores, 3, "{status:?}");
    assert_eq!(status[0].restores_from_checkpoint, 3, "{status:?}");
    let last = status[0].last_restore.clone().unwrap();
    assert_eq!(last.source, RestoreSource::Checkpoint, "{last:?}");
    assert_eq!(last.counts.records, 0, "nothing read: {last:?}");
    assert!(last.keys > 0, "{last:?}");

    // A second node joins and takes a partition (cooperative-sticky: the
    // others stay), runs it, and leaves. The partition comes back with a
    // changelog moved past its checkpoint: it is read, not kept.
    let joined = node_at(&kafka, None, &spec);
    let deadline = Instant::now() + WAIT;
    while joined.status()[0].restores == 0 {
        assert!(Instant::now() < deadline, "{:?}", joined.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce(&kafka, &input, &keyed(1200, 600, KEYS)).await;
    until_counts(&kafka, &output, KEYS, 60).await;
    joined.stop();
    produce(&kafka, &input, &keyed(1800, 600, KEYS)).await;
    until_counts(&kafka, &output, KEYS, 80).await;
    let status = node.status();
    assert!(status[0].restores > 3, "{status:?}");
    assert_eq!(status[0].restores_from_checkpoint, 3, "{status:?}");
    node.stop();
    assert_eq!(checkpoints(dir.path()).len(), 3);

    // Another node, without that folder, runs the partitions meanwhile.
    produce(&kafka, &input, &keyed(2400, 600, KEYS)).await;
    let other = node_at(&kafka, None, &spec);
    until_counts(&kafka, &output, KEYS, 100).await;
    other.stop();

    // The first node's checkpoints are stale now: it reads the changelog.
    produce(&kafka, &input, &keyed(3000, 600, KEYS)).await;
    let node = node_at(&kafka, Some(dir.path()), &spec);
    until_counts(&kafka, &output, KEYS, 120).await;
    let status = node.status();
    assert_eq!(status[0].restores_from_checkpoint, 0, "{status:?}");
    let last = status[0].last_restore.clone().unwrap();
    assert_eq!(last.source, RestoreSource::Changelog, "{last:?}");
    node.stop();
}
