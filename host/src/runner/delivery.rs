//! The delivery side: producing outputs and dead letters, the delivery
//! reports that tell the tracker an output was acknowledged, and what happens
//! to an output the broker did not take.
//!
//! # When a record cannot be produced
//!
//! librdkafka retries what can be retried (a leader moving, a broker
//! restarting) for `message.timeout.ms` before it reports a failure. What
//! reaches runnel is either *retriable* (the broker was gone for that long,
//! the queue timed out) or *permanent* (see [`permanent`]): too large for the
//! producer or the broker, an invalid timestamp, not authorised, a topic that
//! does not exist, a record the broker refuses. Then:
//!
//! - a retriable failure is sent again after a backoff that doubles from
//!   100 ms up to [`MAX_RETRY_BACKOFF`], never in a hot loop;
//! - an output that failed permanently goes to the dead-letter topic instead,
//!   with `runnel-error-kind` naming the reason (`too-large`,
//!   `invalid-timestamp`, `not-authorized`, `topic-missing`, `refused`), and
//!   when it was too large without its value and with
//!   `runnel-original-size`;
//! - a dead letter that failed permanently is sent once more cut to the bone
//!   (no value, no key over 256 bytes, the error cut to 512 bytes, only
//!   runnel's headers, no timestamp);
//! - if even that fails, the deployment fails (see
//!   [`super::DeploymentState::Failed`]): its record stays unacknowledged, so
//!   its offset and every later one of its partition stay uncommitted and
//!   nothing is lost.
//!
//! Each output counts once in the tracker whatever it becomes: the dead letter
//! that replaces it carries the same acknowledgement.
//!
//! # One producer per node
//!
//! The stateless deployments of a node (filters, maps, scorers) share one
//! producer, [`NodeProducer`]: one set of librdkafka threads and broker
//! connections for all of them, made when the first one starts. Nothing
//! couples their failures through it:
//!
//! - each deployment counts its own records in flight ([`Shared::sent`],
//!   [`Shared::reported`]) and is held to its own share of the queue
//!   ([`InFlightCap`]): one whose outputs cannot be delivered waits once it
//!   has its share in flight, while the others' records pass;
//! - a swap or a revoke waits for that deployment's records only
//!   ([`flush`]), never for the whole producer's;
//! - each record carries its deployment ([`Ack::owner`]): its delivery
//!   report, retries and dead letters are that deployment's.
//!
//! A processor keeps a producer of its own: its changelog writes and
//! outputs must land in the order they were made
//! (`max.in.flight.requests.per.connection=1`), and what it leaves in flight
//! when a run ends is dropped with its producer rather than landing after the
//! next owner's writes. A stateless deployment's records still in flight when
//! its run ends (after the stop's flush timed out) may still land: at-least-once
//! allows that duplicate, as it allows the replay of their inputs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::deployment::Shared;
use super::status::DeploymentStatus;
use super::{headers, lock};
use crate::kafka::headers::raw as raw_headers;
use crate::kafka::{InFlightCap, KafkaOptions};

/// How long a revoke or a swap waits for outstanding outputs.
pub(super) const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits for outstanding outputs: what is still in flight
/// then is read again by the next owner. Part of the node's stop bound (see
/// `docs/node.md`).
pub(super) const STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait before an output that failed for a retriable reason is
/// sent again.
pub(super) const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// The longest `runnel-error` of a dead letter cut to fit.
const CUT_ERROR: usize = 512;
/// The longest key a dead letter cut to fit, or one whose output was too
/// large, keeps.
const CUT_KEY: usize = 256;

/// What a produced record is, which decides what happens when the broker
/// does not take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// An output of the function (or a kept record).
    Output,
    /// A failed record, or an output that could not be produced.
    DeadLetter,
    /// A dead letter cut to fit after it failed itself: the last resort.
    CutDeadLetter,
    /// A processor's state write, to its store's changelog.
    Changelog,
}

/// Which input a produced record belongs to, carried through the producer.
pub(super) struct Ack {
    /// The deployment (its run) that sent it: the producer may be the node's.
    pub(super) owner: Arc<Shared>,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) sent: Sent,
    /// For an output: when its batch's first record was polled, and its
    /// input's timestamp (the latency histograms of the status).
    pub(super) latency: Option<(Instant, Option<i64>)>,
}

/// A record to produce, owned: one the broker did not take, kept to be sent
/// again or dead-lettered.
pub(super) struct Retry {
    pub(super) topic: String,
    /// Kept for a changelog write, which must land in its input's partition.
    pub(super) partition: Option<i32>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) headers: OwnedHeaders,
    pub(super) timestamp: Option<i64>,
    pub(super) ack: Box<Ack>,
    /// Why it was not taken the last time.
    pub(super) error: KafkaError,
    /// Times it was sent again after a retriable failure.
    pub(super) attempts: u32,
    /// Not sent again before this.
    pub(super) due: Instant,
}

/// The `runnel-error-kind` of a permanent production failure, or `None` if
/// sending the record again may work.
pub(super) fn permanent(e: &KafkaError) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    let (KafkaError::MessageProduction(code) | KafkaError::Global(code)) = e else {
        return None;
    };
    Some(match code {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => "too-large",
        C::InvalidTimestamp => "invalid-timestamp",
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => "not-authorized",
        C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition | C::InvalidTopic => {
            "topic-missing"
        }
        C::InvalidRecord
        | C::InvalidMessage
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation
        | C::InvalidArgument => "refused",
        _ => return None,
    })
}

/// The delivery reports of a producer, whoever's records it carries: each
/// record's [`Ack`] names its deployment.
pub(super) struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        let bytes = match result {
            Ok(m) | Err((_, m)) => record_bytes(m.key(), m.payload()),
        };
        // This runs on the producer's polling thread, called from C: a panic
        // must not unwind out of it, and must not pass unnoticed. An
        // acknowledgement (once per output: kept lean) logs nothing; a
        // failure may, so it is journalled as its deployment's.
        match result {
            Ok(_) => {
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    acknowledged(&ack);
                }));
                caught_panic(&ack.owner, caught);
                counted(&ack.owner, bytes);
            }
            Err((e, m)) => {
                let shared = ack.owner.clone();
                let _journal = crate::journal::enter(shared.journal.clone());
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    refused(&shared, e, m, ack);
                }));
                caught_panic(&shared, caught);
                counted(&shared, bytes);
            }
        }
    }
}

/// Counts a delivery report as handled: last, as a flush waits for this
/// (so the tracker already knows), and while the caller still holds the
/// deployment, which a flush that sees it may let go.
fn counted(shared: &Shared, bytes: u64) {
    shared.in_flight_bytes.fetch_sub(bytes, Ordering::SeqCst);
    shared.reported.fetch_add(1, Ordering::SeqCst);
}

/// Fails the deployment if its delivery callback panicked.
fn caught_panic(shared: &Shared, caught: std::thread::Result<()>) {
    if let Err(panic) = caught {
        let _journal = crate::journal::enter(shared.journal.clone());
        shared.fail(format!(
            "the delivery callback panicked: {}",
            super::panic_message(&*panic)
        ));
    }
}

/// An output (or a dead letter) acknowledged: its input's count in the
/// tracker, and for an output the latency histograms, with one clock
/// reading.
fn acknowledged(ack: &Ack) {
    let shared = &*ack.owner;
    super::fault::point(&shared.name, super::fault::Site::Delivery);
    lock(&shared.tracker).ack(&ack.topic, ack.partition, ack.offset);
    if let Some((polled, timestamp)) = ack.latency {
        let now = Instant::now();
        let age = timestamp.and_then(|ts| event_age(now, ts));
        let mut s = lock(&shared.status);
        s.output_seconds
            .observe(now.saturating_duration_since(polled).as_secs_f64());
        if let Some(age) = age {
            s.event_age_seconds.observe(age);
        }
    }
}

/// What a record counts for in its deployment's [`InFlightCap`].
fn record_bytes(key: Option<&[u8]>, value: Option<&[u8]>) -> u64 {
    (key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len)) as u64
}

/// A node's producer for the outputs and dead letters of its stateless
/// deployments (see "One producer per node" above), made when the first
/// one starts and dropped with the node.
#[derive(Default)]
pub(super) struct NodeProducer(Mutex<Option<Arc<ThreadedProducer<DeliveryContext>>>>);

impl NodeProducer {
    /// The node's producer, made now if it was not yet.
    pub(super) fn get(
        &self,
        kafka: &KafkaOptions,
    ) -> anyhow::Result<Arc<ThreadedProducer<DeliveryContext>>> {
        let mut p = lock(&self.0);
        if let Some(p) = &*p {
            return Ok(p.clone());
        }
        let made: Arc<ThreadedProducer<DeliveryContext>> = Arc::new(
            kafka
                .shared_producer()
                .create_with_context(DeliveryContext)
                .map_err(|e| anyhow::anyhow!("cannot create the node's producer: {e}"))?,
        );
        *p = Some(made.clone());
        Ok(made)
    }
}

/// A record the broker did not take: kept, with its [`Ack`], to be sent
/// again or dead-lettered ([`resend_failed`]).
fn refused(shared: &Shared, e: &KafkaError, m: &BorrowedMessage<'_>, ack: Box<Ack>) {
    super::fault::point(&shared.name, super::fault::Site::Delivery);
    // Never `m.headers().iter()`: it panics on a name that is not
    // UTF-8. `detach` copies them as they are.
    lock(&shared.retries).push(Retry {
        topic: m.topic().to_owned(),
        partition: (ack.sent == Sent::Changelog).then(|| m.partition()),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m.headers().map(|h| h.detach()).unwrap_or_default(),
        timestamp: m.timestamp().to_millis(),
        ack,
        error: e.clone(),
        attempts: 0,
        due: Instant::now(),
    });
}

/// Seconds from `timestamp_ms` to `now`, if it is not in the future.
fn event_age(now: Instant, timestamp_ms: i64) -> Option<f64> {
    let age_us = wall_clock_us(now)? - timestamp_ms.checked_mul(1000)?;
    (age_us >= 0).then(|| age_us as f64 / 1e6)
}

/// The wall clock at `now`, in µs since the epoch: read once a second per
/// thread and carried forward on the monotonic clock in between, so that a
/// delivery report reads one clock, not two. A step of the wall clock shows
/// within a second.
fn wall_clock_us(now: Instant) -> Option<i64> {
    use std::cell::Cell;
    thread_local! {
        static READ: Cell<Option<(Instant, i64)>> = const { Cell::new(None) };
    }
    READ.with(|read| {
        if let Some((at, us)) = read.get()
            && let Some(since) = now.checked_duration_since(at)
            && since < Duration::from_secs(1)
        {
            return Some(us + since.as_micros() as i64);
        }
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_micros();
        let us = i64::try_from(us).ok()?;
        read.set(Some((now, us)));
        Some(us)
    })
}

/// Waits until every record the deployment sent was delivered and its
/// delivery report handled, at most `timeout` ([`STOP_FLUSH_TIMEOUT`] once
/// the deployment stops): the deployment's records only, not every record
/// of a producer the node shares. rdkafka's own `flush` would wait for the
/// whole producer, in steps of 100 ms; this asks every millisecond. False
/// after `timeout`.
pub(super) fn flush(shared: &Shared, timeout: Duration) -> bool {
    let started = Instant::now();
    // Counted after the callback ran (librdkafka stops counting a record
    // once its report is taken off the queue, before that): the tracker
    // knows every acknowledgement when this returns.
    while shared.reported.load(Ordering::SeqCst) < shared.sent.load(Ordering::SeqCst) {
        let waited = started.elapsed();
        // A stop that comes during a long flush (a revoke's) shortens it.
        if waited > timeout || (waited > STOP_FLUSH_TIMEOUT && shared.ending.is_set()) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Says so when an output topic is missing: outputs wait in the producer
/// (librdkafka waits `topic.metadata.propagation.max.ms` for a topic to
/// appear) and then go to the dead-letter topic as `topic-missing`.
pub(super) fn check_topics(
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
            let message = format!(
                "output topic {topic:?} does not exist: create it (`runnel topic create`, or your cluster's tools)"
            );
            tracing::warn!(deployment = name, "{message}");
            lock(status).last_error = Some(message);
        }
    }
}

/// One record to produce, borrowed.
pub(super) struct Outgoing<'a> {
    pub(super) topic: &'a str,
    /// `None`: the partitioner chooses (outputs, dead letters); a changelog
    /// write goes to its input's partition.
    pub(super) partition: Option<i32>,
    pub(super) key: Option<&'a [u8]>,
    pub(super) value: Option<&'a [u8]>,
    /// `None`: no headers (librdkafka then allocates none).
    pub(super) headers: Option<OwnedHeaders>,
    pub(super) timestamp: Option<i64>,
}

/// Produces one record of `shared`'s deployment, waiting while the
/// deployment has its [`InFlightCap`] in flight or the producer's queue is
/// full (that is the backpressure: the worker, then the consumer, stop taking
/// records). A record the producer refuses at once joins the failed ones (see
/// the module documentation); a stop gives up the wait, leaving the record
/// unacknowledged, so that its input is read again.
pub(super) fn send(
    producer: &ThreadedProducer<DeliveryContext>,
    shared: &Shared,
    out: Outgoing<'_>,
    ack: Box<Ack>,
) {
    let bytes = record_bytes(out.key, out.value);
    if !wait_for_share(shared, bytes) {
        return;
    }
    let mut record: BaseRecord<'_, [u8], [u8], Box<Ack>> =
        BaseRecord::with_opaque_to(out.topic, ack);
    if let Some(h) = out.headers {
        record = record.headers(h);
    }
    if let Some(k) = out.key {
        record = record.key(k);
    }
    if let Some(v) = out.value {
        record = record.payload(v);
    }
    if let Some(ts) = out.timestamp {
        record = record.timestamp(ts);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    loop {
        // Counted before the send: its report may come before `send` returns.
        shared.sent.fetch_add(1, Ordering::SeqCst);
        shared.in_flight_bytes.fetch_add(bytes, Ordering::SeqCst);
        let refused = match producer.send(record) {
            Ok(()) => return,
            Err(refused) => refused,
        };
        shared.in_flight_bytes.fetch_sub(bytes, Ordering::SeqCst);
        shared.sent.fetch_sub(1, Ordering::SeqCst);
        match refused {
            (KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back) => {
                if shared.ending.is_set() {
                    tracing::debug!(
                        deployment = shared.name,
                        "stopping with the producer's queue full: an output is given up, its input will be read again"
                    );
                    return;
                }
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            (error, back) => {
                lock(&shared.retries).push(Retry {
                    topic: back.topic.to_owned(),
                    partition: back.partition,
                    key: back.key.map(<[u8]>::to_vec),
                    value: back.payload.map(<[u8]>::to_vec),
                    headers: back.headers.unwrap_or_default(),
                    timestamp: back.timestamp,
                    ack: back.delivery_opaque,
                    error,
                    attempts: 0,
                    due: Instant::now(),
                });
                return;
            }
        }
    }
}

/// Waits while `shared`'s deployment has its [`InFlightCap`] in flight (a
/// record larger than the whole cap goes once nothing else is in flight).
/// False if the deployment stops meanwhile: the record is then given up,
/// unacknowledged, and its input read again by the next owner.
fn wait_for_share(shared: &Shared, bytes: u64) -> bool {
    let InFlightCap {
        records,
        bytes: max_bytes,
    } = shared.in_flight_cap;
    let mut warned = false;
    loop {
        let sent = shared.sent.load(Ordering::SeqCst);
        let in_flight = sent.saturating_sub(shared.reported.load(Ordering::SeqCst));
        let in_flight_bytes = shared.in_flight_bytes.load(Ordering::SeqCst);
        if in_flight == 0 || (in_flight < records && in_flight_bytes + bytes <= max_bytes) {
            return true;
        }
        if shared.ending.is_set() {
            tracing::debug!(
                deployment = shared.name,
                "stopping with the deployment's outputs in flight at their cap: an output is given up, its input will be read again"
            );
            return false;
        }
        if !warned {
            warned = true;
            tracing::debug!(
                deployment = shared.name,
                in_flight,
                in_flight_bytes,
                "the deployment has its share of the producer in flight; waiting for deliveries"
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Handles the records the broker did not take whose time has come: sends
/// again, dead-letters, or fails the deployment (see the module
/// documentation). Called from the deployment's loop.
pub(super) fn resend_failed(shared: &Shared, producer: &ThreadedProducer<DeliveryContext>) {
    let due: Vec<Retry> = {
        let mut retries = lock(&shared.retries);
        if retries.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later) = std::mem::take(&mut *retries)
            .into_iter()
            .partition(|r| r.due <= now);
        *retries = later;
        due
    };
    for r in due {
        if shared.ending.is_set() {
            return; // unacknowledged, so read again by the next owner
        }
        match permanent(&r.error) {
            None => resend(shared, producer, r),
            Some(kind) => redirect(shared, producer, r, kind),
        }
    }
}

/// Sends a record again after a retriable failure; if the producer refuses it
/// at once it comes back with a longer backoff.
fn resend(shared: &Shared, producer: &ThreadedProducer<DeliveryContext>, r: Retry) {
    let attempts = r.attempts + 1;
    tracing::warn!(deployment = shared.name, topic = r.topic, error = %r.error, attempts,
        "a record was not delivered; sending it again");
    let before = lock(&shared.retries).len();
    send(
        producer,
        shared,
        Outgoing {
            topic: &r.topic,
            partition: r.partition,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: Some(r.headers),
            timestamp: r.timestamp,
        },
        r.ack,
    );
    // Refused again at once: back off before the next try.
    let mut retries = lock(&shared.retries);
    if retries.len() > before
        && let Some(back) = retries.last_mut()
    {
        back.attempts = attempts;
        back.due = Instant::now() + retry_backoff(attempts);
    }
}

/// 100 ms, doubling, up to [`MAX_RETRY_BACKOFF`].
pub(super) fn retry_backoff(attempts: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << attempts.min(16))
        .min(MAX_RETRY_BACKOFF)
}

/// Sends a record that failed permanently where it can still go.
fn redirect(
    shared: &Shared,
    producer: &ThreadedProducer<DeliveryContext>,
    mut r: Retry,
    kind: &'static str,
) {
    let reason = format!("{} refused the record: {}", r.topic, r.error);
    match r.ack.sent {
        Sent::Output => {
            tracing::warn!(deployment = shared.name, topic = r.topic, error = %r.error, kind,
                source_partition = r.ack.partition, source_offset = r.ack.offset,
                "an output cannot be produced; sending it to the dead-letter topic");
            let too_large = kind == "too-large";
            let mut h = r.headers;
            for (k, v) in dead_letter_headers(&r.ack, kind, &reason) {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut key = r.key;
            let mut value = r.value;
            if too_large {
                h = h.insert(Header {
                    key: headers::ORIGINAL_SIZE,
                    value: Some(value.as_ref().map_or(0, Vec::len).to_string().as_bytes()),
                });
                value = None;
                if let Some(k) = key.take_if(|k| k.len() > CUT_KEY) {
                    h = h.insert(Header {
                        key: headers::ORIGINAL_KEY_SIZE,
                        value: Some(k.len().to_string().as_bytes()),
                    });
                }
            }
            r.ack.sent = Sent::DeadLetter;
            {
                // Counted as an output when it was sent; it is a dead letter.
                let mut s = lock(&shared.status);
                s.records_out = s.records_out.saturating_sub(1);
                s.dead_lettered += 1;
            }
            send(
                producer,
                shared,
                Outgoing {
                    topic: &shared.dead_letter,
                    partition: None,
                    key: key.as_deref(),
                    value: value.as_deref(),
                    headers: Some(h),
                    // An invalid timestamp would fail the dead letter too.
                    timestamp: (kind != "invalid-timestamp")
                        .then_some(r.timestamp)
                        .flatten(),
                },
                r.ack,
            );
        }
        Sent::DeadLetter => {
            tracing::warn!(deployment = shared.name, topic = r.topic, error = %r.error, kind,
                source_partition = r.ack.partition, source_offset = r.ack.offset,
                "a dead letter cannot be produced; sending it again cut to fit");
            let (key, h) = cut_to_fit(r.key, &r.headers, r.value.as_ref().map(Vec::len), kind);
            r.ack.sent = Sent::CutDeadLetter;
            send(
                producer,
                shared,
                Outgoing {
                    topic: &r.topic,
                    partition: None,
                    key: key.as_deref(),
                    value: None,
                    headers: Some(h),
                    timestamp: None,
                },
                r.ack,
            );
        }
        Sent::Changelog => {
            shared.fail(format!(
                "the changelog topic {} refused a state write of record {}/{}@{} ({reason}); \
                 without it the state cannot be kept exactly, so the record's offset and every \
                 later one of that partition stay uncommitted",
                r.topic, r.ack.topic, r.ack.partition, r.ack.offset
            ));
        }
        Sent::CutDeadLetter => {
            shared.fail(format!(
                "the dead-letter topic cannot take the record {}/{}@{} ({reason}); its offset and every later one of that partition stay uncommitted",
                r.ack.topic, r.ack.partition, r.ack.offset
            ));
            // Dropped unacknowledged: the commit stops before its input, which
            // the run after the restart reads again.
        }
    }
}

/// The headers saying why and where from, for a dead letter of `ack`'s input.
pub(super) fn dead_letter_headers(
    ack: &Ack,
    kind: &'static str,
    reason: &str,
) -> [(&'static str, String); 5] {
    [
        (headers::ERROR, reason.to_owned()),
        (headers::ERROR_KIND, kind.to_owned()),
        (headers::SOURCE_TOPIC, ack.topic.to_string()),
        (headers::SOURCE_PARTITION, ack.partition.to_string()),
        (headers::SOURCE_OFFSET, ack.offset.to_string()),
    ]
}

/// A dead letter's last form: no value (its size in a header), no key over
/// [`CUT_KEY`] bytes, runnel's own headers only, the error cut to
/// [`CUT_ERROR`] bytes: a few hundred bytes in all, under librdkafka's
/// smallest `message.max.bytes` (1,000).
fn cut_to_fit(
    key: Option<Vec<u8>>,
    old: &OwnedHeaders,
    value_len: Option<usize>,
    kind: &'static str,
) -> (Option<Vec<u8>>, OwnedHeaders) {
    let mut h = OwnedHeaders::new();
    let mut dropped = 0usize;
    let mut original_size = value_len.map(|n| n.to_string());
    for (k, v) in raw_headers(old.as_borrowed()) {
        let Ok(name) = std::str::from_utf8(k) else {
            dropped += 1;
            continue;
        };
        if !name.starts_with("runnel-") {
            dropped += 1;
            continue;
        }
        match name {
            headers::ERROR => {
                let message = String::from_utf8_lossy(v.unwrap_or_default());
                let cut = cut_str(&message, CUT_ERROR);
                h = h.insert(Header {
                    key: name,
                    value: Some(cut.as_bytes()),
                });
            }
            // Said again below, with this failure's reason.
            headers::ERROR_KIND | headers::ORIGINAL_SIZE => {
                if name == headers::ORIGINAL_SIZE {
                    original_size = v.map(|v| String::from_utf8_lossy(v).into_owned());
                }
            }
            _ => {
                let v = v.unwrap_or_default();
                if v.len() <= CUT_KEY {
                    h = h.insert(Header {
                        key: name,
                        value: Some(v),
                    });
                } else {
                    dropped += 1;
                }
            }
        }
    }
    let kind = if kind == "too-large" {
        "dead-letter-too-large"
    } else {
        kind
    };
    h = h.insert(Header {
        key: headers::ERROR_KIND,
        value: Some(kind.as_bytes()),
    });
    if let Some(size) = original_size {
        h = h.insert(Header {
            key: headers::ORIGINAL_SIZE,
            value: Some(size.as_bytes()),
        });
    }
    if dropped > 0 {
        h = h.insert(Header {
            key: headers::HEADERS_DROPPED,
            value: Some(dropped.to_string().as_bytes()),
        });
    }
    let key = match key {
        Some(k) if k.len() > CUT_KEY => {
            h = h.insert(Header {
                key: headers::ORIGINAL_KEY_SIZE,
                value: Some(k.len().to_string().as_bytes()),
            });
            None
        }
        k => k,
    };
    (key, h)
}

/// `s` cut to at most `max` bytes, at a character boundary, marked when cut.
pub(super) fn cut_str(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_us() -> i64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        i64::try_from(d.as_micros()).unwrap()
    }

    #[test]
    fn the_wall_clock_carried_on_the_monotonic_one_keeps_time() {
        let before = system_us();
        let first = wall_clock_us(Instant::now()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Within the second: carried forward, not read.
        let second = wall_clock_us(Instant::now()).unwrap();
        let after = system_us();
        assert!(before <= first && first <= second && second <= after + 1000);
        assert!(second - first >= 20_000, "{first} then {second}");
        // An instant before the one it was read at reads the clock again.
        let earlier = Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        let then = wall_clock_us(earlier).unwrap();
        assert!(then >= before, "read again: now, not 5 s ago");
    }

    #[test]
    fn an_event_age_is_from_its_timestamp_to_now_and_never_negative() {
        let now = Instant::now();
        let now_ms = system_us() / 1000;
        let age = event_age(now, now_ms - 1500).unwrap();
        assert!((1.4..1.6).contains(&age), "{age}");
        assert_eq!(event_age(now, now_ms + 60_000), None, "in the future");
        assert_eq!(event_age(now, i64::MIN), None, "no sensible time");
    }

    #[test]
    fn permanent_failures_are_told_from_retriable_ones() {
        use RDKafkaErrorCode as C;
        let p = |c| permanent(&KafkaError::MessageProduction(c));
        assert_eq!(p(C::MessageSizeTooLarge), Some("too-large"));
        assert_eq!(p(C::InvalidTimestamp), Some("invalid-timestamp"));
        assert_eq!(p(C::TopicAuthorizationFailed), Some("not-authorized"));
        assert_eq!(p(C::UnknownTopic), Some("topic-missing"));
        assert_eq!(p(C::InvalidRecord), Some("refused"));
        for retriable in [
            C::MessageTimedOut,
            C::NotLeaderForPartition,
            C::BrokerNotAvailable,
            C::RequestTimedOut,
            C::NotEnoughReplicas,
        ] {
            assert_eq!(p(retriable), None, "{retriable:?}");
        }
    }

    #[test]
    fn retries_back_off_and_the_backoff_is_capped() {
        assert_eq!(retry_backoff(0), Duration::from_millis(100));
        assert_eq!(retry_backoff(3), Duration::from_millis(800));
        assert_eq!(retry_backoff(10), MAX_RETRY_BACKOFF);
        assert_eq!(retry_backoff(u32::MAX), MAX_RETRY_BACKOFF);
    }

    #[test]
    fn a_dead_letter_cut_to_fit_keeps_runnel_headers_and_sizes_only() {
        let big = "x".repeat(100_000);
        let old = OwnedHeaders::new()
            .insert(Header {
                key: "user",
                value: Some(&b"v"[..]),
            })
            .insert(Header {
                key: headers::ERROR,
                value: Some(big.as_bytes()),
            })
            .insert(Header {
                key: headers::SOURCE_OFFSET,
                value: Some(&b"7"[..]),
            });
        let (key, h) = cut_to_fit(Some(vec![1; 5000]), &old, Some(999_999), "too-large");
        assert_eq!(key, None);
        let got: Vec<(String, String)> = raw_headers(h.as_borrowed())
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        let get = |name: &str| got.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert!(get(headers::ERROR).is_some_and(|e| e.len() <= CUT_ERROR && e.ends_with("...")));
        assert_eq!(get(headers::SOURCE_OFFSET).as_deref(), Some("7"));
        assert_eq!(
            get(headers::ERROR_KIND).as_deref(),
            Some("dead-letter-too-large")
        );
        assert_eq!(get(headers::ORIGINAL_SIZE).as_deref(), Some("999999"));
        assert_eq!(get(headers::ORIGINAL_KEY_SIZE).as_deref(), Some("5000"));
        assert_eq!(get(headers::HEADERS_DROPPED).as_deref(), Some("1"));
        assert_eq!(get("user"), None);
    }

    #[test]
    fn cutting_a_string_respects_character_boundaries() {
        assert_eq!(cut_str("short", 10), "short");
        let cut = cut_str("ééééééé", 8);
        assert!(cut.len() <= 8 && cut.ends_with("..."), "{cut}");
    }
}
