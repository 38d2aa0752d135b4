//! A processor's changelog on Kafka: the topics, and the restore a worker
//! runs before the first batch of a partition it was given. The rules of
//! what a restore keeps are [`crate::state::changelog`]'s; this is the
//! reading and writing.
//!
//! # Local checkpoints
//!
//! A worker that gives a partition up cleanly (a revoke, or the node's
//! stop), having committed exactly the offset its store is current to,
//! closes the store with a [`Checkpoint`]: that offset, its owner epoch,
//! and per store the offset of its epoch marker and the changelog's end.
//! When the partition comes back to this node (the same process after a
//! rebalance, or a restarted one with the same `--state-dir`), the restore
//! takes the checkpoint (removing it, so that a crash from then on falls
//! back to the changelog) and keeps the local store, reading nothing,
//! when all of these hold:
//!
//! - the group's committed offset is still the checkpoint's: no other owner
//!   committed since;
//! - every changelog topic is the same and ends where it ended: no other
//!   owner wrote to it (each owner writes a marker before anything else);
//! - the record at the checkpoint's marker offset is this owner's marker:
//!   the topic was not deleted and made again.
//!
//! It then writes its new marker, and falls back to reading the changelog
//! if that marker did not land exactly at the old end. Otherwise the store
//! is what a full restore would have rebuilt: the state after every input
//! before the committed offset, and no write of one from it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::kafka::KafkaOptions;
use crate::state::changelog::{self, Counts, Restore};

/// How long a restore waits for the broker before it gives up and starts
/// again (the worker retries while the partition is still its own).
const STALL: Duration = Duration::from_secs(30);

/// The changelog topics of one processor deployment, one per store, in the
/// order the stores are declared.
pub(super) struct Changelog {
    pub(super) kafka: KafkaOptions,
    pub(super) deployment: String,
    /// (store, topic)
    pub(super) topics: Vec<(Arc<str>, String)>,
    /// A client kept for [`Changelog::ends`], made at its first use.
    watermarks: Mutex<Option<BaseConsumer>>,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changelog")
            .field("deployment", &self.deployment)
            .field("topics", &self.topics)
            .finish()
    }
}

/// One store's entries: (key, value).
pub(super) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// What a restore rebuilt.
pub(super) struct Restored {
    /// The epoch this owner writes with.
    pub(super) epoch: u64,
    /// Where this owner's marker landed in each store's changelog.
    pub(super) markers: Vec<i64>,
    /// Each store's entries, in declaration order; `None` when the local
    /// store is current (a [`Checkpoint`] held), and is kept as it is.
    pub(super) stores: Option<Vec<Entries>>,
    pub(super) counts: Counts,
    pub(super) write_backs: usize,
    pub(super) keys: u64,
}

/// What a closed local store is current to: see "Local checkpoints" above.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Checkpoint {
    /// The group's committed offset when the store was closed: the store
    /// holds the writes of every input before it, and of none from it.
    pub(super) committed: i64,
    /// The owner epoch the store's writes were made with.
    pub(super) epoch: u64,
    /// Per store, in declaration order.
    pub(super) logs: Vec<CheckpointLog>,
}

/// One changelog topic as a checkpoint saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct CheckpointLog {
    pub(super) topic: String,
    /// The offset of the owner's epoch marker.
    pub(super) marker: i64,
    /// The changelog partition's end (its high watermark).
    pub(super) end: i64,
}

impl Checkpoint {
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Where a restore is: records read so far.
pub(super) type Progress<'a> = &'a dyn Fn(u64);

impl Changelog {
    pub(super) fn new(
        kafka: &KafkaOptions,
        deployment: &str,
        stores: &[String],
        generation: u64,
    ) -> Self {
        Self {
            kafka: kafka.clone(),
            deployment: deployment.to_owned(),
            topics: stores
                .iter()
                .map(|s| {
                    (
                        Arc::from(s.as_str()),
                        changelog::topic_at(deployment, s, generation),
                    )
                })
                .collect(),
            watermarks: Mutex::default(),
        }
    }

    /// The topic of a store.
    pub(super) fn topic_of(&self, store: &str) -> Option<&str> {
        self.topics
            .iter()
            .find(|(s, _)| &**s == store)
            .map(|(_, t)| t.as_str())
    }

    /// Creates the changelog topics that do not exist, compacted, with as
    /// many partitions as `input` has; refuses existing ones with fewer.
    /// Waits (while `go_on`) for the input topic to exist. Returns how many
    /// partitions the input has (`None` when it gave up waiting).
    pub(super) fn ensure_topics(
        &self,
        input: &str,
        go_on: &dyn Fn() -> bool,
    ) -> anyhow::Result<Option<i32>> {
        let reader = self.reader()?;
        let partitions = |topic: &str| -> anyhow::Result<Option<usize>> {
            let md = reader
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .with_context(|| format!("cannot read the metadata of {topic}"))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
                .filter(|&n| n > 0))
        };
        let mut warned = false;
        let wanted = loop {
            if let Some(n) = partitions(input)? {
                break n;
            }
            if !go_on() {
                return Ok(None);
            }
            if !warned {
                tracing::warn!(
                    deployment = self.deployment,
                    input,
                    "the input topic does not exist (yet): its changelog topics wait for it"
                );
                warned = true;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        let mut missing = Vec::new();
        for (store, topic) in &self.topics {
            match partitions(topic)? {
                None => missing.push(topic.as_str()),
                Some(n) if n < wanted => anyhow::bail!(
                    "the changelog topic {topic} of store {store:?} has {n} partitions, fewer than \
                     the {wanted} of the input {input}: a store's partitions follow the input's. \
                     Delete it (its state is then lost) or give it {wanted} partitions"
                ),
                Some(_) => {}
            }
        }
        let wanted_i32 = i32::try_from(wanted).unwrap_or(i32::MAX);
        if missing.is_empty() {
            return Ok(Some(wanted_i32));
        }
        tracing::info!(deployment = self.deployment, topics = ?missing, partitions = wanted, "creating the changelog topics");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime to create the changelog topics")?;
        runtime.block_on(crate::kafka::create_topics(
            &self.kafka,
            &missing,
            wanted_i32,
            &[
                ("cleanup.policy", "compact"),
                ("min.compaction.lag.ms", changelog::MIN_COMPACTION_LAG_MS),
            ],
        ))?;
        Ok(Some(wanted_i32))
    }

    fn reader(&self) -> anyhow::Result<BaseConsumer> {
        self.kafka
            .consumer(&format!("runnel.restore.{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .context("cannot create the changelog's reader")
    }

    /// Rebuilds the state of `partition` for an owner that starts reading
    /// the input at `committed`: reads every store's changelog, writes this
    /// owner's epoch marker and the write-backs, and waits until the broker
    /// has them. `None` when `go_on` turns false (the partition was taken
    /// away, or the deployment stops).
    ///
    /// With a `local` checkpoint that still holds (see "Local checkpoints"
    /// above), reads nothing and keeps the local store instead.
    pub(super) fn restore(
        &self,
        partition: i32,
        committed: i64,
        local: Option<&Checkpoint>,
        go_on: &dyn Fn() -> bool,
        progress: Progress<'_>,
    ) -> anyhow::Result<Option<Restored>> {
        let reader = self.reader()?;
        if let Some(checkpoint) = local {
            match self.resume(&reader, partition, committed, checkpoint, go_on)? {
                Resumed::Yes(restored) => return Ok(Some(restored)),
                Resumed::Stopped => return Ok(None),
                Resumed::No(why) => tracing::info!(
                    deployment = self.deployment,
                    partition,
                    why,
                    "the local state's checkpoint does not hold: restoring from the changelog"
                ),
            }
        }
        let mut restores: Vec<Restore> = Vec::with_capacity(self.topics.len());
        let mut read_to = Vec::with_capacity(self.topics.len());
        let mut records = 0u64;
        // What is there now.
        for (_, topic) in &self.topics {
            let (low, high) = reader
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .with_context(|| format!("cannot read where {topic}/{partition} ends"))?;
            let mut restore = Restore::new(committed);
            if !read(
                &reader,
                topic,
                partition,
                low,
                high,
                &mut restore,
                go_on,
                &mut |n| {
                    records += n;
                    progress(records);
                },
            )? {
                return Ok(None);
            }
            read_to.push(high.max(low));
            restores.push(restore);
        }
        let epoch = restores
            .iter()
            .map(Restore::max_epoch)
            .max()
            .unwrap_or(0)
            .saturating_add(1);

        // This owner's marker, so that the next owner's epoch is above it.
        // Read up to it, so that the log before it is exactly what this
        // restore considered.
        let writer = Writer::new(&self.kafka)?;
        let epoch_s = epoch.to_string();
        let upto_s = committed.to_string();
        let Some(markers) = self.mark(&writer, partition, &epoch_s, go_on)? else {
            return Ok(None);
        };
        for (i, (_, topic)) in self.topics.iter().enumerate() {
            let marker = markers[i];
            if !read(
                &reader,
                topic,
                partition,
                read_to[i],
                marker,
                &mut restores[i],
                go_on,
                &mut |n| {
                    records += n;
                    progress(records);
                },
            )? {
                return Ok(None);
            }
        }

        let mut counts = Counts::default();
        let mut stores = Vec::with_capacity(restores.len());
        let mut sent = 0usize;
        let mut keys = 0u64;
        for (restore, (_, topic)) in restores.into_iter().zip(&self.topics) {
            let restored = restore.finish();
            for (key, value) in &restored.write_backs {
                writer.send(
                    topic,
                    partition,
                    &changelog::key(key),
                    value.as_deref(),
                    &epoch_s,
                    Some((changelog::UPTO, &upto_s)),
                )?;
                sent += 1;
            }
            add(&mut counts, restored.counts);
            keys += restored.entries.len() as u64;
            stores.push(restored.entries);
        }
        if sent > 0 && writer.wait(sent, go_on)?.is_none() {
            return Ok(None);
        }
        Ok(Some(Restored {
            epoch,
            markers,
            stores: Some(stores),
            counts,
            write_backs: sent,
            keys,
        }))
    }

    /// Writes this owner's epoch marker to every store's changelog
    /// partition and waits for them; where each landed, in declaration
    /// order. `None` when `go_on` turned false.
    fn mark(
        &self,
        writer: &Writer,
        partition: i32,
        epoch: &str,
        go_on: &dyn Fn() -> bool,
    ) -> anyhow::Result<Option<Vec<i64>>> {
        let ids: Vec<usize> = self
            .topics
            .iter()
            .map(|(_, topic)| {
                writer.send(
                    topic,
                    partition,
                    changelog::KEY_MARKER,
                    Some(b""),
                    epoch,
                    None,
                )
            })
            .collect::<anyhow::Result<_>>()?;
        let Some(marked) = writer.wait(ids.len(), go_on)? else {
            return Ok(None);
        };
        ids.iter()
            .map(|id| {
                marked
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, offset)| *offset)
                    .context("no delivery report for an epoch marker")
            })
            .collect::<anyhow::Result<_>>()
            .map(Some)
    }

    /// Where each store's changelog partition ends now (its high
    /// watermark), in declaration order.
    pub(super) fn ends(&self, partition: i32) -> anyhow::Result<Vec<i64>> {
        let mut cached = self
            .watermarks
            .lock()
            .map_err(|_| anyhow::anyhow!("a changelog reader panicked"))?;
        if cached.is_none() {
            *cached = Some(self.reader()?);
        }
        let reader = cached.as_ref().expect("set above");
        self.topics
            .iter()
            .map(|(_, topic)| {
                reader
                    .fetch_watermarks(topic, partition, Duration::from_secs(5))
                    .map(|(_, high)| high)
                    .with_context(|| format!("cannot read where {topic}/{partition} ends"))
            })
            .collect()
    }

    /// The fast path of [`Changelog::restore`]: keeps the local store if
    /// `checkpoint` holds.
    fn resume(
        &self,
        reader: &BaseConsumer,
        partition: i32,
        committed: i64,
        checkpoint: &Checkpoint,
        go_on: &dyn Fn() -> bool,
    ) -> anyhow::Result<Resumed> {
        if checkpoint.committed != committed {
            return Ok(Resumed::No(format!(
                "it is current to input offset {}, the group's committed offset is {committed}",
                checkpoint.committed
            )));
        }
        let topics: Vec<&str> = self.topics.iter().map(|(_, t)| t.as_str()).collect();
        let was: Vec<&str> = checkpoint.logs.iter().map(|l| l.topic.as_str()).collect();
        if topics != was {
            return Ok(Resumed::No(format!(
                "it was made for the changelogs {was:?}, the stores' are now {topics:?}"
            )));
        }
        let ends = self.ends(partition)?;
        for (log, end) in checkpoint.logs.iter().zip(&ends) {
            if log.end != *end {
                return Ok(Resumed::No(format!(
                    "{}/{partition} ended at {} and ends at {end} now",
                    log.topic, log.end
                )));
            }
            match record_at(reader, &log.topic, partition, log.marker, go_on)? {
                None => return Ok(Resumed::Stopped),
                Some(Some(epoch)) if epoch == checkpoint.epoch => {}
                Some(_) => {
                    return Ok(Resumed::No(format!(
                        "{}/{partition}@{} is not the marker of epoch {}",
                        log.topic, log.marker, checkpoint.epoch
                    )));
                }
            }
        }
        // This owner's marker, which must land at the old end: then
        // nothing came between.
        let epoch = checkpoint.epoch.saturating_add(1);
        let writer = Writer::new(&self.kafka)?;
        let Some(markers) = self.mark(&writer, partition, &epoch.to_string(), go_on)? else {
            return Ok(Resumed::Stopped);
        };
        for (at, log) in markers.iter().zip(&checkpoint.logs) {
            if *at != log.end {
                return Ok(Resumed::No(format!(
                    "a record came into {}/{partition} at {} before this owner's marker",
                    log.topic, log.end
                )));
            }
        }
        Ok(Resumed::Yes(Restored {
            epoch,
            markers,
            stores: None,
            counts: Counts::default(),
            write_backs: 0,
            keys: 0,
        }))
    }
}

/// Whether a restore could keep the local store.
enum Resumed {
    Yes(Restored),
    /// Why not.
    No(String),
    /// `go_on` turned false.
    Stopped,
}

/// The owner epoch of the record at `topic/partition@offset`, if it is a
/// marker: `Some(None)` when it is not (or is gone), `None` when `go_on`
/// turned false.
fn record_at(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    go_on: &dyn Fn() -> bool,
) -> anyhow::Result<Option<Option<u64>>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .context("assigning a changelog partition")?;
    reader
        .assign(&tpl)
        .with_context(|| format!("cannot read {topic}/{partition}"))?;
    let started = Instant::now();
    loop {
        if !go_on() {
            return Ok(None);
        }
        if started.elapsed() > STALL {
            anyhow::bail!("reading {topic}/{partition}@{offset} took over {STALL:?}");
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if m.offset() != offset || m.key() != Some(changelog::KEY_MARKER) {
                    return Ok(Some(None));
                }
                let mut tags = changelog::Tags::default();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        if let Some(header) = h.try_get(i) {
                            tags.take(header.key, header.value);
                        }
                    }
                }
                return Ok(Some(match changelog::decode(m.key(), m.payload(), tags) {
                    Ok(changelog::Entry::Marker { epoch }) => Some(epoch),
                    _ => None,
                }));
            }
            Some(Err(e)) => {
                tracing::debug!(topic, partition, error = %e, "reading a changelog's marker");
            }
            None => {}
        }
    }
}

fn add(total: &mut Counts, c: Counts) {
    total.records += c.records;
    total.applied += c.applied;
    total.uncommitted += c.uncommitted;
    total.late += c.late;
    total.stale += c.stale;
    total.foreign += c.foreign;
}

/// Feeds `topic/partition`'s records `from..to` to `restore`, in order.
/// False when `go_on` turned false.
#[allow(clippy::too_many_arguments)]
fn read(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    restore: &mut Restore,
    go_on: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<bool> {
    if from >= to {
        return Ok(true);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .context("assigning a changelog partition")?;
    reader
        .assign(&tpl)
        .with_context(|| format!("cannot read {topic}/{partition}"))?;
    let mut last_progress = Instant::now();
    let mut next = from;
    let mut since_report = 0u64;
    while next < to {
        if !go_on() {
            return Ok(false);
        }
        if last_progress.elapsed() > STALL {
            anyhow::bail!(
                "reading {topic}/{partition} stalled at offset {next} of {to} for {STALL:?}"
            );
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => {
                tracing::debug!(topic, partition, error = %e, "reading a changelog");
            }
            Some(Ok(m)) => {
                if m.offset() >= to {
                    break;
                }
                next = m.offset() + 1;
                last_progress = Instant::now();
                let mut tags = changelog::Tags::default();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let Some(header) = h.try_get(i) else { continue };
                        tags.take(header.key, header.value);
                    }
                }
                let entry = changelog::decode(m.key(), m.payload(), tags);
                if let Err(e) = &entry {
                    tracing::warn!(topic, partition, offset = m.offset(), error = %e, "skipping a record of a changelog");
                }
                restore.feed(entry);
                since_report += 1;
                if since_report >= 10_000 {
                    progress(since_report);
                    since_report = 0;
                }
            }
        }
    }
    progress(since_report);
    Ok(true)
}

/// Delivery reports of the restore's producer: (id, offset or error).
#[derive(Default)]
struct Reports(Mutex<Vec<(usize, Result<i64, String>)>>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<usize>) {
        let r = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        if let Ok(mut reports) = self.0.lock() {
            reports.push((*id, r));
        }
    }
}

/// A producer of epoch markers and write-backs that waits for each.
struct Writer {
    producer: BaseProducer<Reports>,
    next: std::cell::Cell<usize>,
}

impl Writer {
    fn new(kafka: &KafkaOptions) -> anyhow::Result<Self> {
        let producer = kafka
            .producer()
            .set("linger.ms", "0")
            // In order, so that a write-back lands after the marker.
            .set("max.in.flight.requests.per.connection", "1")
            .create_with_context(Reports::default())
            .context("cannot create the changelog's writer")?;
        Ok(Self {
            producer,
            next: std::cell::Cell::new(0),
        })
    }

    /// Sends one changelog record, with its epoch and maybe one more of
    /// runnel's headers; returns its id.
    fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        epoch: &str,
        tag: Option<(&str, &str)>,
    ) -> anyhow::Result<usize> {
        let id = self.next.get();
        self.next.set(id + 1);
        let mut headers = OwnedHeaders::new().insert(Header {
            key: changelog::EPOCH,
            value: Some(epoch),
        });
        if let Some((key, value)) = tag {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(id))
            .partition(partition)
            .key(key)
            .headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(id),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    return Err(anyhow::anyhow!("cannot write to {topic}/{partition}: {e}"));
                }
            }
        }
    }

    /// Waits for `n` delivery reports; the offsets by id. `None` when
    /// `go_on` turned false.
    fn wait(
        &self,
        n: usize,
        go_on: &dyn Fn() -> bool,
    ) -> anyhow::Result<Option<Vec<(usize, i64)>>> {
        let started = Instant::now();
        loop {
            self.producer.poll(Duration::from_millis(20));
            {
                let mut reports = self
                    .producer
                    .context()
                    .0
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a delivery report panicked"))?;
                if let Some((_, Err(e))) = reports.iter().find(|(_, r)| r.is_err()) {
                    anyhow::bail!("the broker did not take a changelog record: {e}");
                }
                if reports.len() >= n {
                    return Ok(Some(
                        std::mem::take(&mut *reports)
                            .into_iter()
                            .filter_map(|(id, r)| r.ok().map(|o| (id, o)))
                            .collect(),
                    ));
                }
            }
            if !go_on() {
                return Ok(None);
            }
            if started.elapsed() > STALL {
                anyhow::bail!(
                    "the broker did not acknowledge the changelog's writes within {STALL:?}"
                );
            }
        }
    }
}
