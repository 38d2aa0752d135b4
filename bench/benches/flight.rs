//! The flight-delay scorer three ways, in one run, on the same embedded
//! broker and the same input (the held-out flights, repeated):
//!
//! - (a) the Wasm scorer (examples/flight-delay) in a runnel node;
//! - (b) the same evaluator (examples/flight-delay/predictor) compiled
//!   natively, in a hand-written rdkafka loop with runnel's client settings
//!   and at-least-once bookkeeping, writing the same output and headers;
//! - (c) a Python service, confluent-kafka + LightGBM, one `predict` per
//!   record (bench/python/flight_service.py), in a child process;
//! - (c′) the same service batched, as a Python engineer tuning it would
//!   write it: `consume(num_messages=500)`, the batch parsed into one
//!   feature matrix, one `predict` per batch (`--batch 500`).
//!
//! Then the scorer alone, in memory: ns per prediction (parse the CSV line,
//! evaluate 100 trees, write the JSON), Wasm in runnel's engine vs native
//! (`--bench scorer` compares engine settings); and last the scorer's
//! end-to-end latency, produce to readable, runnel against the native loop
//! at 10,000 flights/s and at saturation (broker-bound).
//!
//! The Python row needs a virtualenv with bench/python/requirements.txt; it
//! is made at `~/.cache/runnel-bench-venv` on first use (or set
//! RUNNEL_BENCH_PYTHON to an interpreter that has them; RUNNEL_BENCH_PYTHON=skip
//! leaves the row out).
//!
//! Run: `cargo bench -p runnel-bench --bench flight`. Nothing is asserted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use flight_predictor::{FlightModel, parse_flight};
use runnel_abi::BatchBuilder;
use runnel_bench::flight::{example, flights};
use runnel_bench::kafka::{
    Out, PROVENANCE, Setup, latency_row, native_loop, node_run, node_run_as, produce, setup,
    wait_for,
};
use runnel_bench::{best_of, cpu_seconds, per};
use runnel_host::engine::{Limits, Outcome, Worker};
use runnel_host::kafka::KafkaOptions;
use runnel_tests::kafka::spec;
use runnel_tests::{engine, guest, guests};

/// How many times the held-out set is streamed.
const REPEAT: usize = 3;
/// Partitions of every topic (`RUNNEL_BENCH_PARTITIONS` to change).
fn partitions() -> i32 {
    std::env::var("RUNNEL_BENCH_PARTITIONS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(2)
}
const MODEL: &str = "flight-delay-v1";

/// The native scorer: what the component does for one record.
fn score_native(model: &FlightModel, value: &[u8]) -> Option<Vec<u8>> {
    let flight = parse_flight(std::str::from_utf8(value).ok()?).ok()?;
    let p = model.predict(&flight);
    serde_json::to_vec(&model.scored(&p)).ok()
}

fn in_memory(lines: &[String], model_bytes: &[u8]) {
    let model = FlightModel::from_json(model_bytes).expect("the model loads");
    let module = engine(None)
        .load("flight-delay", &guest(guests::FLIGHT_DELAY))
        .expect("the scorer loads");
    let mut worker = Worker::new(
        Arc::new(module),
        Limits::default(),
        vec![],
        Some(model_bytes.into()),
    )
    .expect("the scorer starts");
    let sample = &lines[..lines.len().min(20_000)];
    let native = best_of(5, || {
        for l in sample {
            std::hint::black_box(score_native(&model, l.as_bytes()));
        }
    });
    let batches: Vec<BatchBuilder> = sample
        .chunks(256)
        .map(|c| BatchBuilder::of_values(c.iter().map(|l| l.as_bytes())))
        .collect();
    let wasm = best_of(5, || {
        for b in &batches {
            let mut b = b.clone();
            let p = worker.process(&mut b).expect("the batch runs");
            assert!(matches!(p.outcomes[0], Outcome::Emit { .. }));
        }
    });
    let (n, w) = (per(native, sample.len()), per(wasm, sample.len()));
    println!(
        "the scorer alone, in memory ({} flights, {MODEL}: {} trees; parse CSV, evaluate, write JSON):",
        sample.len(),
        model.num_trees()
    );
    println!();
    println!("| scorer | ns/prediction | vs native |");
    println!("|---|---:|---:|");
    println!("| native (Rust, release) | {n:.0} | 1.00 |");
    println!(
        "| Wasm in runnel's engine, batches of 256 | {w:.0} | {:.2} |",
        w / n
    );
    println!();
}

fn runnel_row(
    kafka: &KafkaOptions,
    input: &str,
    output: &str,
    n: usize,
    workers: usize,
) -> (Duration, f64) {
    let mut spec = spec("bench", guests::FLIGHT_DELAY, input, output, &[]);
    spec.model = Some(example(&format!("model/{MODEL}.json")));
    spec.memory_mib = 128;
    spec.workers = workers;
    let (time, cpu) = node_run(kafka, spec, n);
    (time, cpu.process)
}

/// An interpreter with confluent-kafka and lightgbm, made if missing.
fn python() -> Option<PathBuf> {
    match std::env::var("RUNNEL_BENCH_PYTHON") {
        Ok(p) if p == "skip" => return None,
        Ok(p) => return Some(p.into()),
        Err(_) => {}
    }
    let venv = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
        .join(".cache/runnel-bench-venv");
    let py = venv.join("bin/python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import confluent_kafka, lightgbm, numpy"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && ok(&py) {
        return Some(py);
    }
    eprintln!(
        "making the Python baseline's virtualenv at {} (once)...",
        venv.display()
    );
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/requirements.txt");
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements)
            .status()
            .is_ok_and(|s| s.success());
    if made && ok(&py) {
        Some(py)
    } else {
        eprintln!(
            "no Python baseline: cannot install {}",
            requirements.display()
        );
        None
    }
}

/// How many records the batched Python service (c′) consumes and scores at once.
const PYTHON_BATCH: usize = 500;

fn python_row(
    py: &Path,
    kafka: &KafkaOptions,
    input: &str,
    output: &str,
    n: usize,
    batch: Option<usize>,
) -> (Duration, f64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/flight_service.py");
    let cpu0 = cpu_seconds(None);
    let reader = {
        let (kafka, output) = (kafka.clone(), output.to_owned());
        std::thread::spawn(move || wait_for(&kafka, &output, n))
    };
    let mut child = Command::new(py)
        .arg(script)
        .args(
            batch
                .map(|b| ["--batch".to_owned(), b.to_string()])
                .into_iter()
                .flatten(),
        )
        .args([&kafka.brokers, input, output])
        .arg(example(&format!("model/{MODEL}.json")))
        .arg(n.to_string())
        // The consumer settings runnel's own clients have, as far as they
        // matter here.
        .args(
            kafka
                .consumer("python")
                .get("fetch.wait.max.ms")
                .map(|v| format!("fetch.wait.max.ms={v}")),
        )
        .spawn()
        .expect("the Python service starts");
    // Its CPU time, read while it runs (the last reading is at most 50 ms old).
    let mut child_cpu = 0.0;
    while child.try_wait().expect("waiting for Python").is_none() {
        child_cpu = cpu_seconds(Some(child.id())).max(child_cpu);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (first, last) = reader.join().expect("reader");
    (last - first, cpu_seconds(None) - cpu0 + child_cpu)
}

fn main() {
    let lines = flights();
    let model_bytes = std::fs::read(example(&format!("model/{MODEL}.json"))).expect("the model");
    in_memory(&lines, &model_bytes);

    // The runtime and the broker live until the end of main.
    let setup_again = setup(partitions(), 5);
    let Setup {
        ref kafka,
        ref input,
        outputs: ref outs,
        ..
    } = setup_again;
    let n = lines.len() * REPEAT;
    produce(kafka, input, (0..REPEAT).flat_map(|_| lines.iter()));
    println!(
        "the scorer on Kafka: {n} flights ({} held-out flights x {REPEAT}), {} partitions, embedded Tansu broker in this process, {MODEL}",
        lines.len(),
        partitions()
    );
    println!();

    let model = FlightModel::from_json(&model_bytes).expect("the model loads");
    let module_digest = format!("sha256:{}", "0".repeat(64));
    let headers = [
        ("runnel-deployment", "bench"),
        ("runnel-version", "1"),
        ("runnel-module", module_digest.as_str()),
        ("runnel-model", module_digest.as_str()),
    ];
    let (time, cpu) = native_loop(kafka, input, &outs[0], n, n, &headers, |v| {
        score_native(&model, v).map_or(Out::Drop, Out::New)
    });
    let native = (time, cpu.process);
    let mut rows = vec![
        (
            "(b) native evaluator, hand-written rdkafka loop (1 thread)",
            native,
        ),
        (
            "(a) Wasm scorer in runnel, 1 worker",
            runnel_row(kafka, input, &outs[1], n, 1),
        ),
        (
            "(a) Wasm scorer in runnel, 2 workers",
            runnel_row(kafka, input, &outs[2], n, 2),
        ),
    ];
    if let Some(py) = python() {
        rows.push((
            "(c) Python: confluent-kafka + LightGBM, predict per record",
            python_row(&py, kafka, input, &outs[3], n, None),
        ));
        rows.push((
            "(c′) Python batched: consume(500), one predict per batch",
            python_row(&py, kafka, input, &outs[4], n, Some(PYTHON_BATCH)),
        ));
    }
    let rate = |d: &Duration| n as f64 / d.as_secs_f64();
    let native_rate = rate(&rows[0].1.0);
    let python_rate = rows.get(3).map(|r| rate(&r.1.0));
    let batched_rate = rows.get(4).map(|r| rate(&r.1.0));
    let versus = |p: Option<f64>, r: f64| p.map_or("–".to_owned(), |p| format!("{:.1}", r / p));
    println!(
        "| pipeline | flights/s | CPU µs/flight | vs (b) native | vs (c) Python | vs (c′) batched |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, (wall, cpu)) in &rows {
        let r = rate(wall);
        println!(
            "| {name} | {r:.0} | {:.1} | {:.2} | {} | {} |",
            cpu * 1e6 / n as f64,
            r / native_rate,
            versus(python_rate, r),
            versus(batched_rate, r),
        );
    }
    println!();
    println!(
        "(flights/s: input flights per second between the first and the last output; CPU: this process — broker, reader, node or loop — plus the Python child)"
    );
    println!();
    latency(&setup_again, &lines[0], &model_bytes);
}

/// End-to-end latency of the scorer, produce to readable, runnel against
/// the native loop: at a steady 10,000 flights/s for 5 s and at saturation
/// (200,000 flights produced as fast as they go). Broker-bound, as the
/// latency bench's: the embedded broker shares the two cores.
fn latency(setup: &Setup, flight: &str, model_bytes: &[u8]) {
    const STEADY: usize = 50_000;
    const SATURATED: usize = 200_000;
    println!(
        "end-to-end latency (produce to readable) of the scorer, {} partitions, one flight repeated, embedded broker in this process: broker-bound",
        partitions()
    );
    println!();
    println!("| pipeline | offered | flights/s out | p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (offered, n, rate) in [
        ("10,000/s", STEADY, Some(10_000)),
        ("saturation", SATURATED, None),
    ] {
        let model = Arc::new(FlightModel::from_json(model_bytes).expect("the model loads"));
        let native = latency_row(
            setup,
            partitions(),
            flight.as_bytes(),
            n,
            rate,
            move |k, i, o, e| {
                let digest = format!("sha256:{}", "0".repeat(64));
                let mut headers = PROVENANCE.to_vec();
                headers.push(("runnel-model", digest.as_str()));
                native_loop(k, i, o, e, e, &headers, |v| {
                    score_native(&model, v).map_or(Out::Drop, Out::New)
                });
            },
        );
        let runnel = latency_row(
            setup,
            partitions(),
            flight.as_bytes(),
            n,
            rate,
            |k, i, o, e| {
                let mut spec = spec("bench", guests::FLIGHT_DELAY, i, o, &[]);
                spec.model = Some(example(&format!("model/{MODEL}.json")));
                spec.memory_mib = 128;
                spec.workers = 2;
                node_run_as(k, spec, e);
            },
        );
        for (name, l) in [
            ("(b) native evaluator, hand-written rdkafka loop", native),
            (
                "(a) Wasm scorer in runnel, 2 workers, defaults (batch 256, linger 20 ms)",
                runnel,
            ),
        ] {
            println!("{}", l.row(name, offered));
        }
    }
}
