//! rdkafka client settings, in one place: what runnel's consumers, producers
//! and admin clients are configured with, and how user properties (TLS, SASL,
//! tuning) pass through to librdkafka; and reading records' headers, whose
//! names need not be UTF-8 ([`headers`]).

pub mod headers;
pub mod offsets;
pub mod partitioner;
pub mod watermarks;

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;

#[derive(Debug, Clone, Copy)]
enum Role {
    Consumer,
    Producer,
    Admin,
}

/// librdkafka properties only consumers take.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.remote.assignor",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
];

/// librdkafka properties only producers take.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "acks",
    "request.required.acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "sticky.partitioning.linger.ms",
];

/// The partitioner of runnel's producers: Kafka's default (murmur2 of the
/// key, [`partitioner::partition`]) rather than librdkafka's CRC32, so that
/// a key goes where a Java client, Kafka Streams and runnel's state queries
/// expect it. `--kafka partitioner=...` overrides it.
pub const PARTITIONER: &str = "murmur2_random";

/// Which values of a reserved property a user may give.
#[derive(Debug, Clone, Copy)]
enum Allowed {
    /// None: runnel sets it.
    Never,
    /// Only these (runnel's own), in any case.
    Only(&'static [&'static str]),
    /// A whole number above zero.
    Positive,
}

/// librdkafka properties that `--kafka` may not set freely, with what it may
/// set them to ([`Allowed`]) and why: runnel sets them itself, and its
/// guarantees depend on them. The values of [`Allowed::Only`] are what runnel
/// sets or mean the same.
const RESERVED: &[(&str, Allowed, &str)] = &[
    (
        "bootstrap.servers",
        Allowed::Never,
        "give the cluster's address with --brokers",
    ),
    (
        "group.id",
        Allowed::Never,
        "each deployment is a consumer group of its own, runnel.<name>",
    ),
    (
        "group.instance.id",
        Allowed::Never,
        "every deployment of a node would share it, and static members of one group fence each other",
    ),
    (
        "enable.auto.offset.store",
        Allowed::Only(&["false"]),
        "an offset is stored only once every output of its record is acknowledged: that is the at-least-once guarantee",
    ),
    (
        "enable.auto.commit",
        Allowed::Only(&["true"]),
        "the stored offsets are committed by librdkafka's periodic commit; without it nothing would be committed",
    ),
    (
        "auto.offset.reset",
        Allowed::Only(&["earliest", "smallest", "beginning"]),
        "a deployment without a committed offset reads its inputs from the beginning; another reset would skip records",
    ),
    (
        "acks",
        Allowed::Only(&["all", "-1"]),
        "an input is committed only once its outputs are acknowledged by every in-sync replica",
    ),
    (
        "request.required.acks",
        Allowed::Only(&["all", "-1"]),
        "an input is committed only once its outputs are acknowledged by every in-sync replica",
    ),
    (
        "delivery.report.only.error",
        Allowed::Only(&["false"]),
        "an input is committed on its outputs' delivery reports; without them nothing would be committed",
    ),
    (
        "isolation.level",
        Allowed::Only(&["read_committed"]),
        "records of aborted transactions must not be run",
    ),
    (
        "transactional.id",
        Allowed::Never,
        "runnel's producers are not transactional, and one id shared by many producers fences them",
    ),
    (
        "partition.assignment.strategy",
        Allowed::Only(&["cooperative-sticky"]),
        "partitions move one by one, with their batches finished and committed (cooperative-sticky)",
    ),
    (
        "auto.commit.interval.ms",
        Allowed::Positive,
        "the stored offsets are committed by librdkafka's periodic commit; 0 turns it off",
    ),
    (
        "group.protocol",
        Allowed::Only(&["classic"]),
        "a deployment's partitions move through the classic protocol's rebalance callbacks, which commit them",
    ),
    (
        "enable.partition.eof",
        Allowed::Only(&["false"]),
        "the end of a partition is not an event a deployment handles",
    ),
];

/// Refuses `--kafka` properties that would break a deployment's group or the
/// delivery guarantee (see [`RESERVED`]), naming the property and why.
pub fn check_properties(properties: &[(String, String)]) -> anyhow::Result<()> {
    for (key, value) in properties {
        let key = key.trim();
        let Some((_, allowed, why)) = RESERVED.iter().find(|(k, _, _)| *k == key) else {
            continue;
        };
        let value_ = value.trim();
        let ok = match allowed {
            Allowed::Never => false,
            Allowed::Only(a) => a.iter().any(|v| v.eq_ignore_ascii_case(value_)),
            Allowed::Positive => value_.parse::<u64>().is_ok_and(|n| n > 0),
        };
        if !ok {
            anyhow::bail!(
                "--kafka {key}={value} is refused: runnel sets {key} itself, because {why}"
            );
        }
    }
    Ok(())
}

/// The most records, and bytes of keys and values, one deployment may have
/// handed to a shared producer and not yet seen acknowledged or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightCap {
    pub records: u64,
    pub bytes: u64,
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// One bootstrap address, `HOST:PORT` (or several, comma-separated).
    pub brokers: String,
    /// librdkafka properties applied to every client, after runnel's own:
    /// `security.protocol`, `sasl.*`, `ssl.*`, tuning.
    pub properties: Vec<(String, String)>,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
        }
    }

    /// Options for the embedded Tansu broker at `bootstrap` (`runnel dev`,
    /// tests, benchmarks). They are [`KafkaOptions::new`]'s: the embedded
    /// broker answers a fetch as soon as it has records and holds an empty
    /// one until records come or the wait ends, as Kafka does (a patch of
    /// runnel's: `host/vendor/README.md`). Before it, its clients had to
    /// wait 10 ms per fetch, and an idle consumer fetched 100 times a second.
    pub fn embedded(bootstrap: impl Into<String>) -> Self {
        Self::new(bootstrap)
    }

    /// These options with `client.id` set to `id`, unless the user's
    /// properties already set one. A node names its clients after itself
    /// (`runnel-<node id>`), so that broker logs, quotas and proxies can
    /// tell the nodes of a cluster apart.
    pub fn with_client_id(mut self, id: &str) -> Self {
        if !self.properties.iter().any(|(k, _)| k.trim() == "client.id") {
            // First, so that nothing the user set is overridden.
            self.properties.insert(0, ("client.id".into(), id.into()));
        }
        self
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "runnel")
            // Tansu and small clusters answer quickly; keep reconnects snappy.
            .set("reconnect.backoff.max.ms", "2000")
            .set("topic.metadata.refresh.interval.ms", "5000");
        c
    }

    fn finish(&self, mut c: ClientConfig, role: Role) -> ClientConfig {
        for (k, v) in &self.properties {
            // A property of the other kind of client only makes librdkafka
            // warn (CONFWARN) in this one; a misspelt one still fails below.
            let skip = match role {
                Role::Consumer => PRODUCER_ONLY.contains(&k.as_str()),
                Role::Producer => CONSUMER_ONLY.contains(&k.as_str()),
                Role::Admin => {
                    PRODUCER_ONLY.contains(&k.as_str()) || CONSUMER_ONLY.contains(&k.as_str())
                }
            };
            if !skip {
                c.set(k, v);
            }
        }
        c
    }

    /// A group consumer that stores offsets only when told (after the outputs
    /// of a record are acknowledged) and commits what was stored every second.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // librdkafka's default. A fetch is answered as soon as records
            // arrive, so this only bounds how long an empty one waits, and
            // how often an idle consumer asks: 2 times a second, not 10
            // (at 100 ms, an idle deployment cost a node 0.45% of a core,
            // at 500 ms 0.15%: `cargo bench --bench density`).
            .set("fetch.wait.max.ms", "500")
            // Once a partition's prefetched records pass `queued.min.messages`,
            // librdkafka stops fetching it for this long (1 s by default):
            // a consumer that drains its queue quickly would then sit idle.
            .set("fetch.queue.backoff.ms", "10");
        self.finish(c, Role::Consumer)
    }

    /// A producer that waits for every in-sync replica, batches for a few
    /// milliseconds and places keys as Java clients do ([`PARTITIONER`]).
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("acks", "all")
            .set("partitioner", PARTITIONER)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000");
        self.finish(c, Role::Producer)
    }

    /// The producer a node shares among its stateless deployments:
    /// [`KafkaOptions::producer`]'s, with a queue as large as librdkafka
    /// allows. Each deployment is held to its own share instead
    /// ([`KafkaOptions::in_flight_cap`]), so that one whose outputs cannot be
    /// delivered cannot fill the queue for the others.
    pub fn shared_producer(&self) -> ClientConfig {
        let mut c = self.producer();
        c.set("queue.buffering.max.messages", "2147483647")
            .set("queue.buffering.max.kbytes", "2147483647");
        c
    }

    /// What one deployment may have in flight in a shared producer: the
    /// user's `queue.buffering.max.messages` and `queue.buffering.max.kbytes`
    /// when set (they bound one producer's queue, and each deployment had
    /// a producer of its own before the node shared one), else
    /// librdkafka's defaults, 100,000 records and 1 GiB.
    pub fn in_flight_cap(&self) -> anyhow::Result<InFlightCap> {
        let mut cap = InFlightCap {
            records: 100_000,
            bytes: 1 << 30,
        };
        for (k, v) in &self.properties {
            let number = || {
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{}={v:?}: expected a positive number", k.trim()))
            };
            match k.trim() {
                "queue.buffering.max.messages" => cap.records = number()?,
                "queue.buffering.max.kbytes" => cap.bytes = number()?.saturating_mul(1024),
                _ => {}
            }
        }
        Ok(cap)
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.finish(self.base(), Role::Admin)
            .create()
            .with_context(|| format!("cannot create a Kafka admin client for {}", self.brokers))
    }
}

/// How many partitions `topic` has; `None` if it does not exist. Blocks
/// for up to `timeout`.
pub fn partition_count(
    kafka: &KafkaOptions,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<i32>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let reader: BaseConsumer = kafka
        .consumer(&format!("runnel.metadata.{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a client to read the metadata")?;
    let md = reader
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
        .filter(|&n| n > 0))
}

/// Creates the topics that do not exist yet, with `partitions` partitions.
pub async fn ensure_topics(
    kafka: &KafkaOptions,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    create_topics(kafka, topics, partitions, &[]).await
}

/// Creates the topics that do not exist yet, with `partitions` partitions
/// and these topic `configs` (for instance `cleanup.policy=compact`).
pub async fn create_topics(
    kafka: &KafkaOptions,
    topics: &[&str],
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin = kafka.admin()?;
    // A topic named twice in one request makes the whole request malformed.
    let mut topics = topics.to_vec();
    topics.sort_unstable();
    topics.dedup();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            configs.iter().fold(
                NewTopic::new(t, partitions, TopicReplication::Fixed(1)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .with_context(|| format!("cannot create topics on {}", kafka.brokers))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Deletes the topics that exist of `topics`; returns those it deleted.
pub async fn delete_topics(kafka: &KafkaOptions, topics: &[&str]) -> anyhow::Result<Vec<String>> {
    let admin = kafka.admin()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_topics(topics, &opts)
        .await
        .with_context(|| format!("cannot delete topics on {}", kafka.brokers))?;
    let mut deleted = Vec::new();
    for r in results {
        match r {
            Ok(topic) => deleted.push(topic),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => anyhow::bail!("cannot delete topic {topic}: {code}"),
        }
    }
    Ok(deleted)
}

/// A record whose header name is not UTF-8: a frame's header names are UTF-8
/// by contract, so such a record cannot be handed to a function.
#[derive(Debug, Clone, thiserror::Error)]
#[error("header {index} of the record has a name that is not UTF-8 ({name:?}, shown lossily)")]
pub struct BadHeaderName {
    /// The header's position among the record's headers, from 0.
    pub index: usize,
    /// The name, with invalid bytes replaced.
    pub name: String,
}

/// Appends a consumed record to a packed batch: the one copy out of
/// librdkafka's buffers. Refuses, and appends nothing, when a header name is
/// not UTF-8.
///
/// The header [`crate::engine::OUTPUT_HEADER`] is left out.
pub fn push_message(
    batch: &mut runnel_abi::BatchBuilder,
    m: &BorrowedMessage<'_>,
) -> Result<(), BadHeaderName> {
    let mut headers: Vec<(&str, Option<&[u8]>)> = Vec::new();
    if let Some(h) = headers_of(m) {
        for (index, (name, value)) in headers::raw(h).enumerate() {
            let name = std::str::from_utf8(name).map_err(|_| BadHeaderName {
                index,
                name: String::from_utf8_lossy(name).into_owned(),
            })?;
            // An output's choice of topic is the function's, never the
            // input's: a function that copies its input's headers would
            // otherwise let whoever writes the input pick the topic.
            if name != crate::engine::OUTPUT_HEADER {
                headers.push((name, value));
            }
        }
    }
    push_with(batch, m, &headers);
    Ok(())
}

/// Like [`push_message`], for showing a record rather than running it: a
/// header name that is not UTF-8 has its invalid bytes replaced.
pub fn push_message_lossy(batch: &mut runnel_abi::BatchBuilder, m: &BorrowedMessage<'_>) {
    let names: Vec<(std::borrow::Cow<'_, str>, Option<&[u8]>)> = headers_of(m)
        .map(|h| {
            headers::raw(h)
                .map(|(k, v)| (String::from_utf8_lossy(k), v))
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<(&str, Option<&[u8]>)> = names.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
    push_with(batch, m, &headers);
}

/// A consumed record's headers, if it has any: not asked of librdkafka
/// when it certainly has none ([`headers::certainly_none`]).
fn headers_of<'a>(m: &'a BorrowedMessage<'_>) -> Option<&'a rdkafka::message::BorrowedHeaders> {
    if headers::certainly_none(m) {
        None
    } else {
        m.headers()
    }
}

fn push_with(
    batch: &mut runnel_abi::BatchBuilder,
    m: &BorrowedMessage<'_>,
    headers: &[(&str, Option<&[u8]>)],
) {
    batch.push(&runnel_abi::Frame {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key(),
        value: m.payload(),
        headers,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    #[test]
    fn a_node_names_its_clients_unless_the_user_did() {
        let named = KafkaOptions::new("b:9092").with_client_id("runnel-n1");
        assert_eq!(named.consumer("g").get("client.id"), Some("runnel-n1"));
        assert_eq!(named.producer().get("client.id"), Some("runnel-n1"));
        let mut user = KafkaOptions::new("b:9092");
        user.properties.push(("client.id".into(), "mine".into()));
        let user = user.with_client_id("runnel-n1");
        assert_eq!(user.consumer("g").get("client.id"), Some("mine"));
        assert_eq!(user.properties.len(), 1);
    }

    /// librdkafka is built with TLS, and SASL PLAIN/SCRAM/OAUTHBEARER (which
    /// need no Cyrus SASL): clients accept the settings of a managed Kafka.
    #[test]
    fn tls_and_sasl_settings_pass_through() {
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("PLAIN")),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
        ] {
            let mut kafka = KafkaOptions::new("127.0.0.1:1");
            kafka
                .properties
                .push(("security.protocol".into(), protocol.into()));
            if let Some(m) = mechanism {
                kafka.properties.push(("sasl.mechanisms".into(), m.into()));
                kafka
                    .properties
                    .push(("sasl.username".into(), "user".into()));
                kafka
                    .properties
                    .push(("sasl.password".into(), "secret".into()));
            }
            let producer: Result<BaseProducer, _> = kafka.producer().create();
            assert!(
                producer.is_ok(),
                "{protocol} {mechanism:?}: {:?}",
                producer.err()
            );
            let consumer: Result<BaseConsumer, _> = kafka.consumer("g").create();
            assert!(
                consumer.is_ok(),
                "{protocol} {mechanism:?}: {:?}",
                consumer.err()
            );
        }
    }

    #[test]
    fn consumer_and_producer_settings_go_to_their_own_clients() {
        let mut kafka = KafkaOptions::new("127.0.0.1:1");
        kafka
            .properties
            .push(("max.poll.interval.ms".into(), "30000".into()));
        kafka.properties.push(("linger.ms".into(), "50".into()));
        let consumer = kafka.consumer("g");
        let producer = kafka.producer();
        assert_eq!(consumer.get("max.poll.interval.ms"), Some("30000"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("max.poll.interval.ms"), None);
    }

    #[test]
    fn consumers_wait_500_ms_per_fetch_unless_told_otherwise() {
        for kafka in [
            KafkaOptions::embedded("127.0.0.1:1"),
            KafkaOptions::new("127.0.0.1:1"),
        ] {
            assert_eq!(kafka.consumer("g").get("fetch.wait.max.ms"), Some("500"));
            assert_eq!(kafka.producer().get("fetch.wait.max.ms"), None);
        }
        let mut told = KafkaOptions::embedded("127.0.0.1:1");
        told.properties
            .push(("fetch.wait.max.ms".into(), "250".into()));
        assert_eq!(told.consumer("g").get("fetch.wait.max.ms"), Some("250"));
    }

    #[test]
    fn settings_that_break_the_group_or_the_guarantee_are_refused() {
        let kv = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        for (k, v) in [
            ("group.id", "mine"),
            ("enable.auto.offset.store", "true"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "latest"),
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("isolation.level", "read_uncommitted"),
            ("delivery.report.only.error", "true"),
            ("transactional.id", "t"),
            ("partition.assignment.strategy", "range"),
            ("group.instance.id", "a"),
            ("bootstrap.servers", "elsewhere:9092"),
            ("enable.partition.eof", "true"),
            ("auto.commit.interval.ms", "0"),
            ("auto.commit.interval.ms", ""),
            ("group.protocol", "consumer"),
        ] {
            let e = check_properties(&kv(k, v)).expect_err(k).to_string();
            assert!(e.contains(k) && e.contains("because"), "{e}");
        }
        for (k, v) in [
            ("acks", "all"),
            ("acks", "-1"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.offset.store", "false"),
            ("linger.ms", "50"),
            ("security.protocol", "SASL_SSL"),
            ("max.poll.interval.ms", "30000"),
            ("auto.commit.interval.ms", "5000"),
            ("group.protocol", "classic"),
        ] {
            check_properties(&kv(k, v)).expect(k);
        }
    }

    #[test]
    fn a_wrong_setting_is_refused_with_its_name() {
        let mut kafka = KafkaOptions::new("127.0.0.1:1");
        kafka
            .properties
            .push(("security.protocol".into(), "carrier-pigeon".into()));
        let err = kafka
            .producer()
            .create::<BaseProducer>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("security.protocol"), "{err}");
    }
}
