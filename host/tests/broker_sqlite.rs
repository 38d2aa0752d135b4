//! The embedded broker keeps its data in a SQLite file across restarts
//! (feature `sqlite`, on by default).

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::time::Duration;

use runnel_host::broker::{BrokerOptions, EmbeddedBroker, Storage};
use runnel_host::kafka::KafkaOptions;
use runnel_tests::kafka::{Rec, produce, read, topics, unique, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        storage: Storage::Sqlite(dir.path().join("broker.db")),
        ..BrokerOptions::default()
    };
    let topic = unique("kept");
    let records: Vec<Rec> = (0..20).map(|i| (None, format!("v{i}"), vec![])).collect();
    {
        let broker = EmbeddedBroker::start(options.clone()).await.unwrap();
        let kafka = KafkaOptions::embedded(broker.bootstrap());
        topics(&kafka, &[&topic], 1).await;
        produce(&kafka, &topic, &records).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let broker = EmbeddedBroker::start(options).await.unwrap();
    let kafka = KafkaOptions::embedded(broker.bootstrap());
    let out = read(&kafka, &topic, 20, Duration::from_secs(30)).await;
    let got: Vec<String> = out.iter().map(value).collect();
    let want: Vec<String> = records.into_iter().map(|(_, v, _)| v).collect();
    assert_eq!(got, want);
}

/// A broker that goes away mid-stream and comes back on the same address:
/// the node reconnects and carries on, without a restart and without losing
/// a record (outputs wait in its producer; offsets commit after they land).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rides_out_a_broker_restart_without_loss() {
    use runnel_host::runner::{Deployment, Node};
    use runnel_tests::{engine, guests, kafka::spec};

    let dir = tempfile::tempdir().unwrap();
    let mut options = BrokerOptions {
        storage: Storage::Sqlite(dir.path().join("broker.db")),
        ..BrokerOptions::default()
    };
    let broker = EmbeddedBroker::start(options.clone()).await.unwrap();
    options.listen = broker.addr();
    let kafka = KafkaOptions::embedded(broker.bootstrap());
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let d = spec("copy", guests::IDENTITY_MAP, &input, &output, &[]);
    let node = Node::start(&kafka, vec![Deployment::load(&engine(None), d).unwrap()]).unwrap();

    let batch = |from: usize| -> Vec<Rec> {
        (from..from + 500)
            .map(|i| (Some(format!("k{i}")), format!("v{i}"), vec![]))
            .collect()
    };
    produce(&kafka, &input, &batch(0)).await;
    assert!(
        read(&kafka, &output, 200, Duration::from_secs(60))
            .await
            .len()
            >= 200
    );

    // The broker goes away for a few seconds, then comes back on the same
    // address and file.
    drop(broker);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let _broker = loop {
        match EmbeddedBroker::start(options.clone()).await {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("restarting the broker: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the broker does not come back: {e:#}"),
        }
    };
    produce(&kafka, &input, &batch(500)).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let got = loop {
        let out = read(&kafka, &output, 1000, Duration::from_secs(5)).await;
        let got: std::collections::BTreeSet<String> = out.iter().map(value).collect();
        if got.len() == 1000 || std::time::Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(
        got.len(),
        1000,
        "every record of both halves has its output"
    );
    let status = node.status();
    assert_eq!(
        status[0].state,
        runnel_host::runner::DeploymentState::Running,
        "{status:?}"
    );
    tokio::task::spawn_blocking(move || node.stop())
        .await
        .unwrap();
}

/// The SQLite storage finds a record's headers through an index. Tansu 0.6.0
/// has none, so every record fetched scanned the whole header table: in the
/// chaos soak (host/tests/soak), a broker holding some tens of thousands of
/// records, each with a few headers, spent nearly all its time in that scan
/// and its clients timed out. The plan is read with Python's sqlite3 module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_found_through_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    {
        let broker = EmbeddedBroker::start(BrokerOptions {
            storage: Storage::Sqlite(db.clone()),
            ..BrokerOptions::default()
        })
        .await
        .unwrap();
        let kafka = KafkaOptions::embedded(broker.bootstrap());
        let topic = unique("headers");
        topics(&kafka, &[&topic], 1).await;
        let record: Rec = (None, "v".into(), vec![("h".into(), "x".into())]);
        produce(&kafka, &topic, &[record]).await;
    }
    // The statement of Tansu's `header_fetch.sql`, with its parameters filled in.
    let query = "EXPLAIN QUERY PLAN select h.k, h.v from header h \
        join record r on h.topition = r.topition and h.offset_id = r.offset_id \
        join topition tp on tp.id = r.topition join topic t on tp.topic = t.id \
        join cluster c on t.cluster = c.id \
        where c.name = 'runnel' and t.name = 't' and tp.partition = 0 and r.offset_id = 0";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nfor row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print(row[-1])",
        ])
        .arg(&db)
        .arg(query)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.lines()
            .any(|l| l.contains("SEARCH h USING") && l.contains("header_topition_offset_id")),
        "the headers are not looked up by index:\n{plan}"
    );
}

/// The SQLite storage compacts a `cleanup.policy=compact` topic when the
/// broker starts and every 10 minutes after. It removes a record only for a
/// later one of the same key that is older than the topic's
/// `min.compaction.lag.ms`, as Kafka does. Unpatched it kept nothing but
/// each key's last record, however recent: a processor's changelog lost the
/// committed value a restore needs when a key's last record is a write of
/// an input never committed (the chaos soak's keyed count fell to a few
/// hundred of its 2,819 records per key over 30 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_records_younger_than_the_lag() {
    use runnel_host::kafka::create_topics;

    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        storage: Storage::Sqlite(dir.path().join("broker.db")),
        ..BrokerOptions::default()
    };
    let (lagged, eager) = (unique("lagged"), unique("eager"));
    let records: Vec<Rec> = (0..3)
        .map(|i| (Some("k".to_owned()), format!("v{i}"), vec![]))
        .collect();
    {
        let broker = EmbeddedBroker::start(options.clone()).await.unwrap();
        let kafka = KafkaOptions::embedded(broker.bootstrap());
        let compact = ("cleanup.policy", "compact");
        create_topics(
            &kafka,
            &[&lagged],
            1,
            &[compact, ("min.compaction.lag.ms", "3600000")],
        )
        .await
        .unwrap();
        create_topics(&kafka, &[&eager], 1, &[compact])
            .await
            .unwrap();
        produce(&kafka, &lagged, &records).await;
        produce(&kafka, &eager, &records).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Compacts as it starts.
    let broker = EmbeddedBroker::start(options).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kafka = KafkaOptions::embedded(broker.bootstrap());
    let values = |out: Vec<_>| out.iter().map(value).collect::<Vec<String>>();
    assert_eq!(
        values(read(&kafka, &eager, 1, Duration::from_secs(30)).await),
        ["v2"],
        "a compacted topic without a lag keeps each key's last record"
    );
    assert_eq!(
        values(read(&kafka, &lagged, 3, Duration::from_secs(30)).await),
        ["v0", "v1", "v2"],
        "records younger than min.compaction.lag.ms were compacted"
    );
}
