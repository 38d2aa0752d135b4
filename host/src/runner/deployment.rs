//! One deployment's loop: the state its parts share, starting the consumer,
//! producer and workers, the poll loop, swaps and the stop. The parts live
//! beside it: [`super::consumer`], [`super::exec`], [`super::delivery`],
//! [`super::queue`]. See the module documentation of [`super`] for the
//! guarantees.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::ThreadedProducer;
use rdkafka::types::RDKafkaErrorCode;

use super::consumer::{
    Buffers, Poller, RebalanceContext, close_stores, commit_final, partitions, report_partitions,
    store_moved,
};
use super::delivery::{DeliveryContext, FLUSH_TIMEOUT, Retry, check_topics, flush, resend_failed};
use super::exec::Exec;
use super::queue::{IDLE_WORKER, Job, Parked, Queued, Slot, WorkerQueue, sync_workers};
use super::restore::Changelog;
use super::status::{DeploymentState, DeploymentStatus, SwapReport};
use super::tracker::Tracker;
use super::{Deployment, lock};
use crate::engine::{Worker, World};
use crate::kafka::InFlightCap;
use crate::state::{Backend, State, StateLimits, disk::DiskBackend, memory::MemoryBackend};

/// A request to a deployment's consumer thread.
pub(super) enum Control {
    Swap {
        next: Box<Deployment>,
        reply: SyncSender<anyhow::Result<SwapReport>>,
    },
}

/// State shared by the loop, the delivery callback (producer thread) and the
/// rebalance callback (inside the consumer's poll).
pub(super) struct Shared {
    pub(super) tracker: Mutex<Tracker>,
    /// The partitions this consumer owns now.
    pub(super) assigned: Mutex<HashSet<(String, i32)>>,
    pub(super) buffers: Mutex<Buffers>,
    /// Outputs whose delivery failed, to send again: nothing is given up.
    pub(super) retries: Mutex<Vec<Retry>>,
    pub(super) producer: Mutex<Option<Arc<ThreadedProducer<DeliveryContext>>>>,
    /// The queues of the deployment's worker threads.
    pub(super) workers: Mutex<Vec<WorkerQueue>>,
    /// Which assignment of each partition is current, and the partitions a
    /// worker runs a batch of now: see [`Owned`].
    pub(super) owned: Mutex<Owned>,
    /// Signalled when a worker finishes a batch.
    pub(super) idle: Condvar,
    /// Jobs of partitions whose worker's queue was full, in order, waiting
    /// for room; their partitions are paused meanwhile (see
    /// [`super::consumer::Poller::enqueue`]).
    pub(super) held: Mutex<HashMap<(String, i32), VecDeque<Job>>>,
    pub(super) name: String,
    /// The version the workers run, and its number: a worker whose instance
    /// is of an older generation replaces it before its next batch.
    pub(super) current: Mutex<Arc<Deployment>>,
    pub(super) generation: AtomicU64,
    /// A validated version waiting for the drain before the switch. A worker
    /// whose function cannot start takes it at once: the old version ran
    /// nothing of the batch it holds, and the drain waits for that batch.
    pub(super) staged: Mutex<Option<(u64, Arc<Deployment>)>>,
    /// The last offset stored per partition, for the status.
    pub(super) stored: Mutex<HashMap<(String, i32), i64>>,
    /// Records handed to the producer, and delivery reports handled: see
    /// [`flush`]. The producer may be the node's, shared: these count this
    /// deployment's records only.
    pub(super) sent: AtomicU64,
    pub(super) reported: AtomicU64,
    /// The keys' and values' bytes of the records in flight.
    pub(super) in_flight_bytes: AtomicU64,
    /// What the deployment may have in flight: see "One producer per node"
    /// in [`super::delivery`].
    pub(super) in_flight_cap: InFlightCap,
    /// The dead-letter topic.
    pub(super) dead_letter: String,
    pub(super) status: Arc<Mutex<DeploymentStatus>>,
    /// Set when the node stops the deployment or it fails: every wait gives up.
    pub(super) ending: Ending,
    /// Why the deployment failed, if it did: see [`Shared::fail`].
    pub(super) fatal: Mutex<Option<String>>,
    /// A processor's stores that queries may read: see [`super::query`].
    pub(super) served: super::query::Served,
    /// Whether the deployment is a processor (keeps state).
    pub(super) processor: bool,
    /// Partitions assigned whose state is to be restored ahead of their
    /// records: see [`super::consumer::Poller::restore_assigned`].
    pub(super) to_restore: Mutex<Vec<(String, i32)>>,
    /// The node's journal, entered by the delivery callback (which runs on
    /// the producer's thread, perhaps shared by every deployment).
    pub(super) journal: Option<Arc<crate::journal::Journal>>,
}

impl Shared {
    /// Fails the deployment: a fault that is not one record's (a panic in one
    /// of its threads, a record even the dead-letter topic refuses). The
    /// loop ends without taking more records, commits only what is
    /// acknowledged, and [`run`] starts the deployment again after a backoff.
    pub(super) fn fail(&self, error: String) {
        tracing::error!(deployment = self.name, error, "the deployment failed");
        lock(&self.fatal).get_or_insert(error);
        self.ending.failed.store(true, Ordering::SeqCst);
    }
}

/// A revoke waits only for the batches of the partitions it takes away
/// that a worker is running at that moment, not for every batch queued
/// before it: those of the revoked partitions are never run (their epoch is
/// old), and those of other partitions do not matter to it. A worker gives
/// up a poison batch's isolation (one call per record, each up to the
/// deadline) as soon as its partition is revoked, so a revoke waits for at
/// most one call.
#[derive(Debug, Default)]
pub(super) struct Owned {
    /// Bumped when a partition is assigned and when it is revoked.
    pub(super) epochs: HashMap<(String, i32), u64>,
    /// The partitions whose batch a worker runs now.
    pub(super) busy: HashSet<(String, i32)>,
}

impl Shared {
    /// The current epoch of a partition.
    pub(super) fn epoch(&self, key: &(String, i32)) -> u64 {
        lock(&self.owned).epochs.get(key).copied().unwrap_or(0)
    }

    /// Whether a job of `epoch` is still to be run: its partition was not
    /// revoked since, and the run is not ending.
    pub(super) fn is_current(&self, key: &(String, i32), epoch: u64) -> bool {
        !self.ending.is_set() && self.epoch(key) == epoch
    }

    /// Marks a partition's batch as running, if its epoch is current; the
    /// guard marks it done.
    pub(super) fn begin(&self, key: &(String, i32), epoch: u64) -> Option<Busy<'_>> {
        let mut owned = lock(&self.owned);
        if self.ending.is_set() || owned.epochs.get(key).copied().unwrap_or(0) != epoch {
            return None;
        }
        owned.busy.insert(key.clone());
        Some(Busy {
            shared: self,
            key: key.clone(),
        })
    }

    /// A new epoch for each of `keys` (assigned or revoked): their jobs
    /// made before are not run.
    pub(super) fn bump_epochs(&self, keys: &[(String, i32)]) {
        let mut owned = lock(&self.owned);
        for k in keys {
            *owned.epochs.entry(k.clone()).or_default() += 1;
        }
    }

    /// Waits until no worker runs a batch of any of `keys`.
    pub(super) fn wait_idle(&self, keys: &[(String, i32)]) {
        let mut owned = lock(&self.owned);
        while keys.iter().any(|k| owned.busy.contains(k)) {
            owned = self
                .idle
                .wait_timeout(owned, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A batch being run: see [`Shared::begin`].
pub(super) struct Busy<'a> {
    shared: &'a Shared,
    key: (String, i32),
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(&self.shared.owned).busy.remove(&self.key);
        self.shared.idle.notify_all();
    }
}

/// The flags that end a run of the deployment: the node's stop, and a
/// failure. Every loop that waits checks [`Ending::is_set`].
#[derive(Clone, Default)]
pub(super) struct Ending {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) failed: Arc<AtomicBool>,
}

impl Ending {
    pub(super) fn is_set(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.failed.load(Ordering::SeqCst)
    }
}

/// Drops the links that keep a run's threads and clients alive (the shared
/// state holds the producer and the workers' queues), however the run ends,
/// a panic included: the workers then finish and the producer goes.
struct Teardown(Arc<Shared>);

impl Drop for Teardown {
    fn drop(&mut self) {
        lock(&self.0.workers).clear();
        *lock(&self.0.producer) = None;
        // Each holds its record's acknowledgement, which holds this state.
        lock(&self.0.retries).clear();
    }
}

/// The longest a deployment's consumer loop waits in a poll when nothing
/// lingers: a record ends the wait at once; a swap, a stop, a retry or a
/// status report waits at most this. At 100 ms, idle deployments' loops
/// were a third of a node's idle CPU (`cargo bench --bench density`: 100
/// idle deployments, 0.30-0.37% of a core each against 0.23-0.24% at 500).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The first wait before a failed deployment starts again; it doubles with
/// each failure in a row, up to [`MAX_BACKOFF`](super::exec::MAX_BACKOFF).
const FIRST_RESTART: Duration = Duration::from_secs(1);
/// A run that lasted this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs one deployment until `stop` is set.
pub(super) fn run(
    d: Deployment,
    clients: Arc<super::Clients>,
    state_dir: Option<std::path::PathBuf>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<DeploymentStatus>>,
    served: super::query::Served,
    control: Receiver<Control>,
) {
    let name = d.spec.name.clone();
    let mut d = Arc::new(d);
    let mut delay = FIRST_RESTART;
    loop {
        let started = Instant::now();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_inner(
                &mut d,
                &clients,
                state_dir.as_deref(),
                &stop,
                &status,
                &served,
                &control,
            )
        }));
        served.clear();
        let error = match run {
            Ok(Ok(())) => break,
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => format!(
                "the deployment's thread panicked: {}",
                super::panic_message(&*panic)
            ),
        };
        if stop.load(Ordering::SeqCst) {
            lock(&status).last_error = Some(error);
            break;
        }
        if started.elapsed() > HEALTHY_RUN {
            delay = FIRST_RESTART;
        }
        tracing::error!(deployment = name, error, retry_in = ?delay, "the deployment failed; it starts again after the backoff");
        {
            let mut s = lock(&status);
            s.state = DeploymentState::Failed {
                error: error.clone(),
                retry_in_ms: delay.as_millis() as u64,
            };
            s.last_error = Some(error.clone());
            s.failures += 1;
        }
        let until = Instant::now() + delay;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            // A swap cannot wait for the restart: say why it is refused.
            if let Ok(Control::Swap { reply, .. }) = control.try_recv() {
                let _ = reply.send(Err(anyhow::anyhow!(
                    "deployment {name:?} has failed and starts again in at most {delay:?}: {error}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        delay = (delay * 2).min(super::exec::MAX_BACKOFF);
        lock(&status).state = DeploymentState::Starting;
    }
    lock(&status).state = DeploymentState::Stopped;
}

/// One run of the deployment, from creating its clients to leaving its
/// group: until `stop` (`Ok`), or until it fails (`Err`). `d` follows the
/// swaps, so that a run after a failure starts on the version that ran last.
fn run_inner(
    current: &mut Arc<Deployment>,
    clients: &super::Clients,
    state_dir: Option<&std::path::Path>,
    stop: &Arc<AtomicBool>,
    status: &Arc<Mutex<DeploymentStatus>>,
    served: &super::query::Served,
    control: &Receiver<Control>,
) -> anyhow::Result<()> {
    let d = current.clone();
    let spec = &d.spec;
    let kafka = &clients.kafka;
    let generation = lock(status).version;
    let processor = d.module.world() == World::Processor;
    let shared = Arc::new(Shared {
        tracker: Mutex::default(),
        assigned: Mutex::default(),
        buffers: Mutex::default(),
        retries: Mutex::default(),
        producer: Mutex::default(),
        workers: Mutex::default(),
        owned: Mutex::default(),
        idle: Condvar::new(),
        held: Mutex::default(),
        journal: clients.journal.clone(),
        name: spec.name.clone(),
        current: Mutex::new(d.clone()),
        generation: AtomicU64::new(generation),
        staged: Mutex::default(),
        stored: Mutex::default(),
        sent: AtomicU64::new(0),
        reported: AtomicU64::new(0),
        in_flight_bytes: AtomicU64::new(0),
        in_flight_cap: kafka.in_flight_cap()?,
        dead_letter: spec.dead_letter_topic(),
        status: status.clone(),
        ending: Ending {
            stop: stop.clone(),
            failed: Arc::default(),
        },
        fatal: Mutex::default(),
        served: served.clone(),
        processor,
        to_restore: Mutex::default(),
    });
    let _teardown = Teardown(shared.clone());
    // A processor's state: its changelog topics, made before anything runs.
    let changelog = if processor {
        let changelog = Changelog::new(kafka, &spec.name, &spec.stores, d.state_generation);
        let go_on = || !shared.ending.is_set();
        if let Some(n) = changelog.ensure_topics(&spec.input[0], &go_on)? {
            served.set_partitions(n);
        }
        Some(Arc::new(changelog))
    } else {
        None
    };
    let producer: Arc<ThreadedProducer<DeliveryContext>> = if processor {
        // A processor's changelog writes, and its outputs (the newest
        // count last), must land in the order they were made, retries
        // included; and none may land after its run ended: a producer of
        // its own (see "One producer per node" in `delivery`).
        Arc::new(
            kafka
                .producer()
                .set("max.in.flight.requests.per.connection", "1")
                .create_with_context(DeliveryContext)
                .map_err(|e| anyhow::anyhow!("cannot create the producer: {e}"))?,
        )
    } else {
        clients.producer.get(kafka)?
    };
    *lock(&shared.producer) = Some(producer.clone());
    let dead_letter = spec.dead_letter_topic();
    let written: Vec<&str> = spec
        .output
        .topics()
        .iter()
        .map(String::as_str)
        .chain([dead_letter.as_str()])
        .collect();
    check_topics(&producer, &written, &spec.name, status);

    // The pool: each partition always goes to the same worker, so its
    // records stay in order; partitions on different workers run in parallel.
    // A worker has a thread only while it has work: see `queue`.
    let mut slots = Vec::new();
    for i in 0..spec.workers.max(1) {
        // Bounded by bytes: see QUEUE_BYTES.
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let queued: Arc<Queued> = Arc::default();
        let state = if processor {
            let topic = &spec.input[0];
            let backend: Box<dyn Backend> = match state_dir {
                Some(dir) => Box::new(
                    DiskBackend::for_deployment(dir, &spec.name, topic).map_err(|e| {
                        anyhow::anyhow!("cannot keep state under {}: {e}", dir.display())
                    })?,
                ),
                None => Box::new(MemoryBackend),
            };
            Some(
                State::new(topic, &spec.stores, backend, StateLimits::default())
                    .map_err(|e| anyhow::anyhow!(e))?,
            )
        } else {
            None
        };
        let exec = Exec {
            d: d.clone(),
            generation,
            producer: producer.clone(),
            shared: shared.clone(),
            status: status.clone(),
            worker: None,
            traps_seen: 0,
            dead_letter: spec.dead_letter_topic(),
            module_header: format!("sha256:{}", d.module.digest()),
            version_header: d.version.to_string(),
            compact_header: super::exec::compact_header(&d),
            backoff: None,
            state,
            changelog: changelog.clone(),
            owners: Default::default(),
            broken: false,
        };
        let slot = Slot::new(
            Parked {
                work: exec,
                jobs: rx,
                queued: queued.clone(),
            },
            format!("runnel-{}-{i}", spec.name),
            IDLE_WORKER,
            Arc::downgrade(&shared),
        );
        lock(&shared.workers).push(WorkerQueue {
            jobs: tx,
            queued,
            ending: shared.ending.clone(),
            slot: Some(slot.clone()),
        });
        slots.push(slot);
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
        consumer: &consumer,
        status,
        warned_missing: None,
        last: None,
    };
    let linger = Duration::from_millis(spec.linger_ms);
    // While records linger or are held, the loop comes round within the
    // linger to send them; otherwise a poll waits up to IDLE_POLL for a
    // record: an idle deployment's thread wakes twice a second, not once
    // per linger (50 times at the default 20 ms).
    let busy_poll = linger.clamp(Duration::from_millis(1), IDLE_POLL);
    let mut poll_timeout = busy_poll;
    let mut reported = Instant::now();
    while !shared.ending.is_set() {
        super::fault::point(&spec.name, super::fault::Site::Consumer);
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
        poller.restore_assigned();
        poller.retry_held();
        let waiting = poller.dispatch_ready(linger);
        poll_timeout = if waiting { busy_poll } else { IDLE_POLL };
        store_moved(&shared, &consumer);
    }
    let fatal = lock(&shared.fatal).take();
    tracing::info!(
        deployment = spec.name,
        "{}: finishing batches, flushing outputs and committing what is acknowledged",
        if fatal.is_some() {
            "failed"
        } else {
            "stopping"
        }
    );
    lock(&shared.buffers).clear();
    lock(&shared.held).clear();
    sync_workers(&shared);
    resend_failed(&shared, &producer);
    let assigned = consumer
        .assignment()
        .map(|a| partitions(&a))
        .unwrap_or_default();
    let given_up = commit_final(&shared, &consumer, &assigned);
    // The workers close their stores, with local checkpoints where they
    // hold, before they end; queries let go of them first.
    shared.served.clear();
    close_stores(&shared, given_up);
    lock(&shared.workers).clear();
    for slot in &slots {
        slot.join();
    }
    consumer.unsubscribe();
    drop(consumer);
    *current = lock(&shared.current).clone();
    match fatal {
        Some(error) => Err(anyhow::anyhow!(error)),
        None => Ok(()),
    }
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
    let (was, is) = (old.module.world(), next.module.world());
    if (was == World::Processor) != (is == World::Processor) {
        anyhow::bail!(
            "the new version of {:?} is a {is} and the running one a {was}: a swap cannot add or \
             drop keyed state; deploy it under a new name",
            shared.name
        );
    }
    let mut spec = old.spec.clone();
    spec.module = next.spec.module.clone();
    spec.model = next.spec.model.clone();
    spec.config = next.spec.config.clone();
    spec.memory_mib = next.spec.memory_mib;
    spec.timeout_ms = next.spec.timeout_ms;
    spec.max_outputs_per_record = next.spec.max_outputs_per_record;
    spec.max_output_mib = next.spec.max_output_mib;
    spec.provenance = next.spec.provenance;
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
    if !flush(shared, FLUSH_TIMEOUT) {
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
