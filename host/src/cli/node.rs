//! `runnel broker`, `runnel serve` and `runnel dev`: the long-running commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::broker::{BrokerOptions, EmbeddedBroker, Storage};
use crate::config::NodeConfig;
use crate::control::{ControlOptions, ControlPlane};
use crate::engine::{Engine, EngineConfig, default_cache_dir};
use crate::kafka::{KafkaOptions, ensure_topics};
use crate::registry::RegistryTopics;
use crate::runner::Deployment;

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Address to listen on. Loopback unless told: the embedded broker has no authentication.
    #[arg(long, env = "RUNNEL_BROKER_LISTEN", default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,
    /// Keep the broker's data in this SQLite file, across restarts; without
    /// it, data lives in memory and is gone when the process ends.
    #[arg(long, env = "RUNNEL_BROKER_DATA", value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// The address clients are told to connect to after their first
    /// request, when it is not `--listen`: a proxy, a NAT or a container's
    /// published port (`IP:PORT`).
    #[arg(long, env = "RUNNEL_BROKER_ADVERTISE", value_name = "IP:PORT")]
    pub advertise: Option<SocketAddr>,
}

impl BrokerArgs {
    fn options(&self) -> BrokerOptions {
        BrokerOptions {
            listen: self.listen,
            storage: self.data.clone().map_or(Storage::Memory, Storage::Sqlite),
            advertised: self.advertise,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Bootstrap address of the Kafka cluster, `HOST:PORT`.
    #[arg(long, env = "RUNNEL_BROKERS")]
    pub brokers: String,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Deployments to run from a file (GitOps), besides those of the registry.
    #[arg(long, env = "RUNNEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the admin API listens. Loopback unless told.
    #[arg(long, env = "RUNNEL_ADMIN", default_value = "127.0.0.1:7070")]
    pub admin: SocketAddr,
    /// The URL other nodes reach this node's admin API at, to forward
    /// queries of the state it holds (`http://10.1.2.3:7070`); default:
    /// `http://` and `--admin` (the host name for `0.0.0.0`). An empty
    /// one is refused.
    #[arg(long, env = "RUNNEL_ADVERTISE_ADMIN", value_name = "URL", value_parser = parse_api_url)]
    pub advertise_admin: Option<String>,
    /// A bearer token the admin API requires (`Authorization: Bearer ...`).
    /// Required when `--admin` is not a loopback address; an empty one is
    /// refused.
    #[arg(long, env = "RUNNEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve the admin API on an address that is not loopback without a
    /// token. Anyone who reaches it can then deploy code: only behind
    /// something else that authenticates.
    #[arg(long, env = "RUNNEL_INSECURE_NO_TOKEN")]
    pub insecure_no_token: bool,
    /// This node's name in the cluster status; default: host name and process id.
    #[arg(long, env = "RUNNEL_NODE_ID")]
    pub node_id: Option<String>,
    /// Prefix of the registry's topics (`<prefix>.artifacts`, `<prefix>.deployments`, `<prefix>.nodes`).
    #[arg(long, env = "RUNNEL_REGISTRY", default_value = "runnel")]
    pub registry: String,
    /// A librdkafka property for every client (TLS, SASL, tuning); repeat for more.
    #[arg(long = "kafka", value_name = "KEY=VALUE", value_parser = super::run::parse_key_value)]
    pub kafka: Vec<(String, String)>,
    /// Where processors keep their stores on disk (a redb file per
    /// deployment, input topic and partition); default: in memory. Either
    /// way a partition's state is rebuilt from its changelog topic when the
    /// node gets the partition.
    #[arg(long, env = "RUNNEL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The largest module the node takes, uploaded or in the config file,
    /// in MiB. A Python function (componentize-py embeds CPython) is about
    /// 18 MiB; a Rust one well under 1.
    #[arg(long, env = "RUNNEL_MAX_MODULE_MIB", value_name = "MIB", default_value_t = MAX_MODULE_MIB,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_module_mib: u64,
    /// How many function instances the node may hold at once: one per
    /// worker of each deployment that has run a batch (a deployment's
    /// partitions spread over its `workers`). Each reserves address space
    /// for a linear memory (4 GiB, not memory in use). A deployment that
    /// finds the pool full backs off and says so in its status.
    #[arg(long, env = "RUNNEL_MAX_INSTANCES", value_name = "N", default_value_t = MAX_INSTANCES,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_instances: u32,
}

/// The default of `--max-module-mib`.
pub const MAX_MODULE_MIB: u64 = 32;
/// The default of `--max-instances`.
pub const MAX_INSTANCES: u32 = crate::engine::MAX_INSTANCES;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Partitions of the topics `dev` creates: those of the config file's
    /// deployments at start, and the missing ones of each `runnel deploy`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
}

/// An `http://` or `https://` URL with a host, without a trailing slash.
fn parse_api_url(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s.trim())
        .map_err(|e| format!("{s:?} is not a URL such as http://10.1.2.3:7070: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{s:?} is not an http:// or https:// URL with a host, such as http://10.1.2.3:7070"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

pub async fn broker(args: BrokerArgs) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(args.options()).await?;
    println!(
        "runnel: broker listening, bootstrap address {}",
        broker.bootstrap()
    );
    shutdown_signal().await;
    drop(broker);
    Ok(())
}

fn load(node: &NodeArgs) -> anyhow::Result<(Engine, NodeConfig, Vec<Deployment>)> {
    // Before anything starts: a node that would open its API refuses at once.
    crate::control::check_admin_auth(node.admin, node.token.as_deref(), node.insecure_no_token)?;
    crate::kafka::check_properties(&node.kafka)?;
    let config = match &node.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    let registry = RegistryTopics::with_prefix(&node.registry);
    config.check_reserved(&registry.all()).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}",
            node.config
                .as_deref()
                .unwrap_or_else(|| std::path::Path::new("runnel.toml"))
                .display()
        )
    })?;
    let engine = Engine::new(EngineConfig {
        cache_dir: default_cache_dir(),
        max_module_bytes: usize::try_from(node.max_module_mib << 20).unwrap_or(usize::MAX),
        max_instances: node.max_instances,
        ..EngineConfig::default()
    })?;
    let deployments = config
        .deployments
        .iter()
        .cloned()
        .map(|spec| Deployment::load(&engine, spec))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((engine, config, deployments))
}

/// Runs a node until SIGINT or SIGTERM. `create_topics`: the partitions of
/// the topics it creates for deployments made through its API (`dev`), or
/// `None` to refuse deployments whose topics do not exist (`serve`).
async fn run_node(
    kafka: KafkaOptions,
    args: &NodeArgs,
    engine: Engine,
    deployments: Vec<Deployment>,
    create_topics: Option<i32>,
) -> anyhow::Result<()> {
    let names: Vec<String> = deployments.iter().map(|d| d.spec.name.clone()).collect();
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(&args.registry),
        listen: args.admin,
        token: args.token.clone(),
        insecure_no_token: args.insecure_no_token,
        node_id: args.node_id.clone(),
        create_topics,
        state_dir: args.state_dir.clone(),
        advertise_api: args.advertise_admin.clone(),
        ..ControlOptions::new(kafka.clone())
    };
    let control = ControlPlane::start(options, engine, deployments).await?;
    println!(
        "runnel: running {} deployment(s) from the config file against {}{}{}",
        names.len(),
        kafka.brokers,
        if names.is_empty() { "" } else { ": " },
        names.join(", ")
    );
    println!(
        "runnel: admin API at {} (registry: {}.*), {} deployment(s) in the registry",
        control.url(),
        args.registry,
        control.registry().deployments().len()
    );
    shutdown_signal().await;
    println!(
        "runnel: stopping (flushing outputs, committing offsets; at most {} s, a second signal stops at once)",
        STOP_BOUND.as_secs()
    );
    let stopping = tokio::task::spawn_blocking(move || control.stop());
    tokio::select! {
        stopped = stopping => stopped.context("stopping the node")?,
        () = tokio::time::sleep(STOP_BOUND) => {
            eprintln!("runnel: the node did not stop within {} s; exiting now. Records whose offsets were not committed are read again by the next owner: nothing acknowledged is lost.", STOP_BOUND.as_secs());
            std::process::exit(1);
        }
        () = shutdown_signal() => {
            eprintln!("runnel: a second signal; exiting now. Records whose offsets were not committed are read again by the next owner.");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// The longest a node takes to stop after SIGTERM or SIGINT: below the
/// Kubernetes manifest's 60 s grace. A clean stop takes far less (each
/// deployment, in parallel, waits at most 10 s for its outputs); past this
/// the process exits anyway, which loses nothing acknowledged, since offsets
/// are committed only for delivered outputs.
pub const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(45);

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (engine, _, deployments) = load(&args.node)?;
    let kafka = KafkaOptions {
        brokers: args.brokers,
        properties: args.node.kafka.clone(),
    };
    run_node(kafka, &args.node, engine, deployments, None).await
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let (engine, config, deployments) = load(&args.node)?;
    let broker = EmbeddedBroker::start(args.broker.options()).await?;
    println!(
        "runnel: broker listening, bootstrap address {}",
        broker.bootstrap()
    );
    let mut kafka = KafkaOptions::embedded(broker.bootstrap());
    kafka.properties.extend(args.node.kafka.iter().cloned());
    let mut topics: Vec<String> = Vec::new();
    for d in &config.deployments {
        topics.extend(d.input.iter().cloned());
        topics.extend(d.output.topics().iter().cloned());
        topics.push(d.dead_letter_topic());
    }
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    // Without a config file there is nothing to create yet (and the broker
    // refuses a request to create no topics).
    if !topics.is_empty() {
        ensure_topics(&kafka, &topics, args.partitions).await?;
    }
    run_node(
        kafka,
        &args.node,
        engine,
        deployments,
        Some(args.partitions),
    )
    .await?;
    drop(broker);
    Ok(())
}
