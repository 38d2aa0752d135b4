//! The worker side's queues: each worker takes batches from a queue bounded
//! by the bytes in it, which is how backpressure reaches the consumer.
//!
//! # A worker has a thread only while it has work
//!
//! A worker (its queue, its [`Exec`] with the function's instance and a
//! processor's state) gets a thread when a job comes, and gives the thread
//! back after [`IDLE_WORKER`] without one ([`Slot`]): a deployment that
//! receives no record has no worker thread at all, and a node holds many
//! quiet deployments with few threads. The worker keeps everything else
//! while parked; its next job starts a thread again (tens of microseconds).
//!
//! The workers are not a pool shared by the node's deployments: a worker
//! blocks — on a function that backs off after its `init` failed, on a
//! partition whose state cannot be restored yet, on outputs held after a
//! freeze, on its deployment's share of the producer — and a shared pool
//! would let one deployment's blocked batches hold the threads every other
//! deployment needs.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::message::OwnedHeaders;
use runnel_abi::BatchBuilder;

use super::deployment::{Ending, Shared};
use super::exec::Exec;
use super::lock;

/// How long a worker with nothing to do keeps its thread.
pub(super) const IDLE_WORKER: Duration = Duration::from_secs(10);

/// The bytes of batches a worker may have waiting before the consumer
/// waits for it: backpressure. Several fetches' worth (librdkafka fetches up
/// to 1 MiB per partition), so that the consumer, which receives one
/// partition's records in runs, can hand a run to one worker while the others
/// still work on theirs.
pub(super) const QUEUE_BYTES: usize = 8 << 20;

/// A worker's queue, bounded by the bytes of the batches in it.
#[derive(Clone)]
pub(super) struct WorkerQueue {
    pub(super) jobs: Sender<Job>,
    pub(super) queued: Arc<Queued>,
    /// A sender waiting for room gives up when the run ends.
    pub(super) ending: Ending,
    /// The worker, woken by each job sent. `None`: a thread of its own
    /// serves the queue (tests).
    pub(super) slot: Option<Arc<dyn Wake>>,
}

/// A worker that a job wakes: see [`Slot`].
pub(super) trait Wake: Send + Sync {
    /// Gives the worker a thread if it has none; if none can be started
    /// (the process is out of them), its deployment fails and starts again
    /// after its backoff.
    fn wake(self: Arc<Self>);
}

impl<W: Work> Wake for Slot<W> {
    fn wake(self: Arc<Self>) {
        if let Err(e) = self.start()
            && let Some(shared) = self.shared.upgrade()
        {
            shared.fail(format!("cannot start a worker thread: {e}"));
        }
    }
}

/// What a worker does with a job: [`Exec`], or a stand-in in tests.
pub(super) trait Work: Send + 'static {
    /// Runs `job`, and tells `queued` its bytes are done.
    fn take(&mut self, job: Job, queued: &Queued);
}

impl Work for Exec {
    fn take(&mut self, job: Job, queued: &Queued) {
        Exec::take(self, job, queued);
    }
}

/// A worker between its jobs: parked (no thread) or served by a thread.
pub(super) struct Slot<W: Work = Exec> {
    state: Mutex<SlotState<W>>,
    thread_name: String,
    idle: Duration,
    /// To fail the deployment if no thread can be started.
    shared: std::sync::Weak<Shared>,
}

enum SlotState<W: Work> {
    /// No thread: the worker waits here for its next job.
    Parked(Box<Parked<W>>),
    /// A thread serves the queue; it parks the worker again when idle.
    Running(Option<JoinHandle<()>>),
    /// The queue's senders are gone; the worker ended.
    Gone,
}

/// What a parked worker keeps: its queue's receiving end and its
/// function's instance, state and everything else.
pub(super) struct Parked<W: Work = Exec> {
    pub(super) work: W,
    pub(super) jobs: Receiver<Job>,
    pub(super) queued: Arc<Queued>,
}

impl<W: Work> Slot<W> {
    /// A parked worker of `shared`'s deployment, named `thread_name`
    /// whenever a thread runs it.
    pub(super) fn new(
        parked: Parked<W>,
        thread_name: String,
        idle: Duration,
        shared: std::sync::Weak<Shared>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            state: Mutex::new(SlotState::Parked(Box::new(parked))),
            thread_name,
            idle,
        })
    }

    /// Gives the worker a thread if it has none. Sent jobs wait in the
    /// queue, so one sent just before a thread parks is seen by it (see
    /// [`Slot::serve`]) or starts it here.
    fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let mut state = lock(&self.state);
        if !matches!(*state, SlotState::Parked(_)) {
            return Ok(());
        }
        let SlotState::Parked(parked) = std::mem::replace(&mut *state, SlotState::Running(None))
        else {
            unreachable!("matched above");
        };
        let slot = self.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Box<Parked<W>>>(1);
        let journal = crate::journal::current();
        let spawned = std::thread::Builder::new()
            .name(self.thread_name.clone())
            .spawn(move || {
                let _journal = crate::journal::enter(journal);
                if let Ok(parked) = rx.recv() {
                    slot.serve(parked);
                }
            });
        match spawned {
            Ok(handle) => {
                let _ = tx.send(parked);
                *state = SlotState::Running(Some(handle));
                Ok(())
            }
            Err(e) => {
                *state = SlotState::Parked(parked);
                Err(e)
            }
        }
    }

    /// A thread's life: jobs until none comes for [`Slot::idle`] (the worker
    /// parks) or the senders are gone (it ends).
    fn serve(&self, mut parked: Box<Parked<W>>) {
        loop {
            let job = match parked.jobs.recv_timeout(self.idle) {
                Ok(job) => job,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // Under the lock, so that a sender either sees the
                    // worker parked and wakes it, or queued its job first
                    // and this sees it.
                    let mut state = lock(&self.state);
                    match parked.jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => {
                            // The handle goes: nothing joins a parked thread.
                            *state = SlotState::Parked(parked);
                            return;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            };
            let Parked { work, queued, .. } = &mut *parked;
            work.take(job, queued);
        }
        *lock(&self.state) = SlotState::Gone;
        // The worker (its instance and state) ends on its thread.
        drop(parked);
    }

    /// Waits for the worker to end, once its queue's senders are gone: joins
    /// its thread, or drops it here if it was parked.
    pub(super) fn join(&self) {
        let state = std::mem::replace(&mut *lock(&self.state), SlotState::Gone);
        match state {
            SlotState::Running(Some(handle)) => {
                let _ = handle.join();
            }
            SlotState::Running(None) | SlotState::Gone => {}
            SlotState::Parked(parked) => drop(parked),
        }
    }

    /// Whether a thread serves the worker now.
    #[cfg(test)]
    fn is_running(&self) -> bool {
        matches!(*lock(&self.state), SlotState::Running(_))
    }
}

/// The bytes waiting in a worker's queue, and a signal when some are done.
/// The worker holds only this, so that dropping the senders ends it.
#[derive(Default)]
pub(super) struct Queued {
    pub(super) bytes: Mutex<usize>,
    pub(super) room: Condvar,
}

impl Queued {
    /// The worker's side: `bytes` of a job it took are done.
    pub(super) fn done(&self, bytes: usize) {
        let mut q = lock(&self.bytes);
        *q = q.saturating_sub(bytes);
        self.room.notify_all();
    }
}

impl WorkerQueue {
    /// Queues `job`, first waiting while the worker has [`QUEUE_BYTES`] or
    /// more waiting (one batch is always let through, however large; a sync
    /// never waits). False if the worker is gone, or the deployment stops
    /// while this waits: the job is then dropped, and its records, never
    /// run, are read again by the next owner.
    /// Queues `job` if there is room (see [`WorkerQueue::send`]), without
    /// waiting: the consumer keeps polling, and pauses the partition
    /// instead, so that a slow worker never costs it its group membership.
    pub(super) fn try_send(&self, job: Job) -> Result<(), TrySend> {
        let bytes = job.bytes();
        {
            let mut q = lock(&self.queued.bytes);
            if bytes > 0 && *q > 0 && *q + bytes > QUEUE_BYTES {
                return Err(TrySend::Full(job));
            }
            *q += bytes;
        }
        self.jobs.send(job).map_err(|_| TrySend::Gone)?;
        self.wake();
        Ok(())
    }

    /// Gives the worker a thread for the job just queued.
    fn wake(&self) {
        if let Some(slot) = &self.slot {
            slot.clone().wake();
        }
    }

    pub(super) fn send(&self, job: Job) -> bool {
        let bytes = job.bytes();
        {
            let mut q = lock(&self.queued.bytes);
            while bytes > 0 && *q > 0 && *q + bytes > QUEUE_BYTES {
                if self.ending.is_set() {
                    return false;
                }
                q = self
                    .queued
                    .room
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            *q += bytes;
        }
        let sent = self.jobs.send(job).is_ok();
        self.wake();
        sent
    }
}

/// Why [`WorkerQueue::try_send`] did not queue a job.
pub(super) enum TrySend {
    /// The worker's queue is full: the job is given back.
    Full(Job),
    /// The worker thread is gone.
    Gone,
}

/// Work for a worker thread.
pub(super) enum Job {
    /// Run a batch of one partition. `epoch`: the partition's assignment
    /// when the batch was made; a batch of an older one (the partition was
    /// revoked since) is not run. See [`super::deployment::Owned`].
    Batch {
        topic: String,
        partition: i32,
        epoch: u64,
        batch: BatchBuilder,
        /// When its first record was polled.
        polled: Instant,
    },
    /// Dead-letter a record that cannot be given to the function. It goes
    /// through the partition's worker, after the batch before it, so that
    /// offsets reach the tracker in order.
    Reject {
        topic: String,
        partition: i32,
        epoch: u64,
        record: Box<Rejected>,
    },
    /// Restore a processor's partition now, for an owner that starts at
    /// input offset `committed`, before any of its records come: so that
    /// an idle partition is restored too (and can answer queries).
    Restore {
        topic: String,
        partition: i32,
        epoch: u64,
        committed: i64,
    },
    /// The partition was given up: close its state's store, with a local
    /// checkpoint if the store is current to exactly the offset the group
    /// has committed (see [`super::restore::Checkpoint`]). Never waits for
    /// room.
    Checkpoint {
        topic: String,
        partition: i32,
        given_up: GivenUp,
    },
    /// Answer once every job sent before this one is done.
    Sync(SyncSender<()>),
}

/// How a partition was given up, as far as its committed offset goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GivenUp {
    /// Its input was committed at this offset.
    Committed(i64),
    /// Nothing was run since it was assigned, so nothing was committed:
    /// the group's offset is the one its state was restored to.
    Untouched,
    /// Its commit failed, or it was lost: the committed offset is unknown.
    Unsure,
}

/// A consumed record that cannot be given to the function (a header name
/// that is not UTF-8), owned, with its headers as they came.
pub(super) struct Rejected {
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) timestamp: Option<i64>,
    pub(super) headers: OwnedHeaders,
    /// `runnel-error-kind`.
    pub(super) kind: &'static str,
    /// `runnel-error`.
    pub(super) error: String,
}

impl Job {
    /// What the job counts for in its queue's bound.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Job::Batch { batch, .. } => batch.data().len(),
            Job::Reject { record, .. } => {
                record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len)
            }
            Job::Restore { .. } | Job::Checkpoint { .. } | Job::Sync(_) => 0,
        }
    }
}

/// Waits until every worker has finished what it was given.
pub(super) fn sync_workers(shared: &Shared) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn batch_of(bytes: usize) -> Job {
        Job::Batch {
            topic: "t".into(),
            partition: 0,
            epoch: 0,
            batch: BatchBuilder::of_values([vec![0u8; bytes].as_slice()]),
            polled: Instant::now(),
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
            ending: Ending::default(),
            slot: None,
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

    /// A stand-in worker: counts its batches, and the threads that ran them.
    struct Counter {
        batches: Arc<Mutex<Vec<(usize, std::thread::ThreadId)>>>,
    }

    impl Work for Counter {
        fn take(&mut self, job: Job, queued: &Queued) {
            let bytes = job.bytes();
            if let Job::Sync(done) = job {
                let _ = done.send(());
            } else {
                lock(&self.batches).push((bytes, std::thread::current().id()));
            }
            queued.done(bytes);
        }
    }

    fn lazy_worker(idle: Duration) -> (WorkerQueue, Arc<Slot<Counter>>, Counter) {
        let (tx, rx) = std::sync::mpsc::channel();
        let counter = Counter {
            batches: Arc::default(),
        };
        let queued: Arc<Queued> = Arc::default();
        let slot = Slot::new(
            Parked {
                work: Counter {
                    batches: counter.batches.clone(),
                },
                jobs: rx,
                queued: queued.clone(),
            },
            "runnel-test-worker".into(),
            idle,
            std::sync::Weak::new(),
        );
        let queue = WorkerQueue {
            jobs: tx,
            queued,
            ending: Ending::default(),
            slot: Some(slot.clone()),
        };
        (queue, slot, counter)
    }

    /// A worker has no thread until a job comes, gives its thread back when
    /// idle, and the next job starts one again: every job runs, in order.
    #[test]
    fn a_worker_has_a_thread_only_while_it_has_work() {
        let (queue, slot, counter) = lazy_worker(Duration::from_millis(50));
        assert!(!slot.is_running(), "no job yet, no thread");
        assert!(queue.send(batch_of(1)));
        assert!(queue.send(batch_of(2)));
        sync(&queue);
        assert!(slot.is_running());
        let deadline = Instant::now() + Duration::from_secs(10);
        while slot.is_running() {
            assert!(Instant::now() < deadline, "the idle worker kept its thread");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(queue.send(batch_of(3)));
        sync(&queue);
        let ran = lock(&counter.batches).clone();
        let sizes: Vec<usize> = ran.iter().map(|(b, _)| *b).collect();
        assert_eq!(sizes.len(), 3);
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "in order: {sizes:?}");
        assert_ne!(ran[0].1, ran[2].1, "a new thread after the worker parked");
        drop(queue);
        slot.join();
        assert!(!slot.is_running());
    }

    /// Jobs sent while the worker parks are never stranded: with a worker
    /// that parks after 1 ms, every one of many jobs sent at odd moments
    /// runs.
    #[test]
    fn no_job_is_stranded_while_a_worker_parks() {
        let (queue, slot, counter) = lazy_worker(Duration::from_millis(1));
        for i in 0..2_000u64 {
            assert!(queue.send(batch_of(1)));
            // Spread the sends around the moment the worker parks.
            if i % 3 == 0 {
                std::thread::sleep(Duration::from_micros(900 + (i * 37) % 300));
            }
        }
        sync(&queue);
        assert_eq!(lock(&counter.batches).len(), 2_000);
        drop(queue);
        slot.join();
    }

    fn sync(queue: &WorkerQueue) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        assert!(queue.send(Job::Sync(done)));
        wait.recv_timeout(Duration::from_secs(10))
            .expect("the worker answered the sync");
    }

    /// A stop is never held by a full queue: the waiting sender gives up, and
    /// a sync passes whatever is queued.
    #[test]
    fn a_sender_waiting_for_room_gives_up_when_the_deployment_stops() {
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = WorkerQueue {
            jobs: tx,
            queued: Arc::default(),
            ending: Ending::default(),
            slot: None,
        };
        assert!(queue.send(batch_of(QUEUE_BYTES)));
        let (done, _wait) = std::sync::mpsc::sync_channel(1);
        assert!(queue.send(Job::Sync(done)), "a sync never waits for room");
        let sender = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.send(batch_of(10)))
        };
        std::thread::sleep(Duration::from_millis(200));
        queue.ending.stop.store(true, Ordering::SeqCst);
        assert!(
            !sender.join().expect("the sender finished"),
            "the batch is dropped, not queued"
        );
        assert_eq!(rx.try_iter().count(), 2, "the first batch and the sync");
    }
}
