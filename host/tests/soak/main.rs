//! The chaos soak: several `runnel serve` processes under a steady keyed load,
//! random faults from a seeded schedule, and every record accounted for at
//! the end by a reader of the soak's own.
//!
//! ```text
//! cargo test -p runnel-host --test soak                        # 2 minutes, seed 1 (CI)
//! cargo test -p runnel-host --release --test soak -- --minutes 30 --seed random
//! ```
//!
//! Options (after `--`): `--minutes M` or `--seconds S` (default 2 minutes),
//! `--seed N|random` (default 1), `--nodes N` (3 to 5 at the start, default
//! 3), `--rate R` (records per second, default 100). The environment
//! variables `RUNNEL_SOAK_MINUTES` and `RUNNEL_SOAK_SEED` do the same.
//!
//! The broker is the embedded one with SQLite storage, so that it can be
//! restarted with its data, behind a TCP proxy of the soak's own that is the
//! broker's advertised address: it cuts or slows one node's connections,
//! told apart by client id (`runnel-<node id>`).
//!
//! Faults: SIGKILL a node and start it again; stop a node cleanly (SIGTERM)
//! and start it again; SIGSTOP a node past its session timeout, then
//! SIGCONT; restart the broker; cut or delay a node's connections; add and
//! remove nodes; swap, roll back, pause and resume deployments. Several can
//! be under way at once.
//!
//! A fourth deployment, `running-count` (a processor: keyed state in
//! changelogs), counts the same input per key; it takes every fault but
//! the swaps, rollbacks and pauses. Each node keeps its stores in a state
//! folder of its own (`--state-dir`), which a restarted node finds again:
//! after a kill its stores are not trusted and are read again from the
//! changelogs; after a clean stop their local checkpoints may hold. At the
//! end the store (`runnel state ls`) must hold every key's number of
//! records, and the count topic must have reached it and never passed it;
//! a late duplicate of an older count is printed, not failed on (outputs
//! are at least once: `counts.rs`).
//!
//! It fails (exit 1) on a key counted short or over, a lost record, an
//! output without an input, a record
//! the function would not route where it went, a node that is not running
//! at the end, or a node's memory past its bound. Duplicates, gaps and
//! version moves are counted and printed, not failed on: a seed fixes the
//! fault schedule, not the threads' interleavings.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

mod account;
mod counts;
mod proxy;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use runnel_host::kafka::{KafkaOptions, ensure_topics};

use account::{Function, Observed, Sent};

const PARTITIONS: i32 = 6;
/// How long the soak tries to list the keyed count's store at the end.
const STORE_WAIT: Duration = Duration::from_secs(60);
/// A node is paused this much longer than its session timeout (10 s).
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a node's resident memory may reach.
const RSS_BOUND_MIB: u64 = 1024;
const MIN_NODES: usize = 2;
const MAX_NODES: usize = 5;
/// How long the nodes get, once the faults stop, to catch up.
const SETTLE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
struct Args {
    run: Duration,
    seed: u64,
    nodes: usize,
    rate: u64,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        run: Duration::from_secs(120),
        seed: 1,
        nodes: 3,
        rate: 100,
    };
    let seed = |s: &str| -> Result<u64, String> {
        if s == "random" {
            Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64 % 1_000_000))
        } else {
            s.parse()
                .map_err(|_| format!("--seed {s:?}: a number or `random`"))
        }
    };
    let minutes = |s: &str| -> Result<Duration, String> {
        s.parse::<f64>()
            .ok()
            .filter(|m| *m > 0.0)
            .map(|m| Duration::from_secs_f64(m * 60.0))
            .ok_or_else(|| format!("--minutes {s:?}: a positive number"))
    };
    if let Ok(m) = std::env::var("RUNNEL_SOAK_MINUTES") {
        args.run = minutes(&m)?;
    }
    if let Ok(s) = std::env::var("RUNNEL_SOAK_SEED") {
        args.seed = seed(&s)?;
    }
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => args.run = minutes(&value()?)?,
            "--seconds" => {
                let v = value()?;
                args.run = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--seconds {v:?}: a number"))?,
                );
            }
            "--seed" => args.seed = seed(&value()?)?,
            "--nodes" => {
                let v = value()?;
                args.nodes = v
                    .parse()
                    .ok()
                    .filter(|n| (3..=MAX_NODES).contains(n))
                    .ok_or_else(|| format!("--nodes {v:?}: 3 to {MAX_NODES}"))?;
            }
            "--rate" => {
                let v = value()?;
                args.rate = v
                    .parse()
                    .ok()
                    .filter(|r| (1..=10_000).contains(r))
                    .ok_or_else(|| format!("--rate {v:?}: 1 to 10000 records per second"))?;
            }
            // What a test runner passes (cargo test, nextest).
            "--list" => {
                println!("soak: test");
                return Ok(None);
            }
            "--nocapture" | "--exact" | "--quiet" | "-q" | "--ignored" | "--include-ignored" => {}
            "--test-threads" | "--format" | "--color" => {
                value()?;
            }
            // A name filter that is not this test's: nothing to run.
            filter if !filter.starts_with('-') => {
                if !"soak".contains(filter) {
                    return Ok(None);
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Some(args))
}

fn main() {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failures = runtime.block_on(soak(args));
    runtime.shutdown_timeout(Duration::from_secs(5));
    if !failures.is_empty() {
        eprintln!("\nsoak FAILED:");
        for f in &failures {
            eprintln!("  - {f}");
        }
        std::process::exit(1);
    }
    println!("\nsoak passed");
}

/// A small, seeded generator (SplitMix64): the schedule needs no more.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn between(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.next() % (hi_ms - lo_ms + 1))
    }
}

/// The kinds of fault, with their weight in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Kill,
    Restart,
    Sigstop,
    BrokerRestart,
    Cut,
    Delay,
    AddNode,
    RemoveNode,
    Swap,
    Rollback,
    PauseResume,
}

impl Fault {
    const ALL: [(Fault, usize); 11] = [
        (Fault::Kill, 3),
        (Fault::Restart, 2),
        (Fault::Sigstop, 2),
        (Fault::BrokerRestart, 1),
        (Fault::Cut, 2),
        (Fault::Delay, 2),
        (Fault::AddNode, 1),
        (Fault::RemoveNode, 1),
        (Fault::Swap, 3),
        (Fault::Rollback, 1),
        (Fault::PauseResume, 1),
    ];

    fn pick(rng: &mut Rng) -> Fault {
        let total: usize = Self::ALL.iter().map(|(_, w)| w).sum();
        let mut at = rng.below(total);
        for (f, w) in Self::ALL {
            if at < w {
                return f;
            }
            at -= w;
        }
        unreachable!()
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9 + restart",
            Fault::Restart => "clean stop + restart",
            Fault::Sigstop => "SIGSTOP past session",
            Fault::BrokerRestart => "broker restart",
            Fault::Cut => "connections cut",
            Fault::Delay => "connections delayed",
            Fault::AddNode => "node added",
            Fault::RemoveNode => "node removed",
            Fault::Swap => "swap",
            Fault::Rollback => "rollback",
            Fault::PauseResume => "pause + resume",
        }
    }
}

/// One `runnel serve` process.
#[derive(Debug)]
struct Node {
    id: String,
    admin: SocketAddr,
    child: Child,
    /// A fault is acting on it: no other fault picks it.
    busy: bool,
    /// Taken out for good by a `RemoveNode` fault.
    removed: bool,
    rss_max_kib: u64,
}

#[derive(Debug)]
struct Cluster {
    dir: PathBuf,
    brokers: String,
    nodes: Vec<Node>,
    next: usize,
}

impl Cluster {
    fn spawn(&self, id: &str) -> (Child, SocketAddr) {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{id}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["serve", "--brokers", &self.brokers, "--node-id", id])
            .args(["--admin", &admin.to_string()])
            // Rebalances wait at most 30 s for a member that never comes
            // back.
            .args(["--kafka", "max.poll.interval.ms=30000"])
            .arg("--state-dir")
            .arg(self.dir.join("state").join(id))
            .env("RUNNEL_LOG", "warn,runnel_host::runner=info")
            .env("NO_COLOR", "1")
            .env("RUNNEL_CACHE_DIR", self.dir.join("cache"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        (child, admin)
    }

    fn add(&mut self) -> String {
        let id = format!("n{}", self.next);
        self.next += 1;
        let (child, admin) = self.spawn(&id);
        self.nodes.push(Node {
            id: id.clone(),
            admin,
            child,
            busy: false,
            removed: false,
            rss_max_kib: 0,
        });
        id
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.removed)
    }

    /// A node no fault is acting on, marked busy.
    fn take(&mut self, rng: &mut Rng) -> Option<(usize, String, u32)> {
        let free: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].busy && !self.nodes[i].removed)
            .collect();
        // Never all of them at once: one node stays up to make progress.
        if free.len() < 2 {
            return None;
        }
        let i = free[rng.below(free.len())];
        self.nodes[i].busy = true;
        Some((i, self.nodes[i].id.clone(), self.nodes[i].child.id()))
    }

    /// The admin API of a node that is up and not paused.
    fn api(&self, rng: &mut Rng) -> Option<String> {
        let free: Vec<&Node> = self.live().filter(|n| !n.busy).collect();
        (!free.is_empty()).then(|| format!("http://{}", free[rng.below(free.len())].admin))
    }
}

fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// `runnel broker` with SQLite storage, in a process of its own so that it
/// can be killed, advertising the proxy's address.
#[derive(Debug)]
struct Broker {
    dir: PathBuf,
    listen: SocketAddr,
    advertise: SocketAddr,
}

impl Broker {
    async fn start(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["broker", "--listen", &self.listen.to_string()])
            .args(["--advertise", &self.advertise.to_string(), "--data"])
            .arg(self.dir.join("broker.db"))
            .env("NO_COLOR", "1")
            // Members joining, leaving and missing heartbeats: what a stuck
            // group needs explained.
            .env("RUNNEL_LOG", "warn,tansu_broker::coordinator=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.listen).await.is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the broker exited at start with {status}: see broker.log");
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        child
    }
}

/// A fault that happened: what, when (since the start) and on what.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    pub at: Duration,
    pub target: String,
}

struct Soak {
    start: Instant,
    cluster: Mutex<Cluster>,
    rng: Mutex<Rng>,
    proxy: proxy::Proxy,
    broker: Broker,
    broker_process: Mutex<Child>,
    injected: Mutex<Vec<Injected>>,
    deployments: Vec<Deployment>,
    /// Swaps made so far, for new configs and models.
    generation: AtomicU64,
    /// Control requests that failed (a node or the broker was down).
    refused: AtomicU64,
}

#[derive(Debug, Clone)]
struct Deployment {
    name: String,
    function: Function,
    output: String,
}

impl Soak {
    fn log(&self, what: impl std::fmt::Display) {
        println!("[{:>7.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn injected(&self, fault: Fault, target: impl Into<String>) {
        let target = target.into();
        self.log(format_args!("{} ({target})", fault.name()));
        self.injected.lock().unwrap().push(Injected {
            fault,
            at: self.start.elapsed(),
            target,
        });
    }

    /// Locks: the cluster before the generator, never the other way.
    fn rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap())
    }

    fn take(&self) -> Option<(usize, String, u32)> {
        let mut c = self.cluster.lock().unwrap();
        self.rng(|r| c.take(r))
    }

    fn api(&self) -> Option<String> {
        let c = self.cluster.lock().unwrap();
        self.rng(|r| c.api(r))
    }

    /// Runs a control command, its output into `file`.
    async fn control_to(&self, args: Vec<String>, file: &std::path::Path) -> bool {
        let Some(api) = self.api() else {
            return false;
        };
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_runnel"))
                .args(&args)
                .args(["--api", &api])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        std::fs::write(file, &out.stdout).is_ok() && out.status.success()
    }

    /// Runs a control command against a node that is up. A refusal is
    /// counted, not fatal: faults are under way.
    async fn control(&self, args: Vec<String>) -> bool {
        let Some(api) = self.api() else {
            return false;
        };
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_runnel"))
                .args(&args)
                .args(["--api", &api, "--api-timeout", "20"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        if !out.status.success() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.log(format_args!(
                "  control request refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        out.status.success()
    }

    /// Stops the broker (SIGKILL or SIGTERM, at random), and starts it again
    /// on the same address and SQLite file after a while.
    async fn restart_broker(&self) {
        let kill = self.rng(|r| r.below(2) == 0);
        let pid = self.broker_process.lock().unwrap().id();
        signal(pid, if kill { "-KILL" } else { "-TERM" });
        self.log(format_args!(
            "  broker stopped by SIG{}",
            if kill { "KILL" } else { "TERM" }
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .broker_process
            .lock()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
        {
            if Instant::now() > deadline {
                signal(pid, "-KILL");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(self.rng(|r| r.between(1000, 4000))).await;
        let child = self.broker.start().await;
        *self.broker_process.lock().unwrap() = child;
    }

    /// Stops node `i` with SIGTERM and waits for it to end (SIGKILL past
    /// 50 s: a clean stop takes at most 45 s, `STOP_BOUND`).
    async fn stop_node(&self, i: usize, id: &str, pid: u32) {
        signal(pid, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(50);
        loop {
            let done = self.cluster.lock().unwrap().nodes[i]
                .child
                .try_wait()
                .unwrap();
            if let Some(status) = done {
                if !status.success() {
                    self.log(format_args!("  {id} stopped with {status}"));
                }
                break;
            }
            if Instant::now() > deadline {
                self.log(format_args!("  {id} did not stop within 50 s"));
                signal(pid, "-KILL");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn inject(self: Arc<Self>, fault: Fault) {
        match fault {
            Fault::Kill => {
                let Some((i, id, pid)) = self.take() else {
                    return;
                };
                signal(pid, "-KILL");
                self.injected(fault, &id);
                tokio::time::sleep(self.rng(|r| r.between(500, 3000))).await;
                let mut c = self.cluster.lock().unwrap();
                let _ = c.nodes[i].child.wait();
                let (child, admin) = c.spawn(&id);
                let node = &mut c.nodes[i];
                (node.child, node.admin, node.busy) = (child, admin, false);
            }
            Fault::Restart => {
                let Some((i, id, pid)) = self.take() else {
                    return;
                };
                self.injected(fault, &id);
                self.stop_node(i, &id, pid).await;
                tokio::time::sleep(self.rng(|r| r.between(500, 3000))).await;
                let mut c = self.cluster.lock().unwrap();
                let (child, admin) = c.spawn(&id);
                let node = &mut c.nodes[i];
                (node.child, node.admin, node.busy) = (child, admin, false);
            }
            Fault::Sigstop => {
                let Some((i, id, pid)) = self.take() else {
                    return;
                };
                signal(pid, "-STOP");
                self.injected(fault, &id);
                tokio::time::sleep(SESSION_TIMEOUT + self.rng(|r| r.between(2000, 8000))).await;
                signal(pid, "-CONT");
                self.cluster.lock().unwrap().nodes[i].busy = false;
            }
            Fault::BrokerRestart => {
                self.injected(fault, "broker");
                self.restart_broker().await;
            }
            Fault::Cut | Fault::Delay => {
                let Some((i, id, _)) = self.take() else {
                    return;
                };
                let span = self.rng(|r| r.between(3000, 12_000));
                let client = format!("runnel-{id}");
                if fault == Fault::Cut {
                    self.proxy.cut(&client, span);
                } else {
                    let by = self.rng(|r| r.between(100, 800));
                    self.proxy.delay(&client, by, span);
                }
                self.injected(fault, &id);
                tokio::time::sleep(span).await;
                self.cluster.lock().unwrap().nodes[i].busy = false;
            }
            Fault::AddNode => {
                let id = {
                    let mut c = self.cluster.lock().unwrap();
                    if c.live().count() >= MAX_NODES {
                        return;
                    }
                    c.add()
                };
                self.injected(fault, id);
            }
            Fault::RemoveNode => {
                let taken = {
                    let mut c = self.cluster.lock().unwrap();
                    if c.live().count() <= MIN_NODES {
                        None
                    } else {
                        self.rng(|r| c.take(r))
                    }
                };
                let Some((i, id, pid)) = taken else { return };
                self.injected(fault, &id);
                self.stop_node(i, &id, pid).await;
                self.cluster.lock().unwrap().nodes[i].removed = true;
            }
            Fault::Swap | Fault::Rollback | Fault::PauseResume => {
                let d = self.rng(|r| self.deployments[r.below(self.deployments.len())].clone());
                self.injected(fault, &d.name);
                match fault {
                    Fault::Swap => {
                        let g = self.generation.fetch_add(1, Ordering::Relaxed) + 2;
                        let mut args = vec!["swap".to_owned(), d.name.clone()];
                        match d.function {
                            Function::Scorer => {
                                let model =
                                    self.cluster.lock().unwrap().dir.join(format!("model-{g}"));
                                std::fs::write(&model, format!("v{g}:")).unwrap();
                                args.extend(["--model".into(), model.display().to_string()]);
                            }
                            Function::Filter => {
                                for (k, v) in account::FILTER_CONFIG {
                                    args.extend(["--config".into(), format!("{k}={v}")]);
                                }
                                args.extend(["--config".into(), format!("generation={g}")]);
                            }
                            Function::Map => {
                                args.extend(["--config".into(), format!("generation={g}")])
                            }
                        }
                        self.control(args).await;
                    }
                    Fault::Rollback => {
                        self.control(vec!["rollback".into(), d.name.clone()]).await;
                    }
                    _ => {
                        if self.control(vec!["pause".into(), d.name.clone()]).await {
                            tokio::time::sleep(self.rng(|r| r.between(2000, 6000))).await;
                            // Until it takes: the deployment must not stay paused.
                            while !self.control(vec!["resume".into(), d.name.clone()]).await {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn soak(args: Args) -> Vec<String> {
    println!(
        "soak: {} s, seed {} (replay: --seed {}), {} nodes, {} records/s",
        args.run.as_secs(),
        args.seed,
        args.seed,
        args.nodes,
        args.rate
    );
    let dir = tempfile::tempdir().unwrap();
    println!("soak: logs and broker data in {}", dir.path().display());

    // The proxy is the broker's advertised address: clients come back
    // through it after their first request.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let broker_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let proxy = proxy::Proxy::start(listener, broker_addr);
    let broker = Broker {
        dir: dir.path().to_owned(),
        listen: broker_addr,
        advertise: proxy.addr(),
    };
    let broker_process = Mutex::new(broker.start().await);
    let kafka = KafkaOptions::new(proxy.addr().to_string());

    let run = runnel_tests::kafka::unique("soak");
    let input = format!("{run}.in");
    let deployments: Vec<Deployment> = [Function::Map, Function::Filter, Function::Scorer]
        .into_iter()
        .map(|function| Deployment {
            name: format!("{run}-{}", function.name()),
            output: format!("{run}.{}", function.name()),
            function,
        })
        .collect();
    let count_name = format!("{run}-count");
    let count_topic = format!("{run}.count");
    let mut names = vec![
        input.clone(),
        count_topic.clone(),
        format!("{count_topic}.dlq"),
    ];
    for d in &deployments {
        names.push(d.output.clone());
        names.push(format!("{}.dlq", d.output));
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ensure_topics(&kafka, &refs, PARTITIONS).await.unwrap();

    let mut cluster = Cluster {
        dir: dir.path().to_owned(),
        brokers: proxy.addr().to_string(),
        nodes: Vec::new(),
        next: 0,
    };
    for _ in 0..args.nodes {
        cluster.add();
    }
    let soak = Arc::new(Soak {
        start: Instant::now(),
        cluster: Mutex::new(cluster),
        rng: Mutex::new(Rng(args.seed)),
        proxy,
        broker,
        broker_process,
        injected: Mutex::new(Vec::new()),
        deployments: deployments.clone(),
        generation: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });

    // Deploy through a node's API, as a user would: the registry takes them
    // to every node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for d in &deployments {
        let model = dir.path().join("model-1");
        std::fs::write(&model, "v1:").unwrap();
        let mut a: Vec<String> = [
            "deploy",
            d.function.module(),
            "--name",
            &d.name,
            "--input",
            &input,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        a.extend([
            "--output".into(),
            d.output.clone(),
            "--batch-size".into(),
            "16".into(),
        ]);
        match d.function {
            Function::Scorer => a.extend(["--model".into(), model.display().to_string()]),
            Function::Filter => {
                for (k, v) in account::FILTER_CONFIG {
                    a.extend(["--config".into(), format!("{k}={v}")]);
                }
            }
            Function::Map => {}
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !soak.control(a.clone()).await {
            assert!(Instant::now() < deadline, "cannot deploy {}", d.name);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        soak.log(format_args!("deployed {} ({})", d.name, d.function.name()));
    }
    let count_deploy: Vec<String> = [
        "deploy",
        runnel_tests::guests::RUNNING_COUNT,
        "--name",
        &count_name,
        "--input",
        &input,
        "--output",
        &count_topic,
        "--store",
        "counts",
        "--batch-size",
        "16",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !soak.control(count_deploy.clone()).await {
        assert!(Instant::now() < deadline, "cannot deploy {count_name}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    soak.log(format_args!("deployed {count_name} (count, keyed state)"));
    let counted: counts::Counts = Arc::default();
    let counting = Arc::new(AtomicBool::new(true));
    let count_reader = {
        let (counted, counting, kafka, topic) = (
            counted.clone(),
            counting.clone(),
            kafka.clone(),
            count_topic.clone(),
        );
        std::thread::spawn(move || counts::follow(&kafka, &topic, &counted, &counting))
    };

    // The reader: every output and dead letter, as it arrives.
    let observed: Arc<Mutex<Vec<Observed>>> = Arc::default();
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (observed, reading, kafka, start) =
            (observed.clone(), reading.clone(), kafka.clone(), soak.start);
        let topics: Vec<(String, Function, bool)> = deployments
            .iter()
            .flat_map(|d| {
                [
                    (d.output.clone(), d.function, false),
                    (format!("{}.dlq", d.output), d.function, true),
                ]
            })
            .collect();
        std::thread::spawn(move || read_outputs(&kafka, &topics, start, &observed, &reading))
    };

    // The load: keyed, numbered records at a steady rate.
    let sent: Arc<Mutex<BTreeMap<u64, Sent>>> = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(
        kafka.clone(),
        input.clone(),
        args.rate,
        sent.clone(),
        producing.clone(),
        soak.start,
    ));
    let sampler = tokio::spawn({
        let soak = soak.clone();
        async move {
            loop {
                {
                    let mut c = soak.cluster.lock().unwrap();
                    for n in c.nodes.iter_mut().filter(|n| !n.removed) {
                        n.rss_max_kib = n.rss_max_kib.max(rss_kib(n.child.id()));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });

    // The schedule. Faults overlap: the next one starts while the last may
    // still be under way.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut faults = tokio::task::JoinSet::new();
    let broker_busy = Arc::new(AtomicBool::new(false));
    // Every kind once first, in a seeded order, so that even a short run
    // meets them all; then at random, by weight.
    let mut first: Vec<Fault> = Fault::ALL.iter().map(|(f, _)| *f).collect();
    soak.rng(|r| {
        for i in (1..first.len()).rev() {
            first.swap(i, r.below(i + 1));
        }
    });
    first.reverse();
    while soak.start.elapsed() < args.run {
        let fault = first.pop().unwrap_or_else(|| soak.rng(Fault::pick));
        if fault == Fault::BrokerRestart {
            if broker_busy.swap(true, Ordering::SeqCst) {
                continue;
            }
            let (soak, busy) = (soak.clone(), broker_busy.clone());
            faults.spawn(async move {
                soak.inject(fault).await;
                busy.store(false, Ordering::SeqCst);
            });
        } else {
            faults.spawn(soak.clone().inject(fault));
        }
        tokio::time::sleep(soak.rng(|r| r.between(2000, 9000))).await;
    }
    soak.log("faults stop; waiting for those under way");
    while let Some(r) = faults.join_next().await {
        r.unwrap();
    }
    producing.store(false, Ordering::SeqCst);
    let produced_until = soak.start.elapsed();
    producer.await.unwrap();
    // Resume whatever a refused resume left paused.
    for d in &deployments {
        soak.control(vec!["resume".into(), d.name.clone()]).await;
    }
    soak.log("producer stopped; waiting for every output");

    let sent = sent.lock().unwrap().clone();
    let settle = Instant::now();
    loop {
        let complete = account::missing(
            &sent,
            &observed.lock().unwrap(),
            &deployments_fns(&deployments),
        ) == 0;
        if complete || settle.elapsed() > SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The keyed count: exact, per key, against the input as it is.
    let want = {
        let (kafka, input) = (kafka.clone(), input.clone());
        tokio::task::spawn_blocking(move || counts::input_counts(&kafka, &input))
            .await
            .unwrap()
    };
    let count_settle = Instant::now();
    while !counts::check(&want, &counted.lock().unwrap()).is_empty()
        && count_settle.elapsed() < SETTLE
    {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A little longer, to see duplicates that are still on their way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The store itself, read over the API while the nodes still run: the
    // state, which no late duplicate in the count topic can hide.
    let store = {
        let file = dir.path().join("count-store.tsv");
        let args: Vec<String> = ["state", "ls", &count_name, "counts", "--as", "u64"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let deadline = Instant::now() + STORE_WAIT;
        loop {
            if soak.control_to(args.clone(), &file).await {
                let listing = std::fs::read_to_string(&file).unwrap_or_default();
                break Some(counts::parse_store(&listing));
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    };
    counting.store(false, Ordering::SeqCst);
    count_reader.join().unwrap();
    reading.store(false, Ordering::SeqCst);
    reader.join().unwrap();
    sampler.abort();
    soak.log(format_args!(
        "settled in {:.1} s",
        settle.elapsed().as_secs_f64()
    ));

    let mut failures = Vec::new();
    // Every node that should be running is.
    {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut c = soak.cluster.lock().unwrap();
        for n in c.nodes.iter_mut().filter(|n| !n.removed) {
            if let Some(status) = n.child.try_wait().unwrap() {
                failures.push(format!(
                    "node {} is not running: it exited with {status}",
                    n.id
                ));
                continue;
            }
            let url = format!("http://{}/healthz", n.admin);
            let healthy = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(http.get(&url).send())
            })
            .is_ok_and(|r| r.status().is_success());
            if !healthy {
                failures.push(format!("node {} does not answer {url}", n.id));
            }
        }
    }
    let injected = soak.injected.lock().unwrap().clone();
    let observed = observed.lock().unwrap().clone();
    let report = account::account(
        &sent,
        &observed,
        &deployments_fns(&deployments),
        &injected,
        produced_until,
    );
    println!("{}", report.text);
    let count_wrong = counts::check(&want, &counted.lock().unwrap());
    println!(
        "\nkeyed count ({count_name}): {} keys, {} input records, {} keys exact in the count topic",
        want.len(),
        want.values().sum::<u64>(),
        want.len() - count_wrong.len().min(want.len())
    );
    for w in count_wrong.iter().take(10) {
        println!("  {w}");
    }
    let late = counts::late(&counted.lock().unwrap());
    if !late.is_empty() {
        println!(
            "  {} keys' last count to arrive is an older one, a late duplicate \
             (a node woke from a freeze with outputs in its producer; docs/state.md):",
            late.len()
        );
        for (key, last, max) in late.iter().take(10) {
            println!("    {key}: {last} arrived after {max}");
        }
    }
    match &store {
        Some(store) => {
            let wrong = counts::check_store(&want, store);
            println!(
                "  its store (runnel state ls): {} of {} keys exact",
                want.len() - wrong.len().min(want.len()),
                want.len()
            );
            for w in wrong.iter().take(10) {
                println!("  {w}");
            }
            failures.extend(
                wrong
                    .iter()
                    .map(|w| format!("keyed count ({count_name}): {w}")),
            );
        }
        None => failures.push(format!(
            "keyed count ({count_name}): `runnel state ls` did not answer within {STORE_WAIT:?}"
        )),
    }
    failures.extend(
        count_wrong
            .iter()
            .map(|w| format!("keyed count ({count_name}): {w}")),
    );
    if !report.failures.is_empty() {
        // Who runs what, by every node's last report, for a look afterwards.
        for d in &deployments {
            let file = dir
                .path()
                .join(format!("status-{}.json", d.function.name()));
            let ok = soak
                .control_to(
                    vec!["status".into(), d.name.clone(), "--json".into()],
                    &file,
                )
                .await;
            if ok {
                println!("status of {}: {}", d.name, file.display());
            }
        }
    }
    failures.extend(report.failures);

    println!("\nnodes (resident memory, peak; bound {RSS_BOUND_MIB} MiB):");
    let mut c = soak.cluster.lock().unwrap();
    for n in &c.nodes {
        println!(
            "  {:<4} {:>6.1} MiB{}",
            n.id,
            n.rss_max_kib as f64 / 1024.0,
            if n.removed { "  (removed)" } else { "" }
        );
        if n.rss_max_kib > RSS_BOUND_MIB * 1024 {
            failures.push(format!(
                "node {} reached {} MiB of resident memory (bound {RSS_BOUND_MIB} MiB)",
                n.id,
                n.rss_max_kib / 1024
            ));
        }
    }
    // Where the keyed count's restores took their state from, by the nodes'
    // logs.
    let (mut from_checkpoint, mut from_changelog) = (0, 0);
    for n in &c.nodes {
        let log = std::fs::read_to_string(c.dir.join(format!("{}.log", n.id))).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("state restored")) {
            if line.contains("from=Checkpoint") {
                from_checkpoint += 1;
            } else {
                from_changelog += 1;
            }
        }
    }
    println!(
        "keyed count's restores: {from_checkpoint} kept a local store (checkpoint held), \
         {from_changelog} read the changelog"
    );
    println!(
        "control requests refused while faults were under way: {}",
        soak.refused.load(Ordering::Relaxed)
    );
    println!(
        "seed {} (replay the schedule: --seed {})",
        args.seed, args.seed
    );
    for n in c.nodes.iter_mut().filter(|n| !n.removed) {
        signal(n.child.id(), "-CONT");
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    {
        let mut broker = soak.broker_process.lock().unwrap();
        let _ = broker.kill();
        let _ = broker.wait();
    }
    if !failures.is_empty() {
        // Keep the logs and the broker's data for a look.
        let kept = dir.keep();
        eprintln!("soak: logs kept in {}", kept.display());
    }
    failures
}

fn deployments_fns(ds: &[Deployment]) -> Vec<(String, Function)> {
    ds.iter().map(|d| (d.name.clone(), d.function)).collect()
}

/// Resident memory of `pid` in KiB (0 if it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Produces record `n` every `1/rate` s until told to stop, then waits for
/// every acknowledgement. A record is in `sent` once acknowledged (with where
/// it landed), or as unacknowledged if its delivery failed (it may still
/// have been written).
async fn produce(
    kafka: KafkaOptions,
    topic: String,
    rate: u64,
    sent: Arc<Mutex<BTreeMap<u64, Sent>>>,
    producing: Arc<AtomicBool>,
    start: Instant,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "soak-producer")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    let mut deliveries = tokio::task::JoinSet::new();
    let tick = Duration::from_millis(10);
    let mut n: u64 = 0;
    while producing.load(Ordering::SeqCst) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while n < due {
            let (key, value) = account::record(n);
            let seq = n.to_string();
            let record = FutureRecord::to(&topic).key(&key).payload(&value).headers(
                OwnedHeaders::new().insert(Header {
                    key: account::SEQ,
                    value: Some(seq.as_bytes()),
                }),
            );
            let delivery = producer.send_result(record).unwrap();
            let sent = sent.clone();
            deliveries.spawn(async move {
                let result = delivery.await;
                let entry = match result {
                    Ok(Ok(d)) => Sent {
                        landed: Some((d.partition, d.offset)),
                    },
                    _ => Sent { landed: None },
                };
                sent.lock().unwrap().insert(n, entry);
            });
            n += 1;
        }
        tokio::time::sleep(tick).await;
    }
    while deliveries.join_next().await.is_some() {}
}

/// Reads every output and dead-letter topic from the start, recording each
/// record with the time it arrived, until `reading` is cleared.
fn read_outputs(
    kafka: &KafkaOptions,
    topics: &[(String, Function, bool)],
    start: Instant,
    observed: &Mutex<Vec<Observed>>,
    reading: &AtomicBool,
) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "soak-reader")
        .set("group.id", runnel_tests::kafka::unique("soak-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (t, _, _) in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let by_topic: BTreeMap<&str, (Function, bool)> = topics
        .iter()
        .map(|(t, f, d)| (t.as_str(), (*f, *d)))
        .collect();
    while reading.load(Ordering::SeqCst) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Some(&(function, dead)) = by_topic.get(m.topic()) else {
            continue;
        };
        let header = |name: &str| -> Option<String> {
            m.headers().and_then(|hs| {
                (0..hs.count()).find_map(|i| {
                    let h = hs.get(i);
                    h.value
                        .filter(|_| h.key == name)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            })
        };
        observed.lock().unwrap().push(Observed {
            at: start.elapsed(),
            function,
            dead,
            seq: account::seq_of(header(account::SEQ).as_deref(), m.payload()),
            version: header("runnel-version").and_then(|v| v.parse().ok()),
            kind: header("runnel-error-kind"),
        });
    }
}
