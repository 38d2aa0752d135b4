//! An embedded Kafka-protocol broker, for `runnel broker`, `runnel dev`, the
//! demo and the tests: Tansu (`tansu-broker`, Apache-2.0), started in this
//! process on a loopback port. It speaks the real protocol over TCP, so
//! rdkafka, kcat or any librdkafka 2.12+ / Java client can use it.
//!
//! Storage is in memory unless a SQLite file is asked for (the `sqlite`
//! feature of runnel-host, on by default). Tansu has no transactions, so exactly-once
//! needs a real Kafka; runnel's at-least-once delivery does not use them.
//!
//! Owns the broker's task and nothing else: it knows nothing of functions.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use url::Url;

/// Where the broker keeps its data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    /// Gone when the process ends.
    #[default]
    Memory,
    /// A SQLite file that survives restarts (feature `sqlite`, on by default).
    Sqlite(PathBuf),
}

/// How to start the broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Address to listen on. Port 0 picks a free port. Loopback by default:
    /// the embedded broker has no authentication.
    pub listen: SocketAddr,
    pub storage: Storage,
    /// The address the broker tells clients to connect to, when it is not
    /// `listen`: a proxy or a load balancer in front of it. Clients connect
    /// to the advertised address after their first request, so a proxy that
    /// is not advertised only sees the bootstrap connection.
    pub advertised: Option<SocketAddr>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            storage: Storage::Memory,
            advertised: None,
        }
    }
}

/// A running embedded broker. Dropping it stops the broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker on a task of the current tokio runtime and waits
    /// until it accepts connections.
    pub async fn start(options: BrokerOptions) -> anyhow::Result<Self> {
        let mut addr = options.listen;
        if addr.port() == 0 {
            addr.set_port(free_port(addr.ip())?);
        }
        let listener = Url::parse(&format!("tcp://{addr}"))
            .context("the listen address is not a valid URL host")?;
        let advertised = match options.advertised {
            Some(a) => Url::parse(&format!("tcp://{a}"))
                .context("the advertised address is not a valid URL host")?,
            None => listener.clone(),
        };
        let storage = match &options.storage {
            Storage::Memory => Url::parse("memory://tansu/")?,
            Storage::Sqlite(path) => {
                let path = std::path::absolute(path)
                    .with_context(|| format!("bad storage path {}", path.display()))?;
                // Tansu joins the URL's path to the current folder unless,
                // after its leading slash, the path is still absolute.
                Url::parse(&format!("sqlite:///{}", path.display()))
                    .with_context(|| format!("bad storage path {}", path.display()))?
            }
        };
        let mut broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
            .node_id(111)
            .cluster_id("runnel")
            .incarnation_id(uuid::Uuid::new_v4())
            .advertised_listener(advertised)
            .storage(storage)
            .listener(listener)
            .silent(true)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("cannot set up the embedded broker: {e}"))?;
        let task = tokio::spawn(async move {
            if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                tracing::error!(error = %e, "the embedded broker stopped");
            }
        });
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if task.is_finished() {
                bail!("the embedded broker did not start on {addr} (see the log for why)");
            }
            if started.elapsed() > Duration::from_secs(10) {
                task.abort();
                bail!("the embedded broker did not accept connections on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(%addr, "embedded broker ready");
        Ok(Self { addr, task })
    }

    /// The bootstrap address for clients, `HOST:PORT`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the broker's task ends (it runs until stopped).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port that was free a moment ago on `ip`.
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    let probe =
        TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind a port on {ip}"))?;
    Ok(probe.local_addr()?.port())
}
