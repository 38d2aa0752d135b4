//! The control plane against the embedded broker: the admin API's errors,
//! the CLI's commands, and a swap, a rollback, a pause and a delete seen by
//! two nodes that share one registry in Kafka.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_host::cli::control::{ApiArgs, ControlCommand, DeployArgs, SwapArgs, run};
use runnel_host::control::{ControlOptions, ControlPlane};
use runnel_host::engine::{Engine, EngineConfig};
use runnel_host::kafka::KafkaOptions;
use runnel_host::registry::RegistryTopics;
use runnel_tests::kafka::{
    Rec, broker, header, positions, produce, read, stream, topics, unique, value,
};
use runnel_tests::{guest, guests};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

async fn node(
    kafka: &KafkaOptions,
    registry: &str,
    token: Option<&str>,
    max_module: usize,
) -> ControlPlane {
    let engine = Engine::new(EngineConfig {
        cache_dir: None,
        max_instances: 64,
        max_module_bytes: max_module,
        ..EngineConfig::default()
    })
    .unwrap();
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(registry),
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.map(str::to_owned),
        ..ControlOptions::new(kafka.clone())
    };
    ControlPlane::start(options, engine, vec![]).await.unwrap()
}

async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<reqwest::Body>,
    json_body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    // As the CLI does: see `same_origin_and_non_simple_requests_only`.
    let mut r = client
        .request(method, url)
        .header("x-runnel-request", "test");
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.body(b);
    }
    if let Some(j) = json_body {
        r = r.json(&j);
    }
    let response = r.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn error(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_bad_requests_with_a_sentence_and_stores_nothing() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(
        &kafka,
        &[
            &input,
            &format!("{input}.2"),
            &output,
            &format!("{output}.dlq"),
        ],
        1,
    )
    .await;
    let token = "s3cret";
    let cp = node(&kafka, &unique("reg"), Some(token), 4 << 20).await;
    let url = |p: &str| format!("{}{p}", cp.url());
    let t = Some(token);
    use reqwest::Method as M;

    // Authentication.
    let (s, v) = call(M::GET, url("/v1/deployments"), None, None, None).await;
    assert_eq!(s, 401);
    assert!(error(&v).contains("Bearer"), "{v}");
    let (s, _) = call(M::GET, url("/v1/deployments"), Some("wrong"), None, None).await;
    assert_eq!(s, 401);
    let (s, _) = call(M::GET, url("/healthz"), None, None, None).await;
    assert_eq!(s, 200);
    let (s, v) = call(M::GET, url("/v1/openapi.yaml"), t, None, None).await;
    assert_eq!(s, 200);
    assert!(v.as_str().unwrap().starts_with("openapi: 3.1.0"));

    // Uploads that are not functions.
    let filter_bytes = guest(guests::THRESHOLD_FILTER);
    let scorer_bytes = guest(guests::ECHO_SCORER);
    let refused = [
        (
            b"random bytes, not wasm".to_vec(),
            "",
            422,
            "not a WebAssembly binary",
        ),
        (
            b"\0asm\x01\0\0\0".to_vec(),
            "",
            422,
            "core WebAssembly module, not a component",
        ),
        (
            guest(guests::UNKNOWN_WORLD),
            "",
            422,
            "implements none of runnel's worlds",
        ),
        (
            vec![0u8; 5 << 20],
            "",
            413,
            "over the limit of 4194304 bytes",
        ),
        (vec![], "", 400, "empty"),
        // Its init runs: without its config, the guest's own message.
        (
            filter_bytes.clone(),
            "",
            422,
            "refused to start: missing config `field`",
        ),
        (scorer_bytes.clone(), "", 422, "its init needs a model"),
        (
            scorer_bytes.clone(),
            "?model=sha256:00",
            422,
            "no model sha256:00 was uploaded",
        ),
        (
            filter_bytes.clone(),
            "?config=field",
            400,
            "config \"field\" is not KEY=VALUE",
        ),
    ];
    for (bytes, query, status, message) in refused {
        let digest = runnel_host::registry::digest(&bytes);
        let u = url(&format!("/v1/modules{query}"));
        let (s, v) = call(M::POST, u, t, Some(bytes.into()), None).await;
        assert_eq!(s, status, "{v}");
        assert!(error(&v).contains(message), "{message:?} in {v}");
        assert!(cp.registry().artifact(&digest).is_none(), "nothing stored");
    }

    // Good uploads (with what their init needs), then deployments that cannot run.
    let u = url("/v1/modules?config=field%3Dn&config=min%3D1");
    let (s, v) = call(M::POST, u, t, Some(filter_bytes.into()), None).await;
    assert_eq!((s, v["world"].as_str()), (201, Some("filter")), "{v}");
    let filter = v["digest"].as_str().unwrap().to_owned();
    let (s, v) = call(
        M::POST,
        url("/v1/models"),
        t,
        Some(b"m:".to_vec().into()),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let u = url(&format!(
        "/v1/modules?model={}",
        v["digest"].as_str().unwrap()
    ));
    let (s, v) = call(M::POST, u, t, Some(scorer_bytes.into()), None).await;
    assert_eq!((s, v["world"].as_str()), (201, Some("scorer")), "{v}");
    let scorer = v["digest"].as_str().unwrap().to_owned();
    // A processor (deployed in tests/tests/state_kafka.rs; refused here for what it asks).
    let u = url("/v1/modules");
    let (s, v) = call(
        M::POST,
        u,
        t,
        Some(guest(guests::RUNNING_COUNT).into()),
        None,
    )
    .await;
    assert_eq!((s, v["world"].as_str()), (201, Some("processor")), "{v}");
    let processor = v["digest"].as_str().unwrap().to_owned();
    let put = |name: &str, body: Value| {
        let u = url(&format!("/v1/deployments/{name}"));
        async move { call(M::PUT, u, t, None, Some(body)).await }
    };
    let cases = [
        (
            "bad name!",
            json!({"module": filter, "input": [input], "output": output}),
            400,
            "not a deployment name",
        ),
        (
            "d",
            json!({"module": "sha256:00", "input": [input], "output": output}),
            422,
            "no module sha256:00 was uploaded",
        ),
        (
            "d",
            json!({"module": filter, "input": ["nope"], "output": output, "config": {"field": "n"}}),
            422,
            "topic \"nope\" does not exist: create it first with `runnel topic create nope`",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output}),
            422,
            "function `d` refused to start: missing config `field`",
        ),
        (
            "d",
            json!({"module": scorer, "input": [input], "output": output}),
            422,
            "it needs a model",
        ),
        (
            "d",
            json!({"module": processor, "input": [input, format!("{input}.2")], "output": output, "stores": ["counts"]}),
            422,
            "a processor reads exactly one input topic",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "config": {"field": "n"}, "stores": ["counts"]}),
            422,
            "only a processor keeps state",
        ),
        (
            "d",
            json!({"module": processor, "input": [input], "output": output, "stores": ["Bad Name"]}),
            422,
            "store name \"Bad Name\" is not",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "bogus": 1}),
            400,
            "unknown field `bogus`",
        ),
        // Ranges, with the range in the answer.
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "workers": 1_000_000}),
            422,
            "workers 1000000 is out of range: workers must be 1 to 256",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "batch_size": 0}),
            422,
            "batch_size must be 1 to 10000",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "memory_mib": u64::MAX}),
            422,
            "memory_mib must be 1 to 4096",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "memory_mib": 2048}),
            422,
            "over this node's limit of 1024",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "timeout_ms": 3_600_000}),
            422,
            "timeout_ms must be 1 to 60000",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "max_outputs_per_record": 0}),
            422,
            "max_outputs_per_record must be 1 to 1000000",
        ),
        // Topics: an output or dead-letter topic that is an input, and any
        // of runnel's own registry topics.
        (
            "d",
            json!({"module": filter, "input": [input], "output": input}),
            422,
            "also an input",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "dead_letter": input}),
            422,
            "dead-letter topic",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": cp.registry().topics().deployments}),
            422,
            "one of runnel's own registry topics",
        ),
        (
            "d",
            json!({"module": filter, "input": [input], "output": output, "dead_letter": cp.registry().topics().artifacts}),
            422,
            "one of runnel's own registry topics",
        ),
    ];
    for (name, body, status, message) in cases {
        let (s, v) = put(name, body).await;
        assert_eq!(s, status, "{v}");
        assert!(error(&v).contains(message), "{message:?} in {v}");
    }
    assert!(cp.registry().deployments().is_empty(), "nothing stored");

    // A good deployment; then a version that changes its topics, and other
    // requests about deployments that do not exist.
    let (s, v) = put(
        "d",
        json!({"module": filter, "input": [input], "output": output, "config": {"field": "n", "min": "1"}}),
    )
    .await;
    assert_eq!((s, v["version"].as_u64()), (201, Some(1)), "{v}");
    let (s, v) = put(
        "d",
        json!({"module": filter, "input": [output], "output": input, "config": {"field": "n", "min": "1"}}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(error(&v).contains("keeps its topics"), "{v}");
    let (s, v) = call(
        M::POST,
        url("/v1/deployments/d/rollback"),
        t,
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 422);
    assert!(error(&v).contains("no version before 1"), "{v}");

    // Rollback to a named kept version; a version that is not kept is refused.
    let (s, v) = put(
        "d",
        json!({"module": filter, "input": [input], "output": output, "config": {"field": "n", "min": "2"}}),
    )
    .await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(2)), "{v}");
    let rollback = |to: u64| {
        let u = url("/v1/deployments/d/rollback");
        async move { call(M::POST, u, t, None, Some(json!({ "to": to }))).await }
    };
    let (s, v) = rollback(99).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        error(&v),
        "deployment \"d\" has no version 99; kept versions: [1, 2]"
    );
    let (s, v) = rollback(2).await;
    assert_eq!(s, 422, "{v}");
    assert!(error(&v).contains("already the current one"), "{v}");
    let (s, v) = rollback(1).await;
    assert_eq!(
        (s, v["version"].as_u64(), v["to"].as_u64()),
        (200, Some(3), Some(1)),
        "{v}"
    );
    let record = cp.registry().deployment("d").unwrap();
    let current = record.current_version().unwrap();
    assert_eq!(
        (current.config["min"].as_str(), current.reason.as_str()),
        ("1", "rollback to 1")
    );
    for (method, path) in [
        (M::GET, "/v1/deployments/nope"),
        (M::DELETE, "/v1/deployments/nope"),
        (M::POST, "/v1/deployments/nope/pause"),
        (M::GET, "/v1/deployments/nope/status"),
    ] {
        let (s, v) = call(method, url(path), t, None, None).await;
        assert_eq!(s, 404, "{path}: {v}");
        assert_eq!(error(&v), "no deployment named \"nope\"");
    }
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}

fn api(cp: &ControlPlane) -> ApiArgs {
    ApiArgs {
        api: cp.url(),
        token: None,
        json: false,
        api_timeout: 60,
    }
}

/// `runnel deploy` of `module` from `input` to `output`, small batches.
fn deploy(
    module: &str,
    name: &str,
    (input, output): (&str, &str),
    model: Option<PathBuf>,
    config: &[(&str, &str)],
) -> ControlCommand {
    ControlCommand::Deploy(DeployArgs {
        module: module.into(),
        name: name.to_owned(),
        input: vec![input.to_owned()],
        output: vec![output.to_owned()],
        dead_letter: None,
        model,
        config: config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        memory_mib: None,
        timeout_ms: None,
        batch_size: Some(16),
        linger_ms: Some(5),
        workers: Some(1),
        stores: Vec::new(),
        provenance: None,
        from: None,
    })
}

async fn cli(api: &ApiArgs, command: ControlCommand) -> String {
    let mut out = String::new();
    run(api, &command, &mut out).await.unwrap();
    out
}

/// Waits until `check` holds, or fails with `what`.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_follow_deploy_swap_rollback_pause_and_delete_from_the_cli() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let registry = unique("reg");
    let a = node(&kafka, &registry, None, 32 << 20).await;
    let b = node(&kafka, &registry, None, 32 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let model = |text: &str| {
        let p = dir.path().join(format!("{text}.model"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let name = unique("echo");

    // Deploy through node A's API: both nodes run it.
    let out = cli(
        &api(&a),
        deploy(
            guests::ECHO_SCORER,
            &name,
            (&input, &output),
            Some(model("v1:")),
            &[],
        ),
    )
    .await;
    assert!(
        out.starts_with(&format!("deployed {name} version 1 (scorer, module ")),
        "{out}"
    );
    until("both nodes run it", || {
        a.node().names() == [name.clone()] && b.node().names() == [name.clone()]
    })
    .await;

    // Records keep coming while the model is swapped through node B's API.
    const N: usize = 2000;
    let producing = stream(&kafka, &input, 20, Duration::from_millis(50));
    read(&kafka, &output, 300, WAIT).await;
    let out = cli(
        &api(&b),
        ControlCommand::Swap(SwapArgs {
            name: name.clone(),
            module: None,
            model: Some(model("v2:")),
            config: vec![],
            reset_state: false,
            yes: false,
        }),
    )
    .await;
    assert_eq!(out, format!("swapped {name} to version 2 (from 1)\n"));
    producing.await.unwrap();

    // Every input offset once; per partition, v1 then v2, one switch.
    let position = positions(&kafka, &input, N).await;
    let out = read(&kafka, &output, N, WAIT).await;
    let mut seen: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for m in &out {
        let v = value(m);
        let (prefix, original) = v.split_at(3);
        let version = header(m, "runnel-version").unwrap();
        assert_eq!(version, if prefix == "v1:" { "1" } else { "2" }, "{v}");
        assert!(
            seen.insert(position[original], version).is_none(),
            "{original} twice"
        );
    }
    assert_eq!(seen.len(), N, "every input offset once");
    for p in 0..2 {
        let versions: Vec<&String> = seen.range((p, 0)..(p + 1, 0)).map(|(_, v)| v).collect();
        let switches = versions.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 1, "partition {p} switched {switches} times");
    }
    until("both nodes run version 2", || {
        [&a, &b]
            .iter()
            .all(|n| n.node().status().first().is_some_and(|s| s.version == 2))
    })
    .await;

    // Roll back to version 1 (as version 3), from the CLI.
    let out = cli(
        &api(&a),
        ControlCommand::Rollback {
            name: name.clone(),
            to: None,
        },
    )
    .await;
    assert_eq!(
        out,
        format!("rolled {name} back to version 1 as version 3\n")
    );
    until("both nodes run version 3", || {
        [&a, &b]
            .iter()
            .all(|n| n.node().status().first().is_some_and(|s| s.version == 3))
    })
    .await;
    produce(
        &kafka,
        &input,
        &[(Some("late".into()), "late".into(), vec![])],
    )
    .await;
    let out = read(&kafka, &output, N + 1, WAIT).await;
    let late = out.iter().find(|m| value(m).ends_with("late")).unwrap();
    assert_eq!(
        (
            value(late).as_str(),
            header(late, "runnel-version").as_deref()
        ),
        ("v1:late", Some("3"))
    );

    // The cluster status: both nodes, each with its partitions, together all of them.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut err = String::new();
        let api_json = ApiArgs {
            json: true,
            ..api(&a)
        };
        run(
            &api_json,
            &ControlCommand::Status { name: name.clone() },
            &mut err,
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&err).unwrap();
        let nodes = v["cluster"].as_array().unwrap();
        let mut held: Vec<i64> = nodes
            .iter()
            .flat_map(|n| {
                n["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["partition"].as_i64().unwrap())
            })
            .collect();
        held.sort_unstable();
        let ids: BTreeSet<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
        if ids.len() == 2 && held == [0, 1] && nodes.iter().all(|n| n["version"] == 3) {
            assert!(
                ids.contains(a.node_id()) && ids.contains(b.node_id()),
                "{ids:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster status never showed both nodes: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ls and status, as tables.
    let ls = cli(&api(&b), ControlCommand::Ls).await;
    assert!(ls.starts_with("NAME"), "{ls}");
    assert!(ls.contains(&name) && ls.contains(" 3 "), "{ls}");
    let status = cli(&api(&a), ControlCommand::Status { name: name.clone() }).await;
    assert!(
        status.contains("version:   3 (running here: 3)"),
        "{status}"
    );
    assert!(status.contains("rollback to 1"), "{status}");
    assert!(status.contains("partitions on this node:"), "{status}");
    assert!(
        status.contains("cluster (every node's last report):\nNODE"),
        "{status}"
    );
    assert!(
        status.contains(a.node_id()) && status.contains(b.node_id()),
        "{status}"
    );

    // Pause: both nodes stop it; records wait. Resume: they flow again.
    assert_eq!(
        cli(&api(&b), ControlCommand::Pause { name: name.clone() }).await,
        format!("paused {name}\n")
    );
    until("both nodes stopped it", || {
        a.node().names().is_empty() && b.node().names().is_empty()
    })
    .await;
    produce(
        &kafka,
        &input,
        &[(Some("paused".into()), "while-paused".into(), vec![])],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = read(&kafka, &output, N + 2, Duration::from_secs(3)).await;
    assert!(
        !out.iter().any(|m| value(m).ends_with("while-paused")),
        "processed while paused"
    );
    cli(&api(&a), ControlCommand::Resume { name: name.clone() }).await;
    let out = read(&kafka, &output, N + 2, WAIT).await;
    assert!(out.iter().any(|m| value(m) == "v1:while-paused"), "resumed");

    // Delete: both nodes stop it, and it is gone from the registry.
    cli(
        &api(&b),
        ControlCommand::Delete {
            name: name.clone(),
            drop_state: false,
            keep_state: false,
        },
    )
    .await;
    until("both nodes dropped it", || {
        a.node().names().is_empty() && b.node().names().is_empty()
    })
    .await;
    assert_eq!(cli(&api(&a), ControlCommand::Ls).await, "no deployments\n");
    let mut err = String::new();
    let e = run(
        &api(&a),
        &ControlCommand::Status { name: name.clone() },
        &mut err,
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), format!("no deployment named {name:?}"));

    let (a, b) = (Arc::new(a), Arc::new(b));
    tokio::task::spawn_blocking(move || {
        drop(a);
        drop(b);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_crash_loops_right_after_a_swap_is_rolled_back() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 1).await;
    let cp = node(&kafka, &unique("reg"), None, 32 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::write(&model, "v1:").unwrap();
    let name = unique("echo");
    cli(
        &api(&cp),
        deploy(
            guests::ECHO_SCORER,
            &name,
            (&input, &output),
            Some(model),
            &[],
        ),
    )
    .await;
    let first: Vec<Rec> = (0..5).map(|i| (None, format!("a{i}"), vec![])).collect();
    produce(&kafka, &input, &first).await;
    read(&kafka, &output, 5, WAIT).await;

    // Version 2 starts (its init is fine) but traps on every record.
    let out = cli(
        &api(&cp),
        ControlCommand::Swap(SwapArgs {
            name: name.clone(),
            module: None,
            model: None,
            config: vec![("trap".into(), "1".into())],
            reset_state: false,
            yes: false,
        }),
    )
    .await;
    assert_eq!(out, format!("swapped {name} to version 2 (from 1)\n"));
    let poison: Vec<Rec> = (0..30).map(|i| (None, format!("b{i}"), vec![])).collect();
    produce(&kafka, &input, &poison).await;

    until("rolled back to version 1 as version 3", || {
        cp.node().status().first().is_some_and(|s| s.version == 3)
    })
    .await;
    let status = cli(&api(&cp), ControlCommand::Status { name: name.clone() }).await;
    assert!(
        status.contains("rollback:  automatic rollback from version 2 to 1: it crash-looped right after the swap"),
        "{status}"
    );
    assert!(
        status.contains("rollback to 1 (automatic: version 2 crash-looped)"),
        "{status}"
    );

    // The records it trapped on are dead letters, not lost; the next ones flow on version 3.
    let dead = read(&kafka, &dlq, 10, WAIT).await;
    assert!(dead.len() >= 10, "{} dead letters", dead.len());
    assert_eq!(
        header(&dead[0], "runnel-error-kind").as_deref(),
        Some("trap")
    );
    produce(&kafka, &input, &[(None, "c".into(), vec![])]).await;
    let out = read(&kafka, &output, 6, WAIT).await;
    let c = out
        .iter()
        .find(|m| value(m) == "v1:c")
        .expect("v1:c after the rollback");
    assert_eq!(header(c, "runnel-version").as_deref(), Some("3"));
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}

/// A web page the operator visits must not be able to change a node: a
/// simple cross-origin request (a bodyless POST, a form) needs no CORS
/// preflight, so the browser would send it. Changes need a JSON or binary
/// content type, `Authorization` or `x-runnel-request`; an `Origin`, when
/// sent, must be the API's own. With or without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_and_non_simple_requests_only() {
    let (_broker, kafka) = broker().await;
    let cp = node(&kafka, &unique("reg"), None, 4 << 20).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", cp.url());
    let host = cp.url().trim_start_matches("http://").to_owned();
    let send = |r: reqwest::RequestBuilder| async move {
        let response = r.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };

    // What a page can send without a preflight: refused, nothing changes.
    let (s, body) = send(http.post(url("/v1/deployments/d/pause"))).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("x-runnel-request"), "{body}");
    let (s, body) = send(
        http.post(url("/v1/modules"))
            .header("content-type", "text/plain")
            .body("\0asm"),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = send(http.delete(url("/v1/deployments/d")).header(
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8",
    ))
    .await;
    assert_eq!(s, 403, "{body}");
    // Another origin, even with what a page could only send after a
    // preflight the API never answers.
    let (s, body) = send(
        http.post(url("/v1/deployments/d/pause"))
            .header("origin", "http://evil.example")
            .header("x-runnel-request", "1"),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("http://evil.example"), "{body}");
    let (s, _) = send(
        http.post(url("/v1/deployments/d/pause"))
            .header("origin", format!("http://{host}.evil.example"))
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await;
    assert_eq!(s, 403);

    // Reads stay simple; a change with the header, a JSON body or from the
    // API's own origin gets through (to a 404: there is no deployment d).
    let (s, _) = send(http.get(url("/v1/deployments"))).await;
    assert_eq!(s, 200);
    for r in [
        http.post(url("/v1/deployments/d/pause"))
            .header("x-runnel-request", "1"),
        http.post(url("/v1/deployments/d/rollback"))
            .header("content-type", "application/json")
            .body("{}"),
        http.post(url("/v1/deployments/d/pause"))
            .header("origin", format!("http://{host}"))
            .header("x-runnel-request", "1"),
    ] {
        let (s, body) = send(r).await;
        assert_eq!(s, 404, "{body}");
    }
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_records_sent_and_readyz_stays_ready_but_names_a_deployment_that_backs_off()
 {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let cp = node(&kafka, &unique("reg"), None, 32 << 20).await;
    let name = unique("big");
    cli(
        &api(&cp),
        deploy(
            guests::THRESHOLD_FILTER,
            &name,
            (&input, &output),
            None,
            &[("field", "n"), ("min", "100")],
        ),
    )
    .await;
    let records: Vec<Rec> = (0..300)
        .map(|i| (None, format!("{{\"n\":{i}}}"), vec![]))
        .chain(std::iter::once((None, "not json".to_owned(), vec![])))
        .collect();
    produce(&kafka, &input, &records).await;
    read(&kafka, &output, 200, WAIT).await;

    let scrape = || async {
        let (s, v) = call(
            reqwest::Method::GET,
            format!("{}/metrics", cp.url()),
            None,
            None,
            None,
        )
        .await;
        assert_eq!(s, 200);
        v.as_str().unwrap().to_owned()
    };
    let series = |text: &str, metric: &str| -> Option<f64> {
        let prefix = format!("{metric}{{deployment=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    };
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = scrape().await;
        if series(&text, "runnel_records_in_total") == Some(301.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        series(&text, "runnel_records_in_total"),
        Some(301.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "runnel_records_out_total"),
        Some(200.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "runnel_records_filtered_total"),
        Some(100.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "runnel_records_dead_lettered_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(series(&text, "runnel_deployment_up"), Some(1.0), "{text}");
    assert_eq!(
        series(&text, "runnel_deployment_version"),
        Some(1.0),
        "{text}"
    );
    // Each of the 200 outputs' latency, once acknowledged: from its poll,
    // and from its input's timestamp (the producer stamped it). Dead
    // letters are not outputs.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = scrape().await;
        if series(&text, "runnel_output_latency_seconds_count") == Some(200.0)
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for metric in ["runnel_output_latency_seconds", "runnel_event_age_seconds"] {
        assert_eq!(
            series(&text, &format!("{metric}_count")),
            Some(200.0),
            "{metric}: {text}"
        );
        let sum = series(&text, &format!("{metric}_sum")).unwrap();
        assert!(sum > 0.0 && sum.is_finite(), "{metric}_sum {sum}");
        let inf = format!("{metric}_bucket{{deployment=\"{name}\",le=\"+Inf\"}} 200");
        assert!(text.contains(&inf), "{inf}: {text}");
    }
    let count = series(&text, "runnel_batch_duration_seconds_count").unwrap();
    assert!(count >= 10.0, "{text}");
    let inf =
        format!("runnel_call_duration_seconds_bucket{{deployment=\"{name}\",le=\"+Inf\"}} {count}");
    assert!(text.contains(&inf), "{text}");
    assert!(text.contains("# TYPE runnel_consumer_lag gauge"), "{text}");
    assert!(
        series(&text, "runnel_instance_memory_bytes").unwrap() > 0.0,
        "{text}"
    );
    let (s, v) = call(
        reqwest::Method::GET,
        format!("{}/readyz", cp.url()),
        None,
        None,
        None,
    )
    .await;
    assert_eq!((s, &v["ready"]), (200, &json!(true)), "{v}");

    // A node whose deployment (from a file) cannot start stays ready: the
    // node serves, and the deployment's trouble is in the body, for alerts.
    let engine = Engine::new(EngineConfig {
        cache_dir: None,
        ..EngineConfig::default()
    })
    .unwrap();
    let bad = runnel_tests::kafka::spec("refused", guests::THRESHOLD_FILTER, &input, &output, &[]);
    let bad = runnel_host::runner::Deployment::load(&engine, bad).unwrap();
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(&unique("reg")),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ControlOptions::new(kafka.clone())
    };
    let sick = ControlPlane::start(options, engine, vec![bad])
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, v) = call(
            reqwest::Method::GET,
            format!("{}/readyz", sick.url()),
            None,
            None,
            None,
        )
        .await;
        assert_eq!(
            s, 200,
            "one deployment's trouble leaves the node ready: {v}"
        );
        if let Some(t) = v["deployments_in_trouble"]
            .as_array()
            .and_then(|t| t.first())
        {
            assert!(
                t["deployment"].as_str().unwrap().starts_with("refused"),
                "{v}"
            );
            assert_eq!(t["state"], "backing_off", "{v}");
            assert!(
                t["problem"]
                    .as_str()
                    .unwrap()
                    .contains("backs off: function"),
                "{v}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the trouble never showed: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::spawn_blocking(move || {
        cp.stop();
        sick.stop();
    })
    .await
    .unwrap();
}

/// Changes to one deployment that race each other: those sent to one node
/// each get their own version, none is lost; those sent to two nodes at once
/// end, on every node, in the version written last — the same function with
/// the same config everywhere, even when two writes carried the same number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_to_a_deployment_lose_no_version_and_leave_every_node_running_the_same_one()
{
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 2).await;
    let registry = unique("reg");
    let a = node(&kafka, &registry, None, 32 << 20).await;
    let b = node(&kafka, &registry, None, 32 << 20).await;
    let (s, v) = call(
        reqwest::Method::POST,
        format!("{}/v1/modules?config=field%3Dn&config=min%3D1", a.url()),
        None,
        Some(guest(guests::THRESHOLD_FILTER).into()),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let filter = v["digest"].as_str().unwrap().to_owned();
    let name = unique("d");
    // A swap to the threshold filter keeping n >= min, sent to `url`.
    let put = |url: String, min: u32| {
        let u = format!("{url}/v1/deployments/{name}");
        let body = json!({"module": filter, "input": [input], "output": output,
            "config": {"field": "n", "min": min.to_string()}});
        call(reqwest::Method::PUT, u, None, None, Some(body))
    };
    let (s, v) = put(a.url(), 1).await;
    assert_eq!((s, v["version"].as_u64()), (201, Some(1)), "{v}");

    // Five swaps sent to one node at once: versions 2 to 6, each once.
    let mut racing = tokio::task::JoinSet::new();
    for min in 2..7 {
        racing.spawn(put(a.url(), min));
    }
    let mut versions = Vec::new();
    for (s, v) in racing.join_all().await {
        assert_eq!(s, 200, "{v}");
        versions.push(v["version"].as_u64().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, vec![2, 3, 4, 5, 6]);
    let record = a.registry().deployment(&name).unwrap();
    assert_eq!(record.current, 6);
    let kept: Vec<u64> = record.versions.iter().map(|v| v.version).collect();
    assert_eq!(kept, vec![1, 2, 3, 4, 5, 6], "no version lost");

    // Swaps sent to both nodes at once, a few rounds: whatever numbers they
    // got, both nodes end up running what the registry says last. (Before
    // nodes compared versions in full, some rounds left one node running a
    // losing write of the same number.)
    for round in 0..6 {
        let (x, y) = tokio::join!(put(a.url(), 10 + round), put(b.url(), 20 + round));
        assert_eq!((x.0, y.0), (200, 200), "{x:?} {y:?}");
    }
    let last = || {
        let r = a.registry().deployment(&name).unwrap();
        let min = r.current_version().unwrap().config["min"].clone();
        (r.current, min)
    };
    until(
        "both nodes run the registry's last version, a partition each",
        || {
            let (current, _) = last();
            [&a, &b].iter().all(|cp| {
                cp.node()
                    .status()
                    .iter()
                    .any(|s| s.name == name && s.version == current && !s.partitions.is_empty())
            })
        },
    )
    .await;
    let min: u32 = last().1.parse().unwrap();
    // What each node runs shows in what it keeps: the filter keeps n >= min
    // on both partitions, whichever node reads each.
    let records: Vec<Rec> = (1..=30)
        .flat_map(|n| {
            (0..4).map(move |k| {
                (
                    Some(format!("k{k}-{n}")),
                    json!({ "n": n }).to_string(),
                    vec![],
                )
            })
        })
        .collect();
    produce(&kafka, &input, &records).await;
    let want: Vec<u32> = (min..=30).flat_map(|n| [n; 4]).collect();
    let out = read(&kafka, &output, want.len(), WAIT).await;
    let mut kept: Vec<u32> = out
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(&value(m)).unwrap()["n"]
                .as_u64()
                .unwrap() as u32
        })
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, want, "both nodes keep n >= {min}");
    for cp in [a, b] {
        tokio::task::spawn_blocking(move || cp.stop())
            .await
            .unwrap();
    }
}

/// Several outputs through the CLI and the API: every output is checked
/// at deploy (a missing one is named), the record keeps the list, `ls`
/// shows it, and outputs with no pick go to the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_with_several_outputs_is_checked_stored_and_shown() {
    let (_broker, kafka) = broker().await;
    let input = unique("in");
    let (first, second) = (unique("first"), unique("second"));
    topics(&kafka, &[&input, &first, &format!("{first}.dlq")], 1).await;
    let cp = node(&kafka, &unique("reg"), None, 32 << 20).await;
    let two = |name: &str| {
        let ControlCommand::Deploy(mut args) =
            deploy(guests::IDENTITY_MAP, name, (&input, &first), None, &[])
        else {
            unreachable!()
        };
        args.output.push(second.clone());
        ControlCommand::Deploy(args)
    };
    let refused = run(&api(&cp), &two("split"), &mut String::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&second) && refused.contains("does not exist"),
        "{refused}"
    );
    topics(&kafka, &[&second], 1).await;
    cli(&api(&cp), two("split")).await;
    let (s, v) = call(
        reqwest::Method::GET,
        format!("{}/v1/deployments/split", cp.url()),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["output"], json!([first, second]), "{v}");
    let ls = cli(&api(&cp), ControlCommand::Ls).await;
    assert!(ls.contains(&format!("{first},{second}")), "{ls}");
    produce(
        &kafka,
        &input,
        &[(Some("k".to_owned()), "v".to_owned(), vec![])],
    )
    .await;
    let out = read(&kafka, &first, 1, WAIT).await;
    assert_eq!(out.len(), 1);
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}

/// Replay: a deployment reset to a time in the middle of its input runs
/// every record from there again, exactly once more (and none before it);
/// the reset waited for the group to empty, shows in the history, and
/// leaves the deployment running. A new deployment `--from` that time
/// starts there, and a time past the end starts at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_a_time_runs_every_record_from_there_once_more() {
    let (_broker, kafka) = broker().await;
    let input = unique("in");
    let (output, late) = (unique("out"), unique("late"));
    topics(
        &kafka,
        &[
            &input,
            &output,
            &format!("{output}.dlq"),
            &late,
            &format!("{late}.dlq"),
        ],
        2,
    )
    .await;
    let registry = unique("reg");
    let cp = node(&kafka, &registry, None, 32 << 20).await;
    let records = |from: usize| -> Vec<Rec> {
        (from..from + 40)
            .map(|i| (Some(format!("k{i}")), format!("r{i}"), vec![]))
            .collect()
    };
    produce(&kafka, &input, &records(0)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let middle = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce(&kafka, &input, &records(40)).await;

    cli(
        &api(&cp),
        deploy(guests::IDENTITY_MAP, "replay", (&input, &output), None, &[]),
    )
    .await;
    let counts = |out: &[rdkafka::message::OwnedMessage]| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for m in out {
            *n.entry(value(m)).or_default() += 1;
        }
        n
    };
    assert_eq!(counts(&read(&kafka, &output, 80, WAIT).await).len(), 80);

    let said = cli(
        &api(&cp),
        ControlCommand::Reset {
            name: "replay".to_owned(),
            to: format!("@{middle}"),
        },
    )
    .await;
    assert!(said.starts_with("reset replay to "), "{said}");
    assert!(said.contains("PARTITION") && said.contains("WAS"), "{said}");
    let out = read(&kafka, &output, 120, WAIT).await;
    // Nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = if out.len() == 120 {
        read(&kafka, &output, 121, Duration::from_secs(3)).await
    } else {
        out
    };
    let n = counts(&out);
    for i in 0..80 {
        let want = if i < 40 { 1 } else { 2 };
        assert_eq!(n.get(&format!("r{i}")).copied(), Some(want), "r{i}: {n:?}");
    }
    assert_eq!(out.len(), 120);
    let (s, v) = call(
        reqwest::Method::GET,
        format!("{}/v1/deployments/replay", cp.url()),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["paused"], false, "resumed: {v}");
    let reasons: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["reason"].as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("reset to ")),
        "{reasons:?}"
    );

    // A new deployment from that time reads from there; a bad position is
    // named; an existing deployment cannot take `from`.
    let mut from = deploy(guests::IDENTITY_MAP, "late", (&input, &late), None, &[]);
    if let ControlCommand::Deploy(a) = &mut from {
        a.from = Some(format!("@{middle}"));
    }
    let said = cli(&api(&cp), from.clone()).await;
    assert!(said.contains("starting from "), "{said}");
    let got = counts(&read(&kafka, &late, 41, Duration::from_secs(15)).await);
    assert_eq!(got.len(), 40, "{got:?}");
    assert!(got.keys().all(|r| r[1..].parse::<usize>().unwrap() >= 40));
    let again = run(&api(&cp), &from, &mut String::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("runnel reset"), "{again}");
    let bad = run(
        &api(&cp),
        &ControlCommand::Reset {
            name: "late".to_owned(),
            to: "yesterday".to_owned(),
        },
        &mut String::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(bad.contains("is not a position"), "{bad}");
    // While anything else is in the group, nothing moves: the reset waits,
    // and gives up saying so.
    use rdkafka::consumer::Consumer as _;
    let member: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "runnel.late")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .unwrap();
    member.subscribe(&[&input]).unwrap();
    let deadline = Instant::now() + WAIT;
    while member.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the extra member never joined");
        let _ = member.poll(Duration::from_millis(100));
    }
    let polling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = std::thread::spawn({
        let polling = polling.clone();
        move || {
            while polling.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = member.poll(Duration::from_millis(100));
            }
        }
    });
    let (s, v) = call(
        reqwest::Method::POST,
        format!("{}/v1/deployments/late/reset", cp.url()),
        None,
        None,
        Some(json!({ "to": "earliest", "wait_ms": 3000 })),
    )
    .await;
    assert_eq!(s, 504, "{v}");
    assert!(
        error(&v).contains("member(s)") && error(&v).contains("nothing was moved"),
        "{v}"
    );
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        read(&kafka, &late, 41, Duration::from_secs(3)).await.len(),
        40,
        "nothing was read again"
    );

    // Past the end: nothing is read again.
    let future = middle + 3_600_000;
    cli(
        &api(&cp),
        ControlCommand::Reset {
            name: "late".to_owned(),
            to: format!("@{future}"),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        read(&kafka, &late, 41, Duration::from_secs(3)).await.len(),
        40
    );

    // While a node runs an older version (a swap under way: here a node's
    // report, as written to the registry's nodes topic), a reset is refused.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let report = json!({
        "node": "behind",
        "at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        "deployments": [{ "name": "late", "version": 1 }],
    })
    .to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&format!("{registry}.nodes"))
                .key("behind")
                .payload(&report),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let (s, v) = call(
            reqwest::Method::POST,
            format!("{}/v1/deployments/late/reset", cp.url()),
            None,
            None,
            Some(json!({ "to": "latest" })),
        )
        .await;
        if s == 409 {
            break v;
        }
        assert_eq!(s, 200, "{v}");
        assert!(Instant::now() < deadline, "the report was never seen: {v}");
    };
    assert!(
        error(&refused).contains("swap") && error(&refused).contains("behind"),
        "{refused}"
    );
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}
