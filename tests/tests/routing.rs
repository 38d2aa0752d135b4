//! Several output topics: each output record picks one (`Output::to`,
//! `Output::to_index`, the header `runnel-output`), the first by default;
//! a record with an output that picks none fails as a whole, none of its
//! outputs produced and none of its state kept.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use runnel_host::config::{DeploymentSpec, Outputs};
use runnel_host::runner::{Deployment, Node};
use runnel_tests::kafka::{Rec, broker, key, produce, read, spec, topics, unique, value};
use runnel_tests::{engine, guests};

const WAIT: Duration = Duration::from_secs(30);

/// What each topic received: (key, count) in order.
fn got(messages: &[rdkafka::message::OwnedMessage]) -> Vec<(String, String)> {
    messages.iter().map(|m| (key(m), value(m))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_output_goes_to_the_topic_it_picks_and_a_bad_pick_fails_the_whole_record() {
    let (_broker, kafka) = broker().await;
    let input = unique("in");
    let (ok, slow, audit) = (unique("ok"), unique("slow"), unique("audit"));
    let dlq = format!("{ok}.dlq");
    topics(&kafka, &[&input, &ok, &slow, &audit, &dlq], 1).await;
    let spec = DeploymentSpec {
        output: Outputs::new(vec![ok.clone(), slow.clone(), audit.clone()]),
        stores: vec!["counts".to_owned()],
        batch_size: 64,
        linger_ms: 200,
        ..spec("router", guests::ROUTER, &input, &ok, &[])
    };
    assert_eq!(spec.dead_letter_topic(), dlq, "the first output's");

    // One partition, one batch: the failed records are amid good ones.
    let records: Vec<Rec> = [
        ("a", "-".to_owned()),
        ("b", "nope".to_owned()),
        ("a", slow.clone()),
        ("c", format!("{ok},nope")),
        ("a", "#2".to_owned()),
        ("b", "-".to_owned()),
        ("a", format!("{audit},#0")),
        ("c", "#1".to_owned()),
        ("d", "#3".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (Some(k.to_owned()), v, vec![]))
    .collect();
    produce(&kafka, &input, &records).await;
    let node = Node::start(&kafka, vec![Deployment::load(&engine(None), spec).unwrap()]).unwrap();

    let on_ok = read(&kafka, &ok, 3, WAIT).await;
    let on_slow = read(&kafka, &slow, 2, WAIT).await;
    let on_audit = read(&kafka, &audit, 2, WAIT).await;
    let dead = read(&kafka, &dlq, 3, WAIT).await;
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    // A record's count moves only if all its outputs could be routed.
    assert_eq!(
        got(&on_ok),
        [pair("a", "1"), pair("b", "1"), pair("a", "4")]
    );
    assert_eq!(got(&on_slow), [pair("a", "2"), pair("c", "1")]);
    assert_eq!(got(&on_audit), [pair("a", "3"), pair("a", "4")]);
    let mut errors = BTreeMap::new();
    for m in &dead {
        let error = m
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == "runnel-error")
            .map(|h| String::from_utf8_lossy(h.value.unwrap()).into_owned())
            .unwrap();
        errors.insert(value(m), error);
    }
    assert_eq!(errors.len(), 3, "{errors:?}");
    for (failed, picked) in [("nope", "\"nope\""), ("#3", "\"3\"")] {
        let error = &errors[failed];
        assert!(error.contains(picked) && error.contains(&slow), "{error}");
    }
    assert!(errors[&format!("{ok},nope")].contains("output 1 of the record"));
    // runnel's header is read, not written.
    for m in on_ok.iter().chain(&on_slow).chain(&on_audit) {
        let headers = m.headers().unwrap();
        assert!(headers.iter().all(|h| h.key != "runnel-output"));
    }
    let status = node.status();
    assert_eq!(status[0].dead_lettered, 3, "{status:?}");
    assert_eq!(status[0].traps, 0, "a bad pick is not a trap: {status:?}");
    node.stop();
}

/// The input's own `runnel-output` header picks nothing: a function that
/// copies its input's headers (the identity map) still writes to the first
/// output, whatever a producer of the input put there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inputs_runnel_output_header_picks_nothing() {
    let (_broker, kafka) = broker().await;
    let input = unique("in");
    let (first, second) = (unique("first"), unique("second"));
    topics(
        &kafka,
        &[&input, &first, &second, &format!("{first}.dlq")],
        1,
    )
    .await;
    let spec = DeploymentSpec {
        output: Outputs::new(vec![first.clone(), second.clone()]),
        ..spec("copy", guests::IDENTITY_MAP, &input, &first, &[])
    };
    let forged = |v: &str| vec![("runnel-output".to_owned(), v.to_owned())];
    let records = vec![
        (Some("k".to_owned()), "one".to_owned(), forged("1")),
        (Some("k".to_owned()), "two".to_owned(), forged(&second)),
        (Some("k".to_owned()), "three".to_owned(), forged("nope")),
    ];
    produce(&kafka, &input, &records).await;
    let node = Node::start(&kafka, vec![Deployment::load(&engine(None), spec).unwrap()]).unwrap();
    let out = read(&kafka, &first, 3, WAIT).await;
    let values: Vec<String> = out.iter().map(value).collect();
    assert_eq!(values, ["one", "two", "three"]);
    let status = node.status();
    assert_eq!(status[0].dead_lettered, 0, "{status:?}");
    assert_eq!(
        status[0].records_out_by_topic.get(&first).copied(),
        Some(3),
        "{status:?}"
    );
    assert!(
        read(&kafka, &second, 1, Duration::from_secs(2))
            .await
            .is_empty()
    );
    node.stop();
}
