//! The worker pool: runs deployments against a Kafka-protocol cluster.
//!
//! # Delivery semantics: at least once
//!
//! Each deployment is a consumer group, `runnel.<name>` (cooperative-sticky
//! assignment), read by a thread of its own. Records are batched per partition
//! (by count, or when the oldest has waited `linger_ms`) and handed to a pool
//! of workers (`workers`, default one per core), each with its own instance
//! of the function and a thread while it has work ([`queue`]): a partition
//! always goes to the same worker, so its records are run in order, and
//! partitions on different workers run in parallel. Wasm never runs on the
//! I/O runtime. Every output — or the record itself, to the dead-letter
//! topic, when it failed — is produced with a delivery callback, through a
//! producer the node's stateless deployments share ([`delivery`]). A worker's queue holds at most 8 MiB of batches: when
//! the function falls behind, the consumer pauses the partitions of that
//! worker (backpressure) and keeps polling, so memory stays bounded under
//! any backlog, the node stays in its group however long a batch takes, and
//! the other workers' partitions keep moving.
//!
//! An input offset is *stored* only when every record it produced has been
//! acknowledged by the broker (`enable.auto.offset.store=false`; see
//! [`tracker`]), and stored offsets are committed every second. So a crash
//! loses nothing acknowledged: records after the last commit are read again
//! and processed again — duplicates are possible, losses are not. When
//! partitions are revoked (a rebalance) or the node stops, records not yet
//! run are dropped (the next owner reads them), a batch a worker runs at
//! that moment finishes (or gives up its isolation, see below), the
//! deployment's records in flight are waited for and the stored offsets are
//! committed synchronously before the partitions go. Partitions *lost* (the session timed out) are
//! not committed: another consumer may own them already.
//!
//! # Failures
//!
//! A record the function rejects, or that makes it trap, goes to the
//! dead-letter topic with headers saying why (see [`headers`]); the stream goes
//! on. After a trap the batch is run again one record at a time to find the
//! culprits, so a batch whose every record traps at the deadline holds its
//! worker for `batch_size + 1` deadlines (the status lists it under
//! `isolating`); a revoke or a stop ends that isolation between two calls. A function that cannot even start (its `init` fails or traps) backs off
//! exponentially up to 30 s, holding its batch (so the consumer stops) and
//! saying so in its status; other deployments are not touched. A missing input topic is
//! reported and waited for.
//!
//! # Hot swap
//!
//! [`Node::swap`] replaces a deployment's module or model while records
//! flow. The new version is compiled and instantiated with its `init` first;
//! if that fails the running version is untouched. Then the deployment's
//! consumer thread stops handing out batches, waits for the batches the
//! workers hold, waits for its records in flight, commits the stored offsets
//! synchronously, and switches: every batch after that runs on the new
//! version. So each partition switches once, at a batch boundary, after the
//! previous batch's offsets are committed; no record is run by both versions
//! (barring a crash, which replays the uncommitted window as always).
//!
//! # Processors
//!
//! A processor (a function with keyed state, [`crate::state`]) reads one
//! input topic. Each worker keeps the state of its partitions (in memory,
//! or on disk under the node's `--state-dir`) and produces every state
//! write to its store's changelog topic, acknowledged for the input record
//! that caused it: an input offset is committed only once its outputs and
//! its changelog writes are all in. Before the first batch of a partition
//! it was given, the worker rebuilds the partition's state from the
//! changelog up to the committed offset ([`restore`]). `docs/state.md` has
//! the rules and the guarantee: state changes once per input, outputs at
//! least once.
//!
//! Owns consumers, producers and workers; knows nothing of how deployments
//! are declared (a file today, the registry later).

mod consumer;
mod delivery;
mod deployment;
mod exec;
pub mod fault;
pub mod freeze;
pub mod headers;
pub mod histogram;
pub mod query;
mod queue;
mod restore;
mod status;
pub mod tracker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::config::DeploymentSpec;
use crate::engine::{Engine, Limits, Module, World};
use crate::kafka::KafkaOptions;

pub use status::{
    DeploymentState, DeploymentStatus, Isolating, PartitionStatus, RestoreReport, RestoreSource,
    Restoring, SwapReport,
};

/// Makes a full worker queue pause every partition of its deployment, not
/// only the partitions whose batches wait for that worker (the default), in
/// this whole process. For measurement only: `cargo bench -p runnel-bench
/// --bench backpressure` compares the two with one slow partition among fast
/// ones, where pausing everything holds the fast partitions back too.
pub fn set_pause_every_partition(on: bool) {
    consumer::PAUSE_EVERY_PARTITION.store(on, Ordering::Relaxed);
}

/// Refuses what this node cannot run on Kafka: a processor reads exactly
/// one input topic (its state is kept per partition of it), and only a
/// processor declares stores, whose changelog topic names must fit Kafka's.
pub fn check_runs_on_kafka(
    world: World,
    name: &str,
    input: &[String],
    stores: &[String],
) -> Result<(), String> {
    crate::state::check_store_names(stores)?;
    crate::state::changelog::check_topic_names(name, stores)?;
    match world {
        World::Processor if input.len() != 1 => Err(format!(
            "a processor reads exactly one input topic (its state is kept per partition of \
             it), not {}",
            input.len()
        )),
        World::Processor => Ok(()),
        World::Filter | World::Map | World::Scorer if !stores.is_empty() => Err(format!(
            "stores are declared ({}), but the module is a {world}: only a processor keeps state",
            stores.join(", ")
        )),
        World::Filter | World::Map | World::Scorer => Ok(()),
    }
}

/// What one deployment needs to run: its spec, its loaded module and model.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub spec: DeploymentSpec,
    pub module: Arc<Module>,
    pub model: Option<Arc<[u8]>>,
    /// `sha256:<hex>` of the model, when there is one.
    pub model_digest: Option<String>,
    /// Which version of the deployment this is (the `runnel-version` header):
    /// 1 for a new one; a swap to a version not above the running one takes
    /// the next number.
    pub version: u64,
    /// A processor's state generation: which changelog topics it keeps its
    /// state in (`state::changelog::topic_at`); a swap that resets the
    /// state starts the next.
    pub state_generation: u64,
}

impl Deployment {
    /// Loads the module (and model) a spec names, validating it.
    pub fn load(engine: &Engine, spec: DeploymentSpec) -> anyhow::Result<Self> {
        let bytes = read(&spec.module, &spec.name, "module")?;
        let module = engine.load(&spec.name, &bytes).with_context(|| {
            format!(
                "deployment {:?}: {} was refused",
                spec.name,
                spec.module.display()
            )
        })?;
        let model = match &spec.model {
            Some(path) => Some(read(path, &spec.name, "model")?),
            None => None,
        };
        Ok(Self::new(spec, Arc::new(module), model))
    }

    /// A deployment of an already loaded module.
    pub fn new(spec: DeploymentSpec, module: Arc<Module>, model: Option<Vec<u8>>) -> Self {
        use sha2::Digest as _;
        let model_digest = model
            .as_ref()
            .map(|m| format!("sha256:{}", hex::encode(sha2::Sha256::digest(m))));
        Self {
            spec,
            module,
            model: model.map(Arc::from),
            model_digest,
            version: 1,
            state_generation: 0,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.spec.memory_mib << 20,
            call_timeout: Duration::from_millis(self.spec.timeout_ms),
            max_outputs_per_record: self.spec.max_outputs_per_record,
            max_output_bytes: self.spec.max_output_mib << 20,
        }
    }
}

fn read(path: &PathBuf, name: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "deployment {name:?}: cannot read its {what} {}",
            path.display()
        )
    })
}

struct Running {
    name: String,
    control: std::sync::mpsc::Sender<deployment::Control>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<DeploymentStatus>>,
    /// A processor's stores that queries may read.
    served: query::Served,
    thread: Option<JoinHandle<()>>,
}

/// A node: the deployments it runs, each with its consumer thread and worker
/// pool. Deployments come and go while it runs ([`Node::add`],
/// [`Node::remove`], [`Node::swap`]).
pub struct Node {
    /// How to reach the cluster, and the producer the stateless deployments
    /// share.
    clients: Arc<Clients>,
    /// Where processors keep their stores (`--state-dir`); in memory when
    /// `None`.
    state_dir: Option<PathBuf>,
    running: Mutex<Vec<Running>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("deployments", &self.names())
            .finish()
    }
}

/// A node's way to the cluster: its options, and the one producer its
/// stateless deployments share (see "One producer per node" in
/// [`delivery`]).
pub(super) struct Clients {
    kafka: KafkaOptions,
    producer: delivery::NodeProducer,
    /// Where the node's deployments' lines and events go, if anywhere: see
    /// [`crate::journal`]. Entered on every thread the node starts for them.
    journal: Option<Arc<crate::journal::Journal>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

impl Node {
    /// A node with no deployment yet.
    pub fn new(kafka: &KafkaOptions) -> Self {
        freeze::watch();
        Self {
            clients: Arc::new(Clients {
                kafka: kafka.clone(),
                producer: delivery::NodeProducer::default(),
                journal: None,
            }),
            state_dir: None,
            running: Mutex::default(),
        }
    }

    /// Journals the deployments' log lines and events (see
    /// [`crate::journal`]). Before the first deployment is added.
    pub fn with_journal(mut self, journal: Arc<crate::journal::Journal>) -> Self {
        match Arc::get_mut(&mut self.clients) {
            Some(clients) => clients.journal = Some(journal),
            None => tracing::warn!("the journal is set after deployments started; not journalled"),
        }
        self
    }

    /// Keeps processors' stores on disk under `dir` (one redb file per
    /// deployment, input topic and partition) instead of in memory.
    pub fn with_state_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// Starts every deployment. Returns once their threads are running; each
    /// connects, joins its group and reports its progress in its status.
    pub fn start(kafka: &KafkaOptions, deployments: Vec<Deployment>) -> anyhow::Result<Self> {
        let node = Self::new(kafka);
        for d in deployments {
            node.add(d)?;
        }
        Ok(node)
    }

    /// Starts one more deployment.
    pub fn add(&self, d: Deployment) -> anyhow::Result<()> {
        let mut running = lock(&self.running);
        let name = d.spec.name.clone();
        check_runs_on_kafka(d.module.world(), &name, &d.spec.input, &d.spec.stores)
            .map_err(|e| anyhow::anyhow!("deployment {name:?}: {e}"))?;
        if running.iter().any(|r| r.name == name) {
            anyhow::bail!("deployment {name:?} already runs on this node");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(DeploymentStatus::new(&d)));
        let (control, requests) = std::sync::mpsc::channel();
        let served = query::Served::new(
            d.spec.input.first().map_or("", String::as_str),
            &d.spec.stores,
        );
        let thread = std::thread::Builder::new()
            .name(format!("runnel-{name}"))
            .spawn({
                let (clients, stop, status) = (self.clients.clone(), stop.clone(), status.clone());
                let state_dir = self.state_dir.clone();
                let served = served.clone();
                move || {
                    let _journal = crate::journal::enter(clients.journal.clone());
                    deployment::run(d, clients, state_dir, stop, status, served, requests)
                }
            })
            .with_context(|| format!("cannot start a thread for deployment {name:?}"))?;
        running.push(Running {
            name,
            control,
            stop,
            status,
            served,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Stops deployment `name` cleanly (outputs flushed, offsets committed,
    /// group left) and forgets it. False if it did not run here.
    pub fn remove(&self, name: &str) -> bool {
        let r = {
            let mut running = lock(&self.running);
            match running.iter().position(|r| r.name == name) {
                Some(i) => running.remove(i),
                None => return false,
            }
        };
        stop_all(vec![r]);
        if let Some(journal) = &self.clients.journal {
            journal.forget(name);
        }
        true
    }

    /// The names of the deployments this node runs.
    pub fn names(&self) -> Vec<String> {
        lock(&self.running).iter().map(|r| r.name.clone()).collect()
    }

    /// A snapshot of every deployment's status.
    pub fn status(&self) -> Vec<DeploymentStatus> {
        lock(&self.running)
            .iter()
            .map(|r| lock(&r.status).clone())
            .collect()
    }

    /// The stores of deployment `name` that this node may answer queries
    /// from (see [`query`]); `None` if it does not run here.
    pub fn served(&self, name: &str) -> Option<query::Served> {
        lock(&self.running)
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.served.clone())
    }

    /// Replaces deployment `name`'s module and model by `next`'s, while
    /// records flow (see the module documentation). `next` must keep the
    /// deployment's name and topics. Returns once every partition runs the
    /// new version, or with an error — the function's own `init` message
    /// among them — and the old version still running.
    pub fn swap(&self, name: &str, next: Deployment) -> anyhow::Result<SwapReport> {
        let (control, current) = {
            let running = lock(&self.running);
            let Some(r) = running.iter().find(|r| r.name == name) else {
                anyhow::bail!("no deployment named {name:?} runs on this node");
            };
            (r.control.clone(), lock(&r.status).clone())
        };
        check_runs_on_kafka(
            next.module.world(),
            name,
            &next.spec.input,
            &next.spec.stores,
        )
        .map_err(|e| anyhow::anyhow!("deployment {name:?}: {e}"))?;
        if next.spec.name != name {
            anyhow::bail!(
                "a swap keeps the deployment's name: {name:?}, not {:?}",
                next.spec.name
            );
        }
        if current.state == DeploymentState::Stopped {
            anyhow::bail!("deployment {name:?} has stopped");
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        control
            .send(deployment::Control::Swap {
                next: Box::new(next),
                reply,
            })
            .map_err(|_| anyhow::anyhow!("deployment {name:?} has stopped"))?;
        answer
            .recv()
            .map_err(|_| anyhow::anyhow!("deployment {name:?} stopped during the swap"))?
    }

    /// Stops every deployment cleanly: outputs flushed, offsets committed,
    /// groups left.
    pub fn stop(self) {
        self.stop_all();
    }

    /// Stops every deployment, all at once, and forgets them; see
    /// [`Node::stop`]. A deployment whose outputs are wedged takes at most
    /// `STOP_FLUSH_TIMEOUT` (10 s) plus the time to leave its group.
    pub fn stop_all(&self) {
        let running = std::mem::take(&mut *lock(&self.running));
        stop_all(running);
    }
}

/// Signals every deployment to stop, then waits for each: they stop in
/// parallel.
fn stop_all(mut running: Vec<Running>) {
    for r in &running {
        r.stop.store(true, Ordering::SeqCst);
    }
    for r in &mut running {
        if let Some(t) = r.thread.take()
            && t.join().is_err()
        {
            tracing::error!(deployment = r.name, "the deployment's thread panicked");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let running = std::mem::take(&mut *lock(&self.running));
        stop_all(running);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processors_read_one_topic_and_only_processors_declare_stores() {
        let one = ["in".to_owned()];
        let two = ["a".to_owned(), "b".to_owned()];
        let stores = ["counts".to_owned()];
        assert_eq!(
            check_runs_on_kafka(World::Processor, "d", &one, &stores),
            Ok(())
        );
        assert_eq!(
            check_runs_on_kafka(World::Processor, "d", &one, &[]),
            Ok(())
        );
        let e = check_runs_on_kafka(World::Processor, "d", &two, &stores).unwrap_err();
        assert!(e.contains("exactly one input topic"), "{e}");
        let e =
            check_runs_on_kafka(World::Processor, "d", &one, &["Bad name".to_owned()]).unwrap_err();
        assert!(e.contains("store name"), "{e}");
        for w in [World::Filter, World::Map, World::Scorer] {
            assert_eq!(check_runs_on_kafka(w, "d", &two, &[]), Ok(()));
            let e = check_runs_on_kafka(w, "d", &one, &stores).unwrap_err();
            assert!(e.contains("only a processor keeps state"), "{e}");
        }
    }
}
