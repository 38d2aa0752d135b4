//! The worker side: a worker thread runs the batches of its partitions
//! through its own instance of the function, and hands what they made to the
//! delivery side.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::ThreadedProducer;
use runnel_abi::{BatchBuilder, RecordRef};

use super::delivery::{Ack, DeliveryContext, Outgoing, Sent, dead_letter_headers, send};
use super::deployment::Shared;
use super::queue::{GivenUp, Job, Queued, Rejected};
use super::restore::{Changelog, Checkpoint, CheckpointLog};
use super::status::{
    DeploymentState, DeploymentStatus, Isolating, RestoreReport, RestoreSource, Restoring,
};
use super::{Deployment, headers, lock};
use crate::config::Provenance;
use crate::engine::{Outcome, Worker};
use crate::state::{State, Write, changelog};

/// Longest wait between attempts to start a function that keeps failing.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A worker thread: runs batches through its own instance of the function
/// and produces what they made.
pub(super) struct Exec {
    pub(super) d: Arc<Deployment>,
    /// The version `d` is: see [`Shared::current`].
    pub(super) generation: u64,
    pub(super) producer: Arc<ThreadedProducer<DeliveryContext>>,
    pub(super) shared: Arc<Shared>,
    pub(super) status: Arc<Mutex<DeploymentStatus>>,
    pub(super) worker: Option<Worker>,
    pub(super) traps_seen: u64,
    pub(super) dead_letter: String,
    pub(super) module_header: String,
    pub(super) version_header: String,
    /// `runnel-provenance`'s value, for `provenance = "compact"`.
    pub(super) compact_header: String,
    pub(super) backoff: Option<(Instant, Duration)>,
    /// A processor's state while no instance holds it (before the first
    /// and between instances: a swap keeps it).
    pub(super) state: Option<State>,
    /// A processor's changelog topics.
    pub(super) changelog: Option<Arc<Changelog>>,
    /// The partitions whose state this worker restored, by partition: for
    /// which assignment ([`Shared::epoch`]), and the owner epoch it writes
    /// its changelog records with.
    pub(super) owners: HashMap<i32, Owner>,
    /// Set after a panic: see [`Exec::take`].
    pub(super) broken: bool,
}

/// This worker's ownership of a partition's state.
pub(super) struct Owner {
    assignment: u64,
    /// The owner epoch its changelog records carry, and as their header.
    epoch: u64,
    epoch_header: String,
    /// Where its epoch marker landed in each store's changelog.
    markers: Vec<i64>,
    /// The input offset the state was restored to.
    committed: i64,
    /// The offset after the last input whose writes are in the store.
    next: i64,
    /// Whether a record of the assignment has run on it since.
    ran: bool,
}

impl Exec {
    /// Runs one job of the queue, and counts its bytes done. A panic (a bug
    /// of runnel's, not of the function, whose traps are caught by the
    /// engine) fails the deployment, which restarts: see
    /// [`DeploymentState::Failed`]. Until then this worker answers syncs and
    /// drops its batches, unacknowledged, so that nothing waits on it and
    /// nothing it dropped is committed.
    pub(super) fn take(&mut self, job: Job, queued: &Queued) {
        let bytes = job.bytes();
        if self.broken {
            if let Job::Sync(done) = job {
                let _ = done.send(());
            }
        } else if let Err(panic) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(job)))
        {
            self.broken = true;
            self.worker = None;
            self.shared.fail(format!(
                "a worker thread panicked: {}",
                super::panic_message(&*panic)
            ));
        }
        queued.done(bytes);
    }

    pub(super) fn run(&mut self, job: Job) {
        match job {
            Job::Sync(done) => {
                let _ = done.send(());
            }
            Job::Restore {
                topic,
                partition,
                epoch,
                committed,
            } => {
                let shared = self.shared.clone();
                let key = (topic, partition);
                if let Some(_busy) = shared.begin(&key, epoch) {
                    self.restored(&key, epoch, committed);
                }
            }
            Job::Checkpoint {
                topic,
                partition,
                given_up,
            } => self.checkpoint(&topic, partition, given_up),
            // Ending, or made before its partition was revoked: not run, so
            // not committed, and read again by the next owner. A partition's
            // jobs run in order, so once one is dropped for its epoch, every
            // later one of that epoch is too.
            Job::Reject {
                topic,
                partition,
                epoch,
                record,
            } => {
                let shared = self.shared.clone();
                let key = (topic, partition);
                if let Some(_busy) = shared.begin(&key, epoch)
                    && self.restored(&key, epoch, record.offset)
                {
                    self.ran(key.1);
                    let next = record.offset + 1;
                    self.reject(&key.0, key.1, *record);
                    self.advanced(key.1, next);
                }
            }
            Job::Batch {
                topic,
                partition,
                epoch,
                mut batch,
                polled,
            } => {
                let shared = self.shared.clone();
                let key = (topic, partition);
                let Some(_busy) = shared.begin(&key, epoch) else {
                    return;
                };
                let first = runnel_abi::BatchRef::new(batch.data(), batch.index())
                    .get(0)
                    .map_or(-1, |r| r.offset());
                if !self.restored(&key, epoch, first) {
                    return;
                }
                self.ran(key.1);
                super::fault::point(&self.d.spec.name, super::fault::Site::Worker);
                self.follow_swaps();
                // A function that cannot start keeps its batch and retries
                // after the backoff; the queue fills and the consumer pauses
                // the partitions of this worker.
                while !self.run_batch(&key.0, key.1, epoch, &mut batch, polled) {
                    let until = self.backoff.map_or_else(Instant::now, |(until, _)| until);
                    while Instant::now() < until && shared.is_current(&key, epoch) {
                        if self.take_staged() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if !shared.is_current(&key, epoch) {
                        // Not run, so never committed: read again later.
                        break;
                    }
                }
            }
        }
    }

    /// Moves to the version the deployment now runs, if it changed.
    pub(super) fn follow_swaps(&mut self) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation <= self.generation {
            return;
        }
        let d = lock(&self.shared.current).clone();
        self.adopt(generation, d);
    }

    /// While the function cannot start: takes a version being swapped in.
    pub(super) fn take_staged(&mut self) -> bool {
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

    pub(super) fn adopt(&mut self, generation: u64, d: Arc<Deployment>) {
        self.d = d;
        self.generation = generation;
        self.module_header = format!("sha256:{}", self.d.module.digest());
        self.version_header = self.d.version.to_string();
        self.compact_header = compact_header(&self.d);
        self.drop_worker();
        self.traps_seen = 0;
        self.backoff = None;
    }

    pub(super) fn worker(&mut self) -> Result<&mut Worker, String> {
        if self.worker.is_none() {
            let d = &self.d;
            let config: Vec<(String, String)> = d.spec.config.clone().into_iter().collect();
            match Worker::new(d.module.clone(), d.limits(), config, d.model.clone()) {
                Ok(w) => {
                    let w = w.with_routes(Arc::from(d.spec.output.topics()));
                    self.worker = Some(match self.state.take() {
                        Some(state) => w.with_state(state),
                        None => w,
                    });
                    self.backoff = None;
                    lock(&self.status).state = DeploymentState::Running;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(self.worker.as_mut().expect("set above"))
    }

    /// Drops the instance, keeping a processor's state for the next one.
    pub(super) fn drop_worker(&mut self) {
        if let Some(state) = self.worker.take().and_then(|mut w| w.take_state()) {
            self.state = Some(state);
        }
    }

    fn state_mut(&mut self) -> Option<&mut State> {
        match &mut self.worker {
            Some(w) if w.state().is_some() => w.state_mut(),
            _ => self.state.as_mut(),
        }
    }

    /// Before the first job of an assignment of a partition: rebuilds the
    /// partition's state from its changelog, for an owner that starts at
    /// input offset `committed` (the first record the consumer gave it
    /// after the assignment). Retries while the partition is still this
    /// node's; false once it is not (the job is then not run). True at once
    /// for functions without state.
    pub(super) fn restored(
        &mut self,
        key: &(String, i32),
        assignment: u64,
        committed: i64,
    ) -> bool {
        let Some(changelog) = self.changelog.clone() else {
            return true;
        };
        let partition = key.1;
        // Restored for this assignment already: before its first record
        // (`Job::Restore`), or by it. A restore made ahead, to an offset
        // other than where the records start (the committed one was
        // gone), is made again before any record runs on it.
        if self
            .owners
            .get(&partition)
            .is_some_and(|o| o.assignment == assignment && (o.ran || o.committed == committed))
        {
            return true;
        }
        self.owners.remove(&partition);
        let shared = self.shared.clone();
        let status = self.status.clone();
        let go_on = || shared.is_current(key, assignment);
        let mut delay = Duration::from_millis(500);
        // A local checkpoint is tried once: it is gone as it is taken.
        let mut local = match self.state_mut().map(|s| s.take_checkpoint(partition)) {
            Some(Ok(Some(bytes))) => {
                let checkpoint = Checkpoint::from_bytes(&bytes);
                if checkpoint.is_none() {
                    tracing::warn!(
                        deployment = self.d.spec.name,
                        topic = key.0,
                        partition,
                        "the local state's checkpoint cannot be read: restoring from the changelog"
                    );
                }
                checkpoint
            }
            Some(Err(e)) => {
                tracing::warn!(deployment = self.d.spec.name, topic = key.0, partition, error = %e,
                    "cannot take the local state's checkpoint: restoring from the changelog");
                None
            }
            _ => None,
        };
        loop {
            if !go_on() {
                return false;
            }
            let started = Instant::now();
            lock(&status).restoring.push(Restoring {
                topic: key.0.clone(),
                partition,
                records_read: 0,
                since_ms: super::status::now_ms(),
            });
            let progress = |records: u64| {
                let mut s = lock(&status);
                if let Some(r) = s
                    .restoring
                    .iter_mut()
                    .find(|r| r.topic == key.0 && r.partition == partition)
                {
                    r.records_read = records;
                }
            };
            let result = changelog.restore(
                partition,
                committed,
                local.take().as_ref(),
                &go_on,
                &progress,
            );
            lock(&status)
                .restoring
                .retain(|r| !(r.topic == key.0 && r.partition == partition));
            let error = match result {
                Ok(None) => return false,
                Ok(Some(restored)) => {
                    let source = if restored.stores.is_some() {
                        RestoreSource::Changelog
                    } else {
                        RestoreSource::Checkpoint
                    };
                    let replaced = match (self.state_mut(), restored.stores) {
                        (Some(state), Some(stores)) => {
                            state.replace(partition, stores).map(|()| restored.keys)
                        }
                        (Some(state), None) => state.resume(partition),
                        (None, _) => Err(crate::state::StoreError(
                            "the processor has no state to restore into".to_owned(),
                        )),
                    };
                    match replaced {
                        Ok(keys) => {
                            let report = RestoreReport {
                                topic: key.0.clone(),
                                partition,
                                source,
                                committed,
                                epoch: restored.epoch,
                                keys,
                                write_backs: restored.write_backs as u64,
                                counts: restored.counts,
                                ms: started.elapsed().as_secs_f64() * 1e3,
                            };
                            tracing::info!(
                                deployment = self.d.spec.name,
                                topic = key.0,
                                partition,
                                from = ?source,
                                committed,
                                epoch = restored.epoch,
                                keys,
                                records = restored.counts.records,
                                skipped_uncommitted = restored.counts.uncommitted,
                                late = restored.counts.late,
                                write_backs = restored.write_backs,
                                ms = report.ms,
                                "state restored"
                            );
                            let mut s = lock(&status);
                            s.restores += 1;
                            if source == RestoreSource::Checkpoint {
                                s.restores_from_checkpoint += 1;
                            }
                            s.last_restore = Some(report);
                            drop(s);
                            self.owners.insert(
                                partition,
                                Owner {
                                    assignment,
                                    epoch: restored.epoch,
                                    epoch_header: restored.epoch.to_string(),
                                    markers: restored.markers,
                                    committed,
                                    next: committed,
                                    ran: false,
                                },
                            );
                            // Queries may read it now, if it is still ours.
                            if let Some(store) =
                                self.state_mut().and_then(|s| s.shared_store(partition))
                            {
                                shared.served.publish(partition, store, || {
                                    shared.is_current(key, assignment)
                                });
                            }
                            return true;
                        }
                        Err(e) => format!("cannot write the restored state: {e}"),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            tracing::error!(deployment = self.d.spec.name, topic = key.0, partition, error, retry_in = ?delay,
                "cannot restore a partition's state; its records wait");
            lock(&status).last_error = Some(format!(
                "restoring the state of {}/{partition}: {error}",
                key.0
            ));
            let until = Instant::now() + delay;
            while Instant::now() < until && go_on() {
                std::thread::sleep(Duration::from_millis(50));
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// A record of `partition`'s assignment runs now: its restore stands.
    fn ran(&mut self, partition: i32) {
        if let Some(o) = self.owners.get_mut(&partition) {
            o.ran = true;
        }
    }

    /// The inputs of `partition` before `next` have run on its store.
    fn advanced(&mut self, partition: i32, next: i64) {
        if let Some(o) = self.owners.get_mut(&partition) {
            o.next = next;
        }
    }

    /// `partition` was given up: closes its store, keeping it with a local
    /// checkpoint when the store holds exactly the inputs before the
    /// offset the group has committed (see [`super::restore::Checkpoint`]).
    fn checkpoint(&mut self, topic: &str, partition: i32, given_up: GivenUp) {
        let owner = self.owners.remove(&partition);
        let Some(changelog) = self.changelog.clone() else {
            return;
        };
        let name = self.d.spec.name.clone();
        let Some(state) = self.state_mut() else {
            return;
        };
        let current = owner.and_then(|o| {
            let committed = match given_up {
                GivenUp::Committed(c) => c,
                GivenUp::Untouched => o.committed,
                GivenUp::Unsure => return None,
            };
            (o.next == committed).then_some((o, committed))
        });
        let Some((owner, committed)) = current else {
            state.close(partition);
            return;
        };
        let ends = match changelog.ends(partition) {
            Ok(ends) => ends,
            Err(e) => {
                tracing::warn!(deployment = name, topic, partition, error = %format!("{e:#}"),
                    "no local checkpoint: the changelog's end cannot be read");
                state.close(partition);
                return;
            }
        };
        let checkpoint = Checkpoint {
            committed,
            epoch: owner.epoch,
            logs: changelog
                .topics
                .iter()
                .zip(owner.markers)
                .zip(ends)
                .map(|(((_, topic), marker), end)| CheckpointLog {
                    topic: topic.clone(),
                    marker,
                    end,
                })
                .collect(),
        };
        match state.checkpoint(partition, &checkpoint.to_bytes()) {
            Ok(true) => tracing::debug!(
                deployment = name,
                topic,
                partition,
                committed,
                "the partition's state is closed with a local checkpoint"
            ),
            Ok(false) => tracing::debug!(
                deployment = name,
                topic,
                partition,
                "no local checkpoint: a query held the store"
            ),
            Err(e) => tracing::warn!(deployment = name, topic, partition, error = %e,
                "no local checkpoint: it cannot be written"),
        }
    }

    /// Produces a call's state writes to their stores' changelogs, each
    /// acknowledged for the input record that made it.
    fn send_writes(&self, writes: Vec<Write>) {
        let Some(changelog) = &self.changelog else {
            return;
        };
        for w in writes {
            let Some(topic) = changelog.topic_of(&w.store) else {
                continue; // stores are checked when the state is made
            };
            let epoch = self
                .owners
                .get(&w.cause.partition)
                .map_or("0", |o| o.epoch_header.as_str());
            let cause = w.cause.offset.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: changelog::EPOCH,
                    value: Some(epoch),
                })
                .insert(Header {
                    key: changelog::CAUSE,
                    value: Some(&cause),
                });
            send(
                &self.producer,
                &self.shared,
                Outgoing {
                    topic,
                    partition: Some(w.cause.partition),
                    key: Some(&changelog::key(&w.key)),
                    value: w.value.as_deref(),
                    headers: Some(headers),
                    timestamp: None,
                },
                Box::new(Ack {
                    owner: self.shared.clone(),
                    topic: w.cause.topic.clone(),
                    partition: w.cause.partition,
                    offset: w.cause.offset,
                    sent: Sent::Changelog,
                    latency: None,
                }),
            );
        }
    }

    pub(super) fn fail_start(&mut self, error: String) {
        let delay = self.backoff.map_or(Duration::from_millis(100), |(_, d)| {
            (d * 2).min(MAX_BACKOFF)
        });
        tracing::error!(deployment = self.d.spec.name, error, retry_in = ?delay, "the function cannot start; backing off");
        self.backoff = Some((Instant::now() + delay, delay));
        self.drop_worker();
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
    pub(super) fn run_batch(
        &mut self,
        topic: &str,
        partition: i32,
        epoch: u64,
        batch: &mut BatchBuilder,
        polled: Instant,
    ) -> bool {
        let started = Instant::now();
        let shared = self.shared.clone();
        let key = (topic.to_owned(), partition);
        let (status, records) = (self.status.clone(), batch.len());
        // Asked before each record run alone after a trap: says so in the
        // status, and gives up once the partition is revoked or the run ends.
        let give_up = |run: usize| {
            let mut s = lock(&status);
            s.isolating
                .retain(|i| (&i.topic, i.partition) != (&key.0, key.1));
            s.isolating.push(Isolating {
                topic: key.0.clone(),
                partition: key.1,
                run,
                records,
            });
            drop(s);
            !shared.is_current(&key, epoch)
        };
        let processed = self.worker().map(|w| w.process_until(batch, &give_up));
        lock(&self.status)
            .isolating
            .retain(|i| (&i.topic, i.partition) != (&key.0, key.1));
        let mut processed = match processed {
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
        // All of the batch, or the records run before it was given up.
        let inputs: Vec<RecordRef<'_>> = view
            .iter()
            .take(processed.outcomes.len())
            .map_while(Result::ok)
            .collect();
        if let Some(last) = inputs.last() {
            self.advanced(partition, last.offset() + 1);
        }
        if super::freeze::holding() && !self.wait_out_freeze(&key, epoch) {
            // Its store holds the batch, which no changelog will: `advanced`
            // above keeps it from a local checkpoint.
            tracing::warn!(
                deployment = self.d.spec.name,
                topic,
                partition,
                records = inputs.len(),
                "the process froze with this batch in hand and its partition went to \
                 another node meanwhile: its outputs are dropped, the next owner runs it"
            );
            return true;
        }
        // A processor's state writes: each is acknowledged for its input,
        // as its outputs are, so that an input's offset is committed only
        // once its outputs and its changelog writes are all in.
        let writes = std::mem::take(&mut processed.writes);
        let mut writes_of: HashMap<i64, u32> = HashMap::new();
        for w in &writes {
            *writes_of.entry(w.cause.offset).or_default() += 1;
        }
        // Every input is in the tracker before any of its outputs can be
        // acknowledged.
        lock(&self.shared.tracker).add_many(
            topic,
            partition,
            inputs
                .iter()
                .zip(&processed.outcomes)
                .map(|(input, outcome)| {
                    let outputs = match outcome {
                        Outcome::Keep | Outcome::Failed { .. } => 1,
                        Outcome::Drop => 0,
                        Outcome::Emit { count, .. } => *count,
                    };
                    let writes = writes_of.get(&input.offset()).copied().unwrap_or(0);
                    (input.offset(), outputs + writes)
                }),
        );
        let state_writes = writes.len() as u64;
        self.send_writes(writes);
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut counts = (0u64, 0u64, 0u64); // out, filtered, dead-lettered
        let mut by_output = [0u64; crate::rules::OUTPUTS.max as usize];
        let mut last_failure = None;
        for (i, (input, outcome)) in inputs.iter().zip(&processed.outcomes).enumerate() {
            let ack = || {
                Box::new(Ack {
                    owner: self.shared.clone(),
                    topic: topic_arc.clone(),
                    partition,
                    offset: input.offset(),
                    sent: Sent::Output,
                    latency: Some((polled, input.timestamp_ms())),
                })
            };
            match outcome {
                Outcome::Keep => {
                    let o = self.send_output(input, input.timestamp_ms(), ack());
                    if let Some(n) = by_output.get_mut(o) {
                        *n += 1;
                    }
                    counts.0 += 1;
                }
                Outcome::Drop => counts.1 += 1,
                Outcome::Emit { .. } => {
                    for record in processed.outputs_of(i) {
                        let o = self.send_output(&record, input.timestamp_ms(), ack());
                        if let Some(n) = by_output.get_mut(o) {
                            *n += 1;
                        }
                        counts.0 += 1;
                    }
                }
                Outcome::Failed { message, trapped } => {
                    let mut ack = ack();
                    ack.sent = Sent::DeadLetter;
                    ack.latency = None;
                    self.send_dead_letter(topic, partition, input, message, *trapped, ack);
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
        s.state_writes += state_writes;
        s.records_out += counts.0;
        for (topic, n) in self.d.spec.output.topics().iter().zip(by_output) {
            if n > 0 {
                *s.records_out_by_topic.entry(topic.clone()).or_default() += n;
            }
        }
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
        s.log_dropped_bytes = self.d.module.log_dropped_bytes();
        if last_failure.is_some() {
            s.last_error = last_failure;
        }
        self.traps_seen = worker_traps;
        true
    }

    /// After a freeze (see [`super::freeze`]): waits until the hold is
    /// over; whether the batch's partition is still this node's then.
    fn wait_out_freeze(&self, key: &(String, i32), epoch: u64) -> bool {
        while super::freeze::holding() {
            if !self.shared.is_current(key, epoch) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shared.is_current(key, epoch)
    }

    /// Produces one output to the output topic it picks; returns that
    /// topic's index among the deployment's outputs.
    pub(super) fn send_output(
        &self,
        record: &RecordRef<'_>,
        input_ts: Option<i64>,
        ack: Box<Ack>,
    ) -> usize {
        let outputs = self.d.spec.output.topics();
        let mut picked = 0;
        // Made on the first header: an output with none (provenance "none",
        // an input without headers) costs librdkafka no allocation.
        let mut h: Option<OwnedHeaders> = None;
        let mut insert = |header: Header<'_, &[u8]>| {
            let headers = h
                .take()
                .unwrap_or_else(|| OwnedHeaders::new_with_capacity(record.header_count() + 4));
            h = Some(headers.insert(header));
        };
        for (k, v) in record.headers().map_while(Result::ok) {
            // runnel's own, written below: never the input's or the function's.
            if !k.starts_with(headers::PREFIX) {
                insert(Header { key: k, value: v });
            } else if k == crate::engine::OUTPUT_HEADER
                && let Some(i) = crate::engine::pick_output(outputs, v.unwrap_or_default())
            {
                // Checked by the engine: a record whose output picks none
                // failed as a whole.
                picked = i;
            }
        }
        match self.d.spec.provenance {
            Provenance::Headers => {
                insert(Header {
                    key: headers::DEPLOYMENT,
                    value: Some(self.d.spec.name.as_bytes()),
                });
                insert(Header {
                    key: headers::VERSION,
                    value: Some(self.version_header.as_bytes()),
                });
                insert(Header {
                    key: headers::MODULE,
                    value: Some(self.module_header.as_bytes()),
                });
                if let Some(model) = &self.d.model_digest {
                    insert(Header {
                        key: headers::MODEL,
                        value: Some(model.as_bytes()),
                    });
                }
            }
            Provenance::Compact => {
                insert(Header {
                    key: headers::PROVENANCE,
                    value: Some(self.compact_header.as_bytes()),
                });
            }
            Provenance::None => {}
        }
        let timestamp = record.timestamp_ms().or(input_ts);
        send(
            &self.producer,
            &self.shared,
            Outgoing {
                topic: outputs.get(picked).map_or("", String::as_str),
                partition: None,
                key: record.key(),
                value: record.value(),
                headers: h,
                timestamp,
            },
            ack,
        );
        picked
    }

    pub(super) fn send_dead_letter(
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
            // runnel's own, written below: never the input's.
            if !k.starts_with(headers::PREFIX) {
                h = h.insert(Header { key: k, value: v });
            }
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
        if let Some(model) = &self.d.model_digest {
            h = h.insert(Header {
                key: headers::MODEL,
                value: Some(model.as_bytes()),
            });
        }
        send(
            &self.producer,
            &self.shared,
            Outgoing {
                topic: &self.dead_letter,
                partition: None,
                key: input.key(),
                value: input.value(),
                headers: Some(h),
                timestamp: input.timestamp_ms(),
            },
            ack,
        );
    }

    /// Sends a record that cannot be given to the function (see
    /// [`Rejected`]) to the dead-letter topic, with its headers as they came.
    fn reject(&mut self, topic: &str, partition: i32, record: Rejected) {
        lock(&self.shared.tracker).add(topic, partition, record.offset, 1);
        let ack = Box::new(Ack {
            owner: self.shared.clone(),
            topic: Arc::from(topic),
            partition,
            offset: record.offset,
            sent: Sent::DeadLetter,
            latency: None,
        });
        tracing::warn!(
            deployment = self.d.spec.name,
            topic,
            partition,
            offset = record.offset,
            kind = record.kind,
            error = record.error,
            "a record cannot be run; sending it to the dead-letter topic"
        );
        // The record's headers as they came (a name may be any bytes), but
        // for runnel's own, written below.
        let mut h = record.headers;
        crate::kafka::headers::remove_prefixed(&mut h, headers::PREFIX.as_bytes());
        for (k, v) in dead_letter_headers(&ack, record.kind, &record.error) {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        for (k, v) in [
            (headers::DEPLOYMENT, self.d.spec.name.as_str()),
            (headers::VERSION, self.version_header.as_str()),
            (headers::MODULE, self.module_header.as_str()),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        send(
            &self.producer,
            &self.shared,
            Outgoing {
                topic: &self.dead_letter,
                partition: None,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                headers: Some(h),
                timestamp: record.timestamp,
            },
            ack,
        );
        let mut s = lock(&self.status);
        s.records_in += 1;
        s.dead_lettered += 1;
        s.last_error = Some(format!(
            "record {topic}/{partition}@{}: {}",
            record.offset, record.error
        ));
    }
}

/// `DEPLOYMENT/VERSION/sha256:MODULE[/sha256:MODEL]`: the value of
/// `runnel-provenance` (a deployment name has no `/`).
pub(super) fn compact_header(d: &Deployment) -> String {
    let mut value = format!("{}/{}/sha256:{}", d.spec.name, d.version, d.module.digest());
    if let Some(model) = &d.model_digest {
        value.push('/');
        value.push_str(model);
    }
    value
}
