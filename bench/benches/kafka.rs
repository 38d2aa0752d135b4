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
//! row's CPU went, by thread. Nothing is asserted.

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
const ROWS: usize = 14;

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
    let mut all = Vec::new();
    for run in 0..runs() {
        if runs() > 1 {
            eprintln!("run {} of {}...", run + 1, runs());
        }
        all.push(rows(&kafka, &input, &outs[ROWS * run..ROWS * (run + 1)]));
    }
    // Each row's median over the runs, of its rate and of its CPU.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rows: Vec<Row> = (0..all[0].len())
        .map(|i| {
            let (name, _, versus) = &all[0][i];
            let secs = median(all.iter().map(|r| r[i].1.0.as_secs_f64()).collect());
            let of = |f: &dyn Fn(&Cpu) -> f64| median(all.iter().map(|r| f(&r[i].1.1)).collect());
            let cpu = Cpu {
                process: of(&|c| c.process),
                pipeline: of(&|c| c.pipeline),
                by_thread: all[0][i]
                    .1
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
            (*name, (Duration::from_secs_f64(secs), cpu), *versus)
        })
        .collect();
    if runs() > 1 {
        println!("(each figure the median of {} runs)", runs());
    }
    print(&rows);
    if std::env::var_os("RUNNEL_BENCH_THREADS").is_some() {
        println!();
        println!("CPU µs/record by thread:");
        for (name, (_, cpu), _) in &rows {
            println!("- {name}: {}", cpu.threads(N));
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

/// A row: its name, (time between the first and last output, CPU), and the
/// rows it is compared with.
type Row = (&'static str, (Duration, Cpu), Option<(usize, usize)>);

fn rows(kafka: &KafkaOptions, input: &str, outs: &[String]) -> Vec<Row> {
    let (kafka, input) = (kafka.clone(), input.to_owned());
    let kept = N / 2;
    let filter_cfg: &[(&str, &str)] = &[("field", "n"), ("min", "50")];
    let f = guests::THRESHOLD_FILTER;
    // Each block: the native loop writing what runnel writes (the same
    // records, with runnel's provenance headers), the baseline of the ratio;
    // runnel with one and two workers, naming the rows they are compared
    // with; the native loop writing no headers, to show what the headers
    // cost; runnel with `provenance` compact and none; and the native loop
    // writing runnel's one compact header, which the compact rows are
    // compared with (what that header costs any client of this broker).
    vec![
        (
            "identity, native loop, runnel's outputs (with its 3 headers)",
            native(&kafka, &input, &outs[0], |_| true, N, PROVENANCE),
            None,
        ),
        (
            "identity, runnel, 1 worker",
            runnel(
                &kafka,
                &input,
                &outs[1],
                guests::IDENTITY_MAP,
                &[],
                N,
                (1, Headers),
            ),
            Some((0, 3)),
        ),
        (
            "identity, runnel, 2 workers",
            runnel(
                &kafka,
                &input,
                &outs[2],
                guests::IDENTITY_MAP,
                &[],
                N,
                (2, Headers),
            ),
            Some((0, 3)),
        ),
        (
            "identity, native loop, no headers",
            native(&kafka, &input, &outs[3], |_| true, N, &[]),
            None,
        ),
        (
            "identity, runnel, 2 workers, provenance compact (1 header)",
            runnel(
                &kafka,
                &input,
                &outs[8],
                guests::IDENTITY_MAP,
                &[],
                N,
                (2, Compact),
            ),
            Some((6, 3)),
        ),
        (
            "identity, runnel, 2 workers, provenance none",
            runnel(
                &kafka,
                &input,
                &outs[9],
                guests::IDENTITY_MAP,
                &[],
                N,
                (2, Provenance::None),
            ),
            Some((3, 3)),
        ),
        (
            "identity, native loop, runnel's compact outputs (1 header)",
            native(&kafka, &input, &outs[12], |_| true, N, PROVENANCE_COMPACT),
            None,
        ),
        (
            "filter n >= 50, native loop, runnel's outputs (with its 3 headers)",
            native(&kafka, &input, &outs[4], keep_half, kept, PROVENANCE),
            None,
        ),
        (
            "filter n >= 50, runnel, 1 worker",
            runnel(&kafka, &input, &outs[5], f, filter_cfg, kept, (1, Headers)),
            Some((7, 10)),
        ),
        (
            "filter n >= 50, runnel, 2 workers",
            runnel(&kafka, &input, &outs[6], f, filter_cfg, kept, (2, Headers)),
            Some((7, 10)),
        ),
        (
            "filter n >= 50, native loop, no headers",
            native(&kafka, &input, &outs[7], keep_half, kept, &[]),
            None,
        ),
        (
            "filter n >= 50, runnel, 2 workers, provenance compact (1 header)",
            runnel(&kafka, &input, &outs[10], f, filter_cfg, kept, (2, Compact)),
            Some((13, 10)),
        ),
        (
            "filter n >= 50, runnel, 2 workers, provenance none",
            runnel(
                &kafka,
                &input,
                &outs[11],
                f,
                filter_cfg,
                kept,
                (2, Provenance::None),
            ),
            Some((10, 10)),
        ),
        (
            "filter n >= 50, native loop, runnel's compact outputs (1 header)",
            native(
                &kafka,
                &input,
                &outs[13],
                keep_half,
                kept,
                PROVENANCE_COMPACT,
            ),
            None,
        ),
    ]
}

fn print(rows: &[Row]) {
    println!(
        "| pipeline | records/s | CPU µs/record | pipeline CPU µs/record | runnel / native loop writing the same records | runnel / native loop writing no headers | by CPU: native loop writing no headers / runnel | by pipeline CPU: the same |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let rate = |row: usize| N as f64 / rows[row].1.0.as_secs_f64();
    let us = |secs: f64| secs * 1e6 / N as f64;
    for (i, (name, (_, cpu), native)) in rows.iter().enumerate() {
        // Input records per second between the first and the last output.
        let ratios = native.map_or(Default::default(), |(same, bare)| {
            let bare_cpu = &rows[bare].1.1;
            [
                rate(i) / rate(same),
                rate(i) / rate(bare),
                bare_cpu.process / cpu.process,
                bare_cpu.pipeline / cpu.pipeline,
            ]
            .map(|r| format!("{r:.2}"))
        });
        let [same, bare, by_cpu, by_pipeline] = ratios;
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {same} | {bare} | {by_cpu} | {by_pipeline} |",
            rate(i),
            us(cpu.process),
            us(cpu.pipeline)
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
