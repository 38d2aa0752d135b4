//! The flight-delay scorer alone, in memory, in one run: native against
//! Wasm under each of wasmtime's code-generation and memory-guard settings,
//! and against the same scorer built with SIMD128. ns per prediction (parse
//! the CSV line, evaluate the trees, write the JSON); best of 7 passes over
//! the same flights, taken in rounds over every row. Every Wasm row's outputs are checked first, byte for
//! byte against the first Wasm row's and by raw score (bit for bit) against
//! the native scorer's, so a setting that changed a score would say so
//! rather than be timed. (The probability may differ from native in the last
//! digit: `exp` is wasi-libc's in Wasm and glibc's natively.)
//!
//! Run: `cargo bench -p runnel-bench --bench scorer` (`RUNNEL_BENCH_ROWS=text`
//! keeps the rows whose name has `text`). Nothing is asserted about time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use flight_predictor::{FlightModel, parse_flight};
use runnel_abi::BatchBuilder;
use runnel_bench::flight::{example, flights};
use runnel_bench::{best_of, per};
use runnel_host::engine::{Codegen, Engine, EngineConfig, Limits, OptLevel, Outcome, Worker};
use runnel_tests::{guest, guests};

const MODEL: &str = "flight-delay-v1";
const FLIGHTS: usize = 20_000;
const BATCH: usize = 256;
/// Passes over the flights per row; the best counts.
const ROUNDS: usize = 7;

/// What the component does for one record, natively.
fn score_native(model: &FlightModel, value: &[u8]) -> Option<Vec<u8>> {
    let flight = parse_flight(std::str::from_utf8(value).ok()?).ok()?;
    let p = model.predict(&flight);
    serde_json::to_vec(&model.scored(&p)).ok()
}

/// The flight-delay component built with `-C target-feature=+simd128`, beside
/// the other guests (`<target>/runnel-guests-simd128`).
fn simd128_guest() -> PathBuf {
    let plain = Path::new(guests::FLIGHT_DELAY);
    let target = plain
        .ancestors()
        .nth(3)
        .expect("guests live in <target>/runnel-guests/wasm32-wasip2/release")
        .with_file_name("runnel-guests-simd128");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&examples)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "flight-delay",
        ])
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C target-feature=+simd128")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the SIMD128 scorer failed");
    target.join("wasm32-wasip2/release/flight_delay.wasm")
}

struct Row {
    name: &'static str,
    codegen: Codegen,
    module: &'static str,
}

fn main() {
    let mut lines = flights();
    lines.truncate(FLIGHTS);
    let model_bytes = std::fs::read(example(&format!("model/{MODEL}.json"))).expect("the model");
    let model = FlightModel::from_json(&model_bytes).expect("the model loads");
    let raw_score = |json: &[u8]| -> u64 {
        let v: serde_json::Value = serde_json::from_slice(json).expect("a scorer output is JSON");
        v["raw_score"].as_f64().expect("a raw score").to_bits()
    };
    let native_raw: Vec<u64> = lines
        .iter()
        .map(|l| raw_score(&score_native(&model, l.as_bytes()).expect("a held-out flight scores")))
        .collect();
    let mut first_wasm: Option<Vec<Vec<u8>>> = None;
    let mut native = f64::INFINITY;

    let simd = simd128_guest();
    let modules = [
        ("plain", guest(guests::FLIGHT_DELAY)),
        ("simd128", std::fs::read(&simd).expect("the SIMD128 scorer")),
    ];
    let d = Codegen::default();
    let rows = [
        Row {
            name: "default: Cranelift speed, signals-based traps, 4 GiB reservation + 32 MiB guard",
            codegen: d.clone(),
            module: "plain",
        },
        Row {
            name: "the same, scorer built with +simd128",
            codegen: d.clone(),
            module: "simd128",
        },
        Row {
            name: "Cranelift speed_and_size",
            codegen: Codegen {
                opt_level: OptLevel::SpeedAndSize,
                ..d.clone()
            },
            module: "plain",
        },
        Row {
            name: "Cranelift none",
            codegen: Codegen {
                opt_level: OptLevel::None,
                ..d.clone()
            },
            module: "plain",
        },
        Row {
            name: "explicit trap checks (signals_based_traps = false)",
            codegen: Codegen {
                signals_based_traps: false,
                ..d.clone()
            },
            module: "plain",
        },
        Row {
            name: "bounds checks: 1 GiB reservation, no guard",
            codegen: Codegen {
                memory_reservation: Some(1 << 30),
                memory_guard_size: Some(0),
                ..d.clone()
            },
            module: "plain",
        },
        Row {
            name: "bounds checks: 1 GiB reservation, 64 KiB guard",
            codegen: Codegen {
                memory_reservation: Some(1 << 30),
                memory_guard_size: Some(64 << 10),
                ..d.clone()
            },
            module: "plain",
        },
    ];

    let batches: Vec<BatchBuilder> = lines
        .chunks(BATCH)
        .map(|c| BatchBuilder::of_values(c.iter().map(|l| l.as_bytes())))
        .collect();
    println!(
        "the flight scorer alone, in memory ({} flights, {MODEL}; parse CSV, evaluate, write JSON; batches of {BATCH}):",
        lines.len()
    );
    println!();
    println!("| scorer | ns/prediction | vs native |");
    println!("|---|---:|---:|");
    let only = std::env::var("RUNNEL_BENCH_ROWS").unwrap_or_default();
    let mut workers = Vec::new();
    for row in rows.into_iter().filter(|r| r.name.contains(&only)) {
        let engine = Engine::new(EngineConfig {
            cache_dir: None,
            max_instances: 4,
            codegen: row.codegen,
            ..EngineConfig::default()
        })
        .expect("the engine starts");
        let bytes = &modules
            .iter()
            .find(|(m, _)| *m == row.module)
            .expect("a module")
            .1;
        let module = engine
            .load("flight-delay", bytes)
            .expect("the scorer loads");
        let mut worker = Worker::new(
            Arc::new(module),
            Limits::default(),
            vec![],
            Some(model_bytes.clone().into()),
        )
        .expect("the scorer starts");
        let mut outputs = Vec::with_capacity(lines.len());
        for b in &batches {
            let mut b = b.clone();
            let p = worker.process(&mut b).expect("the batch runs");
            for k in 0..p.outcomes.len() {
                let out = p.outputs_of(k).next().expect("one output per flight");
                outputs.push(out.value().expect("a value").to_vec());
            }
        }
        for (i, out) in outputs.iter().enumerate() {
            assert_eq!(
                raw_score(out),
                native_raw[i],
                "{}: flight {i}'s raw score",
                row.name
            );
        }
        match &first_wasm {
            None => first_wasm = Some(outputs),
            Some(first) => assert!(
                first == &outputs,
                "{}: outputs differ from the default's",
                row.name
            ),
        }
        workers.push((row.name, worker));
    }
    // Rounds over every row, so that a slow moment of the machine does not
    // fall on one row only; each row's best round counts.
    let mut best = vec![f64::INFINITY; workers.len()];
    for _ in 0..ROUNDS {
        let t = best_of(1, || {
            for l in &lines {
                std::hint::black_box(score_native(&model, l.as_bytes()));
            }
        });
        native = native.min(per(t, lines.len()));
        for ((_, worker), best) in workers.iter_mut().zip(&mut best) {
            let t = best_of(1, || {
                for b in &batches {
                    let mut b = b.clone();
                    let p = worker.process(&mut b).expect("the batch runs");
                    assert!(matches!(p.outcomes[0], Outcome::Emit { .. }));
                }
            });
            *best = best.min(per(t, lines.len()));
        }
    }
    println!("| native (Rust, release) | {native:.0} | 1.00 |");
    for ((name, _), wasm) in workers.iter().zip(best) {
        println!("| {name} | {wasm:.0} | {:.2} |", wasm / native);
    }
    println!();
}
