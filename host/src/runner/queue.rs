//! The worker side's queues: each worker thread takes batches from a queue
//! bounded by the bytes in it, which is how backpressure reaches the consumer.

use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::message::OwnedHeaders;
use runnel_abi::BatchBuilder;

use super::deployment::{Ending, Shared};
use super::lock;

/// The bytes of batches a worker may have waiting before the consumer
/// waits for it: backpressure. Several fetches' worth (librdkafka fetches up
/// to 1 MiB per partition), so that the consumer, which receives one
/// partition's records in runs, can hand a run to one worker while the others
/// still work on theirs.
pub(super) const QUEUE_BYTES: usize = 8 << 20;

/// A worker thread's queue, bounded by the bytes of the batches in it.
#[derive(Clone)]
pub(super) struct WorkerQueue {
    pub(super) jobs: Sender<Job>,
    pub(super) queued: Arc<Queued>,
    /// A sender waiting for room gives up when the run ends.
    pub(super) ending: Ending,
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
        self.jobs.send(job).map_err(|_| TrySend::Gone)
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
        self.jobs.send(job).is_ok()
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

    /// A stop is never held by a full queue: the waiting sender gives up, and
    /// a sync passes whatever is queued.
    #[test]
    fn a_sender_waiting_for_room_gives_up_when_the_deployment_stops() {
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = WorkerQueue {
            jobs: tx,
            queued: Arc::default(),
            ending: Ending::default(),
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
