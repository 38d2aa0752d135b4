//! What a deployment reports about itself: its state, counters, partitions
//! and swaps, for status, metrics and readiness.

use serde::Serialize;

use super::Deployment;

/// What a deployment is doing: one state machine, the same in status,
/// metrics and readiness.
///
/// ```text
///             +-------------------- stop (any state) --------------------+
///             v                                                          |
///  start -> starting --instance made--> running --init fails--> backing_off
///             ^  |                        |   ^                   |
///             |  |                        |   +--instance made----+
///             |  +--------+    +----------+
///             |           v    v
///             +-backoff-- failed      (a thread panicked, or the dead-letter
///                                      topic refused a record)
/// ```
///
/// - `starting`: its clients and threads are made; no instance yet.
/// - `running`: an instance of the function started and runs batches.
/// - `backing_off`: the function cannot start (its `init` fails or traps);
///   the batch is held, so the consumer stops, and the start is tried again
///   after `retry_in_ms` (100 ms, doubling, up to 30 s). A swap may end it.
/// - `failed`: a fault that is not one record's. The run ended, committing
///   only what was acknowledged; after `retry_in_ms` (1 s, doubling, up to
///   30 s; back to 1 s after a run of a minute) it is `starting` again, from
///   the committed offsets, on the version that ran last.
/// - `stopped`: the node stopped it or it was removed; final.
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
    /// The deployment failed; it starts again after `retry_in_ms`.
    Failed {
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
    /// Records written to each output topic (they add up to `records_out`).
    pub records_out_by_topic: std::collections::BTreeMap<String, u64>,
    pub filtered: u64,
    pub dead_lettered: u64,
    pub traps: u64,
    /// Times the deployment failed (see [`DeploymentState::Failed`]).
    pub failures: u64,
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
    /// Seconds from the poll of an output's input (of its batch's first
    /// record, so the linger is in it) to the output's acknowledgement by
    /// the broker.
    pub output_seconds: super::histogram::Histogram,
    /// Seconds from an output's input record's timestamp to the output's
    /// acknowledgement: end to end if producers' clocks agree with this
    /// node's; meaningless for a replay of old records. Records without a
    /// timestamp, or stamped in the future, are left out.
    pub event_age_seconds: super::histogram::Histogram,
    /// Linear memory of the worker instances, in bytes, last seen.
    pub memory_bytes: u64,
    /// Records (outputs, dead letters, state writes) handed to the producer
    /// and not yet acknowledged or failed: what a swap or a revoke waits for.
    pub in_flight: u64,
    /// Bytes of the function's stdout and stderr dropped by the log caps
    /// (per call and per second), by the version running now.
    pub log_dropped_bytes: u64,
    /// Batches being run one record at a time after a trap, to find the
    /// records that make the function trap: each record may take up to the
    /// deadline, so a batch may take `batch_size + 1` deadlines.
    pub isolating: Vec<Isolating>,
    /// A processor's state writes made on this node (each also written to
    /// its store's changelog).
    pub state_writes: u64,
    /// A processor's partitions whose state is being rebuilt from the
    /// changelog now: their records wait.
    pub restoring: Vec<Restoring>,
    /// State restores finished on this node.
    pub restores: u64,
    /// Of those, the ones that kept a local store its checkpoint held for.
    pub restores_from_checkpoint: u64,
    /// How the last one went.
    pub last_restore: Option<RestoreReport>,
}

/// A partition whose state is being restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restoring {
    pub topic: String,
    pub partition: i32,
    /// Changelog records read so far.
    pub records_read: u64,
    /// When the restore started, in ms since the Unix epoch.
    pub since_ms: u64,
}

/// How a partition's state restore went.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub topic: String,
    pub partition: i32,
    pub source: RestoreSource,
    /// The input offset the owner started at: writes of inputs from there
    /// on were skipped (those inputs run again).
    pub committed: i64,
    /// The owner epoch this node writes the partition's changelog with.
    pub epoch: u64,
    /// Keys restored, over all stores.
    pub keys: u64,
    /// Values written back to the changelog (see `docs/state.md`).
    pub write_backs: u64,
    pub counts: crate::state::changelog::Counts,
    pub ms: f64,
}

/// Where a restore took a partition's state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreSource {
    /// Read from the changelog.
    Changelog,
    /// The local store, kept: its checkpoint held.
    Checkpoint,
}

/// Now, in ms since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A batch being isolated: see [`DeploymentStatus::isolating`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Isolating {
    pub topic: String,
    pub partition: i32,
    /// Records run alone so far.
    pub run: usize,
    /// Records in the batch.
    pub records: usize,
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
        Self::named(
            &d.spec.name,
            d.version,
            d.module.digest(),
            d.model_digest.clone(),
        )
    }

    /// A status of a deployment that has not started yet.
    pub fn named(name: &str, version: u64, module: &str, model: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            version,
            module: module.to_owned(),
            model,
            state: DeploymentState::Starting,
            records_in: 0,
            records_out: 0,
            records_out_by_topic: Default::default(),
            filtered: 0,
            dead_lettered: 0,
            traps: 0,
            failures: 0,
            last_error: None,
            partitions: Vec::new(),
            last_swap: None,
            swaps: 0,
            restarts: 0,
            batch_seconds: super::histogram::Histogram::default(),
            call_seconds: super::histogram::Histogram::default(),
            output_seconds: super::histogram::Histogram::default(),
            event_age_seconds: super::histogram::Histogram::default(),
            memory_bytes: 0,
            log_dropped_bytes: 0,
            in_flight: 0,
            isolating: Vec::new(),
            state_writes: 0,
            restoring: Vec::new(),
            restores: 0,
            restores_from_checkpoint: 0,
            last_restore: None,
        }
    }
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
