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
        let kafka = KafkaOptions::new(broker.bootstrap());
        topics(&kafka, &[&topic], 1).await;
        produce(&kafka, &topic, &records).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let broker = EmbeddedBroker::start(options).await.unwrap();
    let kafka = KafkaOptions::new(broker.bootstrap());
    let out = read(&kafka, &topic, 20, Duration::from_secs(30)).await;
    let got: Vec<String> = out.iter().map(value).collect();
    let want: Vec<String> = records.into_iter().map(|(_, v, _)| v).collect();
    assert_eq!(got, want);
}
