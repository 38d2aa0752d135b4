//! Makes a node run what the registry says: starts new deployments, swaps
//! those whose version changed, stops paused and deleted ones, and rolls back
//! a version that starts crash-looping right after a swap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::DeploymentSpec;
use crate::engine::{Engine, Module};
use crate::registry::{DeploymentRecord, Registry, Version, now_ms};
use crate::runner::{Deployment, DeploymentState, Node};

/// How long after a swap a crash loop rolls the deployment back.
pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(60);
/// Traps after a swap, with no output at all, that make a crash loop.
pub const CRASH_LOOP_TRAPS: u64 = 10;

/// What this node last did about a deployment, for the status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Applied {
    /// The registry version running here, if any.
    pub version: Option<u64>,
    /// Why the registry's version does not run here, if it does not.
    pub error: Option<String>,
    /// Automatic rollbacks this node made, newest last.
    pub rollbacks: Vec<String>,
}

/// The reconciler's memory, shared with the API for the status.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub applied: Mutex<HashMap<String, Applied>>,
}

impl Reconciled {
    pub fn get(&self, name: &str) -> Applied {
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

/// What a swap keeps: inputs, output, dead-letter topic, batch size,
/// linger, workers, a processor's state generation. A change of any of them
/// restarts the deployment instead.
type Topics = (
    Vec<String>,
    crate::config::Outputs,
    Option<String>,
    usize,
    u64,
    Option<usize>,
    u64,
);

/// What runs here: the registry version and the topics it was started with.
struct Running {
    /// The whole version, not only its number: two nodes that change a
    /// deployment at once can both write version N+1, and the one written
    /// last must replace the other here too.
    applied: Version,
    topics: Topics,
    /// When it was swapped in, from which version, and the node's trap and
    /// output counts then.
    swapped_at: Option<Swapped>,
}

#[derive(Debug, Clone, Copy)]
struct Swapped {
    at: Instant,
    from: u64,
    traps: u64,
    records_out: u64,
}

fn topics_of(r: &DeploymentRecord) -> Topics {
    (
        r.input.clone(),
        r.output.clone(),
        r.dead_letter.clone(),
        r.batch_size,
        r.linger_ms,
        r.workers,
        r.state_generation,
    )
}

/// The node-side [`Deployment`] of a registry version.
pub fn build(
    engine: &Engine,
    modules: &mut HashMap<String, Arc<Module>>,
    registry: &Registry,
    record: &DeploymentRecord,
    version: &Version,
) -> anyhow::Result<Deployment> {
    let module = match modules.get(&version.module) {
        Some(m) => m.clone(),
        None => {
            let Some((_, bytes)) = registry.artifact(&version.module) else {
                anyhow::bail!("module sha256:{} is not in the registry", version.module);
            };
            let m = Arc::new(engine.load(&record.name, &bytes)?);
            modules.insert(version.module.clone(), m.clone());
            m
        }
    };
    // The module is shared by digest; its logs and errors must name this deployment.
    let module = Arc::new(module.with_name(&record.name));
    let model = match &version.model {
        Some(digest) => match registry.artifact(digest) {
            Some((_, bytes)) => Some(bytes.to_vec()),
            None => anyhow::bail!("model sha256:{digest} is not in the registry"),
        },
        None => None,
    };
    let spec = DeploymentSpec {
        name: record.name.clone(),
        module: format!("sha256:{}", version.module).into(),
        model: version.model.as_ref().map(|m| format!("sha256:{m}").into()),
        input: record.input.clone(),
        output: record.output.clone(),
        dead_letter: record.dead_letter.clone(),
        config: version.config.clone(),
        memory_mib: version.memory_mib,
        timeout_ms: version.timeout_ms,
        max_outputs_per_record: version.max_outputs_per_record,
        max_output_mib: version.max_output_mib,
        batch_size: record.batch_size,
        linger_ms: record.linger_ms,
        workers: record
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        stores: record.stores.clone(),
        provenance: version.provenance,
    };
    let mut d = Deployment::new(spec, module, model);
    d.version = version.version;
    d.state_generation = record.state_generation;
    Ok(d)
}

/// Runs until `stop`: every change of the registry (and every second) makes
/// the node match it. Deployments named in `fixed` (from a config file) are
/// left alone.
pub fn run(
    registry: &Registry,
    node: &Node,
    engine: &Engine,
    reconciled: &Reconciled,
    fixed: &[String],
    stop: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut modules: HashMap<String, Arc<Module>> = HashMap::new();
    let mut generation = 0;
    while !stop.load(Ordering::SeqCst) {
        generation = registry.wait_change(generation, Duration::from_secs(1));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // A panic here is a bug of runnel's: say so, and try again at the
        // next change (or in a second), rather than stop following the
        // registry for good.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let desired: HashMap<String, DeploymentRecord> = registry
                .deployments()
                .into_iter()
                .filter(|r| !fixed.contains(&r.name))
                .map(|r| (r.name.clone(), r))
                .collect();
            // Deleted or paused: stop.
            let gone: Vec<String> = running
                .keys()
                .filter(|n| desired.get(*n).is_none_or(|r| r.paused))
                .cloned()
                .collect();
            for name in gone {
                tracing::info!(
                    deployment = name,
                    "stopping: deleted or paused in the registry"
                );
                node.remove(&name);
                running.remove(&name);
                let mut applied = reconciled
                    .applied
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if desired.contains_key(&name) {
                    applied.entry(name).or_default().version = None;
                } else {
                    applied.remove(&name);
                }
            }
            for (name, record) in &desired {
                if record.paused {
                    continue;
                }
                let Some(version) = record.current_version() else {
                    continue;
                };
                // Unchanged: the same version (in full) with the same topics. A
                // deployment deleted and made again under the same name, or two
                // racing writes of one number, differ in content.
                let running_now = running.get(name);
                if running_now
                    .is_some_and(|r| r.applied == *version && r.topics == topics_of(record))
                {
                    continue;
                }
                let current = running_now.map(|r| (r.applied.version, r.topics.clone()));
                let result = build(engine, &mut modules, registry, record, version).and_then(|d| {
                    match &current {
                        // A hot swap runs the next number; a version that is
                        // not above the running one (a racing write of the
                        // same number, see `Running::applied`) restarts
                        // instead, so that every node runs, and its outputs
                        // name, the registry's number.
                        Some((running, topics))
                            if *topics == topics_of(record) && version.version > *running =>
                        {
                            node.swap(name, d).map(|r| {
                                tracing::info!(
                                    deployment = name,
                                    version = r.version,
                                    paused_ms = r.paused_ms,
                                    "swapped"
                                );
                                true
                            })
                        }
                        Some(_) => {
                            node.remove(name);
                            node.add(d).map(|()| false)
                        }
                        None => node.add(d).map(|()| false),
                    }
                });
                let mut applied = reconciled
                    .applied
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let entry = applied.entry(name.clone()).or_default();
                match result {
                    Ok(swapped) => {
                        let previous = current.as_ref().map(|(v, _)| *v);
                        let counts = node
                            .status()
                            .into_iter()
                            .find(|s| s.name == *name)
                            .map_or((0, 0), |s| (s.traps, s.records_out));
                        running.insert(
                            name.clone(),
                            Running {
                                applied: version.clone(),
                                topics: topics_of(record),
                                swapped_at: swapped.then(|| Swapped {
                                    at: Instant::now(),
                                    from: previous.unwrap_or(0),
                                    traps: counts.0,
                                    records_out: counts.1,
                                }),
                            },
                        );
                        entry.version = Some(version.version);
                        entry.error = None;
                    }
                    Err(e) => {
                        let message = format!("version {} cannot run here: {e:#}", version.version);
                        tracing::error!(deployment = name, "{message}");
                        entry.error = Some(message);
                    }
                }
            }
            rollback_crash_loops(registry, node, reconciled, &mut running, runtime);
        }));
        if let Err(panic) = pass {
            tracing::error!(
                error = crate::runner::panic_message(&*panic),
                "the reconciler panicked; it tries again"
            );
        }
    }
}

/// A deployment that crash-loops within [`ROLLBACK_WINDOW`] of a swap —
/// its function cannot start (it backs off), or it trapped
/// [`CRASH_LOOP_TRAPS`] times without producing a single output — goes back
/// to the version before, through the registry, so that every node does the
/// same. The records it trapped on are in the dead-letter topic.
fn rollback_crash_loops(
    registry: &Registry,
    node: &Node,
    reconciled: &Reconciled,
    running: &mut HashMap<String, Running>,
    runtime: &tokio::runtime::Handle,
) {
    for status in node.status() {
        let Some(r) = running.get_mut(&status.name) else {
            continue;
        };
        let Some(swapped) = r.swapped_at else {
            continue;
        };
        let previous = swapped.from;
        if swapped.at.elapsed() > ROLLBACK_WINDOW || previous == 0 {
            r.swapped_at = None;
            continue;
        }
        let error = match &status.state {
            DeploymentState::BackingOff { error, .. } => format!("it cannot start: {error}"),
            DeploymentState::Failed { error, .. } => format!("it failed: {error}"),
            _ if status.traps >= swapped.traps + CRASH_LOOP_TRAPS
                && status.records_out == swapped.records_out =>
            {
                format!(
                    "{} traps and no output, last: {}",
                    status.traps - swapped.traps,
                    status.last_error.as_deref().unwrap_or("?")
                )
            }
            _ => continue,
        };
        let version = r.applied.version;
        let note = format!(
            "automatic rollback from version {version} to {previous}: it crash-looped right after the swap ({error})"
        );
        r.swapped_at = None;
        let written = runtime.block_on(async {
            let _writes = registry.deployment_writes().await;
            let Some(mut record) = registry.deployment(&status.name) else {
                return Ok(false);
            };
            if record.current_version() != Some(&r.applied) {
                return Ok(false); // someone already moved it
            }
            let Some(mut back) = record
                .versions
                .iter()
                .find(|v| v.version == previous)
                .cloned()
            else {
                return Ok(false);
            };
            tracing::error!(deployment = status.name, "{note}");
            back.reason =
                format!("rollback to {previous} (automatic: version {version} crash-looped)");
            back.created_ms = now_ms();
            record.push_version(back);
            registry.put_deployment(&record).await.map(|()| true)
        });
        match written {
            Ok(false) => {}
            Ok(true) => reconciled
                .applied
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(status.name.clone())
                .or_default()
                .rollbacks
                .push(note),
            Err(e) => {
                tracing::error!(deployment = status.name, error = %e, "the automatic rollback could not be written")
            }
        }
    }
}
