//! The newcomer's path, as processes: `runnel dev` with no arguments, then
//! `runnel deploy` onto topics that do not exist yet (the dev node creates
//! them and says so), then records through the deployment, and `runnel
//! logs --follow` of what the node did with it.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use runnel_host::kafka::KafkaOptions;
use runnel_tests::kafka::{Rec, produce, read, unique, value};

/// `runnel dev` with no arguments; its ports (the defaults 9092 and 7070
/// may be taken on a test machine) come from the environment. Returns the
/// child, the broker's bootstrap address and the API's URL, read from what
/// it prints once it is up.
fn dev(dir: &Path) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("dev")
        .env("RUNNEL_BROKER_LISTEN", "127.0.0.1:0")
        .env("RUNNEL_ADMIN", "127.0.0.1:0")
        .env("RUNNEL_CACHE_DIR", dir.join("cache"))
        .env("RUNNEL_LOG", "warn")
        .env_remove("RUNNEL_CONFIG")
        .env_remove("RUNNEL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dev.stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut bootstrap, mut api) = (None, None);
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(b) = line.strip_prefix("runnel: broker listening, bootstrap address ") {
            bootstrap = Some(b.to_owned());
        }
        if let Some(rest) = line.strip_prefix("runnel: admin API at ") {
            api = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let stderr = std::fs::read_to_string(dir.join("dev.stderr")).unwrap_or_default();
    let (Some(bootstrap), Some(api)) = (bootstrap, api) else {
        let _ = child.kill();
        panic!("`runnel dev` did not start: {stderr}");
    };
    (child, bootstrap, api)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_alone_then_deploy_onto_new_topics_carries_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, bootstrap, api) = dev(dir.path());
    let (name, input, output) = (unique("copy"), unique("in"), unique("out"));

    let deploy = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["--api", &api, "deploy", runnel_tests::guests::IDENTITY_MAP])
        .args(["--name", &name, "--input", &input, "--output", &output])
        .env_remove("RUNNEL_TOKEN")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&deploy.stdout).into_owned();
    let complaint = String::from_utf8_lossy(&deploy.stderr).into_owned();
    if !deploy.status.success() {
        stop(&mut node);
    }
    assert!(deploy.status.success(), "deploy failed: {complaint}");
    let mut expected: Vec<String> = [&input, &output, &format!("{output}.dlq")]
        .iter()
        .map(|t| format!("created topic {t} (3 partitions)"))
        .collect();
    expected.push(format!("deployed {name} version 1 (map, module "));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 4, "{said}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "{line:?} is not {want:?}");
    }

    let kafka = KafkaOptions::embedded(&bootstrap);
    let records: Vec<Rec> = (0..20)
        .map(|i| (Some(format!("k{i}")), format!("v{i}"), vec![]))
        .collect();
    produce(&kafka, &input, &records).await;
    let out = read(&kafka, &output, records.len(), Duration::from_secs(60)).await;

    // `runnel logs --follow`: the node's events about the deployment so
    // far, then one that comes while it follows (a pause).
    let mut follow = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["--api", &api, "logs", &name, "--follow", "--since", "10m"])
        .env_remove("RUNNEL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("`runnel logs --follow` never printed {what:?}: {seen:?}"),
            }
        }
    };
    let assigned = until("partitions assigned");
    assert!(assigned.contains(" event info "), "{assigned}");
    let paused = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["--api", &api, "pause", &name])
        .env_remove("RUNNEL_TOKEN")
        .output()
        .unwrap();
    assert!(paused.status.success(), "{paused:?}");
    until("paused in the registry");
    let _ = follow.kill();
    let _ = follow.wait();
    stop(&mut node);
    let mut got: Vec<String> = out.iter().map(value).collect();
    got.sort();
    got.dedup();
    let mut want: Vec<String> = records.iter().map(|(_, v, _)| v.clone()).collect();
    want.sort();
    assert_eq!(got, want, "outputs of the deployment");
}
