//! runnel against a hand-written native rdkafka loop, in one run, on the same
//! embedded broker, with the same client settings (runnel's): throughput and
//! CPU per record for an identity function and for a filter.
//!
//! The native loop does the same work as a node: poll, run the function,
//! produce with a delivery callback, store an offset only after its output is
//! acknowledged (runnel's own tracker), commit periodically. The broker and
//! the reader that counts outputs run in this process too, so "CPU/record"
//! includes them; "pipeline CPU/record" leaves out their threads — what the
//! pipeline itself costs, as on a cluster whose brokers run elsewhere.
//!
//! Run: `cargo bench -p runnel-bench --bench kafka`; with
//! `RUNNEL_BENCH_RUNS=5` every row runs five times (in turn) and the table
//! shows medians; with `RUNNEL_BENCH_THREADS=1` it also shows where each
//! row's CPU went, by thread; with `RUNNEL_BENCH_ROWS=text` it runs only
//! the rows whose name contains `text`, and the rows they are compared
//! with (`RUNNEL_BENCH_ROWS="provenance none"`). Nothing is asserted.

use std::time::{Duration, Instant};

use runnel_bench::kafka::{
    Cpu, Out, PROVENANCE, PROVENANCE_COMPACT, Setup, native_loop, node_run, produce, setup,
};
use runnel_host::config::Provenance::{self, Compact, Headers};
use runnel_host::kafka::KafkaOptions;
use runnel_tests::guests;
use runnel_tests::kafka::spec;

const N: usize = 1_000_000;
const PARTITIONS: i32 = 2;
/// Rows in the table, each with an output topic of its own.
const ROWS: usize = 16;

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{{\"n\":{},\"pad\":\"", i % 100).into_bytes();
    v.resize(98, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// The native loop over the benchmark's input.
fn native(
    kafka: &KafkaOptions,
    input: &str,
    output: &str,
    keep: fn(&[u8]) -> bool,
    expect: usize,
    headers: &[(&str, &str)],
) -> (Duration, Cpu) {
    native_loop(kafka, input, output, N, expect, headers, |v| {
        if keep(v) { Out::Same } else { Out::Drop }
    })
}

fn runnel(
    kafka: &KafkaOptions,
    input: &str,
    output: &str,
    module: &str,
    config: &[(&str, &str)],
    expect: usize,
    (workers, provenance): (usize, Provenance),
) -> (Duration, Cpu) {
    let mut spec = spec("bench", module, input, output, config);
    spec.timeout_ms = 5000;
    spec.workers = workers;
    spec.provenance = provenance;
    node_run(kafka, spec, expect)
}

fn main() {
    // The runtime and the broker live until the end of main.
    let Setup {
        runtime: _runtime,
        broker: _broker,
        kafka,
        input,
        outputs: outs,
    } = setup(PARTITIONS, ROWS * runs());
    let t = Instant::now();
    produce(&kafka, &input, (0..N).map(value));
    println!(
        "runnel Kafka benchmark: {N} records of 100 bytes, {PARTITIONS} partitions, embedded Tansu broker in this process"
    );
    println!("(input produced in {:.2} s)", t.elapsed().as_secs_f64());
    println!();
    let run = selected();
    let mut all = Vec::new();
    for r in 0..runs() {
        if runs() > 1 {
            eprintln!("run {} of {}...", r + 1, runs());
        }
        all.push(rows(&kafka, &input, &outs[ROWS * r..ROWS * (r + 1)], &run));
    }
    // Each row's median over the runs, of its rate and of its CPU.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let measured: Vec<Option<Measured>> = (0..ROWS)
        .map(|i| {
            let first = all[0][i].as_ref()?;
            let each = || all.iter().map(|r| r[i].as_ref().expect("run in every run"));
            let secs = median(each().map(|m| m.0.as_secs_f64()).collect());
            let of = |f: &dyn Fn(&Cpu) -> f64| median(each().map(|m| f(&m.1)).collect());
            let cpu = Cpu {
                process: of(&|c| c.process),
                pipeline: of(&|c| c.pipeline),
                by_thread: first
                    .1
                    .by_thread
                    .keys()
                    .map(|k| {
                        (
                            k.clone(),
                            of(&|c| c.by_thread.get(k).copied().unwrap_or(0.0)),
                        )
                    })
                    .collect(),
            };
            Some((Duration::from_secs_f64(secs), cpu))
        })
        .collect();
    if runs() > 1 {
        println!("(each figure the median of {} runs)", runs());
    }
    print(&measured);
    if std::env::var_os("RUNNEL_BENCH_THREADS").is_some() {
        println!();
        println!("CPU µs/record by thread:");
        for (spec, m) in SPECS.iter().zip(&measured) {
            if let Some((_, cpu)) = m {
                println!("- {}: {}", spec.name, cpu.threads(N));
            }
        }
    }
}

/// How many times every row runs (`RUNNEL_BENCH_RUNS`, default 1); the
/// table shows each row's medians.
fn runs() -> usize {
    std::env::var("RUNNEL_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(1)
}

/// A row's pipeline: the native loop writing these headers, or runnel with
/// this many workers and this provenance.
#[derive(Clone, Copy)]
enum Pipeline {
    Native(&'static [(&'static str, &'static str)]),
    Runnel(usize, Provenance),
}

/// A row of the table: its name, whether it runs the identity or the
/// filter, its pipeline, and the rows it is compared with (the native loop
/// writing the same records, and the native loop writing no headers).
struct Spec {
    name: &'static str,
    identity: bool,
    pipeline: Pipeline,
    versus: Option<(usize, usize)>,
}

/// Every row. For each function: the native loop writing what runnel
/// writes (the same records, with runnel's provenance headers), the baseline
/// of the first ratio; runnel with one and two workers; the native loop
/// writing no headers, to show what the headers cost; runnel with
/// `provenance = "none"`; the native loop writing runnel's one compact
/// header, which the `compact` rows after it are compared with (what that
/// header costs any client of this broker).
const SPECS: [Spec; ROWS] = {
    use Pipeline::{Native, Runnel};
    const NONE: Provenance = Provenance::None;
    const fn row(
        name: &'static str,
        identity: bool,
        pipeline: Pipeline,
        versus: Option<(usize, usize)>,
    ) -> Spec {
        Spec {
            name,
            identity,
            pipeline,
            versus,
        }
    }
    [
        row(
            "identity, native loop, runnel's outputs (with its 3 headers)",
            true,
            Native(PROVENANCE),
            None,
        ),
        row(
            "identity, runnel, 1 worker",
            true,
            Runnel(1, Headers),
            Some((0, 3)),
        ),
        row(
            "identity, runnel, 2 workers",
            true,
            Runnel(2, Headers),
            Some((0, 3)),
        ),
        row("identity, native loop, no headers", true, Native(&[]), None),
        row(
            "identity, runnel, 1 worker, provenance none",
            true,
            Runnel(1, NONE),
            Some((3, 3)),
        ),
        row(
            "identity, runnel, 2 workers, provenance none",
            true,
            Runnel(2, NONE),
            Some((3, 3)),
        ),
        row(
            "identity, native loop, runnel's compact outputs (1 header)",
            true,
            Native(PROVENANCE_COMPACT),
            None,
        ),
        row(
            "identity, runnel, 1 worker, provenance compact (1 header)",
            true,
            Runnel(1, Compact),
            Some((6, 3)),
        ),
        row(
            "identity, runnel, 2 workers, provenance compact (1 header)",
            true,
            Runnel(2, Compact),
            Some((6, 3)),
        ),
        row(
            "filter n >= 50, native loop, runnel's outputs (with its 3 headers)",
            false,
            Native(PROVENANCE),
            None,
        ),
        row(
            "filter n >= 50, runnel, 1 worker",
            false,
            Runnel(1, Headers),
            Some((9, 12)),
        ),
        row(
            "filter n >= 50, runnel, 2 workers",
            false,
            Runnel(2, Headers),
            Some((9, 12)),
        ),
        row(
            "filter n >= 50, native loop, no headers",
            false,
            Native(&[]),
            None,
        ),
        row(
            "filter n >= 50, runnel, 2 workers, provenance none",
            false,
            Runnel(2, NONE),
            Some((12, 12)),
        ),
        row(
            "filter n >= 50, native loop, runnel's compact outputs (1 header)",
            false,
            Native(PROVENANCE_COMPACT),
            None,
        ),
        row(
            "filter n >= 50, runnel, 2 workers, provenance compact (1 header)",
            false,
            Runnel(2, Compact),
            Some((14, 12)),
        ),
    ]
};

/// The rows to run: those whose name contains `RUNNEL_BENCH_ROWS` (every
/// row when it is unset), and the rows they are compared with.
fn selected() -> Vec<bool> {
    let only = std::env::var("RUNNEL_BENCH_ROWS").unwrap_or_default();
    let mut run: Vec<bool> = SPECS.iter().map(|s| s.name.contains(&only)).collect();
    for (i, s) in SPECS.iter().enumerate() {
        if let (true, Some((same, bare))) = (run[i], s.versus) {
            run[same] = true;
            run[bare] = true;
        }
    }
    run
}

/// A row's result: time between the first and the last output, and CPU.
type Measured = (Duration, Cpu);

/// Runs the selected rows, each into an output topic of its own.
fn rows(kafka: &KafkaOptions, input: &str, outs: &[String], run: &[bool]) -> Vec<Option<Measured>> {
    let filter_cfg: &[(&str, &str)] = &[("field", "n"), ("min", "50")];
    SPECS
        .iter()
        .zip(outs)
        .zip(run)
        .map(|((spec, out), &run)| {
            if !run {
                return None;
            }
            let (keep, expect, module, config): (fn(&[u8]) -> bool, _, _, _) = if spec.identity {
                (|_| true, N, guests::IDENTITY_MAP, &[][..])
            } else {
                (keep_half, N / 2, guests::THRESHOLD_FILTER, filter_cfg)
            };
            Some(match spec.pipeline {
                Pipeline::Native(headers) => native(kafka, input, out, keep, expect, headers),
                Pipeline::Runnel(workers, provenance) => runnel(
                    kafka,
                    input,
                    out,
                    module,
                    config,
                    expect,
                    (workers, provenance),
                ),
            })
        })
        .collect()
}

fn print(rows: &[Option<Measured>]) {
    println!(
        "| pipeline | records/s | CPU µs/record | pipeline CPU µs/record | runnel / native loop writing the same records | runnel / native loop writing no headers | by CPU: native loop writing no headers / runnel | by pipeline CPU: the same |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // Input records per second between the first and the last output.
    let rate = |m: &Measured| N as f64 / m.0.as_secs_f64();
    let us = |secs: f64| secs * 1e6 / N as f64;
    for (spec, m) in SPECS.iter().zip(rows) {
        let Some(m) = m else { continue };
        let ratios = spec.versus.map_or(Default::default(), |(same, bare)| {
            let (same, bare) = (rows[same].as_ref(), rows[bare].as_ref());
            let (same, bare) = (same.expect("selected"), bare.expect("selected"));
            [
                rate(m) / rate(same),
                rate(m) / rate(bare),
                bare.1.process / m.1.process,
                bare.1.pipeline / m.1.pipeline,
            ]
            .map(|r| format!("{r:.2}"))
        });
        let [same, bare, by_cpu, by_pipeline] = ratios;
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {same} | {bare} | {by_cpu} | {by_pipeline} |",
            spec.name,
            rate(m),
            us(m.1.process),
            us(m.1.pipeline)
        );
    }
}

/// The native filter: the same rule as threshold_filter with field=n, min=50.
fn keep_half(v: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct V {
        n: f64,
    }
    serde_json::from_slice::<V>(v).is_ok_and(|v| v.n >= 50.0)
}
