//! Python functions against Rust ones, in one run:
//!
//! - per record, the threshold filter and the flight-delay scorer, each in
//!   Rust and in Python (the examples and their `python/` twins), in
//!   runnel's engine (pack the batch, one call, read the results), and the
//!   same Python code run natively by the machine's CPython
//!   (`bench/python/native_guest.py`, through the same SDK calls);
//! - each component's size, its compile time (no cache) and its load from
//!   the compiled-module cache;
//! - instantiation with the pooling allocator, `init` included: the first
//!   instance, and steady (an instance dropped and made again, as after a
//!   trap), and the linear memory an instance has after `init`.
//!
//! Run: `cargo bench -p runnel-bench --bench python`. Nothing is asserted:
//! the table is the result. The Python components are built by `runnel
//! build` (componentize-py, installed by `.ci/setup` or on first use).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use runnel_abi::{BatchBuilder, Frame};
use runnel_bench::{best_of, per};
use runnel_host::engine::{Engine, EngineConfig, Limits, Module, Worker};
use runnel_tests::{guest, guests, python_guest};

const RUNS: usize = 5;
const BATCH: usize = 256;

struct Case {
    name: &'static str,
    rust: String,
    python: String,
    python_dir: &'static str,
    kind: &'static str,
    model: Option<Vec<u8>>,
    values: Vec<Vec<u8>>,
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn flight_values() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(root().join("examples/flight-delay/testdata/parity.jsonl"))
        .expect("the parity fixture");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            v["input"].as_str().expect("an input").as_bytes().to_vec()
        })
        .collect()
}

fn threshold_values() -> Vec<Vec<u8>> {
    (0..4096)
        .map(|i| {
            format!(
                r#"{{"carrier":"WN","flight":{i},"origin":"JFK","dest":"LAX","dep_delay":{}}}"#,
                (i * 7) % 60
            )
            .into_bytes()
        })
        .collect()
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 256 << 20,
        ..Limits::default()
    }
}

fn config() -> Vec<(String, String)> {
    vec![
        ("field".into(), "dep_delay".into()),
        ("min".into(), "15".into()),
    ]
}

fn batches(values: &[Vec<u8>]) -> Vec<BatchBuilder> {
    values
        .chunks(BATCH)
        .enumerate()
        .map(|(c, chunk)| {
            let mut b = BatchBuilder::default();
            for (i, v) in chunk.iter().enumerate() {
                let key = format!("k{i}");
                b.push(&Frame {
                    partition: 0,
                    offset: (c * BATCH + i) as i64,
                    timestamp_ms: Some(1_700_000_000_000),
                    key: Some(key.as_bytes()),
                    value: Some(v),
                    headers: &[],
                });
            }
            b
        })
        .collect()
}

/// ns per record of `module` over the case's records (best of RUNS).
fn per_record(module: &Arc<Module>, case: &Case) -> f64 {
    let model = case.model.clone().map(Into::into);
    let mut worker = Worker::new(module.clone(), limits(), config(), model).expect("starts");
    let mut batches = batches(&case.values);
    for b in &mut batches {
        worker.process(b).expect("runs"); // warm
    }
    let t = best_of(RUNS, || {
        for b in &mut batches {
            worker.process(b).expect("runs");
        }
    });
    per(t, case.values.len())
}

/// ns per record of the Python code run natively by CPython.
fn native(case: &Case) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("runnel-bench-python-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let values = dir.join("values");
    let mut text = Vec::new();
    for v in &case.values {
        text.extend_from_slice(v);
        text.push(b'\n');
    }
    std::fs::write(&values, text).ok()?;
    let mut cmd = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(root().join("bench/python/native_guest.py"))
        .arg(root().join(case.python_dir))
        .arg(root().join("guest-sdk/python"))
        .arg(case.kind)
        .arg(&values);
    if let Some(model) = &case.model {
        let path = dir.join("model");
        std::fs::write(&path, model).ok()?;
        cmd.arg(path);
    }
    let out = cmd.output().ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        eprintln!(
            "native CPython failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

struct Load {
    size: usize,
    compile_s: f64,
    cached_s: f64,
    first_instance_ms: f64,
    steady_instance_ms: f64,
    memory_mib: f64,
}

fn load(path: &str, case: &Case) -> (Arc<Module>, Load) {
    let bytes = guest(path);
    let cache = std::env::temp_dir().join(format!("runnel-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let engine = |cache_dir: Option<&Path>| {
        Engine::new(EngineConfig {
            cache_dir: cache_dir.map(Into::into),
            max_instances: 64,
            ..EngineConfig::default()
        })
        .expect("engine")
    };
    let cold = engine(Some(&cache));
    let t = Instant::now();
    cold.load("bench", &bytes).expect("loads");
    let compile_s = t.elapsed().as_secs_f64();
    let warm = engine(Some(&cache));
    let t = Instant::now();
    let module = Arc::new(warm.load("bench", &bytes).expect("loads"));
    let cached_s = t.elapsed().as_secs_f64();
    let model = case.model.clone().map(Into::<Arc<[u8]>>::into);
    let t = Instant::now();
    let worker = Worker::new(module.clone(), limits(), config(), model.clone()).expect("starts");
    let first_instance_ms = t.elapsed().as_secs_f64() * 1e3;
    let memory_mib = worker.memory_bytes() as f64 / f64::from(1 << 20);
    drop(worker);
    let steady = best_of(20, || {
        drop(Worker::new(module.clone(), limits(), config(), model.clone()).expect("starts"));
    });
    let _ = std::fs::remove_dir_all(&cache);
    (
        module,
        Load {
            size: bytes.len(),
            compile_s,
            cached_s,
            first_instance_ms,
            steady_instance_ms: steady.as_secs_f64() * 1e3,
            memory_mib,
        },
    )
}

fn main() {
    let model = std::fs::read(root().join("examples/flight-delay/model/flight-delay-v1.json"))
        .expect("the model");
    let cases = [
        Case {
            name: "threshold filter",
            rust: guests::THRESHOLD_FILTER.to_owned(),
            python: python_guest("examples/threshold-filter/python"),
            python_dir: "examples/threshold-filter/python",
            kind: "filter",
            model: None,
            values: threshold_values(),
        },
        Case {
            name: "flight-delay scorer",
            rust: guests::FLIGHT_DELAY.to_owned(),
            python: python_guest("examples/flight-delay/python"),
            python_dir: "examples/flight-delay/python",
            kind: "score",
            model: Some(model),
            values: flight_values(),
        },
    ];
    println!("per record, ns (best of {RUNS}; batches of {BATCH})");
    println!(
        "{:<22}{:>10}{:>12}{:>16}{:>14}{:>18}",
        "function", "Rust", "Python", "CPython native", "Python/Rust", "Python/CPython"
    );
    let mut loads = Vec::new();
    for case in &cases {
        let (rust, rust_load) = load(&case.rust, case);
        let (python, python_load) = load(&case.python, case);
        let r = per_record(&rust, case);
        let p = per_record(&python, case);
        let n = native(case);
        println!(
            "{:<22}{:>10.0}{:>12.0}{:>16}{:>14.1}{:>18}",
            case.name,
            r,
            p,
            n.map_or("-".into(), |n| format!("{n:.0}")),
            p / r,
            n.map_or("-".into(), |n| format!("{:.2}", p / n)),
        );
        loads.push((case.name, "Rust", rust_load));
        loads.push((case.name, "Python", python_load));
    }
    println!();
    println!("components (pooling allocator; an instance is made and `init` run)");
    println!(
        "{:<22}{:<8}{:>10}{:>12}{:>12}{:>16}{:>16}{:>14}",
        "function",
        "lang",
        "size MB",
        "compile s",
        "cached s",
        "1st instance ms",
        "steady inst ms",
        "memory MiB"
    );
    for (name, lang, l) in &loads {
        println!(
            "{:<22}{:<8}{:>10.2}{:>12.2}{:>12.3}{:>16.2}{:>16.3}{:>14.1}",
            name,
            lang,
            l.size as f64 / 1e6,
            l.compile_s,
            l.cached_s,
            l.first_instance_ms,
            l.steady_instance_ms,
            l.memory_mib
        );
    }
}
