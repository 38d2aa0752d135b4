//! Python functions (`guest-sdk/python`, built by `runnel build` with
//! componentize-py) against the same contract as Rust ones: each example's
//! Python twin passes its Rust twin's golden files, the Python flight-delay
//! scorer's raw scores equal LightGBM's bit for bit, a Python bug traps with
//! its traceback and is isolated like a Rust panic, and a deployment swaps
//! from the Rust scorer to the Python one while records flow.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use rdkafka::Message as _;
use runnel_abi::BatchBuilder;
use runnel_host::cli::run::{RunArgs, run};
use runnel_host::engine::{Engine, EngineConfig, Limits, Module, Outcome, Worker, World};
use runnel_host::runner::{Deployment, Node};
use runnel_tests::kafka::{Rec, broker, header, produce, read, spec, topics, unique};
use runnel_tests::{guest, guests, python_guest};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn threshold_py() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| python_guest("examples/threshold-filter/python"))
}

fn flight_py() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| python_guest("examples/flight-delay/python"))
}

fn hostile_py() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| python_guest("tests/guests/python-hostile"))
}

/// One engine for the file, with a compiled-module cache beside the built
/// components: a Python component is compiled once, not once per test.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cache = Path::new(threshold_py()).parent().unwrap().join("compiled");
        Engine::new(EngineConfig {
            cache_dir: Some(cache),
            max_instances: 16,
            ..EngineConfig::default()
        })
        .unwrap()
    })
}

fn load(name: &str, path: &str) -> Arc<Module> {
    Arc::new(engine().load(name, &guest(path)).unwrap())
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RunArgs,
}

/// `runnel run MODULE ARGS` over `input`: (exit code, stdout, stderr).
fn runnel_run(module: &str, input: &Path, extra: &[String]) -> (u8, String, String) {
    let mut argv = vec![
        "runnel-run".to_owned(),
        module.to_owned(),
        "--input".to_owned(),
        input.display().to_string(),
    ];
    argv.extend(extra.iter().cloned());
    let cli = Cli::try_parse_from(&argv).expect("valid arguments");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(&cli.args, &mut std::io::empty(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// An output line of `runnel run` as JSON, with its `value` parsed too when
/// it is JSON text: Python writes `1e-05` where Rust writes `1e-5`, and the
/// numbers must be equal as f64, not as text.
fn parsed(line: &str) -> Value {
    let mut v: Value = serde_json::from_str(line).unwrap();
    if let Some(text) = v.get("value").and_then(Value::as_str)
        && let Ok(inner) = serde_json::from_str::<Value>(text)
    {
        v["value"] = inner;
    }
    v
}

/// What `runnel run` said on stderr, without the words of error messages
/// (a Python JSON parser words its errors its own way): the line each
/// failure is on, and the summary.
fn shape(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((at, _)) if at.starts_with("line ") => at.to_owned(),
            _ => l.to_owned(),
        })
        .collect()
}

/// Runs the Python twin over the Rust twin's golden input and compares it
/// with the Rust twin's expectations.
fn same_golden_as_the_rust_twin(example: &str, module: &str, input: &str, extra: &[String]) {
    let data = root().join("examples").join(example).join("testdata");
    let mut args: Vec<String> = std::fs::read_to_string(data.join("args"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    args.extend(extra.iter().cloned());
    args.push("--no-cache".to_owned());
    let (code, out, err) = runnel_run(module, &data.join(input), &args);
    let expected_out = std::fs::read_to_string(data.join("expected.jsonl")).unwrap();
    let expected_err = std::fs::read_to_string(data.join("expected.stderr")).unwrap();
    let got: Vec<Value> = out.lines().map(parsed).collect();
    let want: Vec<Value> = expected_out.lines().map(parsed).collect();
    assert_eq!(got.len(), want.len(), "{example}: stdout\n{out}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "{example}: an output differs from expected.jsonl");
    }
    assert_eq!(
        shape(&err),
        shape(&expected_err),
        "{example}: stderr\n{err}"
    );
    assert_eq!(
        code, 4,
        "{example}: some records fail, as in the Rust twin's run"
    );
}

#[test]
fn the_python_threshold_filter_passes_its_rust_twins_golden_files() {
    same_golden_as_the_rust_twin("threshold-filter", threshold_py(), "input.jsonl", &[]);
    // And the same config error refuses the deployment, naming the key.
    let data = root().join("examples/threshold-filter/testdata/input.jsonl");
    let no_cache = ["--no-cache".to_owned()];
    let python = runnel_run(threshold_py(), &data, &no_cache);
    let rust = runnel_run(guests::THRESHOLD_FILTER, &data, &no_cache);
    assert_eq!(python.0, rust.0, "the same exit code");
    for (who, err) in [("python", &python.2), ("rust", &rust.2)] {
        assert!(
            err.contains(
                "refused to start: missing config `field` (set it with --config field=...)"
            ),
            "{who}: {err}"
        );
    }
}

#[test]
fn the_python_flight_scorer_passes_its_rust_twins_golden_files() {
    let model = root().join("examples/flight-delay/model/flight-delay-v1.json");
    same_golden_as_the_rust_twin(
        "flight-delay",
        flight_py(),
        "input.csv",
        &["--model".to_owned(), model.display().to_string()],
    );
}

/// The parity fixture: (key, CSV line, LightGBM's raw score with v1, with v2).
fn parity() -> Vec<(String, String, f64, f64)> {
    let text = std::fs::read_to_string(root().join("examples/flight-delay/testdata/parity.jsonl"))
        .unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_owned(),
                v["input"].as_str().unwrap().to_owned(),
                v["raw_v1"].as_f64().unwrap(),
                v["raw_v2"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn model(name: &str) -> Vec<u8> {
    std::fs::read(root().join(format!("examples/flight-delay/model/{name}.json"))).unwrap()
}

fn memory(mib: u64) -> Limits {
    Limits {
        memory_bytes: mib << 20,
        ..Limits::default()
    }
}

/// Each input's output JSON, in order.
fn scores(worker: &mut Worker, inputs: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for chunk in inputs.chunks(256) {
        let mut batch = BatchBuilder::of_values(chunk.iter().map(|v| v.as_bytes()));
        let p = worker.process(&mut batch).unwrap();
        for (i, outcome) in p.outcomes.iter().enumerate() {
            assert!(
                matches!(outcome, Outcome::Emit { count: 1, .. }),
                "{outcome:?}"
            );
            let record = p.outputs_of(i).next().unwrap();
            out.push(serde_json::from_slice(record.value().unwrap()).unwrap());
        }
    }
    out
}

#[test]
fn the_python_flight_scorer_is_bit_identical_to_lightgbm_and_to_the_rust_scorer() {
    let rows = parity();
    let inputs: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let python = load("flight-py", flight_py());
    let rust = load("flight-rust", guests::FLIGHT_DELAY);
    assert_eq!(python.world(), World::Scorer);
    for (name, raw) in [("flight-delay-v1", 2), ("flight-delay-v2", 3)] {
        let mut py = Worker::new(
            python.clone(),
            memory(128),
            vec![],
            Some(model(name).into()),
        )
        .unwrap();
        let mut rs =
            Worker::new(rust.clone(), memory(128), vec![], Some(model(name).into())).unwrap();
        let (p, r) = (scores(&mut py, &inputs), scores(&mut rs, &inputs));
        for (i, row) in rows.iter().enumerate() {
            let lightgbm = if raw == 2 { row.2 } else { row.3 };
            let got = p[i]["raw_score"].as_f64().unwrap();
            assert_eq!(
                got.to_bits(),
                lightgbm.to_bits(),
                "{name}, row {}: Python's raw score {got} is not LightGBM's {lightgbm}",
                row.0
            );
            assert_eq!(
                p[i], r[i],
                "{name}, row {}: Python and Rust outputs differ",
                row.0
            );
        }
    }
}

#[test]
fn a_python_bug_traps_with_its_traceback_and_is_isolated_like_a_rust_panic() {
    let module = load("hostile-py", hostile_py());
    let limits = Limits {
        memory_bytes: 128 << 20,
        call_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let mut worker = Worker::new(module, limits, vec![], None).unwrap();
    let values = ["ok", "bad", "boom", "spin", "hog", "exit", "fine"];
    let mut batch = BatchBuilder::of_values(values.iter().map(|v| v.as_bytes()));
    let p = worker.process(&mut batch).unwrap();
    let failed = |i: usize| match &p.outcomes[i] {
        Outcome::Failed { message, trapped } => (message.as_str(), *trapped),
        other => panic!("{}: expected a failure, got {other:?}", values[i]),
    };
    assert!(matches!(p.outcomes[0], Outcome::Keep));
    assert_eq!(failed(1), ("bad on purpose", false));
    let (boom, trapped) = failed(2);
    assert!(trapped, "{boom}");
    assert!(
        boom.contains("ZeroDivisionError: division by zero"),
        "{boom}"
    );
    assert!(
        boom.contains("app.py\", line"),
        "the traceback names the line: {boom}"
    );
    let (spin, trapped) = failed(3);
    assert!(trapped && spin.contains("2s"), "{spin}");
    let (hog, trapped) = failed(4);
    assert!(
        trapped && hog.contains("over its limit of 128.0 MiB"),
        "{hog}"
    );
    let (exit, trapped) = failed(5);
    assert!(trapped, "{exit}");
    assert!(
        matches!(p.outcomes[6], Outcome::Keep),
        "{:?}",
        p.outcomes[6]
    );
    // The worker goes on with a fresh instance.
    let mut again = BatchBuilder::of_values([&b"after"[..]]);
    assert!(matches!(
        worker.process(&mut again).unwrap().outcomes[0],
        Outcome::Keep
    ));
}

/// Swapping a deployment from the Rust flight scorer to the Python one,
/// with the same model, while records flow: every input scored once, and
/// each prediction what the parity fixture says, as f64, on either side of
/// the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_swaps_from_the_rust_scorer_to_the_python_one_while_records_flow() {
    let rows = parity();
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 3).await;
    let rust = load("flight-rust", guests::FLIGHT_DELAY);
    let python = load("flight-py", flight_py());
    let mut d = spec("flight", guests::FLIGHT_DELAY, &input, &output, &[]);
    d.memory_mib = 128;
    d.timeout_ms = 10_000;
    let name = d.name.clone();
    let v1 = model("flight-delay-v1");
    let node = Arc::new(
        Node::start(
            &kafka,
            vec![Deployment::new(d.clone(), rust, Some(v1.clone()))],
        )
        .unwrap(),
    );

    let records: Vec<Rec> = rows
        .iter()
        .map(|(key, line, _, _)| (Some(key.clone()), line.clone(), vec![]))
        .collect();
    let chunks: Vec<Vec<Rec>> = records.chunks(50).map(<[Rec]>::to_vec).collect();
    let producing = tokio::spawn({
        let (kafka, input) = (kafka.clone(), input.clone());
        async move {
            for chunk in chunks {
                produce(&kafka, &input, &chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    read(&kafka, &output, 150, Duration::from_secs(90)).await;
    let mut py = d.clone();
    py.module = flight_py().into();
    let report = tokio::task::spawn_blocking({
        let node = node.clone();
        let name = name.clone();
        move || node.swap(&name, Deployment::new(py, python, Some(v1)))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.version, 2);
    producing.await.unwrap();

    let out = read(&kafka, &output, rows.len(), Duration::from_secs(120)).await;
    let expected: BTreeMap<&str, f64> = rows.iter().map(|r| (r.0.as_str(), r.2)).collect();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for m in &out {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let raw = v["raw_score"].as_f64().unwrap();
        let want = expected[key.as_str()];
        let version = header(m, "runnel-version").unwrap();
        assert_eq!(
            raw.to_bits(),
            want.to_bits(),
            "{key} on version {version}: raw score {raw}, LightGBM's {want}"
        );
        assert!(
            seen.insert(key.clone(), "").is_none(),
            "{key} was scored twice"
        );
        *by_version.entry(version).or_default() += 1;
    }
    assert_eq!(seen.len(), rows.len(), "every input scored once");
    eprintln!("outputs by version (1 Rust, 2 Python): {by_version:?}");
    assert!(
        by_version.get("1").is_some_and(|n| *n >= 150)
            && by_version.get("2").is_some_and(|n| *n > 0),
        "the switch happened mid-stream: {by_version:?}"
    );
    Arc::into_inner(node).unwrap().stop();
}
