//! No record, size or panic stops a deployment: records with header names
//! that are not UTF-8, outputs and dead letters too large to produce, a
//! dead-letter topic that refuses everything, and a thread that panics.
//! Against the embedded broker, and librdkafka's mock cluster where a broker
//! must refuse what the embedded one takes.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use runnel_host::config::DeploymentSpec;
use runnel_host::kafka::KafkaOptions;
use runnel_host::runner::fault::{self, Site};
use runnel_host::runner::{Deployment, DeploymentState, DeploymentStatus, Node};
use runnel_tests::kafka::{
    Rec, broker, header, key, produce, raw_headers, read, spec, topics, unique, value,
};
use runnel_tests::{engine, guests};

const WAIT: Duration = Duration::from_secs(60);

/// Produces one record whose headers have the names `names` (in order,
/// each with the value "kept as it came"), which may be any bytes but NUL,
/// through librdkafka's C API: no client library sends a name that is not
/// UTF-8.
#[allow(unsafe_code)]
fn produce_with_raw_headers(brokers: &str, topic: &str, key: &[u8], value: &[u8], names: &[&[u8]]) {
    use rdkafka::bindings as rd;
    use std::ffi::{CString, c_void};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topic = CString::new(topic).unwrap();
    let names: Vec<CString> = names.iter().map(|n| CString::new(*n).unwrap()).collect();
    let header_value = b"kept as it came";
    let vu = |vtype, u| rd::rd_kafka_vu_t { vtype, u };
    let mem = |bytes: &[u8]| rd::rd_kafka_vu_s__bindgen_ty_1 {
        mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: bytes.as_ptr().cast_mut().cast::<c_void>(),
            size: bytes.len(),
        },
    };
    let mut vus = vec![
        vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
            rd::rd_kafka_vu_s__bindgen_ty_1 {
                cstr: topic.as_ptr(),
            },
        ),
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY, mem(key)),
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE, mem(value)),
    ];
    for name in &names {
        vus.push(vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADER,
            rd::rd_kafka_vu_s__bindgen_ty_1 {
                header: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: header_value.as_ptr().cast::<c_void>(),
                    size: header_value.len() as isize,
                },
            },
        ));
    }
    // SAFETY: `vus` describes the record with pointers that live until the
    // call returns; librdkafka copies key, value and header (RD_KAFKA_VTYPE_*
    // without MSG_F_FREE), so nothing it keeps points into this frame.
    let error =
        unsafe { rd::rd_kafka_produceva(producer.client().native_ptr(), vus.as_ptr(), vus.len()) };
    assert!(error.is_null(), "rd_kafka_produceva refused the record");
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn status_of(node: &Node) -> DeploymentStatus {
    node.status().pop().unwrap()
}

/// Waits until `ok` holds for the deployment's status.
async fn wait_for(
    node: &Node,
    what: &str,
    ok: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status_of(node);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn records(range: std::ops::Range<usize>) -> Vec<Rec> {
    range
        .map(|i| (Some(format!("k{i}")), format!("ok-{i}"), vec![]))
        .collect()
}

/// A consumed record without headers is recognised as such without asking
/// librdkafka for its headers (which costs it an allocation), by reading
/// librdkafka's private message struct: this fails if the librdkafka this
/// build links lays it out otherwise than `kafka::headers::certainly_none`
/// expects, which then answers `false` for every record and costs what it
/// saves. Records with headers, empty values, null values and names that
/// are not UTF-8 are never taken for records without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_headers_are_known_without_parsing_and_no_others_are() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::BaseRecord;
    use runnel_host::kafka::headers::certainly_none;
    let (_broker, kafka) = broker().await;
    let topic = unique("headers");
    topics(&kafka, &[&topic], 1).await;
    // An empty header list, then a named header (the helper sends a list,
    // empty or not).
    produce(
        &kafka,
        &topic,
        &[
            (None, "empty list".into(), vec![]),
            (None, "one".into(), vec![("h".into(), "v".into())]),
            (
                None,
                "empty value".into(),
                vec![("h".into(), String::new())],
            ),
        ],
    )
    .await;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    // And a delivery report, which is a producer's message: never certain.
    struct Reports(std::sync::Mutex<Vec<bool>>);
    impl rdkafka::ClientContext for Reports {}
    impl rdkafka::producer::ProducerContext for Reports {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, (): ()) {
            let m = r.as_ref().unwrap();
            self.0.lock().unwrap().push(certainly_none(m));
        }
    }
    let reporting: BaseProducer<Reports> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create_with_context(Reports(std::sync::Mutex::default()))
        .unwrap();
    reporting
        .send(BaseRecord::<(), _>::to(&topic).payload("no list"))
        .unwrap();
    reporting.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(*reporting.context().0.lock().unwrap(), [false]);
    producer
        .send(
            BaseRecord::<(), _>::to(&topic)
                .payload("null value")
                .headers(OwnedHeaders::new().insert(Header::<&[u8]> {
                    key: "h",
                    value: None,
                })),
        )
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    produce_with_raw_headers(&kafka.brokers, &topic, b"k", b"not utf-8", &[b"\xff\xfe"]);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", unique("g"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 6 {
        assert!(Instant::now() < deadline, "read {seen:?} of 6 records");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap();
        let value = String::from_utf8_lossy(m.payload().unwrap()).into_owned();
        let none = certainly_none(&m);
        let count = m
            .headers()
            .map_or(0, |h| runnel_host::kafka::headers::raw(h).count());
        match value.as_str() {
            "empty list" | "no list" => assert!(
                none,
                "{value:?}: a record without headers must be known as such; \
                 has librdkafka's rd_kafka_msg_t changed?"
            ),
            _ => assert!(!none && count == 1, "{value:?}: {count} headers"),
        }
        // Asked again, after librdkafka parsed them: the same answer.
        assert_eq!(certainly_none(&m), none, "{value:?}");
        seen.insert(value);
    }
}

/// Finding 1: a header name that is not UTF-8 used to panic the consumer
/// thread (rdkafka unwraps the name's `to_str`), on every node, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_dead_letters_its_record_and_the_rest_flow() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 1).await;
    produce(&kafka, &input, &records(0..5)).await;
    // With names of runnel's own: a record that never reaches the function
    // cannot spoof where it came from either.
    produce_with_raw_headers(
        &kafka.brokers,
        &input,
        b"k-bad",
        b"bad",
        &[
            b"name-\xff\xfe",
            b"runnel-source-offset",
            b"runnel-deployment",
            b"runnel-original-size",
        ],
    );
    produce(&kafka, &input, &records(5..10)).await;

    let node = Node::start(
        &kafka,
        vec![deployment(spec(
            "copy",
            guests::IDENTITY_MAP,
            &input,
            &output,
            &[],
        ))],
    )
    .unwrap();
    let out = read(&kafka, &output, 10, WAIT).await;
    let values: BTreeSet<String> = out.iter().map(value).collect();
    let want: BTreeSet<String> = (0..10).map(|i| format!("ok-{i}")).collect();
    assert_eq!(values, want, "every other record went through, once");
    assert_eq!(out.len(), 10);

    let dead = read(&kafka, &dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(key(d), "k-bad");
    assert_eq!(value(d), "bad");
    assert_eq!(
        header(d, "runnel-error-kind").as_deref(),
        Some("bad-header")
    );
    assert!(
        header(d, "runnel-error").unwrap().contains("not UTF-8"),
        "{:?}",
        header(d, "runnel-error")
    );
    assert_eq!(header(d, "runnel-source-offset").as_deref(), Some("5"));
    let raw = raw_headers(d);
    assert_eq!(
        raw.first(),
        Some(&(b"name-\xff\xfe".to_vec(), Some(b"kept as it came".to_vec()))),
        "the record's own header is kept as it came, first"
    );
    for name in ["runnel-source-offset", "runnel-deployment"] {
        assert_eq!(
            raw.iter().filter(|(k, _)| k == name.as_bytes()).count(),
            1,
            "{name} is runnel's alone: {raw:?}"
        );
    }
    assert!(
        header(d, "runnel-deployment").unwrap().starts_with("copy"),
        "{raw:?}"
    );
    assert!(
        !raw.iter().any(|(k, _)| k == b"runnel-original-size"),
        "{raw:?}"
    );

    let s = wait_for(&node, "counted", |s| s.records_in == 11).await;
    assert_eq!(s.state, DeploymentState::Running);
    assert_eq!((s.records_out, s.dead_lettered), (10, 1), "{s:#?}");
    node.stop();
}

fn deployment(spec: DeploymentSpec) -> Deployment {
    Deployment::load(&engine(None), spec).unwrap()
}

/// Finding 2: a kept record of about 1 MB, over the producer's
/// `message.max.bytes` once runnel's headers are added, was sent again every
/// 200 ms forever, wedging its partition, and the node could not stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_record_too_large_to_produce_is_dead_lettered_and_the_node_stops_in_time() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 1).await;
    produce(&kafka, &input, &records(0..3)).await;
    // An external client with a larger limit writes it; the embedded broker
    // takes any size.
    let big = vec![b'x'; 999_950];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::BaseRecord::to(&input)
                .key("big")
                .payload(&big),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    produce(&kafka, &input, &records(3..6)).await;

    let node = Node::start(
        &kafka,
        vec![deployment(spec(
            "keep",
            guests::IDENTITY_FILTER,
            &input,
            &output,
            &[],
        ))],
    )
    .unwrap();
    let out = read(&kafka, &output, 6, WAIT).await;
    let values: BTreeSet<String> = out.iter().map(value).collect();
    assert_eq!(values.len(), 6, "the records after it flow: {values:?}");
    assert!(!values.iter().any(|v| v.starts_with('x')));

    let dead = read(&kafka, &dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(header(d, "runnel-error-kind").as_deref(), Some("too-large"));
    assert_eq!(header(d, "runnel-original-size").as_deref(), Some("999950"));
    assert_eq!(d.payload(), None, "the value is left out so that it fits");
    assert_eq!(key(d), "big");
    assert_eq!(header(d, "runnel-source-offset").as_deref(), Some("3"));
    assert!(
        header(d, "runnel-error").unwrap().contains("too large"),
        "{:?}",
        header(d, "runnel-error")
    );

    let s = wait_for(&node, "counted", |s| {
        s.dead_lettered == 1 && s.records_in == 7
    })
    .await;
    assert_eq!(s.state, DeploymentState::Running);
    let stopping = Instant::now();
    node.stop();
    let took = stopping.elapsed();
    eprintln!("the node stopped in {took:?}");
    assert!(took < Duration::from_secs(45), "the stop took {took:?}");
}

/// Finding 2, the dead letter's side: a record whose dead letter only passes
/// `message.max.bytes` through runnel's error headers. It is sent again cut
/// to fit, and records after it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_through_its_error_headers_is_cut_to_fit() {
    let (_broker, mut kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 1).await;
    // librdkafka's smallest limit. A 750-byte key with runnel's three
    // provenance headers (about 150 bytes) fits; with the eight headers of a
    // dead letter (about 300 bytes) it does not.
    kafka
        .properties
        .push(("message.max.bytes".into(), "1000".into()));
    let long_key = "k".repeat(750);
    let mut recs = records(0..4);
    recs.push((Some(long_key.clone()), "ok-long".into(), vec![]));
    recs.push((Some(long_key.clone()), "error".into(), vec![]));
    recs.extend(records(4..8));
    produce(&kafka, &input, &recs).await;

    let node = Node::start(
        &kafka,
        vec![deployment(spec(
            "hostile",
            guests::HOSTILE,
            &input,
            &output,
            &[],
        ))],
    )
    .unwrap();
    let out = read(&kafka, &output, 9, WAIT).await;
    let values: BTreeSet<String> = out.iter().map(value).collect();
    assert_eq!(values.len(), 9, "{values:?}");
    assert!(
        values.contains("ok-long"),
        "a long key alone fits: {values:?}"
    );

    let dead = read(&kafka, &dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1, "{:#?}", status_of(&node));
    let d = &dead[0];
    assert_eq!(
        header(d, "runnel-error-kind").as_deref(),
        Some("dead-letter-too-large")
    );
    assert_eq!(header(d, "runnel-original-size").as_deref(), Some("5"));
    assert_eq!(
        header(d, "runnel-original-key-size").as_deref(),
        Some("750")
    );
    assert_eq!(header(d, "runnel-source-offset").as_deref(), Some("5"));
    assert!(header(d, "runnel-error").unwrap().contains("asked to fail"));
    assert_eq!((d.key(), d.payload()), (None, None));
    let s = wait_for(&node, "counted", |s| s.records_in == 10).await;
    assert_eq!(s.state, DeploymentState::Running);
    node.stop();
}

/// A broker that refuses the outputs and then the dead letters for good (not
/// authorised): the deployment fails with the reason, and the offset of the
/// refused record is never committed, so nothing is lost. The embedded
/// broker has no ACLs, so librdkafka's mock cluster refuses here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_even_the_dead_letter_topic_refuses_the_deployment_fails_and_commits_nothing_past_it()
{
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    for t in [&input, &output, &dlq] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let kafka = KafkaOptions::new(mock.bootstrap_servers());
    produce(&kafka, &input, &records(0..3)).await;

    let d = spec("copy", guests::IDENTITY_MAP, &input, &output, &[]);
    let group = d.group();
    // Every produce request from now on is refused: the first output, its
    // dead letter, and the dead letter cut to fit.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1000],
    );
    let node = Node::start(&kafka, vec![deployment(d)]).unwrap();
    let s = wait_for(&node, "failed", |s| {
        matches!(s.state, DeploymentState::Failed { .. })
    })
    .await;
    let DeploymentState::Failed { error, retry_in_ms } = &s.state else {
        unreachable!()
    };
    assert!(error.contains("dead-letter topic cannot take"), "{error}");
    assert!(error.contains("Authorization"), "{error}");
    assert!(*retry_in_ms >= 1000);
    assert!(s.failures >= 1);
    let metrics = runnel_host::control::metrics::render(&node.status());
    assert!(
        metrics.contains(&format!(
            "runnel_deployment_state{{deployment=\"{}\",state=\"failed\"}} 1",
            s.name
        )),
        "{metrics}"
    );
    node.stop();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&input, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let offset = committed.elements()[0].offset();
    assert!(
        matches!(
            offset,
            rdkafka::Offset::Invalid | rdkafka::Offset::Offset(0)
        ),
        "nothing past the refused record is committed: {offset:?}"
    );
}

/// Finding 4: a thread that panicked died silently, its deployment `running`
/// while it did nothing. Each thread's panic now fails the deployment, with
/// the message in its status and metrics, and it starts again: no record is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_that_panics_fails_the_deployment_which_starts_again_and_loses_nothing() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 2).await;
    let d = spec("copy", guests::IDENTITY_MAP, &input, &output, &[]);
    let name = d.name.clone();
    let node = Node::start(&kafka, vec![deployment(d)]).unwrap();
    let mut total = 0;
    for (round, site) in [Site::Worker, Site::Delivery, Site::Consumer]
        .into_iter()
        .enumerate()
    {
        fault::arm(&name, site);
        produce(&kafka, &input, &records(total..total + 50)).await;
        total += 50;
        let s = wait_for(&node, "failed", |s| s.failures > round as u64).await;
        assert!(
            s.last_error.as_deref().is_some_and(|e| e.contains("panicked")
                && e.contains("a fault injected by a test")),
            "{site:?}: {:?}",
            s.last_error
        );
        let metrics = runnel_host::control::metrics::render(&node.status());
        assert!(
            metrics.contains(&format!(
                "runnel_deployment_failures_total{{deployment=\"{name}\"}} {}",
                round + 1
            )),
            "{metrics}"
        );
        wait_for(&node, "running again", |s| {
            s.state == DeploymentState::Running
        })
        .await;
    }
    let out = read(&kafka, &output, total, WAIT).await;
    let got: BTreeSet<String> = out.iter().map(value).collect();
    let want: BTreeSet<String> = (0..total).map(|i| format!("ok-{i}")).collect();
    assert_eq!(got, want, "every record has its output");
    node.stop();
}

/// Finding 1, the registry's side: its reader read header names with
/// rdkafka's iterator too, so one record written to `<prefix>.artifacts` by
/// any client stopped every node from following the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_record_with_a_header_name_that_is_not_utf8_is_passed_over() {
    use runnel_host::control::{ControlOptions, ControlPlane};
    use runnel_host::registry::RegistryTopics;
    let (_broker, kafka) = broker().await;
    let prefix = unique("reg");
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(&prefix),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ControlOptions::new(kafka.clone())
    };
    let cp = ControlPlane::start(options, engine(None), vec![])
        .await
        .unwrap();
    produce_with_raw_headers(
        &kafka.brokers,
        &format!("{prefix}.artifacts"),
        b"sha256:00/0",
        b"chunk",
        &[b"runnel-\xffkind"],
    );
    // An upload returns once this node's reader has read it back: it would
    // time out if the reader had died on the record before it.
    let bytes = runnel_tests::guest(guests::IDENTITY_FILTER);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/modules", cp.url()))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let digest = runnel_host::registry::digest(&bytes);
    assert!(cp.registry().artifact(&digest).is_some());
    tokio::task::spawn_blocking(move || cp.stop())
        .await
        .unwrap();
}

/// An output the broker refuses for good (not authorised on the output
/// topic) goes to the dead-letter topic with the reason, and the stream goes
/// on. librdkafka's mock cluster refuses the first produce request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_broker_refuses_for_good_is_dead_lettered_with_the_reason() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    for t in [&input, &output, &dlq] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let kafka = KafkaOptions::new(mock.bootstrap_servers());
    produce(&kafka, &input, &records(0..1)).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let node = Node::start(
        &kafka,
        vec![deployment(spec(
            "copy",
            guests::IDENTITY_MAP,
            &input,
            &output,
            &[],
        ))],
    )
    .unwrap();
    let dead = read(&kafka, &dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        header(d, "runnel-error-kind").as_deref(),
        Some("not-authorized")
    );
    assert_eq!(value(d), "ok-0", "the output, as the function made it");
    assert_eq!(header(d, "runnel-source-offset").as_deref(), Some("0"));
    produce(&kafka, &input, &records(1..4)).await;
    let out = read(&kafka, &output, 3, WAIT).await;
    assert_eq!(out.len(), 3, "the stream goes on");
    let s = wait_for(&node, "counted", |s| s.records_in == 4).await;
    assert_eq!((s.records_out, s.dead_lettered), (3, 1), "{s:#?}");
    assert_eq!(s.state, DeploymentState::Running);
    node.stop();
}

/// Provenance cannot be spoofed: `runnel-*` headers that an input brings
/// are not copied to an output (runnel's own stand alone), and a dead
/// letter's `runnel-error*` and `runnel-source-*` are runnel's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnel_headers_from_the_input_are_replaced_by_runnels_own() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let dlq = format!("{output}.dlq");
    topics(&kafka, &[&input, &output, &dlq], 1).await;
    let spoofed: Vec<(String, String)> = [
        ("runnel-deployment", "evil"),
        ("runnel-version", "99"),
        ("runnel-model", "sha256:evil"),
        ("runnel-error", "not an error"),
        ("runnel-source-offset", "12345"),
        ("trace", "t-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    produce(
        &kafka,
        &input,
        &[
            (Some("a".into()), "ok".into(), spoofed.clone()),
            (Some("b".into()), "error".into(), spoofed),
        ],
    )
    .await;
    let d = spec("hostile", guests::HOSTILE, &input, &output, &[]);
    let name = d.name.clone();
    let node = Node::start(&kafka, vec![deployment(d)]).unwrap();
    let names = |m: &rdkafka::message::OwnedMessage| -> Vec<String> {
        raw_headers(m)
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    };
    let out = read(&kafka, &output, 1, WAIT).await;
    assert_eq!(out.len(), 1);
    let o = &out[0];
    let mut got = names(o);
    got.sort();
    assert_eq!(
        got,
        [
            "runnel-deployment",
            "runnel-module",
            "runnel-version",
            "trace"
        ],
        "the input's runnel-* headers are gone"
    );
    assert_eq!(
        header(o, "runnel-deployment").as_deref(),
        Some(name.as_str())
    );
    assert_eq!(header(o, "runnel-version").as_deref(), Some("1"));

    let dead = read(&kafka, &dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    let got = names(d);
    for once in [
        "runnel-deployment",
        "runnel-version",
        "runnel-error",
        "runnel-source-offset",
    ] {
        assert_eq!(
            got.iter().filter(|n| *n == once).count(),
            1,
            "{once}: {got:?}"
        );
    }
    assert!(
        !got.iter().any(|n| n == "runnel-model"),
        "the deployment has no model: {got:?}"
    );
    assert_eq!(header(d, "runnel-source-offset").as_deref(), Some("1"));
    assert_eq!(
        header(d, "runnel-deployment").as_deref(),
        Some(name.as_str())
    );
    assert!(header(d, "runnel-error").unwrap().contains("asked to fail"));
    node.stop();
}

/// Guest logs are capped per call and per second; what the caps drop is
/// counted in the status and in `/metrics`, per deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_log_caps_drop_is_counted_per_deployment() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 1).await;
    // Two short lines per record: 10,000 records print far more than the
    // per-second allowance and its burst.
    let n = 10_000;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    for _ in 0..n {
        producer
            .send(rdkafka::producer::BaseRecord::<(), _>::to(&input).payload("print"))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let mut d = spec("hostile", guests::HOSTILE, &input, &output, &[]);
    d.batch_size = 1000;
    let name = d.name.clone();
    let node = Node::start(&kafka, vec![deployment(d)]).unwrap();
    let s = wait_for(&node, "every record run", |s| s.records_in == n as u64).await;
    assert!(s.log_dropped_bytes > 0, "{s:#?}");
    let metrics = runnel_host::control::metrics::render(&node.status());
    assert!(
        metrics.contains(&format!(
            "runnel_guest_log_dropped_bytes_total{{deployment=\"{name}\"}} {}",
            s.log_dropped_bytes
        )),
        "{metrics}"
    );
    node.stop();
}

/// The node's instance pool is shared by every deployment on it: one that
/// cannot get an instance says so in its status (it backs off), and the
/// deployment that has its instances runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_cannot_get_an_instance_says_so_in_its_status() {
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    let (input2, output2) = (unique("in"), unique("out"));
    topics(
        &kafka,
        &[
            &input,
            &output,
            &format!("{output}.dlq"),
            &input2,
            &output2,
            &format!("{output2}.dlq"),
        ],
        2,
    )
    .await;
    produce(&kafka, &input, &records(0..10)).await;
    produce(&kafka, &input2, &records(0..10)).await;
    let engine = runnel_host::engine::Engine::new(runnel_host::engine::EngineConfig {
        cache_dir: None,
        max_instances: 2,
        ..Default::default()
    })
    .unwrap();
    let first = Deployment::load(
        &engine,
        DeploymentSpec {
            workers: 2,
            stores: Vec::new(),
            ..spec("first", guests::IDENTITY_FILTER, &input, &output, &[])
        },
    )
    .unwrap();
    let node = Node::start(&kafka, vec![first]).unwrap();
    assert_eq!(read(&kafka, &output, 10, WAIT).await.len(), 10);

    let second = Deployment::load(
        &engine,
        spec("second", guests::IDENTITY_FILTER, &input2, &output2, &[]),
    )
    .unwrap();
    let name = second.spec.name.clone();
    node.add(second).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let s = node.status().into_iter().find(|s| s.name == name).unwrap();
        if let DeploymentState::BackingOff { error, .. } = &s.state {
            assert!(
                error.contains("the node's instance pool is full"),
                "{error}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&kafka, &input, &records(10..20)).await;
    assert_eq!(
        read(&kafka, &output, 20, WAIT).await.len(),
        20,
        "the first deployment runs on"
    );
    node.stop();
}
