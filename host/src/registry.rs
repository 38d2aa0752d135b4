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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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
    /// The nodes' journals: their deployments' log lines and events (key:
    /// deployment), bounded by retention; see [`crate::journal`].
    pub logs: String,
}

impl Default for RegistryTopics {
    fn default() -> Self {
        Self::with_prefix("runnel")
    }
}

impl RegistryTopics {
    /// `<prefix>.artifacts`, `.deployments`, `.nodes` and `.logs`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            artifacts: format!("{prefix}.artifacts"),
            deployments: format!("{prefix}.deployments"),
            nodes: format!("{prefix}.nodes"),
            logs: format!("{prefix}.logs"),
        }
    }

    /// Every topic of the registry: no deployment may read or write them.
    pub fn all(&self) -> [&str; 4] {
        [
            self.artifacts.as_str(),
            self.deployments.as_str(),
            self.nodes.as_str(),
            self.logs.as_str(),
        ]
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
    /// Records written before this setting existed read as the default.
    #[serde(default = "crate::config::defaults::max_outputs_per_record")]
    pub max_outputs_per_record: u32,
    #[serde(default = "crate::config::defaults::max_output_mib")]
    pub max_output_mib: u64,
    /// What its outputs say of where they came from; records written
    /// before this setting existed read as `headers`.
    #[serde(default, skip_serializing_if = "crate::config::Provenance::is_default")]
    pub provenance: crate::config::Provenance,
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
    /// One topic name, or a list (a record stored with one reads as a
    /// list of one).
    pub output: crate::config::Outputs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    pub batch_size: usize,
    pub linger_ms: u64,
    /// Worker threads per node; `None`: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(default)]
    pub paused: bool,
    /// A processor's named stores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
    /// A processor's state generation: bumped by a swap that resets its
    /// state, which then lives in new changelog topics
    /// (`state::changelog::topic_at`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_generation: u64,
    /// The version that should run.
    pub current: u64,
    /// The kept versions, oldest first.
    pub versions: Vec<Version>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// The artifacts' digests in the order they completed, and their bytes.
    artifact_order: VecDeque<String>,
    artifact_bytes: usize,
    /// [`ARTIFACT_BYTES`] unless a test says otherwise.
    artifact_budget: Option<usize>,
    /// Artifacts still being assembled, by digest.
    partial: HashMap<String, Partial>,
    deployments: BTreeMap<String, DeploymentRecord>,
    /// The size of each deployment's record as read, and their sum.
    deployment_sizes: HashMap<String, usize>,
    deployment_bytes: usize,
    /// [`DEPLOYMENT_BYTES`] unless a test says otherwise.
    deployment_budget: Option<usize>,
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
    /// The partitions of the logs topic, as found when opened.
    log_partitions: i32,
}

impl crate::journal::Sink for Registry {
    fn write(&self, deployment: &str, line: &[u8]) {
        self.write_log(deployment, line);
    }
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
/// are totally ordered; compacted) if they do not exist, and the logs topic
/// ([`crate::journal`]: partitioned by deployment, bounded by retention).
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
    .context("cannot create the registry's topics")?;
    let (retention_ms, retention_bytes) = (
        crate::journal::RETENTION_MS.to_string(),
        crate::journal::RETENTION_BYTES.to_string(),
    );
    crate::kafka::create_topics(
        kafka,
        &[&topics.logs],
        crate::journal::PARTITIONS,
        &[
            ("cleanup.policy", "delete"),
            ("retention.ms", &retention_ms),
            ("retention.bytes", &retention_bytes),
        ],
    )
    .await
    .context("cannot create the logs topic")
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
        let log_partitions = tokio::task::spawn_blocking({
            let (client, topic) = (producer.clone(), topics.logs.clone());
            move || {
                use rdkafka::producer::Producer as _;
                client
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32))
                    .filter(|n| *n > 0)
                    .unwrap_or(1)
            }
        })
        .await
        .unwrap_or(1);
        let registry = Self {
            topics,
            producer,
            state,
            stop,
            thread: Some(thread),
            writes: tokio::sync::Mutex::new(()),
            log_partitions,
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

    /// Writes a line of a node's journal to the logs topic, to the
    /// deployment's partition. Fire and forget, like a report: a line the
    /// producer cannot take now (its queue full, the broker gone for long)
    /// is dropped, not waited for.
    pub fn write_log(&self, deployment: &str, line: &[u8]) {
        let partition = crate::journal::partition_of(deployment, self.log_partitions);
        let record = FutureRecord::<str, [u8]>::to(&self.topics.logs)
            .key(deployment)
            .partition(partition)
            .payload(line);
        let _ = self.producer.send_result(record);
    }

    /// Whether the broker answers and the registry's topics are there,
    /// asked with the registry's own client (blocking, up to `timeout`).
    pub fn reachable(&self, timeout: Duration) -> Result<(), String> {
        use rdkafka::producer::Producer as _;
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topics.deployments), timeout)
            .map_err(|e| e.to_string())?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(format!(
                "the registry topic {} is missing",
                self.topics.deployments
            )),
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
        if self.artifact(&digest).is_none() {
            anyhow::bail!(
                "the registry did not keep sha256:{digest}: the artifacts its deployments use fill its limit of {ARTIFACT_BYTES} bytes (see the node's log)"
            );
        }
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

/// The reader: applies every record of the registry's topics to the state.
fn follow(
    consumer: &BaseConsumer,
    topics: &RegistryTopics,
    state: &(Mutex<State>, Condvar),
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => {
                lock(&state.0).expire_partial(Instant::now());
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the registry");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let headers: Vec<(&[u8], Option<&[u8]>)> = m
            .headers()
            .map(|h| crate::kafka::headers::raw(h).collect())
            .unwrap_or_default();
        let raw = Raw {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            headers,
            payload: m.payload(),
        };
        let mut s = lock(&state.0);
        let changed = s.apply(topics, &raw, Instant::now());
        if changed {
            s.generation += 1;
            drop(s);
            state.1.notify_all();
        }
    }
}

/// One record of a registry topic as read: any client with write access
/// may have written any bytes in any field.
#[derive(Debug, Clone)]
pub struct Raw<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
    pub payload: Option<&'a [u8]>,
}

impl Raw<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name.as_bytes())
            .and_then(|(_, v)| *v)
    }
}

/// The largest artifact the registry assembles (modules are capped lower by
/// the engine, models by `--max-model-bytes`).
pub const MAX_ARTIFACT_BYTES: usize = 256 << 20;
/// The most chunks an artifact may have.
pub const MAX_CHUNKS: usize = MAX_ARTIFACT_BYTES.div_ceil(CHUNK);
/// The most bytes of complete artifacts a node holds in memory: past it,
/// the oldest that no deployment uses are dropped (see `State::make_room`).
pub const ARTIFACT_BYTES: usize = 2 << 30;
/// An upload whose chunks have not all arrived after this long is dropped.
pub const PARTIAL_TTL: Duration = Duration::from_secs(600);
/// The most bytes held for uploads still being assembled; past it, the
/// oldest are dropped.
pub const PARTIAL_BYTES: usize = MAX_ARTIFACT_BYTES;
/// The most uploads assembled at once; past it, the oldest are dropped. Each
/// holds a slot per chunk from its first chunk on, so a count bounds what
/// many tiny chunks of different artifacts hold, which [`PARTIAL_BYTES`]
/// alone would not.
pub const PARTIAL_UPLOADS: usize = 64;
/// The largest deployment record read (the broker's default message size
/// is 1 MB).
pub const MAX_DEPLOYMENT_RECORD: usize = 4 << 20;
/// The most bytes of deployment records a node holds (the records as they
/// were read): with [`MAX_DEPLOYMENT_RECORD`] and [`MAX_DEPLOYMENTS`] alone
/// that could be 40 GB.
pub const DEPLOYMENT_BYTES: usize = 256 << 20;
/// The longest reason a version may give.
pub const MAX_REASON: usize = 1024;
/// The most deployments a registry holds.
pub const MAX_DEPLOYMENTS: usize = 10_000;
/// The most node reports kept, and the largest one.
pub const MAX_NODES: usize = 1024;
pub const MAX_NODE_REPORT: usize = 256 << 10;

/// An artifact being assembled from its chunks.
#[derive(Debug)]
struct Partial {
    kind: ArtifactKind,
    chunks: Vec<Option<Vec<u8>>>,
    bytes: usize,
    started: Instant,
}

/// Whether `s` is a sha256 digest as the registry writes it: 64 lowercase
/// hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a deployment record with the API's rules: its name, its topics
/// (none of them `topics`, the registry's own), every version's settings,
/// config and digests, and that the version it runs is kept.
pub fn check_deployment(r: &DeploymentRecord, topics: &RegistryTopics) -> Result<(), String> {
    crate::rules::check_name(&r.name)?;
    crate::rules::check_topics(
        &r.input,
        r.output.topics(),
        r.dead_letter.as_deref(),
        &topics.all(),
    )?;
    crate::state::check_store_names(&r.stores)?;
    crate::state::changelog::check_topic_names_at(&r.name, &r.stores, r.state_generation)?;
    if r.versions.is_empty() || r.versions.len() > KEPT_VERSIONS {
        return Err(format!(
            "it keeps {} versions: it must keep 1 to {KEPT_VERSIONS}",
            r.versions.len()
        ));
    }
    if r.current_version().is_none() {
        return Err(format!(
            "its current version {} is not among its versions",
            r.current
        ));
    }
    for v in &r.versions {
        crate::rules::Settings {
            batch_size: r.batch_size as u64,
            linger_ms: r.linger_ms,
            workers: r.workers.map(|w| w as u64),
            memory_mib: v.memory_mib,
            timeout_ms: v.timeout_ms,
            max_outputs_per_record: u64::from(v.max_outputs_per_record),
            max_output_mib: v.max_output_mib,
        }
        .check()
        .map_err(|e| format!("version {}: {e}", v.version))?;
        crate::rules::check_config(&v.config).map_err(|e| format!("version {}: {e}", v.version))?;
        if v.reason.len() > MAX_REASON {
            return Err(format!(
                "version {}: its reason is {} bytes, over the limit of {MAX_REASON}",
                v.version,
                v.reason.len()
            ));
        }
        if !is_digest(&v.module) || v.model.as_deref().is_some_and(|m| !is_digest(m)) {
            return Err(format!(
                "version {}: a module or model digest is not 64 lowercase hex digits",
                v.version
            ));
        }
    }
    Ok(())
}

impl State {
    /// Applies one record; true if the registry changed in a way the
    /// reconciler must see. A record that breaks a rule is skipped with one
    /// warning naming its topic, partition and offset: it cannot panic the
    /// reader, make it hold unbounded memory, or reach the reconciler.
    pub(crate) fn apply(&mut self, topics: &RegistryTopics, m: &Raw<'_>, now: Instant) -> bool {
        self.positions.insert(m.topic.to_owned(), m.offset + 1);
        let result = if m.topic == topics.nodes {
            self.apply_node(m).map(|()| false)
        } else if m.topic == topics.deployments {
            self.apply_deployment(m, topics).map(|()| true)
        } else if m.topic == topics.artifacts {
            self.expire_partial(now);
            self.apply_chunk(m, now).map(|()| true)
        } else {
            Ok(false)
        };
        match result {
            Ok(changed) => changed,
            Err(reason) => {
                tracing::warn!(
                    topic = m.topic,
                    partition = m.partition,
                    offset = m.offset,
                    "a registry record that runnel did not write, or cannot read, is skipped: {reason}"
                );
                false
            }
        }
    }

    fn apply_node(&mut self, m: &Raw<'_>) -> Result<(), String> {
        let key = m.key.ok_or("a node report without a key")?;
        let node = std::str::from_utf8(key)
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 200)
            .ok_or("a node report whose key is not a node id")?;
        let Some(payload) = m.payload else {
            self.nodes.remove(node);
            return Ok(());
        };
        if payload.len() > MAX_NODE_REPORT {
            return Err(format!(
                "a node report of {} bytes, over the limit of {MAX_NODE_REPORT}",
                payload.len()
            ));
        }
        let report: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| format!("an unreadable node report: {e}"))?;
        if !self.nodes.contains_key(node) && self.nodes.len() >= MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes report"));
        }
        self.nodes.insert(node.to_owned(), report);
        Ok(())
    }

    fn apply_deployment(&mut self, m: &Raw<'_>, topics: &RegistryTopics) -> Result<(), String> {
        let key = m.key.ok_or("a deployment record without a key")?;
        let name = std::str::from_utf8(key)
            .map_err(|_| "a deployment record whose key is not UTF-8".to_owned())?;
        crate::rules::check_name(name).map_err(|e| format!("its key: {e}"))?;
        let Some(payload) = m.payload else {
            self.deployments.remove(name);
            self.deployment_bytes -= self.deployment_sizes.remove(name).unwrap_or(0);
            return Ok(());
        };
        if payload.len() > MAX_DEPLOYMENT_RECORD {
            return Err(format!(
                "deployment {name:?}: a record of {} bytes, over the limit of {MAX_DEPLOYMENT_RECORD}",
                payload.len()
            ));
        }
        let record: DeploymentRecord = serde_json::from_slice(payload)
            .map_err(|e| format!("deployment {name:?}: an unreadable record: {e}"))?;
        if record.name != name {
            return Err(format!(
                "deployment {name:?}: its key names {name:?} and its record {:?}",
                record.name
            ));
        }
        check_deployment(&record, topics).map_err(|e| format!("deployment {name:?}: {e}"))?;
        if !self.deployments.contains_key(name) && self.deployments.len() >= MAX_DEPLOYMENTS {
            return Err(format!(
                "deployment {name:?}: the registry holds {MAX_DEPLOYMENTS} deployments already"
            ));
        }
        let budget = self.deployment_budget.unwrap_or(DEPLOYMENT_BYTES);
        let before = self.deployment_sizes.get(name).copied().unwrap_or(0);
        let after = self.deployment_bytes - before + payload.len();
        if after > budget {
            return Err(format!(
                "deployment {name:?}: its record of {} bytes would take the deployments the \
                 node holds to {after} bytes, over the limit of {budget}",
                payload.len()
            ));
        }
        self.deployment_bytes = after;
        self.deployment_sizes.insert(name.to_owned(), payload.len());
        self.deployments.insert(name.to_owned(), record);
        Ok(())
    }

    fn apply_chunk(&mut self, m: &Raw<'_>, now: Instant) -> Result<(), String> {
        let key = m
            .key
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or("an artifact chunk whose key is missing or not UTF-8")?;
        let (digest, index) = key
            .split_once('/')
            .filter(|(d, _)| is_digest(d))
            .ok_or_else(|| format!("an artifact chunk keyed {key:?}, not <sha256>/<index>"))?;
        let value = m.payload.ok_or("an artifact chunk without a value")?;
        let kind = match m.header("runnel-kind") {
            Some(b"module") => ArtifactKind::Module,
            Some(b"model") => ArtifactKind::Model,
            _ => {
                return Err(format!(
                    "artifact chunk {key}: runnel-kind is not module or model"
                ));
            }
        };
        let count = |name: &str| {
            m.header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<usize>().ok())
        };
        let n = count("runnel-chunks")
            .filter(|n| (1..=MAX_CHUNKS).contains(n))
            .ok_or_else(|| {
                format!(
                    "artifact chunk {key}: runnel-chunks is not a number from 1 to {MAX_CHUNKS}"
                )
            })?;
        let index = index
            .parse::<usize>()
            .ok()
            .filter(|i| *i < n)
            .ok_or_else(|| format!("artifact chunk {key}: its index is not below its count {n}"))?;
        if value.len() > CHUNK {
            return Err(format!(
                "artifact chunk {key}: {} bytes, over the chunk size of {CHUNK}",
                value.len()
            ));
        }
        if self.artifacts.contains_key(digest) {
            return Ok(());
        }
        let partial = self
            .partial
            .entry(digest.to_owned())
            .or_insert_with(|| Partial {
                kind,
                chunks: vec![None; n],
                bytes: 0,
                started: now,
            });
        if partial.chunks.len() != n {
            return Err(format!(
                "artifact chunk {key}: its count {n} differs from its first chunk's {}",
                partial.chunks.len()
            ));
        }
        let slot = &mut partial.chunks[index];
        partial.bytes -= slot.as_ref().map_or(0, Vec::len);
        partial.bytes += value.len();
        *slot = Some(value.to_vec());
        if partial.chunks.iter().all(Option::is_some) {
            let partial = self.partial.remove(digest).expect("present above");
            let bytes: Vec<u8> = partial.chunks.into_iter().flatten().flatten().collect();
            if self::digest(&bytes) != digest {
                return Err(format!(
                    "artifact sha256:{digest}: its bytes do not match its digest"
                ));
            }
            self.make_room(digest, bytes.len())?;
            self.artifact_bytes += bytes.len();
            self.artifact_order.push_back(digest.to_owned());
            self.artifacts
                .insert(digest.to_owned(), (partial.kind, Arc::from(bytes)));
            return Ok(());
        }
        self.bound_partial();
        Ok(())
    }

    /// Makes room for an artifact of `size` bytes within the budget
    /// ([`ARTIFACT_BYTES`]) by dropping artifacts no kept version of any
    /// deployment uses, the oldest first; `Err` if even that is not enough.
    fn make_room(&mut self, digest: &str, size: usize) -> Result<(), String> {
        let budget = self.artifact_budget.unwrap_or(ARTIFACT_BYTES);
        if self.artifact_bytes + size <= budget {
            return Ok(());
        }
        let used: HashSet<String> = self
            .deployments
            .values()
            .flat_map(|r| &r.versions)
            .flat_map(|v| std::iter::once(v.module.clone()).chain(v.model.clone()))
            .collect();
        let mut i = 0;
        while self.artifact_bytes + size > budget && i < self.artifact_order.len() {
            if used.contains(&self.artifact_order[i]) {
                i += 1;
                continue;
            }
            let Some(old) = self.artifact_order.remove(i) else {
                break;
            };
            if let Some((_, bytes)) = self.artifacts.remove(&old) {
                self.artifact_bytes -= bytes.len();
                tracing::warn!(
                    digest = old,
                    "the registry's artifacts are over their limit of {budget} bytes: dropping one no deployment uses"
                );
            }
        }
        if self.artifact_bytes + size > budget {
            return Err(format!(
                "artifact sha256:{digest} ({size} bytes) does not fit: the artifacts that deployments use take {} of the limit of {budget} bytes",
                self.artifact_bytes
            ));
        }
        Ok(())
    }

    /// Drops uploads older than [`PARTIAL_TTL`].
    fn expire_partial(&mut self, now: Instant) {
        self.partial.retain(|digest, p| {
            let keep = now.saturating_duration_since(p.started) < PARTIAL_TTL;
            if !keep {
                tracing::warn!(
                    digest,
                    "an artifact upload did not complete within {PARTIAL_TTL:?}; dropped"
                );
            }
            keep
        });
    }

    /// Drops the oldest uploads while they hold more than [`PARTIAL_BYTES`]
    /// or are more than [`PARTIAL_UPLOADS`].
    fn bound_partial(&mut self) {
        while self.partial.len() > PARTIAL_UPLOADS
            || self.partial.values().map(|p| p.bytes).sum::<usize>() > PARTIAL_BYTES
        {
            let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(d, _)| d.clone())
            else {
                return;
            };
            tracing::warn!(
                digest = oldest,
                "uploads being assembled are over {PARTIAL_UPLOADS} or hold over {PARTIAL_BYTES} bytes; dropping the oldest"
            );
            self.partial.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn topics() -> RegistryTopics {
        RegistryTopics::default()
    }

    fn raw<'a>(
        topic: &'a str,
        key: Option<&'a [u8]>,
        headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
        payload: Option<&'a [u8]>,
    ) -> Raw<'a> {
        Raw {
            topic,
            partition: 0,
            offset: 7,
            key,
            headers,
            payload,
        }
    }

    fn record(name: &str) -> DeploymentRecord {
        let mut r = DeploymentRecord {
            name: name.to_owned(),
            input: vec!["in".into()],
            output: "out".into(),
            dead_letter: None,
            batch_size: 256,
            linger_ms: 20,
            workers: Some(2),
            paused: false,
            stores: Vec::new(),
            state_generation: 0,
            current: 0,
            versions: Vec::new(),
        };
        r.push_version(Version {
            version: 0,
            module: "a".repeat(64),
            model: None,
            config: BTreeMap::new(),
            memory_mib: 128,
            timeout_ms: 5000,
            max_outputs_per_record: 10_000,
            max_output_mib: 64,
            provenance: crate::config::Provenance::Headers,
            created_ms: 0,
            reason: "deploy".into(),
        });
        r
    }

    /// Applies a deployment record keyed `key`; whether it was taken.
    fn apply_deployment(s: &mut State, key: &[u8], r: &serde_json::Value) -> bool {
        let value = serde_json::to_vec(r).unwrap();
        let t = topics();
        s.apply(
            &t,
            &raw(&t.deployments, Some(key), vec![], Some(&value)),
            Instant::now(),
        )
    }

    #[test]
    fn a_valid_deployment_is_applied_and_a_tombstone_deletes_it() {
        let mut s = State::default();
        let r = serde_json::to_value(record("d")).unwrap();
        assert!(apply_deployment(&mut s, b"d", &r));
        assert_eq!(s.deployments["d"], record("d"));
        let t = topics();
        assert!(s.apply(
            &t,
            &raw(&t.deployments, Some(b"d"), vec![], None),
            Instant::now()
        ));
        assert!(s.deployments.is_empty());
        assert_eq!(s.positions[&t.deployments], 8, "read past it");
    }

    /// Each of these crashed, froze or misled a node before: a NUL byte in a
    /// name panicked the reconciler's thread spawn, a million workers spawned
    /// a million threads, `memory_mib << 20` overflowed.
    #[test]
    fn deployment_records_that_break_a_rule_are_skipped() {
        let base = serde_json::to_value(record("d")).unwrap();
        let with = |path: &str, value: serde_json::Value| {
            let mut r = base.clone();
            let (parent, field) = path.rsplit_once('/').unwrap();
            r.pointer_mut(parent)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(field.to_owned(), value);
            r
        };
        let cases: Vec<(&[u8], serde_json::Value)> = vec![
            (b"d\0x", with("/name", "d\0x".into())),
            (b"other", base.clone()),
            (b"d", with("/workers", 1_000_000.into())),
            (b"d", with("/batch_size", 0.into())),
            (b"d", with("/versions/0/memory_mib", u64::MAX.into())),
            (b"d", with("/versions/0/timeout_ms", 0.into())),
            (b"d", with("/versions/0/module", "../etc".into())),
            (b"d", with("/output", "runnel.deployments".into())),
            (b"d", with("/output", "in".into())),
            (b"d", with("/dead_letter", "runnel.artifacts".into())),
            (b"d", with("/input", serde_json::json!([]))),
            (b"d", with("/current", 99.into())),
            (b"d", with("/versions", serde_json::json!([]))),
            (b"d", serde_json::json!({"not": "a deployment"})),
            (b"\xff", with("/name", "\u{fffd}".into())),
            (
                b"d",
                with("/versions/0/reason", "r".repeat(MAX_REASON + 1).into()),
            ),
        ];
        for (key, r) in cases {
            let mut s = State::default();
            assert!(!apply_deployment(&mut s, key, &r), "{r}");
            assert!(s.deployments.is_empty(), "{r}");
        }
        // A bad record does not replace the good one before it.
        let mut s = State::default();
        assert!(apply_deployment(&mut s, b"d", &base));
        assert!(!apply_deployment(&mut s, b"d", &with("/workers", 0.into())));
        assert_eq!(s.deployments["d"], record("d"));
    }

    /// Deployment records are bounded by their bytes in all, not only one
    /// by one: a replaced or deleted record gives its bytes back.
    #[test]
    fn the_deployments_a_node_holds_are_bounded_in_bytes() {
        let size = serde_json::to_vec(&record("d0")).unwrap().len();
        let mut s = State {
            deployment_budget: Some(size * 3),
            ..State::default()
        };
        for i in 0..3 {
            let name = format!("d{i}");
            let r = serde_json::to_value(record(&name)).unwrap();
            assert!(apply_deployment(&mut s, name.as_bytes(), &r));
        }
        let r = serde_json::to_value(record("d3")).unwrap();
        assert!(!apply_deployment(&mut s, b"d3", &r), "over the budget");
        assert_eq!(s.deployments.len(), 3);
        // The same record again replaces itself within the budget.
        let again = serde_json::to_value(record("d0")).unwrap();
        assert!(apply_deployment(&mut s, b"d0", &again));
        let t = topics();
        s.apply(
            &t,
            &raw(&t.deployments, Some(b"d1"), vec![], None),
            Instant::now(),
        );
        assert!(
            apply_deployment(&mut s, b"d3", &r),
            "d1's bytes were given back"
        );
        assert_eq!(s.deployment_bytes, size * 3);
    }

    /// A record of an older runnel, without the output limits, reads with
    /// their defaults.
    #[test]
    fn versions_without_output_limits_read_with_the_defaults() {
        let mut r = serde_json::to_value(record("d")).unwrap();
        let v = r
            .pointer_mut("/versions/0")
            .unwrap()
            .as_object_mut()
            .unwrap();
        v.remove("max_outputs_per_record");
        v.remove("max_output_mib");
        let mut s = State::default();
        assert!(apply_deployment(&mut s, b"d", &r));
        assert_eq!(s.deployments["d"], record("d"));
    }

    fn chunk<'a>(s: &mut State, key: &'a str, n: &'a str, value: &'a [u8], now: Instant) -> bool {
        let t = topics();
        let headers: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"runnel-kind", Some(b"module")),
            (b"runnel-chunks", Some(n.as_bytes())),
        ];
        s.apply(
            &t,
            &raw(&t.artifacts, Some(key.as_bytes()), headers, Some(value)),
            now,
        )
    }

    #[test]
    fn an_artifact_assembles_from_its_chunks_and_is_checked_against_its_digest() {
        let bytes = vec![7u8; CHUNK + 10];
        let d = digest(&bytes);
        let mut s = State::default();
        let now = Instant::now();
        chunk(&mut s, &format!("{d}/1"), "2", &bytes[CHUNK..], now);
        assert!(s.artifacts.is_empty());
        chunk(&mut s, &format!("{d}/0"), "2", &bytes[..CHUNK], now);
        assert_eq!(&*s.artifacts[&d].1, &bytes[..]);
        assert!(s.partial.is_empty());

        let forged = "b".repeat(64);
        chunk(&mut s, &format!("{forged}/0"), "1", b"not those bytes", now);
        assert!(!s.artifacts.contains_key(&forged));
    }

    /// `runnel-chunks` once sized a `vec![None; n]`: a huge count was an
    /// allocation of that size.
    #[test]
    fn chunk_counts_and_sizes_are_capped() {
        let d = "c".repeat(64);
        let mut s = State::default();
        let now = Instant::now();
        for n in ["18446744073709551615", "1000000", "0", "-1", "x"] {
            assert!(!chunk(&mut s, &format!("{d}/0"), n, b"x", now), "{n}");
        }
        assert!(!chunk(
            &mut s,
            &format!("{d}/0"),
            "2",
            &vec![0; CHUNK + 1],
            now
        ));
        assert!(
            !chunk(&mut s, &format!("{d}/5"), "2", b"x", now),
            "index past the count"
        );
        assert!(!chunk(&mut s, "not-a-digest/0", "2", b"x", now));
        assert!(s.partial.is_empty());
    }

    #[test]
    fn partial_uploads_expire_and_their_bytes_are_bounded() {
        let mut s = State::default();
        let start = Instant::now();
        chunk(
            &mut s,
            &format!("{}/0", "d".repeat(64)),
            "2",
            b"half",
            start,
        );
        assert_eq!(s.partial.len(), 1);
        s.expire_partial(start + PARTIAL_TTL);
        assert!(s.partial.is_empty(), "expired");

        let value = vec![0u8; CHUNK];
        let uploads = PARTIAL_BYTES / CHUNK + 4;
        for i in 0..uploads {
            let d = format!("{i:064x}");
            chunk(
                &mut s,
                &format!("{d}/0"),
                "2",
                &value,
                start + Duration::from_millis(i as u64),
            );
        }
        let held: usize = s.partial.values().map(|p| p.bytes).sum();
        assert!(held <= PARTIAL_BYTES, "{held}");
        assert!(
            !s.partial.contains_key(&format!("{:064x}", 0)),
            "the oldest went first"
        );
        assert!(s.partial.contains_key(&format!("{:064x}", uploads - 1)));

        // Many uploads of one tiny chunk each, each announcing the most
        // chunks: bounded by their count, not only by their bytes.
        let mut s = State::default();
        let n = MAX_CHUNKS.to_string();
        for i in 0..10_000u64 {
            chunk(
                &mut s,
                &format!("{i:064x}/0"),
                &n,
                b"x",
                start + Duration::from_micros(i),
            );
        }
        assert_eq!(s.partial.len(), PARTIAL_UPLOADS);
        assert!(s.partial.contains_key(&format!("{:064x}", 9_999)));
    }

    /// Complete artifacts are bounded too: past the budget, those no
    /// deployment uses go, the oldest first; one that does not fit beside
    /// those in use is skipped.
    #[test]
    fn artifacts_are_bounded_and_those_in_use_are_kept() {
        let mut s = State {
            artifact_budget: Some(3 * CHUNK),
            ..State::default()
        };
        let now = Instant::now();
        let upload = |s: &mut State, fill: u8| {
            let bytes = vec![fill; CHUNK];
            let d = digest(&bytes);
            chunk(s, &format!("{d}/0"), "1", &bytes, now);
            d
        };
        let (a, b, c) = (upload(&mut s, 1), upload(&mut s, 2), upload(&mut s, 3));
        assert_eq!(s.artifacts.len(), 3);
        let mut r = record("d");
        r.versions[0].module = a.clone();
        apply_deployment(&mut s, b"d", &serde_json::to_value(&r).unwrap());
        let d = upload(&mut s, 4);
        assert!(s.artifacts.contains_key(&a), "in use: kept");
        assert!(!s.artifacts.contains_key(&b), "the oldest not in use went");
        assert!(s.artifacts.contains_key(&c) && s.artifacts.contains_key(&d));
        assert_eq!(s.artifact_bytes, 3 * CHUNK);

        // Everything in use: a new one is skipped.
        let mut r = record("e");
        r.versions[0].module = c.clone();
        r.versions[0].model = Some(d.clone());
        apply_deployment(&mut s, b"e", &serde_json::to_value(&r).unwrap());
        let e = upload(&mut s, 5);
        assert!(!s.artifacts.contains_key(&e));
        assert_eq!(s.artifacts.len(), 3);
    }

    #[test]
    fn node_reports_are_bounded() {
        let t = topics();
        let mut s = State::default();
        let big = vec![b' '; MAX_NODE_REPORT + 1];
        s.apply(
            &t,
            &raw(&t.nodes, Some(b"n"), vec![], Some(&big)),
            Instant::now(),
        );
        assert!(s.nodes.is_empty());
        for i in 0..MAX_NODES + 10 {
            let key = format!("n{i}");
            s.apply(
                &t,
                &raw(&t.nodes, Some(key.as_bytes()), vec![], Some(b"{}")),
                Instant::now(),
            );
        }
        assert_eq!(s.nodes.len(), MAX_NODES);
    }

    fn arbitrary_header() -> impl Strategy<Value = (Vec<u8>, Option<Vec<u8>>)> {
        let name = prop_oneof![
            Just(b"runnel-kind".to_vec()),
            Just(b"runnel-chunks".to_vec()),
            Just(b"runnel-size".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        let value = prop_oneof![
            Just(Some(b"module".to_vec())),
            Just(Some(b"model".to_vec())),
            (0u64..u64::MAX).prop_map(|n| Some(n.to_string().into_bytes())),
            (0u64..4).prop_map(|n| Some(n.to_string().into_bytes())),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
        ];
        (name, value)
    }

    fn arbitrary_key() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            (0u8..4, 0u64..6).prop_map(|(d, i)| Some(
                format!("{}/{i}", format!("{d:x}").repeat(64)).into_bytes()
            )),
            Just(Some(b"d".to_vec())),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
        ]
    }

    fn arbitrary_payload() -> impl Strategy<Value = Option<Vec<u8>>> {
        let valid = serde_json::to_vec(&record("d")).unwrap();
        prop_oneof![
            Just(Some(valid.clone())),
            // A valid record with some bytes changed.
            proptest::collection::vec((0..valid.len(), any::<u8>()), 1..4).prop_map(move |edits| {
                let mut v = valid.clone();
                for (i, b) in edits {
                    v[i] = b;
                }
                Some(v)
            }),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes in any field of any registry topic: the reader does not
        /// panic, every deployment it keeps passes the API's rules under its
        /// own name, and what it holds for uploads stays bounded.
        #[test]
        fn the_reader_takes_any_record(
            records in proptest::collection::vec(
                (0usize..4, arbitrary_key(), proptest::collection::vec(arbitrary_header(), 0..4), arbitrary_payload()),
                1..24,
            )
        ) {
            let t = topics();
            let names = [&t.artifacts, &t.deployments, &t.nodes, &"elsewhere".to_owned()];
            let mut s = State::default();
            for (topic, key, headers, payload) in &records {
                let headers: Vec<(&[u8], Option<&[u8]>)> =
                    headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
                s.apply(
                    &t,
                    &raw(names[*topic], key.as_deref(), headers, payload.as_deref()),
                    Instant::now(),
                );
            }
            for (name, r) in &s.deployments {
                prop_assert_eq!(name, &r.name);
                prop_assert!(check_deployment(r, &t).is_ok());
            }
            prop_assert!(s.partial.values().map(|p| p.bytes).sum::<usize>() <= PARTIAL_BYTES);
            prop_assert!(s.partial.values().all(|p| p.chunks.len() <= MAX_CHUNKS));
        }
    }
}
