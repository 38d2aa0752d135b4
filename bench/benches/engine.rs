//! The host's own cost per record: an identity filter and an identity map run
//! through the engine (pack the batch, one call, read the results), side by
//! side with the same functions compiled natively and called per record on
//! the same owned records, and with a plain copy of each record's bytes.
//!
//! The records fit in cache, as a batch just fetched from Kafka does, so the
//! table shows CPU cost rather than memory bandwidth.
//!
//! "Host overhead" is runnel's time minus the native function's: packing
//! the records, copying the batch into the guest, the guest's decoding, the
//! call and reading the results. "Overhead without packing" leaves the pack
//! out (every batch packed beforehand), which is the canonical ABI's share.
//!
//! Run: `cargo bench -p runnel-bench --bench engine`. Nothing is asserted: the
//! table is the result. To see where guest time goes, build with
//! `--features runnel-host/profiling` and run the bench binary under
//! `RUNNEL_PERFMAP=1 perf record`: perf then names the guest's functions.
//! With `RUNNEL_PERFMAP=jitdump perf record -k mono`, then `perf inject
//! --jit`, `perf annotate` shows their machine code.

use std::sync::Arc;

use runnel_abi::{BatchBuilder, Frame};
use runnel_bench::{best_of, per};
use runnel_host::engine::{Limits, Outcome, Worker};
use runnel_sdk::Output;
use runnel_tests::{engine, guest, guests};

const RECORDS: usize = 4096;
/// Passes over the records per timing.
const PASSES: usize = 16;
const VALUE: usize = 100;
const RUNS: usize = 5;
/// Records per timing.
const N: usize = RECORDS * PASSES;

/// A record as the host holds it after a fetch.
struct Owned {
    key: Vec<u8>,
    value: Vec<u8>,
}

fn records() -> Vec<Owned> {
    (0..RECORDS)
        .map(|i| Owned {
            key: format!("key-{i:06}").into_bytes(),
            value: (0..VALUE).map(|j| b'a' + ((i + j) % 26) as u8).collect(),
        })
        .collect()
}

fn pack(batch: &mut BatchBuilder, chunk: &[Owned], base: usize) {
    batch.clear();
    for (i, r) in chunk.iter().enumerate() {
        batch.push(&Frame {
            partition: 0,
            offset: (base + i) as i64,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(&r.key),
            value: Some(&r.value),
            headers: &[],
        });
    }
}

/// Every batch of `size` records, packed beforehand.
fn prepack(records: &[Owned], size: usize) -> Vec<BatchBuilder> {
    records
        .chunks(size)
        .enumerate()
        .map(|(c, chunk)| {
            let mut b = BatchBuilder::default();
            pack(&mut b, chunk, c * size);
            b
        })
        .collect()
}

/// The guests' functions, compiled natively: the same logic on the bytes a
/// native consumer holds.
#[inline(never)]
fn keep(value: Option<&[u8]>) -> runnel_sdk::Result<bool> {
    Ok(value.is_some_and(|v| !v.is_empty()))
}

fn identity(key: &[u8], value: &[u8]) -> Vec<Output> {
    vec![Output::new(value).with_key(key)]
}

fn main() {
    let records = records();
    let engine = engine(None);
    let filter = Arc::new(
        engine
            .load("identity-filter", &guest(guests::IDENTITY_FILTER))
            .expect("loads"),
    );
    let map = Arc::new(
        engine
            .load("identity-map", &guest(guests::IDENTITY_MAP))
            .expect("loads"),
    );
    let mut wf = Worker::new(filter, Limits::default(), vec![], None).expect("starts");
    let mut wm = Worker::new(map, Limits::default(), vec![], None).expect("starts");

    let mut buf = Vec::with_capacity(RECORDS * (VALUE + 16));
    let copy = best_of(RUNS, || {
        for _ in 0..PASSES {
            buf.clear();
            for r in &records {
                buf.extend_from_slice(&r.key);
                buf.extend_from_slice(&r.value);
            }
            std::hint::black_box(&buf);
        }
    });
    println!(
        "runnel engine benchmark: {RECORDS} records x {PASSES} passes, {VALUE}-byte values, 10-byte keys, best of {RUNS} runs"
    );
    println!(
        "copying each record's bytes once: {:.1} ns/record",
        per(copy, N)
    );
    let mut batch = BatchBuilder::with_capacity(256, 256 * (VALUE + 48));
    let packing = best_of(RUNS, || {
        for _ in 0..PASSES {
            for (c, chunk) in records.chunks(256).enumerate() {
                pack(&mut batch, chunk, c * 256);
                std::hint::black_box(batch.data());
            }
        }
    });
    println!(
        "packing records into a batch (part of the host's cost): {:.1} ns/record",
        per(packing, N)
    );
    println!();
    println!(
        "| function | batch | native ns/rec | wasm ns/rec | of which the call (batch packed beforehand) | host overhead ns/rec | overhead without packing | wasm/native |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");

    for &size in &[1usize, 4, 16, 64, 256, 1024] {
        let mut batch = BatchBuilder::with_capacity(size, size * (VALUE + 48));
        let native = best_of(RUNS, || {
            let mut kept = 0usize;
            for _ in 0..PASSES {
                for r in &records {
                    kept +=
                        usize::from(keep(Some(std::hint::black_box(&r.value))).unwrap_or(false));
                }
            }
            assert_eq!(std::hint::black_box(kept), N);
        });
        let wasm = best_of(RUNS, || {
            let mut kept = 0usize;
            for _ in 0..PASSES {
                for (c, chunk) in records.chunks(size).enumerate() {
                    pack(&mut batch, chunk, c * size);
                    let p = wf.process(&mut batch).expect("runs");
                    kept += p.outcomes.iter().filter(|o| **o == Outcome::Keep).count();
                }
            }
            assert_eq!(kept, N);
        });
        // The same, with every batch packed beforehand: the call alone.
        let mut packed = prepack(&records, size);
        let call = best_of(RUNS, || {
            let mut kept = 0usize;
            for _ in 0..PASSES {
                for b in &mut packed {
                    let p = wf.process(b).expect("runs");
                    kept += p.outcomes.iter().filter(|o| **o == Outcome::Keep).count();
                }
            }
            assert_eq!(kept, N);
        });
        row("identity filter", size, native, wasm, call);
    }
    for &size in &[1usize, 4, 16, 64, 256, 1024] {
        let mut batch = BatchBuilder::with_capacity(size, size * (VALUE + 48));
        let native = best_of(RUNS, || {
            let mut bytes = 0usize;
            for _ in 0..PASSES {
                for r in &records {
                    for o in identity(&r.key, &r.value) {
                        bytes += o.value().map_or(0, <[u8]>::len);
                    }
                }
            }
            assert_eq!(std::hint::black_box(bytes), N * VALUE);
        });
        let wasm = best_of(RUNS, || {
            let mut bytes = 0usize;
            for _ in 0..PASSES {
                for (c, chunk) in records.chunks(size).enumerate() {
                    pack(&mut batch, chunk, c * size);
                    let p = wm.process(&mut batch).expect("runs");
                    for i in 0..chunk.len() {
                        for o in p.outputs_of(i) {
                            bytes += o.value().map_or(0, <[u8]>::len);
                        }
                    }
                }
            }
            assert_eq!(bytes, N * VALUE);
        });
        let mut packed = prepack(&records, size);
        let call = best_of(RUNS, || {
            let mut bytes = 0usize;
            for _ in 0..PASSES {
                for b in &mut packed {
                    let p = wm.process(b).expect("runs");
                    bytes += p.outputs.data().len();
                }
            }
            std::hint::black_box(bytes);
        });
        row("identity map", size, native, wasm, call);
    }
}

fn row(
    name: &str,
    size: usize,
    native: std::time::Duration,
    wasm: std::time::Duration,
    call: std::time::Duration,
) {
    let (n, w, c) = (per(native, N), per(wasm, N), per(call, N));
    println!(
        "| {name} | {size} | {n:.1} | {w:.1} | {c:.1} | {:.1} | {:.1} | {:.2} |",
        w - n,
        c - n,
        w / n
    );
}
