//! A node's journal: its deployments' function log lines and events (swaps,
//! traps, back-offs, dead letters, rebalances), written to the registry's
//! `<prefix>.logs` topic so that any node can show any deployment's lines,
//! merged from every node that ran it (`runnel logs`, `GET
//! /v1/deployments/{name}/logs`, the console).
//!
//! The lines are the node's own `tracing` events that name a deployment (a
//! `deployment` or `function` field, at info or above, from runnel's own
//! targets), taken by [`layer`] once the host's log filter has been passed
//! by the rate limits on guest output ([`crate::engine::guest_log`]). A
//! line belongs to the node whose journal the emitting thread has entered
//! ([`enter`]): the node enters it on every thread it starts for its
//! deployments (their loops, workers, the delivery callbacks and the
//! reconciler), so that two nodes in one process (tests, the demo) each
//! write their own lines. Events on other threads (the API's handlers) are
//! not journalled.
//!
//! What is written is bounded: a line is cut at [`MAX_MESSAGE`] bytes, and a
//! deployment writes at most [`LINES_PER_SECOND`] lines a second on average,
//! in bursts of [`LINE_BURST`]; what is over is counted and said in the next
//! line that is written. The topic is bounded by its retention
//! ([`RETENTION_MS`], [`RETENTION_BYTES`] per partition), and keyed by
//! deployment; each deployment's lines go to one partition (a hash of its
//! name), so that a reader of one deployment reads one partition, from a
//! time on.
//!
//! Any client with write access may have written any bytes to the topic: a
//! reader skips what is not a line (see [`read`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

use crate::kafka::KafkaOptions;

/// The longest message kept; the rest is cut, and the cut said.
pub const MAX_MESSAGE: usize = 4096;
/// The lines a deployment may write per second on one node, on average.
pub const LINES_PER_SECOND: f64 = 100.0;
/// The lines a deployment may write at once after a quiet spell.
pub const LINE_BURST: f64 = 500.0;
/// How long the logs topic keeps lines (a day).
pub const RETENTION_MS: u64 = 24 * 3600 * 1000;
/// How much each partition of the logs topic keeps (256 MiB).
pub const RETENTION_BYTES: u64 = 256 << 20;
/// The logs topic's partitions, when runnel creates it.
pub const PARTITIONS: i32 = 8;
/// The most lines one read returns.
pub const MAX_LINES: usize = 10_000;

/// A line of the journal as written to the logs topic (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Milliseconds since the Unix epoch, on the node that wrote it.
    pub at_ms: u64,
    /// The node that wrote it.
    pub node: String,
    pub deployment: String,
    /// `log`: the function's own output; `event`: the host's.
    pub kind: Kind,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// For a function's line: `stdout` or `stderr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Log,
    Event,
}

/// Where a node's lines go: the logs topic (through the registry's
/// producer), or, in tests, anything else.
pub trait Sink: Send + Sync {
    /// Writes one line of `deployment`; fire and forget.
    fn write(&self, deployment: &str, line: &[u8]);
}

/// A node's journal: its name, where its lines go, and each deployment's
/// rate limit.
pub struct Journal {
    node: String,
    sink: Arc<dyn Sink>,
    budgets: Mutex<HashMap<String, Budget>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("node", &self.node).finish()
    }
}

#[derive(Debug)]
struct Budget {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl Journal {
    pub fn new(node: impl Into<String>, sink: Arc<dyn Sink>) -> Arc<Self> {
        Arc::new(Self {
            node: node.into(),
            sink,
            budgets: Mutex::new(HashMap::new()),
        })
    }

    /// Writes a line of `deployment`, if its rate allows; a line after some
    /// were dropped says how many.
    pub fn push(
        &self,
        deployment: &str,
        kind: Kind,
        level: &Level,
        stream: Option<&str>,
        message: String,
    ) {
        let dropped = {
            let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let b = budgets.entry(deployment.to_owned()).or_insert(Budget {
                tokens: LINE_BURST,
                refilled: now,
                dropped: 0,
            });
            let earned = now.duration_since(b.refilled).as_secs_f64() * LINES_PER_SECOND;
            b.tokens = (b.tokens + earned).min(LINE_BURST);
            b.refilled = now;
            if b.tokens < 1.0 {
                b.dropped += 1;
                return;
            }
            b.tokens -= 1.0;
            std::mem::take(&mut b.dropped)
        };
        let mut message = cut(message);
        if dropped > 0 {
            message = format!(
                "[{dropped} earlier line(s) not journalled: over {LINES_PER_SECOND} lines/s] {message}"
            );
        }
        let line = Line {
            at_ms: crate::registry::now_ms(),
            node: self.node.clone(),
            deployment: deployment.to_owned(),
            kind,
            level: level.as_str().to_ascii_lowercase(),
            stream: stream.map(str::to_owned),
            message,
        };
        if let Ok(bytes) = serde_json::to_vec(&line) {
            self.sink.write(deployment, &bytes);
        }
    }

    /// Forgets a deployment's rate limit (it no longer runs here).
    pub fn forget(&self, deployment: &str) {
        self.budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(deployment);
    }
}

fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let more = message.len() - end;
        message.truncate(end);
        message.push_str(&format!(" [{more} more bytes cut]"));
    }
    message
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Journal>>> = const { RefCell::new(None) };
}

/// The journal this thread writes to, if any.
pub fn current() -> Option<Arc<Journal>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Makes this thread write its deployments' lines to `journal` until the
/// guard is dropped (the journal before is restored then).
pub fn enter(journal: Option<Arc<Journal>>) -> Entered {
    let before = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), journal));
    Entered { before }
}

/// See [`enter`].
#[derive(Debug)]
#[must_use = "the journal is left when this is dropped"]
pub struct Entered {
    before: Option<Arc<Journal>>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let before = self.before.take();
        CURRENT.with(|c| *c.borrow_mut() = before);
    }
}

/// The `tracing` layer that journals the events naming a deployment. Add it
/// to the process's subscriber (`runnel serve` and `runnel dev` do); it
/// takes runnel's own events at info and above whatever the log filter of
/// the other layers says, and does nothing on a thread that has entered no
/// journal.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    JournalLayer.with_filter(tracing_subscriber::filter::filter_fn(|m| {
        *m.level() <= Level::INFO && m.target().starts_with("runnel")
    }))
}

struct JournalLayer;

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(journal) = current() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(deployment) = fields.deployment else {
            return;
        };
        let guest = event.metadata().target() == "runnel::guest";
        let mut message = fields.message;
        for (k, v) in fields.rest {
            if guest && k == "stream" {
                continue;
            }
            message.push_str(&format!(" {k}={v}"));
        }
        let (kind, stream) = if guest {
            (Kind::Log, fields.stream.as_deref())
        } else {
            (Kind::Event, None)
        };
        journal.push(&deployment, kind, event.metadata().level(), stream, message);
    }
}

#[derive(Default)]
struct Fields {
    deployment: Option<String>,
    stream: Option<String>,
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "deployment" | "function" => self.deployment = Some(value.to_owned()),
            "stream" => {
                self.stream = Some(value.to_owned());
                self.rest.push((field.name(), value.to_owned()));
            }
            "message" => self.message = value.to_owned(),
            name => self.rest.push((name, value.to_owned())),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "deployment" | "function" => self.deployment = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            name => self.rest.push((name, format!("{value:?}"))),
        }
    }
}

/// The partition of the logs topic that holds `deployment`'s lines, of
/// `partitions`: FNV-1a of its name, so that every node and every reader
/// agrees without asking.
pub fn partition_of(deployment: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in deployment.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1) as u32) as i32
}

/// Where a read of the journal starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The first line at or after this time (ms since the epoch).
    Time(u64),
    /// After a cursor a read returned (`next`).
    After(i64),
}

/// What a read found.
#[derive(Debug, Clone, Serialize)]
pub struct Read {
    pub lines: Vec<Line>,
    /// Where to read on from (`after=`) for what comes next.
    pub next: i64,
    /// Records of the partition that were not lines (written by another
    /// client), skipped.
    pub skipped: u64,
}

/// Reads `deployment`'s lines from the logs topic `topic`, from `from` up
/// to what the topic holds now, in time order; at most `limit` (the last
/// ones, when more are there). Blocking: up to `timeout`.
pub fn read(
    kafka: &KafkaOptions,
    topic: &str,
    deployment: &str,
    from: From,
    limit: usize,
    timeout: Duration,
) -> anyhow::Result<Read> {
    let limit = limit.clamp(1, MAX_LINES);
    let consumer: BaseConsumer = kafka
        .consumer(&format!("runnel.logs.{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a reader of the logs topic")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of the logs topic {topic}"))?;
    let partitions = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32);
    if partitions == 0 {
        anyhow::bail!("the logs topic {topic} does not exist (yet): no node has written to it");
    }
    let partition = partition_of(deployment, partitions);
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .with_context(|| format!("cannot read the end of the logs topic {topic}"))?;
    let start = match from {
        From::After(cursor) => cursor.max(low),
        From::Time(at_ms) => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(at_ms as i64))?;
            let found = consumer
                .offsets_for_times(tpl, timeout)
                .context("cannot find the logs' offset for that time")?;
            match found.find_partition(topic, partition).map(|p| p.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => high,
            }
        }
    };
    let mut out = Read {
        lines: Vec::new(),
        next: start.max(low),
        skipped: 0,
    };
    if start >= high {
        out.next = high;
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut lines: VecDeque<Line> = VecDeque::new();
    let until = Instant::now() + timeout;
    while out.next < high && Instant::now() < until {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.context("reading the logs topic")?;
        out.next = m.offset() + 1;
        if m.key() != Some(deployment.as_bytes()) {
            continue;
        }
        match m
            .payload()
            .and_then(|p| serde_json::from_slice::<Line>(p).ok())
        {
            Some(mut line) if line.deployment == deployment => {
                line.message = cut(line.message);
                line.node.truncate(line.node.floor_char_boundary(200));
                if lines.len() == limit {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
            _ => out.skipped += 1,
        }
    }
    let mut lines: Vec<Line> = lines.into();
    // In write order per node; nodes' clocks interleave them.
    lines.sort_by_key(|l| l.at_ms);
    if let From::Time(at_ms) = from {
        lines.retain(|l| l.at_ms >= at_ms);
    }
    out.lines = lines;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Line)>>);

    impl Sink for Collect {
        fn write(&self, deployment: &str, line: &[u8]) {
            let line: Line = serde_json::from_slice(line).expect("a line");
            self.0.lock().unwrap().push((deployment.to_owned(), line));
        }
    }

    #[test]
    fn events_naming_a_deployment_are_journalled_on_threads_that_entered_a_journal() {
        let sink = Arc::new(Collect::default());
        let journal = Journal::new("n1", sink.clone());
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(deployment = "d", "not entered: not journalled");
            let _in = enter(Some(journal.clone()));
            tracing::warn!(deployment = "d", error = "boom", "the function trapped");
            tracing::info!(target: "runnel::guest", function = "d", stream = "stderr", "hello");
            tracing::info!("no deployment named: not journalled");
            tracing::debug!(deployment = "d", "below info: not journalled");
        });
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "d");
        assert_eq!(got[0].1.kind, Kind::Event);
        assert_eq!(got[0].1.level, "warn");
        assert_eq!(got[0].1.message, "the function trapped error=boom");
        assert_eq!(got[0].1.node, "n1");
        assert_eq!(got[1].1.kind, Kind::Log);
        assert_eq!(got[1].1.stream.as_deref(), Some("stderr"));
        assert_eq!(got[1].1.message, "hello");
        assert!(current().is_none(), "left when the guard went");
    }

    #[test]
    fn a_deployment_that_floods_is_cut_to_its_rate_and_says_how_much_was_dropped() {
        let sink = Arc::new(Collect::default());
        let journal = Journal::new("n1", sink.clone());
        for i in 0..2_000 {
            journal.push("loud", Kind::Event, &Level::WARN, None, format!("line {i}"));
        }
        journal.push("quiet", Kind::Event, &Level::INFO, None, "one".into());
        let got = sink.0.lock().unwrap().clone();
        let loud = got.iter().filter(|(d, _)| d == "loud").count();
        assert!(
            (LINE_BURST as usize..LINE_BURST as usize + 20).contains(&loud),
            "{loud}"
        );
        assert!(
            got.iter().any(|(d, _)| d == "quiet"),
            "another deployment is not held"
        );
        std::thread::sleep(Duration::from_millis(50));
        journal.push("loud", Kind::Event, &Level::WARN, None, "after".into());
        let last = sink.0.lock().unwrap().last().cloned().expect("a line");
        assert!(
            last.1.message.contains("earlier line(s) not journalled")
                && last.1.message.ends_with("after"),
            "{}",
            last.1.message
        );
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = cut(long);
        assert!(cut.len() < MAX_MESSAGE + 40, "{}", cut.len());
        assert!(cut.ends_with("more bytes cut]"));
    }

    #[test]
    fn a_deployment_always_maps_to_the_same_partition() {
        assert_eq!(partition_of("d", 8), partition_of("d", 8));
        assert!((0..8).contains(&partition_of("orders-enricher", 8)));
        assert_eq!(partition_of("x", 0), 0);
        assert_eq!(partition_of("x", 1), 0);
    }
}
