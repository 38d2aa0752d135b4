//! End-to-end latency, runnel against the native loop, in one run, on the
//! same embedded broker: from the moment an input is handed to the
//! producer to the moment a reader of the output topic has its output, at
//! p50, p99 and max.
//!
//! Each row gets fresh topics (2 partitions) and a pipeline that copies
//! every record (runnel: the identity map; the native loop of the Kafka
//! benchmark, with runnel's client settings, bookkeeping and headers).
//! Warm-up records go through first, so that the pipeline has joined its
//! group before the timed records start. Then:
//!
//! - at 20 records/s for 10 s: each record finds the pipeline idle, its
//!   consumer's fetch held by the broker (`fetch.wait.max.ms`, 500 ms by
//!   default, against 100 ms in a row of its own);
//! - at a steady 10,000 records/s for 5 s, below saturation;
//! - at saturation: 200,000 records produced as fast as the producer
//!   takes them, so that most wait in the topic (the latency is then the
//!   backlog's).
//!
//! The figures are **broker-bound**: the embedded broker is in this process,
//! on the same two cores, and every record crosses two producers (5 ms
//! `linger.ms` each) and two fetches (the pipeline's and the reader's).
//! runnel's rows also show what `linger_ms` (how long a worker waits to
//! fill a batch) and `batch_size` trade.
//!
//! Run: `cargo bench -p runnel-bench --bench latency`. Nothing is asserted.

use runnel_bench::kafka::{
    Latency, Out, PROVENANCE, Setup, latency_row, native_loop, node_run_as, setup,
};
use runnel_tests::guests;
use runnel_tests::kafka::spec;

const PARTITIONS: i32 = 2;
const STEADY_RATE: u32 = 10_000;
const STEADY: usize = 50_000;
const SATURATED: usize = 200_000;
/// A quiet stream: each record finds the pipeline idle, its fetch held.
const SLOW_RATE: u32 = 20;
const SLOW: usize = 200;

#[derive(Debug, Clone, Copy)]
enum Pipeline {
    Native,
    Runnel {
        workers: usize,
        batch_size: usize,
        linger_ms: u64,
        /// The node's consumer `fetch.wait.max.ms`, when not the default.
        fetch_wait_ms: Option<u32>,
    },
}

fn value() -> Vec<u8> {
    let mut v = b"{\"n\":1,\"pad\":\"".to_vec();
    v.resize(98, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// One row: fresh topics, the pipeline, warm-up, then `n` timed records
/// at `rate` (or as fast as they go).
fn row(setup: &Setup, pipeline: Pipeline, n: usize, rate: Option<u32>) -> Latency {
    latency_row(
        setup,
        PARTITIONS,
        &value(),
        n,
        rate,
        move |kafka, input, output, expect| match pipeline {
            Pipeline::Native => {
                native_loop(kafka, input, output, expect, expect, PROVENANCE, |_| {
                    Out::Same
                });
            }
            Pipeline::Runnel {
                workers,
                batch_size,
                linger_ms,
                fetch_wait_ms,
            } => {
                let mut spec = spec("bench", guests::IDENTITY_MAP, input, output, &[]);
                spec.workers = workers;
                spec.batch_size = batch_size;
                spec.linger_ms = linger_ms;
                let mut kafka = kafka.clone();
                if let Some(ms) = fetch_wait_ms {
                    kafka
                        .properties
                        .push(("fetch.wait.max.ms".into(), ms.to_string()));
                }
                node_run_as(&kafka, spec, expect);
            }
        },
    )
}

fn main() {
    // The runtime and the broker live until the end of main.
    let setup = setup(PARTITIONS, 0);
    let runnel = |workers, batch_size, linger_ms| Pipeline::Runnel {
        workers,
        batch_size,
        linger_ms,
        fetch_wait_ms: None,
    };
    let fetch_wait_100 = Pipeline::Runnel {
        workers: 2,
        batch_size: 256,
        linger_ms: 20,
        fetch_wait_ms: Some(100),
    };
    let steady = Some(STEADY_RATE);
    let slow = Some(SLOW_RATE);
    let rows: Vec<(&str, &str, Pipeline, usize, Option<u32>)> = vec![
        (
            "native loop (runnel's outputs, 3 headers)",
            "20/s",
            Pipeline::Native,
            SLOW,
            slow,
        ),
        (
            "runnel, 2 workers, defaults (fetch wait 500 ms)",
            "20/s",
            runnel(2, 256, 20),
            SLOW,
            slow,
        ),
        (
            "runnel, 2 workers, defaults but fetch wait 100 ms",
            "20/s",
            fetch_wait_100,
            SLOW,
            slow,
        ),
        (
            "native loop (runnel's outputs, 3 headers)",
            "10,000/s",
            Pipeline::Native,
            STEADY,
            steady,
        ),
        (
            "runnel, 2 workers, defaults (batch 256, linger 20 ms)",
            "10,000/s",
            runnel(2, 256, 20),
            STEADY,
            steady,
        ),
        (
            "runnel, 2 workers, defaults but fetch wait 100 ms",
            "10,000/s",
            fetch_wait_100,
            STEADY,
            steady,
        ),
        (
            "runnel, 2 workers, batch 256, linger 5 ms",
            "10,000/s",
            runnel(2, 256, 5),
            STEADY,
            steady,
        ),
        (
            "runnel, 2 workers, batch 256, linger 0",
            "10,000/s",
            runnel(2, 256, 0),
            STEADY,
            steady,
        ),
        (
            "runnel, 2 workers, batch 16, linger 0",
            "10,000/s",
            runnel(2, 16, 0),
            STEADY,
            steady,
        ),
        (
            "native loop (runnel's outputs, 3 headers)",
            "saturation",
            Pipeline::Native,
            SATURATED,
            None,
        ),
        (
            "runnel, 2 workers, defaults (batch 256, linger 20 ms)",
            "saturation",
            runnel(2, 256, 20),
            SATURATED,
            None,
        ),
        (
            "runnel, 2 workers, batch 16, linger 0",
            "saturation",
            runnel(2, 16, 0),
            SATURATED,
            None,
        ),
    ];
    println!(
        "end-to-end latency (produce to readable), identity pipeline, {PARTITIONS} partitions, \
         embedded Tansu broker in this process: broker-bound"
    );
    println!();
    println!("| pipeline | offered | records/s out | p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, offered, pipeline, n, rate) in rows {
        let l = row(&setup, pipeline, n, rate);
        println!("{}", l.row(name, offered));
    }
}
