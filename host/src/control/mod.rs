//! The control plane of a node: the registry (kept in Kafka), the reconciler
//! that makes the node run what it says, and the HTTP admin API that writes
//! to it. `runnel serve` and `runnel dev` start one; so do tests.

pub mod api;
pub mod console;
pub mod metrics;
pub mod query;
pub mod reconcile;
pub mod series;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::engine::Engine;
use crate::kafka::KafkaOptions;
use crate::registry::{Registry, RegistryTopics};
use crate::runner::{Deployment, Node};

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub kafka: KafkaOptions,
    pub topics: RegistryTopics,
    /// Where the admin API listens. Loopback by default.
    pub listen: SocketAddr,
    /// A bearer token the API requires, if set. An empty one is refused.
    pub token: Option<String>,
    /// Serve the API on an address that is not loopback without a token.
    /// Without this, such a node refuses to start: see [`check_admin_auth`].
    pub insecure_no_token: bool,
    /// The largest model accepted, in bytes.
    pub max_model_bytes: usize,
    /// This node's name in the cluster status; default: the host name (a
    /// pod's name on Kubernetes) and the process id.
    pub node_id: Option<String>,
    /// A deployment's topics that do not exist are created with this many
    /// partitions (`runnel dev`); `None` refuses the deployment instead.
    pub create_topics: Option<i32>,
    /// Where processors keep their stores (`--state-dir`); in memory when
    /// `None`. Either way the changelog topics are what survives a crash.
    pub state_dir: Option<std::path::PathBuf>,
    /// The URL other nodes reach this node's admin API at, to forward a
    /// query of state this node holds; default `http://` and the address it
    /// listens on (with the host name for an unspecified IP such as
    /// `0.0.0.0`).
    pub advertise_api: Option<String>,
}

/// What a node's report says of deployment `name`, if it names it.
pub fn reported_deployment<'a>(
    report: &'a serde_json::Value,
    name: &str,
) -> Option<&'a serde_json::Value> {
    report["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)
}

/// How often a node reports what it runs, and when a report is stale.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
pub const REPORT_STALE: std::time::Duration = std::time::Duration::from_secs(10);

fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    // A second node in the same process (tests, the demo) gets a suffix.
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    match STARTED.fetch_add(1, Ordering::Relaxed) {
        0 => format!("{host}-{}", std::process::id()),
        n => format!("{host}-{}-{n}", std::process::id()),
    }
}

/// Refuses settings that would open the admin API by accident: an empty
/// token (it used to switch authentication off), or an address other than
/// loopback without a token, unless `insecure_no_token` says it is meant (a
/// warning is logged then).
pub fn check_admin_auth(
    listen: SocketAddr,
    token: Option<&str>,
    insecure_no_token: bool,
) -> anyhow::Result<()> {
    match token {
        Some(t) if t.trim().is_empty() => anyhow::bail!(
            "the admin API token (--token, RUNNEL_TOKEN) is empty: give one (for instance `openssl rand -hex 32`), or unset it to serve on loopback only"
        ),
        Some(_) => Ok(()),
        None if listen.ip().is_loopback() => Ok(()),
        None if insecure_no_token => {
            tracing::warn!(
                admin = %listen,
                "the admin API serves {listen} without a token (--insecure-no-token): anyone who reaches it can deploy code"
            );
            Ok(())
        }
        None => anyhow::bail!(
            "the admin API would serve {listen}, which is not loopback, without a token: give one with --token or RUNNEL_TOKEN (for instance `openssl rand -hex 32`), or pass --insecure-no-token if that is really meant"
        ),
    }
}

impl ControlOptions {
    pub fn new(kafka: KafkaOptions) -> Self {
        Self {
            kafka,
            topics: RegistryTopics::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            token: None,
            insecure_no_token: false,
            max_model_bytes: 64 << 20,
            node_id: None,
            create_topics: None,
            state_dir: None,
            advertise_api: None,
        }
    }
}

/// What a node reports of its deployments: their status without the
/// latency histograms (which only its own metrics serve), with their series
/// ([`series`]).
fn reported(
    statuses: Vec<crate::runner::DeploymentStatus>,
    mut series: std::collections::BTreeMap<String, serde_json::Value>,
) -> Vec<serde_json::Value> {
    statuses
        .into_iter()
        .map(|s| {
            let name = s.name.clone();
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                for histogram in [
                    "batch_seconds",
                    "call_seconds",
                    "output_seconds",
                    "event_age_seconds",
                ] {
                    m.remove(histogram);
                }
                if let Some(s) = series.remove(&name) {
                    m.insert("series".into(), s);
                }
            }
            v
        })
        .collect()
}

/// The URL other nodes reach an API listening on `addr` at, when not told:
/// the address itself, or the host name for an unspecified IP.
fn advertised_api(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty());
        if let Some(host) = host {
            return format!("http://{host}:{}", addr.port());
        }
    }
    format!("http://{addr}")
}

/// A running node with its registry, reconciler and admin API.
pub struct ControlPlane {
    addr: SocketAddr,
    node: Arc<Node>,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
    reconciler: Option<std::thread::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    reporter: tokio::task::JoinHandle<()>,
    node_id: String,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ControlPlane {
    /// Reads the registry (returns once caught up), starts the node with the
    /// `fixed` deployments (from a config file) and whatever the registry
    /// holds, and serves the admin API. Call from a multi-threaded runtime.
    pub async fn start(
        options: ControlOptions,
        engine: Engine,
        fixed: Vec<Deployment>,
    ) -> anyhow::Result<Self> {
        check_admin_auth(
            options.listen,
            options.token.as_deref(),
            options.insecure_no_token,
        )?;
        crate::kafka::check_properties(&options.kafka.properties)?;
        if let Some(dir) = &options.state_dir {
            anyhow::ensure!(
                !dir.as_os_str().is_empty(),
                "--state-dir (RUNNEL_STATE_DIR) is empty: name a folder, or leave it unset to \
                 keep processors' state in memory"
            );
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state folder {}", dir.display()))?;
        }
        let node_id = options.node_id.clone().unwrap_or_else(default_node_id);
        let mut options = options;
        options.kafka = options.kafka.with_client_id(&format!("runnel-{node_id}"));
        let registry = Arc::new(Registry::open(&options.kafka, options.topics.clone()).await?);
        let fixed_names: Vec<String> = fixed.iter().map(|d| d.spec.name.clone()).collect();
        let journal = crate::journal::Journal::new(node_id.clone(), registry.clone());
        let node = Node::new(&options.kafka)
            .with_state_dir(options.state_dir.clone())
            .with_journal(journal.clone());
        for d in fixed {
            node.add(d)?;
        }
        let node = Arc::new(node);
        let reconciled = Arc::new(reconcile::Reconciled::default());
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let reconciler = std::thread::Builder::new()
            .name("runnel-reconcile".into())
            .spawn({
                let (registry, node, engine, reconciled, stop) = (
                    registry.clone(),
                    node.clone(),
                    engine.clone(),
                    reconciled.clone(),
                    stop.clone(),
                );
                move || {
                    let _journal = crate::journal::enter(Some(journal));
                    reconcile::run(
                        &registry,
                        &node,
                        &engine,
                        &reconciled,
                        &fixed_names,
                        &stop,
                        &runtime,
                    );
                }
            })
            .context("cannot start the reconciler")?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {} for the admin API", options.listen))?;
        let addr = listener.local_addr()?;
        let app = api::router(Arc::new(api::AppState {
            registry: registry.clone(),
            node: node.clone(),
            engine,
            kafka: options.kafka.clone(),
            token: options.token.clone(),
            reconciled,
            max_model_bytes: options.max_model_bytes,
            create_topics: options.create_topics,
            node_id: node_id.clone(),
        }));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the admin API stopped");
            }
        });
        let reporter = tokio::spawn({
            let (registry, node, id, url) = (
                registry.clone(),
                node.clone(),
                node_id.clone(),
                options
                    .advertise_api
                    .clone()
                    .unwrap_or_else(|| advertised_api(addr)),
            );
            let rings = series::Rings::default();
            async move {
                loop {
                    let at_ms = crate::registry::now_ms();
                    let statuses = node.status();
                    rings.sample(&statuses, at_ms);
                    let report = serde_json::json!({
                        "node": id,
                        "api": url,
                        "at_ms": at_ms,
                        "deployments": reported(statuses, rings.report()),
                    });
                    registry.report_node(&id, Some(&report));
                    tokio::time::sleep(REPORT_EVERY).await;
                }
            }
        });
        Ok(Self {
            addr,
            node,
            registry,
            stop,
            reconciler: Some(reconciler),
            server,
            reporter,
            node_id,
        })
    }

    /// Where the admin API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stops the API, the reconciler and every deployment (flush, commit,
    /// leave the groups). Blocks: call it from a blocking context.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// This node's name in the cluster status.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn shutdown(&mut self) {
        self.server.abort();
        self.reporter.abort();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.reconciler.take() {
            let _ = t.join();
        }
        // All at once: one wedged deployment does not hold up the others.
        self.node.stop_all();
        // Gone from the cluster status at once, not after it goes stale.
        self.registry.report_node(&self.node_id, None);
        self.registry.flush(std::time::Duration::from_secs(1));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_api_cannot_be_opened_by_accident() {
        let loopback: SocketAddr = "127.0.0.1:7070".parse().expect("an address");
        let v6_loopback: SocketAddr = "[::1]:7070".parse().expect("an address");
        let open: SocketAddr = "0.0.0.0:7070".parse().expect("an address");
        for empty in ["", "  "] {
            for addr in [loopback, open] {
                let e = check_admin_auth(addr, Some(empty), true).expect_err("an empty token");
                assert!(e.to_string().contains("token"), "{e}");
            }
        }
        let e = check_admin_auth(open, None, false).expect_err("open without a token");
        assert!(e.to_string().contains("--insecure-no-token"), "{e}");
        check_admin_auth(open, None, true).expect("said so explicitly");
        check_admin_auth(open, Some("s3cret"), false).expect("with a token");
        check_admin_auth(loopback, None, false).expect("loopback");
        check_admin_auth(v6_loopback, None, false).expect("loopback");
    }
}
