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
