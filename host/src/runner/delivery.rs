//! The delivery side: producing outputs and dead letters, the delivery
//! reports that tell the tracker an output was acknowledged, resending what
//! failed, and waiting for what is in flight.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::deployment::Shared;
use super::lock;
use super::status::DeploymentStatus;

/// How long a revoke or a stop waits for outstanding outputs.
pub(super) const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Which input an output belongs to, carried through the producer.
pub(super) struct Ack {
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

pub(super) struct Retry {
    pub(super) topic: String,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) headers: OwnedHeaders,
    pub(super) timestamp: Option<i64>,
    pub(super) ack: Box<Ack>,
}

pub(super) struct DeliveryContext {
    pub(super) shared: Arc<Shared>,
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
    pub(super) fn report(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
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

/// Waits until every output was delivered and its delivery report handled.
/// rdkafka's own `flush` polls for events in steps of 100 ms while the
/// threaded producer's thread takes them, so it often waits 100 ms for
/// nothing; this asks every millisecond. False after `timeout`.
pub(super) fn flush(producer: &ThreadedProducer<DeliveryContext>, timeout: Duration) -> bool {
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

/// Says so when an output topic is missing: outputs wait in the producer (and
/// their inputs stay uncommitted) until it exists, so nothing is lost, but
/// nothing moves either.
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
            let message =
                format!("output topic {topic:?} does not exist: outputs wait until it is created");
            tracing::warn!(deployment = name, "{message}");
            lock(status).last_error = Some(message);
        }
    }
}

/// Produces one record, waiting while the producer's queue is full (that is
/// the backpressure: the worker, then the consumer, stop taking records).
#[allow(clippy::too_many_arguments)]
pub(super) fn send(
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
pub(super) fn resend_failed(shared: &Shared, producer: &ThreadedProducer<DeliveryContext>) {
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
