//! Helpers for tests against a real Kafka-protocol broker: the embedded Tansu
//! broker on a free loopback port, random topic names, a producer and a
//! reader. No mocks.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use runnel_host::broker::{BrokerOptions, EmbeddedBroker};
use runnel_host::config::DeploymentSpec;
use runnel_host::kafka::{KafkaOptions, ensure_topics};

/// A name no other test uses: `<prefix>-<pid>-<nanos>-<counter>`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts the embedded broker on a free loopback port.
pub async fn broker() -> (EmbeddedBroker, KafkaOptions) {
    let broker = EmbeddedBroker::start(BrokerOptions::default())
        .await
        .expect("the embedded broker starts");
    let kafka = KafkaOptions::embedded(broker.bootstrap());
    (broker, kafka)
}

pub async fn topics(kafka: &KafkaOptions, names: &[&str], partitions: i32) {
    ensure_topics(kafka, names, partitions)
        .await
        .expect("topics are created");
}

/// A record to produce: key, value, headers.
pub type Rec = (Option<String>, String, Vec<(String, String)>);

/// Produces `records` to `topic` and waits for every acknowledgement. Keys
/// go where a Java client puts them (murmur2), as runnel's producers do and
/// its state queries look for them.
pub async fn produce(kafka: &KafkaOptions, topic: &str, records: &[Rec]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = records.iter().map(|(k, v, hs)| {
        let mut headers = OwnedHeaders::new();
        for (hk, hv) in hs {
            headers = headers.insert(Header {
                key: hk,
                value: Some(hv.as_bytes()),
            });
        }
        let mut r = FutureRecord::to(topic)
            .payload(v.as_bytes())
            .headers(headers);
        if let Some(k) = k {
            r = r.key(k.as_bytes());
        }
        producer.send(r, Duration::from_secs(30))
    });
    for result in futures_join(sends).await {
        result.map_err(|(e, _)| e).expect("produced");
    }
}

async fn futures_join<F: Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in fs.collect::<Vec<_>>() {
        out.push(f.await);
    }
    out
}

/// Reads `topic` from the beginning until `count` records arrived or
/// `timeout` passed, then a little longer to catch records beyond `count`.
pub async fn read(
    kafka: &KafkaOptions,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let brokers = kafka.brokers.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut extra: Option<Instant> = None;
        while Instant::now() < deadline && extra.is_none_or(|t| Instant::now() < t) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
            if out.len() >= count && extra.is_none() {
                extra = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        out
    })
    .await
    .expect("reader thread")
}

/// Produces `chunks` chunks of 100 records (key `k<i>`, value `r<i>`), with
/// `pause` between chunks: a stream that keeps coming while a test acts.
pub fn stream(
    kafka: &KafkaOptions,
    topic: &str,
    chunks: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::spawn(async move {
        for chunk in 0..chunks {
            let records: Vec<Rec> = (chunk * 100..(chunk + 1) * 100)
                .map(|i| (Some(format!("k{i}")), format!("r{i}"), vec![]))
                .collect();
            produce(&kafka, &topic, &records).await;
            tokio::time::sleep(pause).await;
        }
    })
}

/// Where each of the `n` records of `topic` sits, by value: (partition, offset).
pub async fn positions(
    kafka: &KafkaOptions,
    topic: &str,
    n: usize,
) -> std::collections::BTreeMap<String, (i32, i64)> {
    read(kafka, topic, n, Duration::from_secs(90))
        .await
        .iter()
        .map(|m| (value(m), (m.partition(), m.offset())))
        .collect()
}

/// A header's value as text (the first of that name). Names are read as
/// bytes: a record may carry one that is not UTF-8.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    raw_headers(m)
        .into_iter()
        .find(|(k, _)| k == name.as_bytes())
        .and_then(|(_, v)| v)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Every header of a record, in order, as bytes.
pub fn raw_headers(m: &OwnedMessage) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    m.headers()
        .map(|h| {
            runnel_host::kafka::headers::raw(h.as_borrowed())
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn value(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

pub fn key(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned()
}

/// A deployment of `module` from `input` to `output` (dead letters to
/// `<output>.dlq`) under a unique name, with small batches for tests.
pub fn spec(
    name: &str,
    module: &str,
    input: &str,
    output: &str,
    config: &[(&str, &str)],
) -> DeploymentSpec {
    DeploymentSpec {
        name: unique(name),
        module: module.into(),
        model: None,
        input: vec![input.to_owned()],
        output: output.into(),
        dead_letter: None,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        memory_mib: 64,
        timeout_ms: 2000,
        max_outputs_per_record: runnel_host::config::defaults::max_outputs_per_record(),
        max_output_mib: runnel_host::config::defaults::max_output_mib(),
        batch_size: 32,
        linger_ms: 10,
        workers: 2,
        stores: Vec::new(),
        provenance: runnel_host::config::Provenance::default(),
    }
}
