//! What the console reads, from any node: a deployment's log lines and
//! events from every node that ran it (the registry's logs topic, with
//! records another client wrote there), its series of throughput and lag,
//! the tail of its dead-letter topic, the overview's cluster-wide sums, and
//! `runnel logs`. The page itself is driven in a browser by `browser.rs`.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use runnel_host::cli::control::{ApiArgs, ControlCommand, DeployArgs, run};
use runnel_host::control::{ControlOptions, ControlPlane};
use runnel_host::engine::{Engine, EngineConfig};
use runnel_host::kafka::KafkaOptions;
use runnel_host::registry::RegistryTopics;
use runnel_tests::guests;
use runnel_tests::kafka::{Rec, broker, produce, topics, unique};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

async fn node(kafka: &KafkaOptions, registry: &str, id: &str) -> ControlPlane {
    let engine = Engine::new(EngineConfig {
        cache_dir: None,
        max_instances: 64,
        ..EngineConfig::default()
    })
    .unwrap();
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(registry),
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: Some(id.to_owned()),
        ..ControlOptions::new(kafka.clone())
    };
    ControlPlane::start(options, engine, vec![]).await.unwrap()
}

async fn get(url: String) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asks `url` until `check` holds of its answer, or fails saying `what`
/// and the last answer.
async fn until(what: &str, url: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = get(url.to_owned()).await;
        if status == 200 && check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting: {what}; last answer {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn lines(v: &Value) -> Vec<Value> {
    v["lines"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployments_lines_series_and_dead_letters_are_read_from_any_node() {
    runnel_tests::journal_layer();
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let registry = unique("reg");
    let (a, b) = (
        node(&kafka, &registry, "node-a").await,
        node(&kafka, &registry, "node-b").await,
    );
    let logs_topic = RegistryTopics::with_prefix(&registry).logs;
    let name = "loud";

    // Another client writes to the logs topic: under the deployment's key,
    // what is not a line; under another key, a line that claims to be one.
    let stranger: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let forged = json!({"at_ms": 1, "node": "nobody", "deployment": "other", "kind": "log", "level": "info", "message": "forged"}).to_string();
    let big = vec![0xffu8; 900 << 10];
    let writes: [(&str, &[u8]); 4] = [
        (name, b"\x00\x01 not json"),
        (name, &big),
        (name, forged.as_bytes()),
        ("other", forged.as_bytes()),
    ];
    for partition in 0..runnel_host::journal::PARTITIONS {
        for (key, value) in writes {
            stranger
                .send(
                    FutureRecord::to(&logs_topic)
                        .key(key)
                        .payload(value)
                        .partition(partition),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    let api = ApiArgs {
        api: a.url(),
        token: None,
        json: false,
        api_timeout: 60,
    };
    let mut out = String::new();
    run(
        &api,
        &ControlCommand::Deploy(DeployArgs {
            module: guests::HOSTILE.into(),
            name: name.to_owned(),
            input: vec![input.clone()],
            output: vec![output.clone()],
            dead_letter: None,
            model: None,
            config: Vec::new(),
            memory_mib: None,
            timeout_ms: None,
            batch_size: Some(16),
            linger_ms: Some(5),
            workers: Some(1),
            stores: Vec::new(),
            provenance: None,
            from: None,
        }),
        &mut out,
    )
    .await
    .unwrap();
    // A deployment may not write to the logs topic.
    let (_, record) = get(format!("{}/v1/deployments/{name}", a.url())).await;
    let module = format!(
        "sha256:{}",
        record["versions"][0]["module"].as_str().unwrap()
    );
    let refused = reqwest::Client::new()
        .put(format!("{}/v1/deployments/sneaky", a.url()))
        .json(&json!({"module": module, "input": [input], "output": logs_topic}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let said = refused.text().await.unwrap();
    assert!(said.contains(&logs_topic), "{said}");

    let mut records: Vec<Rec> = vec![
        (None, "print".into(), vec![]),
        (None, "error".into(), vec![]),
        (Some("k\u{1b}[2J".into()), "panic".into(), vec![]),
    ];
    records.extend((0..200).map(|i| (None, format!("ok {i}"), vec![])));
    produce(&kafka, &input, &records).await;

    // From either node: the function's lines and the host's events, each
    // written by the node that ran them (both run the deployment, a
    // partition each; both live in this one process).
    let logs = format!("{}/v1/deployments/{name}/logs?since=10m", b.url());
    let v = until(
        "the function's stderr line and a dead-letter event",
        &logs,
        |v| {
            let ls = lines(v);
            ls.iter().any(|l| {
                l["kind"] == "log" && l["stream"] == "stderr" && l["message"] == "hello from stderr"
            }) && ls
                .iter()
                .any(|l| l["kind"] == "event" && l["level"] == "warn")
                && ["node-a", "node-b"]
                    .iter()
                    .all(|n| ls.iter().any(|l| l["node"] == *n && l["kind"] == "event"))
        },
    )
    .await;
    let ls = lines(&v);
    for n in ["node-a", "node-b"] {
        assert!(
            ls.iter().any(|l| l["node"] == n && l["kind"] == "event"),
            "{n} journals its own events: {ls:?}"
        );
    }
    assert!(
        ls.iter()
            .all(|l| l["node"] == "node-a" || l["node"] == "node-b"),
        "{ls:?}"
    );
    assert!(ls.iter().all(|l| l["deployment"] == name), "{ls:?}");
    assert!(
        ls.windows(2)
            .all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64())
    );
    assert!(
        !ls.iter().any(|l| l["message"] == "forged"),
        "another client's line under another key is not this deployment's"
    );
    assert!(v["skipped"].as_u64().unwrap() >= 2, "{v}");
    // Following: nothing new after the cursor, then what comes.
    let next = v["next"].as_i64().unwrap();
    let (status, after) = get(format!(
        "{}/v1/deployments/{name}/logs?after={next}",
        b.url()
    ))
    .await;
    assert_eq!(status, 200, "{after}");
    produce(&kafka, &input, &[(None, "print".into(), vec![])]).await;
    until(
        "a line after the cursor",
        &format!("{}/v1/deployments/{name}/logs?after={next}", b.url()),
        |v| lines(v).iter().any(|l| l["message"] == "hello from stdout"),
    )
    .await;
    for bad in [
        "since=yesterday",
        "limit=0",
        "since=1m&after=3",
        "nonsense=1",
    ] {
        let (status, v) = get(format!("{}/v1/deployments/{name}/logs?{bad}", b.url())).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }

    // The dead letters, newest first, each with why and whence.
    let dl = until(
        "two dead letters",
        &format!("{}/v1/deployments/{name}/dead-letters?limit=50", b.url()),
        |v| v["dead_letters"].as_array().is_some_and(|d| d.len() == 2),
    )
    .await;
    let letters = dl["dead_letters"].as_array().unwrap();
    let panic = letters
        .iter()
        .find(|d| d["value_preview"] == "panic")
        .unwrap_or_else(|| panic!("{dl}"));
    assert_eq!(panic["source_topic"], input.as_str());
    assert!(panic["source_offset"].is_i64(), "{panic}");
    assert!(
        panic["kind"].is_string() && panic["error"].is_string(),
        "{panic}"
    );
    assert!(
        !panic["key_preview"].as_str().unwrap().contains('\u{1b}'),
        "no control characters in a preview: {panic}"
    );
    assert!(
        letters.iter().any(|d| d["value_preview"] == "error"),
        "{dl}"
    );
    let (status, v) = get(format!(
        "{}/v1/deployments/{name}/dead-letters?limit=100000",
        b.url()
    ))
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = get(format!("{}/v1/deployments/nothing/dead-letters", b.url())).await;
    assert_eq!(status, 404);

    // The overview's sums and the series, from the other node's reports.
    until(
        "the overview's sums",
        &format!("{}/v1/deployments", b.url()),
        |v| {
            v[0]["cluster"]["records_in"].as_u64() >= Some(204)
                && v[0]["cluster"]["dead_lettered"] == 2
                && v[0]["cluster"]["nodes"].as_array().map(Vec::len) == Some(2)
        },
    )
    .await;
    let series = until(
        "a point of the series with records in",
        &format!("{}/v1/deployments/{name}/series", b.url()),
        |v| {
            v["points"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in_per_s"].as_f64() > Some(0.0)))
        },
    )
    .await;
    assert_eq!(series["step_ms"], 10_000);

    // `runnel logs` from the other node.
    let mut out = String::new();
    run(
        &ApiArgs {
            api: b.url(),
            ..api.clone()
        },
        &ControlCommand::Logs {
            name: name.to_owned(),
            follow: false,
            since: "10m".to_owned(),
        },
        &mut out,
    )
    .await
    .unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains(" stderr info hello from stderr")),
        "{out}"
    );
    let e = run(
        &api,
        &ControlCommand::Logs {
            name: name.to_owned(),
            follow: false,
            since: "soon".to_owned(),
        },
        &mut String::new(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("10m"), "{e}");

    // The page and its assets are public, under a policy that allows only
    // its own origin.
    let page = reqwest::get(format!("{}/", b.url())).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("<html"));
    let (status, _) = get(format!("{}/console/app.js", b.url())).await;
    assert_eq!(status, 200);
    let (status, _) = get(format!("{}/console/..%2fapi.rs", b.url())).await;
    assert_eq!(status, 404);

    a.stop();
    b.stop();
}
