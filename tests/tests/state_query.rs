//! Queries of a processor's state through the admin API and `runnel state`:
//! two nodes share a keyed count, any node answers for any key (the one
//! that does not hold the key's partition forwards), listings page through
//! every partition, bad requests get a sentence, and after a node leaves,
//! the partitions the survivor takes over answer without a new record
//! arriving (they are restored when assigned, not at their next record);
//! a swap with --reset-state starts the stores empty and deletes the old
//! changelog topic; deleting the processor asks what becomes of its state,
//! and dropping it deletes the changelog topics.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use runnel_host::cli::control::{
    ApiArgs, ControlCommand, StateArgs, StateCommand, SwapArgs, ValueAs, run,
};
use runnel_host::control::{ControlOptions, ControlPlane};
use runnel_host::kafka::{KafkaOptions, partitioner};
use runnel_host::registry::RegistryTopics;
use runnel_host::state::changelog;
use runnel_tests::kafka::{broker, key, read, topics, unique, value};
use runnel_tests::{engine, guest, guests};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const KEYS: usize = 30;
const PER_KEY: usize = 10;

async fn node(kafka: &KafkaOptions, registry: &str, id: &str) -> ControlPlane {
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(registry),
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: Some(id.to_owned()),
        ..ControlOptions::new(kafka.clone())
    };
    ControlPlane::start(options, engine(None), vec![])
        .await
        .unwrap()
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::Client::new().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asks until the answer is not "retry" (503), for up to `WAIT`.
async fn answered(url: &str) -> (u16, Value) {
    let until = Instant::now() + WAIT;
    loop {
        let (s, v) = get(url).await;
        if s != 503 || Instant::now() > until {
            return (s, v);
        }
        assert_eq!(v["retry"], true, "a 503 says to retry: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// postcard's u64: a LEB128 varint.
fn count(value_hex: &Value) -> u64 {
    let bytes = hex::decode(value_hex.as_str().unwrap()).unwrap();
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            assert_eq!(i + 1, bytes.len(), "one varint: {value_hex}");
            return v;
        }
    }
    panic!("not a varint: {value_hex}")
}

/// Produces as a Java client would place the keys (murmur2), which is what
/// a query assumes unless told the partition.
async fn produce_keyed(kafka: &KafkaOptions, topic: &str, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for i in 0..n {
        let k = format!("k{}", i % KEYS);
        let v = format!("r{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&k).payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Deploys the keyed count (`running-count`, store `counts`) through
/// `cp`'s API.
async fn deploy_count(cp: &ControlPlane, name: &str, input: &str, output: &str) {
    let client = reqwest::Client::new();
    let module: Value = client
        .post(format!("{}/v1/modules", cp.url()))
        .header("x-runnel-request", "test")
        .body(guest(guests::RUNNING_COUNT))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = client
        .put(format!("{}/v1/deployments/{name}", cp.url()))
        .json(&json!({
            "module": module["digest"],
            "input": [input],
            "output": output,
            "stores": ["counts"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

fn nodes_with_partitions(cp: &ControlPlane, name: &str) -> usize {
    cp.registry()
        .nodes(Duration::from_secs(10))
        .iter()
        .filter(|r| {
            r["deployments"].as_array().into_iter().flatten().any(|d| {
                d["name"] == name && d["partitions"].as_array().is_some_and(|p| !p.is_empty())
            })
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_for_any_key_and_a_moved_partition_answers_without_new_records() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("counts"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 3).await;
    let registry = unique("reg");
    let a = node(&kafka, &registry, "node-a").await;
    let b = node(&kafka, &registry, "node-b").await;
    let name = unique("count");

    deploy_count(&a, &name, &input, &output).await;

    // Both nodes hold partitions before the records come.
    let until = Instant::now() + WAIT;
    while nodes_with_partitions(&a, &name) < 2 {
        assert!(Instant::now() < until, "both nodes never held partitions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce_keyed(&kafka, &input, KEYS * PER_KEY).await;
    let out = read(&kafka, &output, KEYS * PER_KEY, WAIT).await;
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for m in &out {
        let c: u64 = value(m).parse().unwrap();
        let e = last.entry(key(m)).or_default();
        *e = (*e).max(c);
    }
    assert_eq!(last.len(), KEYS);
    assert!(last.values().all(|&c| c == PER_KEY as u64), "{last:?}");

    // Any node answers for any key; the other node's keys are forwarded.
    let state =
        |cp: &ControlPlane, q: &str| format!("{}/v1/deployments/{name}/state/counts?{q}", cp.url());
    let mut answered_by = BTreeMap::<String, usize>::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        for cp in [&a, &b] {
            let (s, v) = answered(&state(cp, &format!("key={key}"))).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["found"], true, "{v}");
            assert_eq!(count(&v["value_hex"]), PER_KEY as u64, "{v}");
            assert_eq!(v["key"], key.as_str());
            assert_eq!(
                v["partition"],
                partitioner::partition(key.as_bytes(), 3),
                "the key's partition by murmur2: {v}"
            );
            *answered_by
                .entry(format!("{} asked {}", v["node"], cp.node_id()))
                .or_default() += 1;
        }
    }
    // Each node answered some keys itself and had others answered for it.
    for (asked, other) in [("node-a", "node-b"), ("node-b", "node-a")] {
        assert!(
            answered_by.contains_key(&format!("\"{other}\" asked {asked}")),
            "{asked} forwarded nothing: {answered_by:?}"
        );
        assert!(
            answered_by.contains_key(&format!("\"{asked}\" asked {asked}")),
            "{asked} answered nothing itself: {answered_by:?}"
        );
    }

    // A key nobody counted, in a named partition, and as hex.
    let (s, v) = answered(&state(&a, "key=nobody")).await;
    assert_eq!(
        (s, &v["found"], &v["value_hex"]),
        (200, &json!(false), &Value::Null),
        "{v}"
    );
    let (s, v) = answered(&state(&b, &format!("key_hex={}", hex::encode("k3")))).await;
    assert_eq!((s, count(&v["value_hex"])), (200, PER_KEY as u64), "{v}");

    // A listing pages through every partition, each key once.
    let mut listed = BTreeMap::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &after {
            Some(c) => format!("limit=7&after={c}"),
            None => "limit=7".to_owned(),
        };
        let (s, v) = answered(&state(&b, &q)).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        for e in v["entries"].as_array().unwrap() {
            let k = e["key"].as_str().unwrap().to_owned();
            assert!(listed.insert(k, count(&e["value_hex"])).is_none(), "{v}");
        }
        match v["next"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        listed, last,
        "the listing has every key once, with its count"
    );
    assert!(pages >= KEYS / 7, "{pages} pages of 7");

    // Wrong requests get a sentence.
    let cases = [
        ("/state/nope?key=k1", 404, "no store named \"nope\""),
        ("/state/counts?key=k1&key_hex=6b31", 400, "not both"),
        ("/state/counts?key_hex=zz", 400, "is not hex"),
        ("/state/counts?key=k1&partition=3", 400, "not one of the 3"),
        ("/state/counts?key=k1&limit=5", 400, "takes neither"),
        ("/state/counts?after=9:00", 400, "is not one this API gave"),
        ("/state/counts?limit=0", 400, "is not 1 to 1000"),
        ("/state/counts?color=red", 400, "unknown field"),
    ];
    for (path, status, says) in cases {
        let (s, v) = get(&format!("{}/v1/deployments/{name}{path}", a.url())).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{path}: {v}");
    }
    let (s, v) = get(&format!(
        "{}/v1/deployments/nope/state/counts?key=k1",
        a.url()
    ))
    .await;
    assert_eq!(s, 404, "{v}");

    // The CLI, through the other node.
    let api = ApiArgs {
        api: b.url(),
        token: None,
        json: false,
        api_timeout: 60,
    };
    let how = StateArgs {
        key_hex: false,
        partition: None,
        value_as: ValueAs::U64,
    };
    let mut out = String::new();
    let get_k7 = ControlCommand::State(StateCommand::Get {
        name: name.clone(),
        store: "counts".into(),
        key: "k7".into(),
        how: how.clone(),
    });
    run(&api, &get_k7, &mut out).await.unwrap();
    assert_eq!(out, format!("{PER_KEY}\n"));
    let mut out = String::new();
    let ls = ControlCommand::State(StateCommand::Ls {
        name: name.clone(),
        store: "counts".into(),
        how,
        page: 4,
    });
    run(&api, &ls, &mut out).await.unwrap();
    assert_eq!(out.lines().count(), KEYS, "{out}");
    assert!(out.contains(&format!("k7\t{PER_KEY}\n")), "{out}");

    // Node b leaves. Node a takes its partitions and restores them as it
    // gets them: they answer though no record comes.
    tokio::task::spawn_blocking(move || b.stop()).await.unwrap();
    for k in 0..KEYS {
        let (s, v) = answered(&state(&a, &format!("key=k{k}"))).await;
        assert_eq!(s, 200, "k{k}: {v}");
        assert_eq!(v["node"], "node-a", "{v}");
        assert_eq!(count(&v["value_hex"]), PER_KEY as u64, "{v}");
    }
    let status = a.node().status();
    let restores = status.iter().find(|s| s.name == name).unwrap().restores;
    assert!(
        restores >= 3,
        "every partition restored on node a: {status:?}"
    );
    let metrics = reqwest::get(format!("{}/metrics", a.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        format!("runnel_state_restores_total{{deployment=\"{name}\"}} {restores}"),
        format!("runnel_state_writes_total{{deployment=\"{name}\"}} "),
        format!("runnel_state_last_restore_keys{{deployment=\"{name}\"}} "),
    ] {
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }

    // A swap that resets the state: the new version starts with empty
    // stores in new changelog topics, and the old topic is deleted.
    let api_a = ApiArgs {
        api: a.url(),
        ..api
    };
    let swap = |yes: bool| {
        ControlCommand::Swap(SwapArgs {
            name: name.clone(),
            module: None,
            model: None,
            config: vec![],
            reset_state: true,
            yes,
        })
    };
    let e = run(&api_a, &swap(false), &mut String::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("add --yes to confirm"), "{e}");
    let old_log = changelog::topic(&name, "counts");
    let mut out = String::new();
    run(&api_a, &swap(true), &mut out).await.unwrap();
    assert_eq!(
        out,
        format!(
            "swapped {name} to version 2 (from 1)\nstate reset: deleted the old changelog topic {old_log}\n"
        )
    );
    let (s, v) = answered(&state(&a, "key=k1")).await;
    assert_eq!(
        (s, &v["found"]),
        (200, &json!(false)),
        "empty after the reset: {v}"
    );
    produce_keyed(&kafka, &input, KEYS).await;
    for k in 0..KEYS {
        let until = Instant::now() + WAIT;
        loop {
            let (s, v) = answered(&state(&a, &format!("key=k{k}"))).await;
            assert_eq!(s, 200, "{v}");
            if v["found"] == true {
                assert_eq!(count(&v["value_hex"]), 1, "counted from empty: {v}");
                break;
            }
            assert!(Instant::now() < until, "k{k} never counted after the reset");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Deleting a processor asks what becomes of its state; dropping it
    // deletes the changelog topics once no node runs the deployment.
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/deployments/{name}", a.url()))
        .header("x-runnel-request", "test")
        .send()
        .await
        .unwrap();
    let (s, v) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--drop-state"), "{v}");
    let changelog = changelog::topic_at(&name, "counts", 1);
    assert_eq!(topic_partitions(&kafka, &changelog).await, Some(3));
    assert_eq!(topic_partitions(&kafka, &old_log).await, None);
    let mut out = String::new();
    let delete = ControlCommand::Delete {
        name: name.clone(),
        drop_state: true,
        keep_state: false,
    };
    run(&api_a, &delete, &mut out).await.unwrap();
    assert_eq!(
        out,
        format!("deleted {name}\ndeleted its changelog topic {changelog}\n")
    );
    assert!(a.node().status().iter().all(|s| s.name != name));
    let until = Instant::now() + WAIT;
    while topic_partitions(&kafka, &changelog).await.is_some() {
        assert!(Instant::now() < until, "{changelog} is still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::spawn_blocking(move || a.stop()).await.unwrap();
}

async fn topic_partitions(kafka: &KafkaOptions, topic: &str) -> Option<i32> {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        runnel_host::kafka::partition_count(&kafka, &topic, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap()
}

/// A forged node report (anyone who can write `<prefix>.nodes`) names an
/// API that redirects elsewhere: the node that forwards a query there does
/// not follow the redirect, so the caller's token goes nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_query_follows_no_redirect() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("counts"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 1).await;
    let registry = unique("reg");
    let a = node(&kafka, &registry, "node-a").await;
    let name = unique("count");
    deploy_count(&a, &name, &input, &output).await;
    let client = reqwest::Client::new();
    // Paused: node a holds no partition of it, so it forwards.
    let r = client
        .post(format!("{}/v1/deployments/{name}/pause", a.url()))
        .header("x-runnel-request", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Where a redirect would lead, and the forged API that redirects there.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let reached = reached.clone();
        async move {
            while let Ok((mut s, _)) = sink.accept().await {
                reached.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
            }
        }
    });
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_addr = evil.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = evil.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{sink_addr}/steal\r\ncontent-length: 0\r\n\r\n"
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    let forge = || {
        json!({
            "node": "evil",
            "api": format!("http://{evil_addr}"),
            "at_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            "deployments": [{"name": name, "partitions": [{"topic": input, "partition": 0}]}],
        })
    };
    let until = Instant::now() + WAIT;
    loop {
        a.registry().report_node("evil", Some(&forge()));
        let (s, v) = get(&format!(
            "{}/v1/deployments/{name}/state/counts?key=k1",
            a.url()
        ))
        .await;
        if s == 502 {
            assert!(v["error"].as_str().unwrap().contains("evil"), "{v}");
            break;
        }
        assert_eq!(s, 503, "until the forged report is read: {v}");
        assert!(Instant::now() < until, "never forwarded: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(reached.load(Ordering::SeqCst), 0, "a redirect was followed");
    tokio::task::spawn_blocking(move || a.stop()).await.unwrap();
}
