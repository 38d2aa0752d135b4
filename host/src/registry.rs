//! The registry, kept in Kafka: compiled functions and models, and the
//! deployments that bind them to topics. No database besides Kafka.
//!
//! - **Artifacts** (`runnel.artifacts`, compacted): modules and models,
//!   content-addressed by sha256. An artifact is written in chunks of at most
//!   [`CHUNK`] bytes (keys `<digest>/<index>`), so that it fits the default
//!   message size of any Kafka cluster; headers say its kind, its number of
//!   chunks and its size. A reader checks the digest of what it assembled.
//! - **Deployments** (`runnel.deployments`, compacted): key = the deployment's
//!   name, value = its [`DeploymentRecord`] as JSON — its topics and batching,
//!   whether it is paused, and its version history (module digest, model
//!   digest, config, limits) with the version that should run. A tombstone
//!   deletes it.
//!
//! Every node reads both topics from the beginning when it starts
//! ([`Registry::open`] returns once it has caught up) and keeps following;
//! the reconciler ([`crate::control`]) makes the node run what the registry
//! says. Writes go through [`Registry::put_artifact`],
//! [`Registry::put_deployment`] and [`Registry::delete_deployment`], which
//! return once the write is acknowledged *and* this node's reader has seen
//! it, so a read after a write sees the write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::kafka::KafkaOptions;

/// The largest chunk of an artifact in one Kafka record.
pub const CHUNK: usize = 512 * 1024;
/// How many versions of a deployment are kept.
pub const KEPT_VERSIONS: usize = 20;

/// The registry's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTopics {
    pub artifacts: String,
    pub deployments: String,
    /// Each node's report of what it runs (key: node id), every few seconds.
    pub nodes: String,
}

impl Default for RegistryTopics {
    fn default() -> Self {
        Self::with_prefix("runnel")
    }
}

impl RegistryTopics {
    /// `<prefix>.artifacts` and `<prefix>.deployments`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            artifacts: format!("{prefix}.artifacts"),
            deployments: format!("{prefix}.deployments"),
            nodes: format!("{prefix}.nodes"),
        }
    }
}

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Module,
    Model,
}

impl ArtifactKind {
    fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Module => "module",
            ArtifactKind::Model => "model",
        }
    }
}

/// One version of a deployment: what runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    /// sha256 of the module (hex).
    pub module: String,
    /// sha256 of the model (hex), for scorers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub memory_mib: u64,
    pub timeout_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Why this version exists: `deploy`, `swap`, `rollback to 2`, ...
    pub reason: String,
}

/// A deployment as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub name: String,
    pub input: Vec<String>,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    pub batch_size: usize,
    pub linger_ms: u64,
    /// Worker threads per node; `None`: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(default)]
    pub paused: bool,
    /// The version that should run.
    pub current: u64,
    /// The kept versions, oldest first.
    pub versions: Vec<Version>,
}

impl DeploymentRecord {
    /// The version that should run.
    pub fn current_version(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == self.current)
    }

    /// Appends `v` as the next version and makes it current, keeping the
    /// last [`KEPT_VERSIONS`].
    pub fn push_version(&mut self, mut v: Version) -> u64 {
        let next = self.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        v.version = next;
        self.versions.push(v);
        if self.versions.len() > KEPT_VERSIONS {
            let extra = self.versions.len() - KEPT_VERSIONS;
            self.versions.drain(..extra);
        }
        self.current = next;
        next
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// sha256 of `bytes`, in hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[derive(Debug, Default)]
struct State {
    artifacts: HashMap<String, (ArtifactKind, Arc<[u8]>)>,
    /// Artifacts still being assembled: digest -> chunks.
    partial: HashMap<String, Vec<Option<Vec<u8>>>>,
    deployments: BTreeMap<String, DeploymentRecord>,
    /// The last report of each node.
    nodes: BTreeMap<String, serde_json::Value>,
    /// The next offset to read, per topic (partition 0).
    positions: HashMap<String, i64>,
    /// Bumped at every change, so that watchers know to look.
    generation: u64,
}

/// A node's view of the registry, and its way to write to it.
pub struct Registry {
    topics: RegistryTopics,
    producer: FutureProducer,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held across a read-modify-write of a deployment; see
    /// [`Registry::deployment_writes`].
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("topics", &self.topics)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates the registry's topics (one partition each, so that their records
/// are totally ordered; compacted) if they do not exist.
pub async fn ensure_registry_topics(
    kafka: &KafkaOptions,
    topics: &RegistryTopics,
) -> anyhow::Result<()> {
    crate::kafka::create_topics(
        kafka,
        &[&topics.artifacts, &topics.deployments, &topics.nodes],
        1,
        &[("cleanup.policy", "compact")],
    )
    .await
    .context("cannot create the registry's topics")
}

impl Registry {
    /// Creates the topics if needed, reads them from the beginning, and
    /// returns once caught up; a thread keeps following them.
    pub async fn open(kafka: &KafkaOptions, topics: RegistryTopics) -> anyhow::Result<Self> {
        ensure_registry_topics(kafka, &topics).await?;
        let producer: FutureProducer = kafka
            .producer()
            .set("linger.ms", "0")
            .create()
            .context("cannot create the registry's producer")?;
        let consumer: BaseConsumer = kafka
            .consumer(&format!("runnel.registry.{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("statistics.interval.ms", "0")
            .create()
            .context("cannot create the registry's reader")?;
        let mut tpl = TopicPartitionList::new();
        for t in [&topics.artifacts, &topics.deployments, &topics.nodes] {
            tpl.add_partition_offset(t, 0, Offset::Beginning)
                .context("assigning the registry topics")?;
        }
        consumer
            .assign(&tpl)
            .context("cannot read the registry topics")?;
        // Where the topics end now: caught up once read that far.
        let (consumer, ends) = tokio::task::spawn_blocking({
            let names = [topics.artifacts.clone(), topics.deployments.clone()];
            move || {
                let mut ends = HashMap::new();
                for t in names {
                    let (_, high) = consumer
                        .fetch_watermarks(&t, 0, Duration::from_secs(10))
                        .with_context(|| {
                            format!("cannot read the end of the registry topic {t}")
                        })?;
                    ends.insert(t, high);
                }
                Ok::<_, anyhow::Error>((consumer, ends))
            }
        })
        .await
        .context("reading the registry's topics")??;
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("runnel-registry".into())
            .spawn({
                let (state, stop, topics) = (state.clone(), stop.clone(), topics.clone());
                move || {
                    // A record that makes the reader panic (a bug of
                    // runnel's) is skipped, said once, and reading goes on:
                    // the consumer's position is already past it.
                    while let Err(panic) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            follow(&consumer, &topics, &state, &stop)
                        }))
                    {
                        tracing::error!(
                            error = crate::runner::panic_message(&*panic),
                            "the registry's reader panicked on a record; skipping it"
                        );
                    }
                }
            })
            .context("cannot start the registry's reader")?;
        let registry = Self {
            topics,
            producer,
            state,
            stop,
            thread: Some(thread),
            writes: tokio::sync::Mutex::new(()),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for (topic, end) in ends {
            registry
                .wait_seen(&topic, end - 1, deadline)
                .await
                .with_context(|| format!("catching up with the registry topic {topic}"))?;
        }
        Ok(registry)
    }

    pub fn topics(&self) -> &RegistryTopics {
        &self.topics
    }

    /// A counter bumped at every change; see [`Registry::wait_change`].
    pub fn generation(&self) -> u64 {
        lock(&self.state.0).generation
    }

    /// Waits until the registry changes past `generation`, or `timeout`.
    pub fn wait_change(&self, generation: u64, timeout: Duration) -> u64 {
        let (m, cv) = &*self.state;
        let guard = lock(m);
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |s| s.generation <= generation)
            .unwrap_or_else(PoisonError::into_inner);
        guard.generation
    }

    /// An artifact's bytes and kind, if the registry has it.
    pub fn artifact(&self, digest: &str) -> Option<(ArtifactKind, Arc<[u8]>)> {
        lock(&self.state.0).artifacts.get(digest).cloned()
    }

    pub fn deployment(&self, name: &str) -> Option<DeploymentRecord> {
        lock(&self.state.0).deployments.get(name).cloned()
    }

    pub fn deployments(&self) -> Vec<DeploymentRecord> {
        lock(&self.state.0).deployments.values().cloned().collect()
    }

    /// The nodes' last reports that are at most `fresh` old (by their `at_ms`).
    pub fn nodes(&self, fresh: Duration) -> Vec<serde_json::Value> {
        let now = now_ms();
        lock(&self.state.0)
            .nodes
            .values()
            .filter(|r| {
                r["at_ms"]
                    .as_u64()
                    .is_some_and(|at| now.saturating_sub(at) <= fresh.as_millis() as u64)
            })
            .cloned()
            .collect()
    }

    /// Publishes this node's report (or, with `None`, says it is gone).
    /// Fire and forget: a lost report is replaced by the next one.
    pub fn report_node(&self, node: &str, report: Option<&serde_json::Value>) {
        let value = report.and_then(|r| serde_json::to_vec(r).ok());
        let mut record = FutureRecord::<str, [u8]>::to(&self.topics.nodes).key(node);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        if let Err((e, _)) = self.producer.send_result(record) {
            tracing::debug!(error = %e, "cannot publish this node's report");
        }
    }

    /// Waits up to `timeout` for reports in flight to be written.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer as _;
        let _ = self.producer.flush(timeout);
    }

    /// Stores an artifact (a no-op if it is there already); returns its digest.
    pub async fn put_artifact(&self, kind: ArtifactKind, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = digest(bytes);
        if self.artifact(&digest).is_some() {
            return Ok(digest);
        }
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK).collect()
        };
        let (n, size) = (chunks.len().to_string(), bytes.len().to_string());
        let mut last = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let key = format!("{digest}/{i}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "runnel-kind",
                    value: Some(kind.as_str()),
                })
                .insert(Header {
                    key: "runnel-chunks",
                    value: Some(&n),
                })
                .insert(Header {
                    key: "runnel-size",
                    value: Some(&size),
                });
            let record = FutureRecord::to(&self.topics.artifacts)
                .key(&key)
                .payload(*chunk)
                .headers(headers);
            let rdkafka::producer::future_producer::Delivery { offset, .. } = self
                .producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| {
                    anyhow::anyhow!("cannot write to {}: {e}", self.topics.artifacts)
                })?;
            last = offset;
        }
        self.wait_seen(
            &self.topics.artifacts,
            last,
            Instant::now() + Duration::from_secs(30),
        )
        .await?;
        Ok(digest)
    }

    /// Serialises this node's changes to deployments. A change reads a
    /// deployment, derives its next state (a new version number, for one)
    /// and writes it; two changes that read the same state would both write
    /// version N+1 and one would be lost. Hold the guard from that read
    /// until the write returns (it returns once this node has read the
    /// write back, so the next change reads it).
    ///
    /// Across nodes there is no lock: two nodes that change one deployment
    /// at the same moment can both write the same version number. Every node
    /// then runs the one written last, since each compares what it runs
    /// with the registry's version in full, not by its number.
    pub async fn deployment_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// Writes a deployment (a new one, or a new state of one).
    pub async fn put_deployment(&self, record: &DeploymentRecord) -> anyhow::Result<()> {
        let value = serde_json::to_vec(record).context("encoding the deployment")?;
        self.write_deployment(&record.name, Some(&value)).await
    }

    /// Deletes a deployment: a tombstone.
    pub async fn delete_deployment(&self, name: &str) -> anyhow::Result<()> {
        self.write_deployment(name, None).await
    }

    async fn write_deployment(&self, name: &str, value: Option<&[u8]>) -> anyhow::Result<()> {
        let mut record = FutureRecord::<str, [u8]>::to(&self.topics.deployments).key(name);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let rdkafka::producer::future_producer::Delivery { offset, .. } = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| {
                anyhow::anyhow!("cannot write to {}: {e}", self.topics.deployments)
            })?;
        self.wait_seen(
            &self.topics.deployments,
            offset,
            Instant::now() + Duration::from_secs(30),
        )
        .await
    }

    /// Waits until this node's reader has read `topic` up to `offset`.
    async fn wait_seen(&self, topic: &str, offset: i64, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let seen = lock(&self.state.0)
                .positions
                .get(topic)
                .copied()
                .unwrap_or(0);
            if seen > offset {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("the registry's reader has not reached offset {offset} of {topic}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reader: applies every record of both topics to the state.
fn follow(
    consumer: &BaseConsumer,
    topics: &RegistryTopics,
    state: &(Mutex<State>, Condvar),
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the registry");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let mut s = lock(&state.0);
        let topic = m.topic().to_owned();
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        if topic == topics.nodes {
            // Reports come every few seconds: they do not wake the reconciler.
            if let Some(node) = key {
                match m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                    Some(report) => s.nodes.insert(node, report),
                    None => s.nodes.remove(&node),
                };
            }
            s.positions.insert(topic, m.offset() + 1);
            continue;
        }
        if topic == topics.deployments {
            apply_deployment(&mut s, key, m.payload());
        } else {
            // Read as bytes: any client may write here, with any header name.
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    crate::kafka::headers::raw(h)
                        .find(|(k, _)| *k == name.as_bytes())
                        .and_then(|(_, v)| v)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            apply_chunk(
                &mut s,
                key,
                header("runnel-kind"),
                header("runnel-chunks"),
                m.payload(),
            );
        }
        s.positions.insert(topic, m.offset() + 1);
        s.generation += 1;
        drop(s);
        state.1.notify_all();
    }
}

fn apply_deployment(s: &mut State, key: Option<String>, value: Option<&[u8]>) {
    let Some(name) = key else {
        tracing::warn!("a registry deployment record without a key; ignored");
        return;
    };
    match value {
        None => {
            s.deployments.remove(&name);
        }
        Some(v) => match serde_json::from_slice::<DeploymentRecord>(v) {
            Ok(r) => {
                s.deployments.insert(name, r);
            }
            Err(e) => {
                tracing::warn!(deployment = name, error = %e, "an unreadable deployment record; ignored")
            }
        },
    }
}

fn apply_chunk(
    s: &mut State,
    key: Option<String>,
    kind: Option<String>,
    chunks: Option<String>,
    value: Option<&[u8]>,
) {
    let (Some(key), Some(value)) = (key, value) else {
        return;
    };
    let Some((digest, index)) = key.split_once('/') else {
        return;
    };
    let kind = match kind.as_deref() {
        Some("model") => ArtifactKind::Model,
        _ => ArtifactKind::Module,
    };
    let (Ok(index), Some(Ok(n))) = (index.parse::<usize>(), chunks.map(|c| c.parse::<usize>()))
    else {
        tracing::warn!(key, "an artifact chunk without its index or count; ignored");
        return;
    };
    if s.artifacts.contains_key(digest) || index >= n {
        return;
    }
    let parts = s
        .partial
        .entry(digest.to_owned())
        .or_insert_with(|| vec![None; n]);
    if parts.len() != n {
        return;
    }
    parts[index] = Some(value.to_vec());
    if parts.iter().all(Option::is_some) {
        let parts = s.partial.remove(digest).unwrap_or_default();
        let bytes: Vec<u8> = parts.into_iter().flatten().flatten().collect();
        if self::digest(&bytes) == digest {
            s.artifacts
                .insert(digest.to_owned(), (kind, Arc::from(bytes)));
        } else {
            tracing::warn!(
                digest,
                "an artifact whose bytes do not match its digest; ignored"
            );
        }
    }
}
