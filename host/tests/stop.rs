//! The real `runnel` binary: an admin API that would be open by accident is
//! refused at start, and a node given SIGTERM exits within its bound even
//! when its broker is gone.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runnel_host::kafka::KafkaOptions;
use runnel_tests::kafka::{Rec, produce, read, topics, unique};

use crate::common;

fn runnel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runnel"));
    c.env("NO_COLOR", "1")
        .env_remove("RUNNEL_TOKEN")
        .env_remove("RUNNEL_ADMIN");
    c
}

/// Runs `runnel serve` with `args` and `env`, which must fail at once.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = runnel();
    c.args(["serve", "--brokers", "127.0.0.1:1"]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(!out.status.success(), "{args:?} {env:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Finding 3: `--token ''` (or `RUNNEL_TOKEN=`) used to switch
/// authentication off, and nothing refused an open address without a token.
#[test]
fn an_empty_token_or_an_open_address_without_one_is_refused_at_start() {
    let e = refused(&["--token", ""], &[]);
    assert!(e.contains("token") && e.contains("empty"), "{e}");
    let e = refused(&[], &[("RUNNEL_TOKEN", "")]);
    assert!(e.contains("token") && e.contains("empty"), "{e}");
    let e = refused(&["--admin", "0.0.0.0:0"], &[]);
    assert!(
        e.contains("not loopback") && e.contains("--insecure-no-token"),
        "{e}"
    );
    let e = refused(&["--admin", "0.0.0.0:0", "--token", " "], &[]);
    assert!(e.contains("empty"), "{e}");
}

/// `--kafka` used to be applied last, so it could change the group or the
/// delivery guarantee without a word.
#[test]
fn kafka_settings_that_break_the_guarantee_are_refused_at_start() {
    for (setting, name) in [
        ("group.id=shared", "group.id"),
        ("enable.auto.offset.store=true", "enable.auto.offset.store"),
        ("auto.offset.reset=latest", "auto.offset.reset"),
        ("acks=1", "acks"),
    ] {
        let e = refused(&["--kafka", setting], &[]);
        assert!(e.contains(name) && e.contains("refused"), "{e}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finding 2's other half: a node with outputs it cannot deliver, its
/// broker gone, exits within its documented bound after SIGTERM (the
/// Kubernetes manifest gives 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_exits_within_its_bound_after_sigterm_when_the_broker_is_gone() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut broker = runnel()
        .args(["broker", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kafka = KafkaOptions::embedded(addr.to_string());
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::identity_config(dir.path(), &input, &output, "");
    let mut node = common::serve(&kafka.brokers, &config, "warn", Stdio::inherit());

    let records: Vec<Rec> = (0..500)
        .map(|i| (Some(format!("k{i}")), format!("v{i}"), vec![]))
        .collect();
    produce(&kafka, &input, &records).await;
    assert!(
        !read(&kafka, &output, 1, Duration::from_secs(60))
            .await
            .is_empty(),
        "the node runs"
    );
    broker.kill().unwrap();
    broker.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let stopping = Instant::now();
    Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    let bound = runnel_host::cli::node::STOP_BOUND + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if stopping.elapsed() > bound {
            node.kill().unwrap();
            panic!("the node did not exit within {bound:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "the node exited {:?} after SIGTERM, its broker gone ({status})",
        stopping.elapsed()
    );
}
