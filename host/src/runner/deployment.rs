//! One deployment's loop: poll, batch per partition, run, produce, store
//! offsets. See the module documentation of [`super`] for the guarantees.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_abi::{BatchBuilder, RecordRef};
use serde::Serialize;

use super::tracker::Tracker;
use super::{Deployment, headers};
use crate::engine::{Outcome, Worker};
use crate::kafka::{KafkaOptions, push_message};

/// Longest wait between attempts to start a function that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a revoke or a stop waits for outstanding outputs.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a deployment is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DeploymentState {
    Starting,
    Running,
    /// The function cannot start; retrying after `retry_in_ms`.
    BackingOff {
        error: String,
        retry_in_ms: u64,
    },
    Stopped,
}

/// A deployment's progress, for logs, status and tests.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentStatus {
    pub name: String,
    /// 1 when it starts, one more at each swap.
    pub version: u64,
    /// The module's sha256 digest.
    pub module: String,
    /// `sha256:<hex>` of the model, if any.
    pub model: Option<String>,
    pub state: DeploymentState,
    pub records_in: u64,
    pub records_out: u64,
    pub filtered: u64,
    pub dead_lettered: u64,
    pub traps: u64,
    pub last_error: Option<String>,
    /// The partitions this node holds: how far their outputs are
    /// acknowledged, and how far behind the end of the log that is.
    pub partitions: Vec<PartitionStatus>,
    /// How the last swap on this node went.
    pub last_swap: Option<SwapReport>,
    /// Swaps on this node.
    pub swaps: u64,
    /// Times an instance was replaced by a fresh one after a trap, or made
    /// again after its function could not start.
    pub restarts: u64,
    /// Seconds per batch: the call into the function and producing its outputs.
    pub batch_seconds: super::histogram::Histogram,
    /// Seconds per call into the function (one batch).
    pub call_seconds: super::histogram::Histogram,
    /// Linear memory of the worker instances, in bytes, last seen.
    pub memory_bytes: u64,
}

/// One input partition a node holds.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset to commit: every record before it has had its outputs
    /// acknowledged. `None` until the first batch of this assignment.
    pub offset: Option<i64>,
    /// The end of the log, as last seen by the consumer (`None` if unknown).
    pub high_watermark: Option<i64>,
    /// `high_watermark - offset`, where both are known.
    pub lag: Option<i64>,
}

impl DeploymentStatus {
    pub(super) fn new(d: &Deployment) -> Self {
        Self {
            name: d.spec.name.clone(),
            version: d.version,
            module: d.module.digest().to_owned(),
            model: d.model_digest.clone(),
            state: DeploymentState::Starting,
            records_in: 0,
            records_out: 0,
            filtered: 0,
            dead_lettered: 0,
            traps: 0,
            last_error: None,
            partitions: Vec::new(),
            last_swap: None,
            swaps: 0,
            restarts: 0,
            batch_seconds: super::histogram::Histogram::default(),
            call_seconds: super::histogram::Histogram::default(),
            memory_bytes: 0,
        }
    }
}

/// A request to a deployment's consumer thread.
pub(super) enum Control {
    Swap {
        next: Box<Deployment>,
        reply: SyncSender<anyhow::Result<SwapReport>>,
    },
}

/// How a swap went.
#[derive(Debug, Clone, Serialize)]
pub struct SwapReport {
    /// The deployment's version now running.
    pub version: u64,
    /// How long records stopped moving: from the last batch handed to the
    /// old version to the switch (drain, flush, commit).
    pub paused_ms: f64,
    /// How long validating the new version took (before the pause).
    pub validate_ms: f64,
}

/// Records of one partition waiting to be run, packed as the function will
/// receive them (copied once out of the consumer's buffers), and when the
/// oldest arrived.
struct Pending {
    since: Instant,
    batch: BatchBuilder,
}

type Buffers = HashMap<(String, i32), Pending>;

/// Which input an output belongs to, carried through the producer.
struct Ack {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

/// State shared by the loop, the delivery callback (producer thread) and the
/// rebalance callback (inside the consumer's poll).
struct Shared {
    tracker: Mutex<Tracker>,
    /// The partitions this consumer owns now.
    assigned: Mutex<HashSet<(String, i32)>>,
    buffers: Mutex<Buffers>,
    /// Outputs whose delivery failed, to send again: nothing is given up.
    retries: Mutex<Vec<Retry>>,
    producer: Mutex<Option<Arc<ThreadedProducer<DeliveryContext>>>>,
    /// The queues of the deployment's worker threads.
    workers: Mutex<Vec<WorkerQueue>>,
    /// Partitions being revoked: a worker waiting for its function to start
    /// gives up their batches (the next owner reads them).
    abandon: Mutex<HashSet<(String, i32)>>,
    name: String,
    /// The version the workers run, and its number: a worker whose instance
    /// is of an older generation replaces it before its next batch.
    current: Mutex<Arc<Deployment>>,
    generation: AtomicU64,
    /// A validated version waiting for the drain before the switch. A worker
    /// whose function cannot start takes it at once: the old version ran
    /// nothing of the batch it holds, and the drain waits for that batch.
    staged: Mutex<Option<(u64, Arc<Deployment>)>>,
    /// The last offset stored per partition, for the status.
    stored: Mutex<HashMap<(String, i32), i64>>,
    /// The end of each input partition's log, from the consumer's statistics.
    high_watermarks: Mutex<HashMap<(String, i32), i64>>,
    /// Outputs handed to the producer, and delivery reports handled: see
    /// [`flush`].
    sent: AtomicU64,
    reported: AtomicU64,
}

/// The bytes of batches a worker may have waiting before the consumer
/// waits for it: backpressure. Several fetches' worth (librdkafka fetches up
/// to 1 MiB per partition), so that the consumer, which receives one
/// partition's records in runs, can hand a run to one worker while the others
/// still work on theirs.
const QUEUE_BYTES: usize = 8 << 20;

/// A worker thread's queue, bounded by the bytes of the batches in it.
#[derive(Clone)]
struct WorkerQueue {
    jobs: Sender<Job>,
    queued: Arc<Queued>,
}

/// The bytes waiting in a worker's queue, and a signal when some are done.
/// The worker holds only this, so that dropping the senders ends it.
#[derive(Default)]
struct Queued {
    bytes: Mutex<usize>,
    room: Condvar,
}

impl Queued {
    /// The worker's side: `bytes` of a job it took are done.
    fn done(&self, bytes: usize) {
        let mut q = lock(&self.bytes);
        *q = q.saturating_sub(bytes);
        self.room.notify_all();
    }
}

impl WorkerQueue {
    /// Queues `job`, first waiting while the worker has [`QUEUE_BYTES`] or
    /// more waiting (one batch is always let through, however large).
    /// False if the worker is gone.
    fn send(&self, job: Job) -> bool {
        let bytes = job.bytes();
        {
            let mut q = lock(&self.queued.bytes);
            while *q > 0 && *q + bytes > QUEUE_BYTES {
                q = self
                    .queued
                    .room
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            *q += bytes;
        }
        self.jobs.send(job).is_ok()
    }
}

/// Work for a worker thread.
enum Job {
    /// Run a batch of one partition.
    Batch {
        topic: String,
        partition: i32,
        batch: BatchBuilder,
    },
    /// Answer once every job sent before this one is done.
    Sync(SyncSender<()>),
}

impl Job {
    /// What the job counts for in its queue's bound.
    fn bytes(&self) -> usize {
        match self {
            Job::Batch { batch, .. } => batch.data().len(),
            Job::Sync(_) => 0,
        }
    }
}

/// Waits until every worker has finished what it was given.
fn sync_workers(shared: &Shared) {
    let senders = lock(&shared.workers).clone();
    let mut waits = Vec::new();
    for tx in senders {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        if tx.send(Job::Sync(done_tx)) {
            waits.push(done_rx);
        }
    }
    for w in waits {
        let _ = w.recv();
    }
}

struct Retry {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
    timestamp: Option<i64>,
    ack: Box<Ack>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct DeliveryContext {
    shared: Arc<Shared>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        self.report(result, ack);
        // Last: a flush waits for this, so the tracker already knows.
        self.shared.reported.fetch_add(1, Ordering::SeqCst);
    }
}

impl DeliveryContext {
    fn report(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        match result {
            Ok(_) => lock(&self.shared.tracker).ack(&ack.topic, ack.partition, ack.offset),
            Err((e, m)) => {
                tracing::warn!(deployment = self.shared.name, error = %e, topic = m.topic(),
                    "an output was not delivered; sending it again");
                lock(&self.shared.retries).push(Retry {
                    topic: m.topic().to_owned(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m.headers().map(|h| h.detach()).unwrap_or_default(),
                    timestamp: m.timestamp().to_millis(),
                    ack,
                });
            }
        }
    }
}

struct RebalanceContext {
    shared: Arc<Shared>,
}

impl ClientContext for RebalanceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): keeps the
    /// high watermark of each partition, for the lag in the status.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut hw = lock(&self.shared.high_watermarks);
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    hw.insert((topic.clone(), partition), p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            if let Rebalance::Error(e) = rebalance {
                tracing::error!(deployment = self.shared.name, error = %e, "rebalance failed");
            }
            return;
        };
        let revoked = partitions(tpl);
        tracing::info!(deployment = self.shared.name, partitions = ?revoked, "partitions revoked: committing");
        // Records not yet run belong to the next owner, which reads them from
        // the committed offset.
        {
            let mut buffers = lock(&self.shared.buffers);
            let mut assigned = lock(&self.shared.assigned);
            for tp in &revoked {
                buffers.remove(tp);
                assigned.remove(tp);
            }
        }
        // Batches already handed to workers finish first.
        lock(&self.shared.abandon).extend(revoked.iter().cloned());
        sync_workers(&self.shared);
        commit_final(&self.shared, consumer, &revoked);
        lock(&self.shared.abandon).clear();
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned = partitions(tpl);
            lock(&self.shared.assigned).extend(assigned.iter().cloned());
            tracing::info!(deployment = self.shared.name, partitions = ?assigned, "partitions assigned");
        }
    }
}

/// The (topic, partition) pairs of a list.
fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Waits until every output was delivered and its delivery report handled.
/// rdkafka's own `flush` polls for events in steps of 100 ms while the
/// threaded producer's thread takes them, so it often waits 100 ms for
/// nothing; this asks every millisecond. False after `timeout`.
fn flush(producer: &ThreadedProducer<DeliveryContext>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let shared = &producer.context().shared;
    // librdkafka stops counting a message once its delivery report is taken
    // off the queue, before the callback ran: the tracker may not know yet.
    while producer.in_flight_count() > 0
        || shared.reported.load(Ordering::SeqCst) < shared.sent.load(Ordering::SeqCst)
    {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Flushes the producer, then commits what may be committed for `partitions`
/// synchronously and forgets them.
fn commit_final(
    shared: &Shared,
    consumer: &BaseConsumer<RebalanceContext>,
    partitions: &[(String, i32)],
) {
    let producer = lock(&shared.producer).clone();
    if let Some(p) = producer
        && !flush(&p, FLUSH_TIMEOUT)
    {
        tracing::warn!(
            deployment = shared.name,
            "outputs still in flight after 30 s; their inputs will be read again"
        );
    }
    let mut tpl = TopicPartitionList::new();
    {
        let mut tracker = lock(&shared.tracker);
        for (topic, partition) in partitions {
            if let Some(next) = tracker.remove(topic, *partition) {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(next));
            }
        }
    }
    // Stored too: librdkafka's own commit of a revoked partition (automatic
    // commits are on) then writes this offset, not an older stored one.
    let _ = consumer.store_offsets(&tpl);
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
    {
        tracing::warn!(deployment = shared.name, error = %e, "final commit failed; records after the last commit will be read again");
    }
}

/// Runs one deployment until `stop` is set.
pub(super) fn run(
    d: Deployment,
    kafka: KafkaOptions,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<DeploymentStatus>>,
    control: Receiver<Control>,
) {
    let name = d.spec.name.clone();
    if let Err(e) = run_inner(Arc::new(d), &kafka, &stop, &status, &control) {
        tracing::error!(deployment = name, error = %format!("{e:#}"), "the deployment stopped");
        lock(&status).last_error = Some(format!("{e:#}"));
    }
    lock(&status).state = DeploymentState::Stopped;
}

fn run_inner(
    d: Arc<Deployment>,
    kafka: &KafkaOptions,
    stop: &Arc<AtomicBool>,
    status: &Arc<Mutex<DeploymentStatus>>,
    control: &Receiver<Control>,
) -> anyhow::Result<()> {
    let spec = &d.spec;
    let shared = Arc::new(Shared {
        tracker: Mutex::default(),
        assigned: Mutex::default(),
        buffers: Mutex::default(),
        retries: Mutex::default(),
        producer: Mutex::default(),
        workers: Mutex::default(),
        abandon: Mutex::default(),
        name: spec.name.clone(),
        current: Mutex::new(d.clone()),
        generation: AtomicU64::new(1),
        staged: Mutex::default(),
        stored: Mutex::default(),
        high_watermarks: Mutex::default(),
        sent: AtomicU64::new(0),
        reported: AtomicU64::new(0),
    });
    let producer: Arc<ThreadedProducer<DeliveryContext>> = Arc::new(
        kafka
            .producer()
            .create_with_context(DeliveryContext {
                shared: shared.clone(),
            })
            .map_err(|e| anyhow::anyhow!("cannot create the producer: {e}"))?,
    );
    *lock(&shared.producer) = Some(producer.clone());
    check_topics(
        &producer,
        &[&spec.output, &spec.dead_letter_topic()],
        &spec.name,
        status,
    );

    // The pool: each partition always goes to the same worker, so its
    // records stay in order; partitions on different workers run in parallel.
    let mut threads = Vec::new();
    for i in 0..spec.workers.max(1) {
        // Bounded by bytes: see QUEUE_BYTES.
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let queue = WorkerQueue {
            jobs: tx,
            queued: Arc::default(),
        };
        let queued = queue.queued.clone();
        lock(&shared.workers).push(queue);
        let mut exec = Exec {
            d: d.clone(),
            generation: 1,
            producer: producer.clone(),
            shared: shared.clone(),
            status: status.clone(),
            stop: stop.clone(),
            worker: None,
            skipping: HashSet::new(),
            traps_seen: 0,
            dead_letter: spec.dead_letter_topic(),
            module_header: format!("sha256:{}", d.module.digest()),
            version_header: d.version.to_string(),
            backoff: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("runnel-{}-{i}", spec.name))
            .spawn(move || exec.serve(&rx, &queued))
            .map_err(|e| anyhow::anyhow!("cannot start a worker thread: {e}"))?;
        threads.push(thread);
    }

    let consumer: BaseConsumer<RebalanceContext> = kafka
        .consumer(&spec.group())
        .create_with_context(RebalanceContext {
            shared: shared.clone(),
        })
        .map_err(|e| anyhow::anyhow!("cannot create the consumer: {e}"))?;
    let inputs: Vec<&str> = spec.input.iter().map(String::as_str).collect();
    consumer
        .subscribe(&inputs)
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {inputs:?}: {e}"))?;

    let mut poller = Poller {
        d: &d,
        shared: &shared,
        status,
        warned_missing: None,
    };
    let linger = Duration::from_millis(spec.linger_ms);
    let poll_timeout = linger.clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut reported = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if reported.elapsed() >= Duration::from_millis(500) {
            report_partitions(&shared, &consumer, status);
            reported = Instant::now();
        }
        if let Ok(Control::Swap { next, reply }) = control.try_recv() {
            let _ = reply.send(swap(&shared, &consumer, &producer, status, *next));
        }
        resend_failed(&shared, &producer);
        match consumer.poll(poll_timeout) {
            Some(Ok(m)) => poller.buffer(&m),
            Some(Err(e)) => poller.consumer_error(&e),
            None => {}
        }
        // Drain what is already fetched before dispatching batches.
        for _ in 0..spec.batch_size {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => poller.buffer(&m),
                Some(Err(e)) => poller.consumer_error(&e),
                None => break,
            }
        }
        poller.dispatch_ready(linger);
        store_moved(&shared, &consumer);
    }
    tracing::info!(
        deployment = spec.name,
        "stopping: finishing batches, flushing outputs and committing"
    );
    lock(&shared.buffers).clear();
    sync_workers(&shared);
    lock(&shared.workers).clear();
    for t in threads {
        let _ = t.join();
    }
    resend_failed(&shared, &producer);
    let assigned = consumer
        .assignment()
        .map(|a| partitions(&a))
        .unwrap_or_default();
    commit_final(&shared, &consumer, &assigned);
    consumer.unsubscribe();
    drop(consumer);
    *lock(&shared.producer) = None;
    Ok(())
}

/// Switches the deployment to `next`'s module, model, config and limits (its
/// topics and batching stay), at a batch boundary: see "Hot swap" in
/// [`super`].
fn swap(
    shared: &Shared,
    consumer: &BaseConsumer<RebalanceContext>,
    producer: &ThreadedProducer<DeliveryContext>,
    status: &Mutex<DeploymentStatus>,
    next: Deployment,
) -> anyhow::Result<SwapReport> {
    let old = lock(&shared.current).clone();
    let mut spec = old.spec.clone();
    spec.module = next.spec.module.clone();
    spec.model = next.spec.model.clone();
    spec.config = next.spec.config.clone();
    spec.memory_mib = next.spec.memory_mib;
    spec.timeout_ms = next.spec.timeout_ms;
    let running_version = lock(status).version;
    let version = next.version.max(running_version + 1);
    let next = Deployment {
        spec,
        version,
        ..next
    };
    // Validate first: the new version must start, with its config and model.
    let started = Instant::now();
    let config: Vec<(String, String)> = next.spec.config.clone().into_iter().collect();
    Worker::new(
        next.module.clone(),
        next.limits(),
        config,
        next.model.clone(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "the new version of {:?} was refused, the old one keeps running: {e}",
            shared.name
        )
    })?;
    let validate_ms = started.elapsed().as_secs_f64() * 1e3;
    let generation = shared.generation.load(Ordering::SeqCst) + 1;
    let next = Arc::new(next);
    *lock(&shared.staged) = Some((generation, next.clone()));

    // Drain: batches already handed to workers finish on the old version;
    // records still buffered here run on the new one.
    let paused = Instant::now();
    sync_workers(shared);
    let drained = paused.elapsed();
    resend_failed(shared, producer);
    if !flush(producer, FLUSH_TIMEOUT) {
        lock(&shared.staged).take();
        anyhow::bail!(
            "outputs of the old version still in flight after {FLUSH_TIMEOUT:?}; the old version keeps running"
        );
    }
    let flushed = paused.elapsed();
    store_moved(shared, consumer);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            lock(&shared.staged).take();
            anyhow::bail!(
                "cannot commit the old version's offsets ({e}); the old version keeps running"
            )
        }
    }
    {
        let mut s = lock(status);
        s.version = version;
        s.module = next.module.digest().to_owned();
        s.model = next.model_digest.clone();
    }
    *lock(&shared.current) = next;
    shared.generation.store(generation, Ordering::SeqCst);
    lock(&shared.staged).take();
    let paused_ms = paused.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        deployment = shared.name,
        version,
        paused_ms,
        drain_ms = drained.as_secs_f64() * 1e3,
        flush_ms = (flushed - drained).as_secs_f64() * 1e3,
        validate_ms,
        "swapped"
    );
    let report = SwapReport {
        version,
        paused_ms,
        validate_ms,
    };
    {
        let mut s = lock(status);
        s.last_swap = Some(report.clone());
        s.swaps += 1;
    }
    Ok(report)
}

/// Says so when an output topic is missing: outputs wait in the producer (and
/// their inputs stay uncommitted) until it exists, so nothing is lost, but
/// nothing moves either.
fn check_topics(
    producer: &ThreadedProducer<DeliveryContext>,
    topics: &[&str],
    name: &str,
    status: &Mutex<DeploymentStatus>,
) {
    for topic in topics {
        let missing = match producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
        {
            Ok(md) => {
                md.topics()
                    .iter()
                    .any(|t| t.name() == *topic && t.error().is_some())
                    || md.topics().is_empty()
            }
            Err(e) => {
                tracing::warn!(deployment = name, error = %e, "cannot read the cluster's metadata");
                false
            }
        };
        if missing {
            let message =
                format!("output topic {topic:?} does not exist: outputs wait until it is created");
            tracing::warn!(deployment = name, "{message}");
            lock(status).last_error = Some(message);
        }
    }
}

/// Stores the offsets whose outputs are all acknowledged; the periodic commit
/// carries them.
fn store_moved(shared: &Shared, consumer: &BaseConsumer<RebalanceContext>) {
    let moved = lock(&shared.tracker).take_moved();
    if moved.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    {
        let mut stored = lock(&shared.stored);
        for (topic, partition, next) in &moved {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
            stored.insert((topic.clone(), *partition), *next);
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // A partition revoked meanwhile: its final offsets were committed then.
        tracing::debug!(error = %e, "storing offsets");
    }
}

/// Puts the assigned partitions, their offsets and lag in the status. The
/// high watermarks come from the consumer's statistics: no request to the broker.
fn report_partitions(
    shared: &Shared,
    consumer: &BaseConsumer<RebalanceContext>,
    status: &Mutex<DeploymentStatus>,
) {
    let assigned = consumer
        .assignment()
        .map(|a| partitions(&a))
        .unwrap_or_default();
    let mut stored = lock(&shared.stored);
    stored.retain(|tp, _| assigned.contains(tp));
    let report: Vec<PartitionStatus> = assigned
        .into_iter()
        .map(|(topic, partition)| {
            let offset = stored.get(&(topic.clone(), partition)).copied();
            let high_watermark = lock(&shared.high_watermarks)
                .get(&(topic.clone(), partition))
                .copied();
            let lag = match (offset, high_watermark) {
                (Some(o), Some(h)) => Some((h - o).max(0)),
                _ => None,
            };
            PartitionStatus {
                topic,
                partition,
                offset,
                high_watermark,
                lag,
            }
        })
        .collect();
    drop(stored);
    lock(status).partitions = report;
}

/// The consumer's side: buffers records per partition and hands full (or
/// lingering) batches to the partition's worker.
struct Poller<'a> {
    d: &'a Deployment,
    shared: &'a Shared,
    status: &'a Mutex<DeploymentStatus>,
    warned_missing: Option<Instant>,
}

impl Poller<'_> {
    fn buffer(&mut self, m: &BorrowedMessage<'_>) {
        let key = (m.topic().to_owned(), m.partition());
        let full = {
            let mut buffers = lock(&self.shared.buffers);
            if !buffers.contains_key(&key) && !lock(&self.shared.assigned).contains(&key) {
                // Fetched before its partition was revoked: the next owner
                // reads it from the committed offset, so it is not ours to run.
                tracing::debug!(
                    deployment = self.d.spec.name,
                    partition = m.partition(),
                    offset = m.offset(),
                    "dropping a record of a revoked partition"
                );
                return;
            }
            let pending = buffers.entry(key.clone()).or_insert_with(|| Pending {
                since: Instant::now(),
                batch: BatchBuilder::default(),
            });
            if pending.batch.is_empty() {
                pending.since = Instant::now();
            }
            push_message(&mut pending.batch, m);
            pending.batch.len() >= self.d.spec.batch_size
        };
        if full {
            self.dispatch(key);
        }
    }

    fn consumer_error(&mut self, e: &KafkaError) {
        let missing = matches!(
            e,
            KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            )
        );
        if missing {
            if self
                .warned_missing
                .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
            {
                tracing::warn!(deployment = self.d.spec.name, topics = ?self.d.spec.input,
                    "an input topic does not exist (yet); waiting for it");
                self.warned_missing = Some(Instant::now());
                lock(self.status).last_error = Some(format!("input topic missing: {e}"));
            }
        } else {
            tracing::warn!(deployment = self.d.spec.name, error = %e, "consumer error");
        }
    }

    /// Hands every partition's batch that has lingered long enough to its worker.
    fn dispatch_ready(&mut self, linger: Duration) {
        let ready: Vec<(String, i32)> = lock(&self.shared.buffers)
            .iter()
            .filter(|(_, p)| !p.batch.is_empty() && p.since.elapsed() >= linger)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            self.dispatch(key);
        }
    }

    /// Sends a partition's waiting records to its worker; blocks while that
    /// worker's queue is full (see [`QUEUE_BYTES`]), which stops the
    /// consumer: backpressure.
    fn dispatch(&mut self, key: (String, i32)) {
        let Some(pending) = lock(&self.shared.buffers).remove(&key) else {
            return;
        };
        let senders = lock(&self.shared.workers).clone();
        if senders.is_empty() {
            return;
        }
        let tx = &senders[key.1.unsigned_abs() as usize % senders.len()];
        let job = Job::Batch {
            topic: key.0,
            partition: key.1,
            batch: pending.batch,
        };
        if !tx.send(job) {
            tracing::error!(deployment = self.d.spec.name, "a worker thread is gone");
        }
    }
}

/// A worker thread: runs batches through its own instance of the function
/// and produces what they made.
struct Exec {
    d: Arc<Deployment>,
    /// The version `d` is: see [`Shared::current`].
    generation: u64,
    producer: Arc<ThreadedProducer<DeliveryContext>>,
    shared: Arc<Shared>,
    status: Arc<Mutex<DeploymentStatus>>,
    stop: Arc<AtomicBool>,
    worker: Option<Worker>,
    /// Partitions whose batch was given up: their later batches are given
    /// up too, or a commit after them would skip the records never run.
    skipping: HashSet<(String, i32)>,
    traps_seen: u64,
    dead_letter: String,
    module_header: String,
    version_header: String,
    backoff: Option<(Instant, Duration)>,
}

impl Exec {
    fn serve(&mut self, jobs: &Receiver<Job>, queued: &Queued) {
        while let Ok(job) = jobs.recv() {
            let bytes = job.bytes();
            self.run(job);
            queued.done(bytes);
        }
    }

    fn run(&mut self, job: Job) {
        match job {
            Job::Sync(done) => {
                // Every batch of a revoked partition was before this.
                self.skipping.clear();
                let _ = done.send(());
            }
            Job::Batch {
                topic,
                partition,
                mut batch,
            } => {
                let key = (topic, partition);
                if self.skipping.contains(&key) {
                    return;
                }
                self.follow_swaps();
                // A function that cannot start keeps its batch and retries
                // after the backoff; the full queue stops the consumer.
                while !self.run_batch(&key.0, key.1, &mut batch) {
                    let until = self.backoff.map_or_else(Instant::now, |(until, _)| until);
                    while Instant::now() < until && !self.give_up(&key) {
                        if self.take_staged() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if self.give_up(&key) {
                        // Not run, so never committed: read again later.
                        self.skipping.insert(key);
                        break;
                    }
                }
            }
        }
    }

    /// Moves to the version the deployment now runs, if it changed.
    fn follow_swaps(&mut self) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation <= self.generation {
            return;
        }
        let d = lock(&self.shared.current).clone();
        self.adopt(generation, d);
    }

    /// While the function cannot start: takes a version being swapped in.
    fn take_staged(&mut self) -> bool {
        let staged = lock(&self.shared.staged).clone();
        match staged {
            Some((generation, d)) if generation > self.generation => {
                tracing::info!(
                    deployment = self.d.spec.name,
                    version = generation,
                    "the function could not start: taking the version being swapped in now"
                );
                self.adopt(generation, d);
                true
            }
            _ => false,
        }
    }

    fn adopt(&mut self, generation: u64, d: Arc<Deployment>) {
        self.d = d;
        self.generation = generation;
        self.module_header = format!("sha256:{}", self.d.module.digest());
        self.version_header = self.d.version.to_string();
        self.worker = None;
        self.traps_seen = 0;
        self.backoff = None;
    }

    fn give_up(&self, key: &(String, i32)) -> bool {
        self.stop.load(Ordering::SeqCst) || lock(&self.shared.abandon).contains(key)
    }

    fn worker(&mut self) -> Result<&mut Worker, String> {
        if self.worker.is_none() {
            let d = &self.d;
            let config: Vec<(String, String)> = d.spec.config.clone().into_iter().collect();
            match Worker::new(d.module.clone(), d.limits(), config, d.model.clone()) {
                Ok(w) => {
                    self.worker = Some(w);
                    self.backoff = None;
                    lock(&self.status).state = DeploymentState::Running;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(self.worker.as_mut().expect("set above"))
    }

    fn fail_start(&mut self, error: String) {
        let delay = self.backoff.map_or(Duration::from_millis(100), |(_, d)| {
            (d * 2).min(MAX_BACKOFF)
        });
        tracing::error!(deployment = self.d.spec.name, error, retry_in = ?delay, "the function cannot start; backing off");
        self.backoff = Some((Instant::now() + delay, delay));
        self.worker = None;
        self.traps_seen = 0;
        let mut s = lock(&self.status);
        s.state = DeploymentState::BackingOff {
            error: error.clone(),
            retry_in_ms: delay.as_millis() as u64,
        };
        s.last_error = Some(error);
    }

    /// Runs one batch and produces what it made. False, with the batch
    /// untouched, if the function cannot start.
    fn run_batch(&mut self, topic: &str, partition: i32, batch: &mut BatchBuilder) -> bool {
        let started = Instant::now();
        let processed = match self.worker().map(|w| w.process(batch)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.fail_start(e.to_string());
                return false;
            }
            Err(e) => {
                self.fail_start(e);
                return false;
            }
        };
        let called = started.elapsed();
        let view = runnel_abi::BatchRef::new(batch.data(), batch.index());
        let inputs: Vec<RecordRef<'_>> = view.iter().map_while(Result::ok).collect();
        // Every input is in the tracker before any of its outputs can be
        // acknowledged.
        {
            let mut tracker = lock(&self.shared.tracker);
            for (input, outcome) in inputs.iter().zip(&processed.outcomes) {
                let outputs = match outcome {
                    Outcome::Keep | Outcome::Failed { .. } => 1,
                    Outcome::Drop => 0,
                    Outcome::Emit { count, .. } => *count,
                };
                tracker.add(topic, partition, input.offset(), outputs);
            }
        }
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut counts = (0u64, 0u64, 0u64); // out, filtered, dead-lettered
        let mut last_failure = None;
        for (i, (input, outcome)) in inputs.iter().zip(&processed.outcomes).enumerate() {
            let ack = || {
                Box::new(Ack {
                    topic: topic_arc.clone(),
                    partition,
                    offset: input.offset(),
                })
            };
            match outcome {
                Outcome::Keep => {
                    self.send_output(input, input.timestamp_ms(), ack());
                    counts.0 += 1;
                }
                Outcome::Drop => counts.1 += 1,
                Outcome::Emit { .. } => {
                    for record in processed.outputs_of(i) {
                        self.send_output(&record, input.timestamp_ms(), ack());
                        counts.0 += 1;
                    }
                }
                Outcome::Failed { message, trapped } => {
                    self.send_dead_letter(topic, partition, input, message, *trapped, ack());
                    counts.2 += 1;
                    last_failure = Some(format!(
                        "record {topic}/{partition}@{}: {message}",
                        input.offset()
                    ));
                }
            }
        }
        let worker_traps = self.worker.as_ref().map_or(0, |w| w.stats().traps);
        let mut s = lock(&self.status);
        s.records_in += inputs.len() as u64;
        s.records_out += counts.0;
        s.filtered += counts.1;
        s.dead_lettered += counts.2;
        let new_traps = worker_traps.saturating_sub(self.traps_seen);
        s.traps += new_traps;
        s.restarts += new_traps;
        s.call_seconds.observe(called.as_secs_f64());
        s.batch_seconds.observe(started.elapsed().as_secs_f64());
        if let Some(w) = &self.worker {
            s.memory_bytes = w.memory_bytes();
        }
        if last_failure.is_some() {
            s.last_error = last_failure;
        }
        self.traps_seen = worker_traps;
        true
    }

    fn send_output(&self, record: &RecordRef<'_>, input_ts: Option<i64>, ack: Box<Ack>) {
        let mut h = OwnedHeaders::new_with_capacity(record.header_count() + 4);
        for (k, v) in record.headers().map_while(Result::ok) {
            h = h.insert(Header { key: k, value: v });
        }
        h = h
            .insert(Header {
                key: headers::DEPLOYMENT,
                value: Some(self.d.spec.name.as_bytes()),
            })
            .insert(Header {
                key: headers::VERSION,
                value: Some(self.version_header.as_bytes()),
            })
            .insert(Header {
                key: headers::MODULE,
                value: Some(self.module_header.as_bytes()),
            });
        if let Some(model) = &self.d.model_digest {
            h = h.insert(Header {
                key: headers::MODEL,
                value: Some(model.as_bytes()),
            });
        }
        let timestamp = record.timestamp_ms().or(input_ts);
        send(
            &self.producer,
            &self.d.spec.name,
            &self.d.spec.output,
            record.key(),
            record.value(),
            h,
            timestamp,
            ack,
        );
    }

    fn send_dead_letter(
        &self,
        topic: &str,
        partition: i32,
        input: &RecordRef<'_>,
        message: &str,
        trapped: bool,
        ack: Box<Ack>,
    ) {
        let mut h = OwnedHeaders::new_with_capacity(input.header_count() + 8);
        for (k, v) in input.headers().map_while(Result::ok) {
            h = h.insert(Header { key: k, value: v });
        }
        let partition_s = partition.to_string();
        let offset_s = input.offset().to_string();
        for (k, v) in [
            (headers::ERROR, message),
            (headers::ERROR_KIND, if trapped { "trap" } else { "error" }),
            (headers::DEPLOYMENT, self.d.spec.name.as_str()),
            (headers::VERSION, self.version_header.as_str()),
            (headers::MODULE, self.module_header.as_str()),
            (headers::SOURCE_TOPIC, topic),
            (headers::SOURCE_PARTITION, partition_s.as_str()),
            (headers::SOURCE_OFFSET, offset_s.as_str()),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        send(
            &self.producer,
            &self.d.spec.name,
            &self.dead_letter,
            input.key(),
            input.value(),
            h,
            input.timestamp_ms(),
            ack,
        );
    }
}

/// Produces one record, waiting while the producer's queue is full (that is
/// the backpressure: the worker, then the consumer, stop taking records).
#[allow(clippy::too_many_arguments)]
fn send(
    producer: &ThreadedProducer<DeliveryContext>,
    deployment: &str,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: OwnedHeaders,
    ts: Option<i64>,
    ack: Box<Ack>,
) {
    let mut record: BaseRecord<'_, [u8], [u8], Box<Ack>> =
        BaseRecord::with_opaque_to(topic, ack).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    if let Some(ts) = ts {
        record = record.timestamp(ts);
    }
    producer
        .context()
        .shared
        .sent
        .fetch_add(1, Ordering::SeqCst);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, back)) => {
                tracing::error!(deployment, topic, error = %e, "cannot produce; retrying");
                record = back;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Sends again the outputs whose delivery failed.
fn resend_failed(shared: &Shared, producer: &ThreadedProducer<DeliveryContext>) {
    let retries = std::mem::take(&mut *lock(&shared.retries));
    for r in retries {
        send(
            producer,
            &shared.name,
            &r.topic,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers,
            r.timestamp,
            r.ack,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(bytes: usize) -> Job {
        Job::Batch {
            topic: "t".into(),
            partition: 0,
            batch: BatchBuilder::of_values([vec![0u8; bytes].as_slice()]),
        }
    }

    /// Backpressure: a worker's queue takes batches up to QUEUE_BYTES (one
    /// always, however large); the next waits until the worker is done with
    /// some, so what a backlog can queue is bounded.
    #[test]
    fn a_full_queue_holds_the_sender_until_the_worker_makes_room() {
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = WorkerQueue {
            jobs: tx,
            queued: Arc::default(),
        };
        assert!(queue.send(batch_of(QUEUE_BYTES)), "one batch always fits");
        let first = rx.recv().expect("queued").bytes();
        assert!(first > QUEUE_BYTES);

        let sent = Arc::new(AtomicBool::new(false));
        let sender = {
            let (queue, sent) = (queue.clone(), sent.clone());
            std::thread::spawn(move || {
                assert!(queue.send(batch_of(10)));
                sent.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !sent.load(Ordering::SeqCst),
            "the queue is full: the sender waits"
        );
        assert!(rx.try_recv().is_err());

        queue.queued.done(first);
        sender.join().expect("the sender finished");
        assert!(sent.load(Ordering::SeqCst));
        assert!(rx.recv().expect("the second batch").bytes() < 100);
    }
}
