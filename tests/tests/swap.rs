//! Hot swap under continuous load, against the embedded broker: no record
//! lost, none run by both versions, one switch per partition.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runnel_host::config::DeploymentSpec;
use runnel_host::engine::Module;
use runnel_host::runner::{Deployment, Node};
use runnel_tests::kafka::{broker, header, positions, read, spec, stream, topics, unique, value};
use runnel_tests::{engine, guest, guests};

const WAIT: Duration = Duration::from_secs(90);

fn scorer(spec: &DeploymentSpec, module: &Arc<Module>, model: &str) -> Deployment {
    Deployment::new(
        spec.clone(),
        module.clone(),
        Some(model.as_bytes().to_vec()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swap_under_load_switches_each_partition_once_and_loses_nothing() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 3).await;
    let engine = engine(None);
    let module = Arc::new(engine.load("echo", &guest(guests::ECHO_SCORER)).unwrap());
    let d = spec("swap", guests::ECHO_SCORER, &input, &output, &[]);
    let name = d.name.clone();
    let node = Arc::new(Node::start(&kafka, vec![scorer(&d, &module, "v1:")]).unwrap());

    // Records keep coming while the swap happens.
    const N: usize = 3000;
    let producing = stream(&kafka, &input, 30, Duration::from_millis(30));
    read(&kafka, &output, 500, WAIT).await;

    // A model the function refuses never replaces the running one.
    let refused = tokio::task::spawn_blocking({
        let (node, d, module, name) = (node.clone(), d.clone(), module.clone(), name.clone());
        move || node.swap(&name, scorer(&d, &module, ""))
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(refused.contains("the model is empty"), "{refused}");
    assert!(refused.contains("the old one keeps running"), "{refused}");
    assert_eq!(node.status()[0].version, 1);

    let report = tokio::task::spawn_blocking({
        let (node, d, module, name) = (node.clone(), d.clone(), module.clone(), name.clone());
        move || node.swap(&name, scorer(&d, &module, "v2:"))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.version, 2);
    producing.await.unwrap();

    // Where each input record sits: (partition, offset).
    let position = positions(&kafka, &input, N).await;
    assert_eq!(position.len(), N);

    let out = read(&kafka, &output, N, WAIT).await;
    let mut seen: BTreeMap<(i32, i64), (String, String)> = BTreeMap::new();
    for m in &out {
        let v = value(m);
        let (prefix, original) = v.split_at(3);
        let version = header(m, "runnel-version").unwrap();
        let model = header(m, "runnel-model").unwrap();
        assert!(model.starts_with("sha256:"), "{model}");
        assert_eq!(
            (prefix, version.as_str()),
            if prefix == "v1:" {
                ("v1:", "1")
            } else {
                ("v2:", "2")
            },
            "the version header names the version that ran"
        );
        let at = position[original];
        assert!(
            seen.insert(at, (prefix.to_owned(), model)).is_none(),
            "{original} was run twice"
        );
    }
    assert_eq!(seen.len(), N, "every input offset once in the output");
    let v1 = seen.values().filter(|(v, _)| v == "v1:").count();
    assert!(
        (500..N).contains(&v1),
        "the swap happened mid-stream: {v1} of {N} on v1"
    );
    let models: std::collections::BTreeSet<&String> = seen.values().map(|(_, m)| m).collect();
    assert_eq!(models.len(), 2, "the model header names each model");

    // Per partition, in offset order: v1 ... v1 v2 ... v2.
    for p in 0..3 {
        let versions: Vec<&str> = seen
            .range((p, 0)..(p + 1, 0))
            .map(|(_, (v, _))| v.as_str())
            .collect();
        let switches = versions.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 1, "partition {p} switched {switches} times");
        assert_eq!(versions.last(), Some(&"v2:"), "partition {p} ends on v2");
    }
    let status = node.status();
    assert_eq!((status[0].version, status[0].records_in), (2, N as u64));
    Arc::into_inner(node).unwrap().stop();
}
