//! What an output says of where it came from, per deployment
//! (`provenance`): four `runnel-*` headers, one compact header, or none.
//! In every mode the `runnel-*` headers an input brings are dropped (a
//! producer cannot forge provenance), the input's other headers are kept,
//! and dead letters carry the full headers.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::sync::Arc;
use std::time::Duration;

use runnel_host::config::Provenance;
use runnel_host::runner::{Deployment, Node};
use runnel_tests::kafka::{Rec, broker, produce, raw_headers, read, spec, topics, unique};
use runnel_tests::{engine, guest, guests};

/// The headers of a message as text: (name, value).
fn headers(m: &rdkafka::message::OwnedMessage) -> Vec<(String, String)> {
    raw_headers(m)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v.unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

fn runnel_names(h: &[(String, String)]) -> Vec<&str> {
    h.iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("runnel-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provenance_mode_writes_its_headers_and_none_can_be_forged() {
    let (_broker, kafka) = broker().await;
    let input = unique("in");
    let modes = [Provenance::Headers, Provenance::Compact, Provenance::None];
    let outputs: Vec<String> = modes
        .iter()
        .map(|m| unique(&format!("out-{m:?}")))
        .collect();
    let mut names: Vec<String> = vec![input.clone()];
    for o in &outputs {
        names.push(o.clone());
        names.push(format!("{o}.dlq"));
    }
    topics(
        &kafka,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        1,
    )
    .await;
    let module = Arc::new(
        engine(None)
            .load("threshold", &guest(guests::THRESHOLD_FILTER))
            .unwrap(),
    );
    let deployments: Vec<Deployment> = modes
        .iter()
        .zip(&outputs)
        .map(|(mode, output)| {
            let mut d = spec(
                "prov",
                guests::THRESHOLD_FILTER,
                &input,
                output,
                &[("field", "x"), ("min", "1")],
            );
            d.provenance = *mode;
            Deployment::new(d, module.clone(), None)
        })
        .collect();
    let names: Vec<String> = deployments.iter().map(|d| d.spec.name.clone()).collect();
    let node = Node::start(&kafka, deployments).unwrap();

    let forged: Vec<(String, String)> = vec![
        ("source".into(), "test".into()),
        ("runnel-deployment".into(), "forged".into()),
        ("runnel-version".into(), "99".into()),
        ("runnel-provenance".into(), "forged/99/sha256:00".into()),
    ];
    let records: Vec<Rec> = vec![
        (Some("k".into()), r#"{"x":5}"#.into(), forged.clone()),
        (Some("k".into()), "not json".into(), forged),
    ];
    produce(&kafka, &input, &records).await;

    let digest = format!("sha256:{}", module.digest());
    for ((mode, output), name) in modes.iter().zip(&outputs).zip(&names) {
        let out = read(&kafka, output, 1, Duration::from_secs(60)).await;
        assert_eq!(out.len(), 1, "{mode:?}: one output");
        let h = headers(&out[0]);
        assert!(
            h.contains(&("source".into(), "test".into())),
            "{mode:?}: {h:?}"
        );
        let want: Vec<(String, String)> = match mode {
            Provenance::Headers => vec![
                ("runnel-deployment".into(), name.clone()),
                ("runnel-version".into(), "1".into()),
                ("runnel-module".into(), digest.clone()),
            ],
            Provenance::Compact => vec![("runnel-provenance".into(), format!("{name}/1/{digest}"))],
            Provenance::None => vec![],
        };
        let got: Vec<(String, String)> = h
            .iter()
            .filter(|(k, _)| k.starts_with("runnel-"))
            .cloned()
            .collect();
        assert_eq!(got, want, "{mode:?}: the output's runnel headers");

        // The dead letter has the full headers, whatever the mode.
        let dlq = read(&kafka, &format!("{output}.dlq"), 1, Duration::from_secs(60)).await;
        assert_eq!(dlq.len(), 1, "{mode:?}: one dead letter");
        let h = headers(&dlq[0]);
        assert!(
            h.contains(&("runnel-deployment".into(), name.clone())),
            "{mode:?}: {h:?}"
        );
        assert!(
            h.contains(&("runnel-version".into(), "1".into())),
            "{mode:?}: {h:?}"
        );
        assert!(
            h.contains(&("source".into(), "test".into())),
            "{mode:?}: {h:?}"
        );
        let names = runnel_names(&h);
        assert!(!names.contains(&"runnel-provenance"), "{mode:?}: {h:?}");
        assert_eq!(
            names.iter().filter(|n| **n == "runnel-deployment").count(),
            1,
            "{mode:?}: the forged one is gone: {h:?}"
        );
    }
    node.stop();
}
