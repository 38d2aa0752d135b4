//! The consumer side: polling, buffering records per partition, handing
//! batches to the workers, the rebalance callbacks, and storing and
//! committing offsets.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use runnel_abi::BatchBuilder;

use super::Deployment;
use super::delivery::{FLUSH_TIMEOUT, flush};
use super::deployment::Shared;
use super::lock;
use super::queue::{GivenUp, Job, Rejected, TrySend};
use super::status::{DeploymentStatus, PartitionStatus};
use crate::kafka::watermarks::cached_high;
use crate::kafka::{BadHeaderName, push_message};

/// Records of one partition waiting to be run, packed as the function will
/// receive them (copied once out of the consumer's buffers), and when the
/// oldest arrived.
pub(super) struct Pending {
    pub(super) since: Instant,
    pub(super) batch: BatchBuilder,
}

/// Looked up once per record polled: hashed with Fx, not SipHash.
pub(super) type Buffers = rustc_hash::FxHashMap<(String, i32), Pending>;

pub(super) struct RebalanceContext {
    pub(super) shared: Arc<Shared>,
}

impl RebalanceContext {
    /// Runs a callback of librdkafka's: a panic must not unwind into C, and
    /// fails the deployment instead of passing unnoticed.
    fn guard(&self, what: &str, f: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.shared.fail(format!(
                "the {what} callback panicked: {}",
                super::panic_message(&*panic)
            ));
        }
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.guard("revoke", || self.revoke(consumer, rebalance));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.guard("assign", || self.assign(consumer, rebalance));
    }
}

impl RebalanceContext {
    fn revoke(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            if let Rebalance::Error(e) = rebalance {
                tracing::error!(deployment = self.shared.name, error = %e, "rebalance failed");
            }
            return;
        };
        let revoked = partitions(tpl);
        tracing::info!(deployment = self.shared.name, partitions = ?revoked, "partitions revoked: committing");
        // Records not yet run belong to the next owner, which reads them from
        // the committed offset: jobs of these partitions made before now are
        // not run. A batch a worker runs now finishes first (or gives up its
        // isolation), so that its outputs are acknowledged before the commit.
        {
            let mut buffers = lock(&self.shared.buffers);
            let mut held = lock(&self.shared.held);
            let mut assigned = lock(&self.shared.assigned);
            for tp in &revoked {
                buffers.remove(tp);
                held.remove(tp);
                assigned.remove(tp);
            }
        }
        // Queries stop before the epoch moves: see `query::Served::publish`.
        self.shared.served.revoked(revoked.iter().map(|k| k.1));
        self.shared.bump_epochs(&revoked);
        self.shared.wait_idle(&revoked);
        let given_up = commit_final(&self.shared, consumer, &revoked);
        close_stores(&self.shared, given_up);
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned = partitions(tpl);
            self.shared.bump_epochs(&assigned);
            self.shared.served.assigned(assigned.iter().map(|k| k.1));
            // A processor restores a partition's state as soon as it gets
            // it, not at its first record: see `Poller::restore_assigned`.
            if self.shared.processor {
                lock(&self.shared.to_restore).extend(assigned.iter().cloned());
            }
            // Paused when it was ours before, its worker's queue full.
            let _ = consumer.resume(tpl);
            lock(&self.shared.assigned).extend(assigned.iter().cloned());
            // In its group: running, even before a record comes (a worker
            // starts its function at its first batch, see `queue::Slot`).
            {
                let mut status = lock(&self.shared.status);
                if status.state == super::DeploymentState::Starting {
                    status.state = super::DeploymentState::Running;
                }
            }
            tracing::info!(deployment = self.shared.name, partitions = ?assigned, "partitions assigned");
        }
    }
}

/// How long the consumer waits for the committed offsets of partitions it
/// was given, to restore them ahead of their records.
const RESTORE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The (topic, partition) pairs of a list.
pub(super) fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Tells a processor's workers that these partitions are given up, so that
/// they close their stores (with local checkpoints where they hold).
pub(super) fn close_stores(shared: &Shared, given_up: Vec<((String, i32), GivenUp)>) {
    if !shared.processor {
        return;
    }
    let senders = lock(&shared.workers).clone();
    if senders.is_empty() {
        return;
    }
    for ((topic, partition), given_up) in given_up {
        let tx = &senders[partition.unsigned_abs() as usize % senders.len()];
        // Without bytes: never waits for room.
        let _ = tx.try_send(Job::Checkpoint {
            topic,
            partition,
            given_up,
        });
    }
}

/// Flushes the producer, then commits what may be committed for `partitions`
/// synchronously and forgets them. Says how each was given up.
pub(super) fn commit_final(
    shared: &Shared,
    consumer: &BaseConsumer<RebalanceContext>,
    partitions: &[(String, i32)],
) -> Vec<((String, i32), GivenUp)> {
    if !flush(shared, FLUSH_TIMEOUT) {
        tracing::warn!(
            deployment = shared.name,
            "outputs still in flight after the flush's time ran out; their inputs will be read again"
        );
    }
    let mut tpl = TopicPartitionList::new();
    let mut given_up = Vec::with_capacity(partitions.len());
    {
        let mut tracker = lock(&shared.tracker);
        for (topic, partition) in partitions {
            let how = match tracker.remove(topic, *partition) {
                Some(next) => {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(next));
                    GivenUp::Committed(next)
                }
                None => GivenUp::Untouched,
            };
            given_up.push(((topic.clone(), *partition), how));
        }
    }
    let unsure = |mut given_up: Vec<((String, i32), GivenUp)>| {
        for (_, how) in &mut given_up {
            *how = GivenUp::Unsure;
        }
        given_up
    };
    // Lost, not revoked: the group moved on without this consumer (its
    // session timed out), another may own these partitions and have
    // committed past this offset. Committing would move it back.
    if consumer.assignment_lost() {
        tracing::warn!(
            deployment = shared.name,
            "the partitions were lost, not revoked (the session timed out): their offsets are not committed; the next owner reads from the last commit"
        );
        // librdkafka commits the stored offsets of the partitions it takes
        // away, lost or not (with auto-commit on): forget them, so that it
        // has nothing to commit.
        let mut forget = TopicPartitionList::new();
        for (topic, partition) in partitions {
            let _ = forget.add_partition_offset(topic, *partition, Offset::Invalid);
        }
        if let Err(e) = consumer.store_offsets(&forget) {
            tracing::warn!(deployment = shared.name, error = %e, "cannot forget the stored offsets of lost partitions");
        }
        return unsure(given_up);
    }
    // Stored too: librdkafka's own commit of a revoked partition (automatic
    // commits are on) then writes this offset, not an older stored one.
    let _ = consumer.store_offsets(&tpl);
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
    {
        tracing::warn!(deployment = shared.name, error = %e, "final commit failed; records after the last commit will be read again");
        return unsure(given_up);
    }
    given_up
}

/// Stores the offsets whose outputs are all acknowledged; the periodic commit
/// carries them.
pub(super) fn store_moved(shared: &Shared, consumer: &BaseConsumer<RebalanceContext>) {
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
/// high watermarks are those of the consumer's last fetch responses: no
/// request to the broker.
pub(super) fn report_partitions(
    shared: &Shared,
    consumer: &BaseConsumer<RebalanceContext>,
    status: &Mutex<DeploymentStatus>,
) {
    let assigned = consumer
        .assignment()
        .map(|a| partitions(&a))
        .unwrap_or_default();
    let in_flight = shared
        .sent
        .load(Ordering::SeqCst)
        .saturating_sub(shared.reported.load(Ordering::SeqCst));
    let mut stored = lock(&shared.stored);
    stored.retain(|tp, _| assigned.contains(tp));
    let report: Vec<PartitionStatus> = assigned
        .into_iter()
        .map(|(topic, partition)| {
            let offset = stored.get(&(topic.clone(), partition)).copied();
            let high_watermark = cached_high(consumer.client(), &topic, partition);
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
    let mut s = lock(status);
    s.partitions = report;
    s.in_flight = in_flight;
}

/// The consumer's side: buffers records per partition and hands full (or
/// lingering) batches to the partition's worker.
pub(super) struct Poller<'a> {
    pub(super) d: &'a Deployment,
    pub(super) shared: &'a Shared,
    pub(super) consumer: &'a BaseConsumer<RebalanceContext>,
    pub(super) status: &'a Mutex<DeploymentStatus>,
    pub(super) warned_missing: Option<Instant>,
    /// The partition of the last record buffered: records come in runs of
    /// one partition, so its key is made once per run, not per record.
    pub(super) last: Option<(String, i32)>,
}

impl Poller<'_> {
    pub(super) fn buffer(&mut self, m: &BorrowedMessage<'_>) {
        let (topic, partition) = (m.topic(), m.partition());
        let key = match self.last.take() {
            Some(last) if last.1 == partition && last.0 == topic => last,
            _ => (topic.to_owned(), partition),
        };
        let full = {
            let mut buffers = lock(&self.shared.buffers);
            let pending = match buffers.get_mut(&key) {
                Some(pending) => pending,
                None => {
                    if !lock(&self.shared.assigned).contains(&key) {
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
                    buffers.entry(key.clone()).or_insert_with(|| Pending {
                        since: Instant::now(),
                        batch: BatchBuilder::default(),
                    })
                }
            };
            if pending.batch.is_empty() {
                pending.since = Instant::now();
            }
            if let Err(bad) = push_message(&mut pending.batch, m) {
                drop(buffers);
                self.reject(key, m, &bad);
                return;
            }
            pending.batch.len() >= self.d.spec.batch_size
        };
        if full {
            self.dispatch(key.clone());
        }
        self.last = Some(key);
    }

    /// Sends a record the function cannot be given to the partition's worker
    /// to be dead-lettered, after the records buffered before it.
    fn reject(&mut self, key: (String, i32), m: &BorrowedMessage<'_>, bad: &BadHeaderName) {
        self.dispatch(key.clone());
        let record = Rejected {
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
            headers: m.headers().map(|h| h.detach()).unwrap_or_default(),
            kind: "bad-header",
            error: bad.to_string(),
        };
        let epoch = self.shared.epoch(&key);
        let job = Job::Reject {
            topic: key.0.clone(),
            partition: key.1,
            epoch,
            record: Box::new(record),
        };
        self.enqueue(key, job);
    }

    pub(super) fn consumer_error(&mut self, e: &KafkaError) {
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

    /// Asks the worker of each partition assigned since the last call to
    /// restore its state now (a processor's), to the group's committed
    /// offset (the log's start when there is none), instead of at its first
    /// record: an idle partition then answers queries too, and its first
    /// record does not wait for the changelog. If the offsets cannot be
    /// read, the restores happen at the first records, as they would.
    pub(super) fn restore_assigned(&mut self) {
        let keys = std::mem::take(&mut *lock(&self.shared.to_restore));
        if keys.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &keys {
            let _ = tpl.add_partition(topic, *partition);
        }
        let committed = match self.consumer.committed_offsets(tpl, RESTORE_LOOKUP_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(deployment = self.d.spec.name, error = %e,
                    "cannot read the committed offsets: partitions restore at their first record");
                return;
            }
        };
        for e in committed.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if !lock(&self.shared.assigned).contains(&key) {
                continue;
            }
            let start = match e.offset() {
                Offset::Offset(o) if o >= 0 => o,
                _ => match self
                    .consumer
                    .fetch_watermarks(&key.0, key.1, RESTORE_LOOKUP_TIMEOUT)
                {
                    Ok((low, _)) => low,
                    Err(_) => continue,
                },
            };
            let job = Job::Restore {
                topic: key.0.clone(),
                partition: key.1,
                epoch: self.shared.epoch(&key),
                committed: start,
            };
            self.enqueue(key, job);
        }
    }

    /// Hands every partition's batch that has lingered long enough to its worker.
    /// Returns whether records are still waiting: in a batch that lingers,
    /// or held for a worker that has no room.
    pub(super) fn dispatch_ready(&mut self, linger: Duration) -> bool {
        let (ready, lingering) = {
            let buffers = lock(&self.shared.buffers);
            let mut ready = Vec::new();
            let mut lingering = false;
            for (k, p) in buffers.iter().filter(|(_, p)| !p.batch.is_empty()) {
                if p.since.elapsed() >= linger {
                    ready.push(k.clone());
                } else {
                    lingering = true;
                }
            }
            (ready, lingering)
        };
        for key in ready {
            self.dispatch(key);
        }
        lingering || !lock(&self.shared.held).is_empty()
    }

    /// Sends a partition's waiting records to its worker (see
    /// [`Poller::enqueue`]).
    pub(super) fn dispatch(&mut self, key: (String, i32)) {
        let Some(pending) = lock(&self.shared.buffers).remove(&key) else {
            return;
        };
        if pending.batch.is_empty() {
            return;
        }
        let job = Job::Batch {
            topic: key.0.clone(),
            partition: key.1,
            epoch: self.shared.epoch(&key),
            batch: pending.batch,
            polled: pending.since,
        };
        self.enqueue(key, job);
    }

    /// Queues a job on its partition's worker. While that worker's queue is
    /// full (see [`QUEUE_BYTES`](super::queue::QUEUE_BYTES)), the job is
    /// held here, after any held before it, and the partition is paused:
    /// backpressure without blocking the consumer, which keeps polling (and
    /// so stays in its group, however long a worker takes) and keeps
    /// feeding the partitions of the other workers.
    fn enqueue(&mut self, key: (String, i32), job: Job) {
        let mut held = lock(&self.shared.held);
        if let Some(queue) = held.get_mut(&key) {
            queue.push_back(job);
            return;
        }
        let senders = lock(&self.shared.workers).clone();
        if senders.is_empty() {
            return;
        }
        let tx = &senders[key.1.unsigned_abs() as usize % senders.len()];
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySend::Full(job)) => {
                if pause_every_partition() {
                    for assigned in lock(&self.shared.assigned).iter() {
                        self.pause(assigned, true);
                    }
                } else {
                    self.pause(&key, true);
                }
                held.insert(key, VecDeque::from([job]));
            }
            Err(TrySend::Gone) => {
                tracing::error!(deployment = self.d.spec.name, "a worker thread is gone");
            }
        }
    }

    /// Queues the held jobs whose worker has room now, in order, and resumes
    /// the partitions with none left.
    pub(super) fn retry_held(&mut self) {
        let mut held = lock(&self.shared.held);
        if held.is_empty() {
            return;
        }
        let senders = lock(&self.shared.workers).clone();
        if senders.is_empty() {
            return;
        }
        let mut emptied = Vec::new();
        for (key, queue) in held.iter_mut() {
            let tx = &senders[key.1.unsigned_abs() as usize % senders.len()];
            while let Some(job) = queue.pop_front() {
                match tx.try_send(job) {
                    Ok(()) => {}
                    Err(TrySend::Full(job)) => {
                        queue.push_front(job);
                        break;
                    }
                    Err(TrySend::Gone) => {
                        queue.clear();
                        break;
                    }
                }
            }
            if queue.is_empty() {
                emptied.push(key.clone());
            }
        }
        let every = pause_every_partition();
        for key in emptied {
            held.remove(&key);
            if !every && lock(&self.shared.assigned).contains(&key) {
                self.pause(&key, false);
            }
        }
        if every && held.is_empty() {
            for assigned in lock(&self.shared.assigned).iter() {
                self.pause(assigned, false);
            }
        }
    }

    fn pause(&self, (topic, partition): &(String, i32), pause: bool) {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition(topic, *partition);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::debug!(deployment = self.d.spec.name, topic, partition, error = %e, "pausing or resuming a partition");
        }
    }
}

/// Whether a full worker queue pauses every partition of its deployment
/// rather than only those whose batches wait for it (the default): see
/// [`set_pause_every_partition`](super::set_pause_every_partition).
pub(super) static PAUSE_EVERY_PARTITION: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn pause_every_partition() -> bool {
    PAUSE_EVERY_PARTITION.load(Ordering::Relaxed)
}
