//! A map written against `wit/` directly, without `runnel-sdk`, to do what the
//! SDK never would. A record whose value names an attack makes the whole call
//! carry it out; other records are copied to the output.
//!
//! - `alias-frames`: one 10 MB output frame and 1,000 index entries that all
//!   point at it, counted as 1,000 outputs of the record;
//! - `overlap`: two frames, the second starting inside the first;
//! - `uncounted`: counts that add up to more frames than were returned;
//! - `ten-million`: ten million outputs for one record (index entries all
//!   pointing at one frame);
//! - `alias-failures`: 1,000 failures whose messages all alias one 20 MB
//!   string in guest memory;
//! - `long-failure`: one failure with a 1 MB message;
//! - `poll`: waits two minutes in `wasi:io/poll.poll` on a clock;
//! - `block`: the same in `pollable.block`;
//! - `write`: writes 100 MB to stdout in one `output-stream.write`;
//! - `handles`: opens stdout again and again, keeping every handle: the
//!   component's table of resources grows without bound.
//!
//! `init` spins forever when its config has `init = loop`, and refuses to
//! start with a 1 MiB message when it has `init = long`.

wit_bindgen::generate!({
    path: ["../../../wit", "wit"],
    world: "test:breaker/breaker",
    generate_all,
});

use runnel::stream::types::{Failure, RecordError};
use runnel_abi::{BatchBuilder, BatchRef, Frame};

struct Component;

fn frame_of(value: &[u8]) -> BatchBuilder {
    let mut b = BatchBuilder::default();
    b.push(&Frame {
        partition: -1,
        offset: -1,
        timestamp_ms: None,
        key: None,
        value: Some(value),
        headers: &[],
    });
    b
}

fn outputs(counts: Vec<u32>, batch: BatchBuilder, failures: Vec<Failure>) -> Outputs {
    let (data, index) = batch.into_parts();
    Outputs {
        counts,
        records: Batch { data, index },
        failures,
    }
}

const TWO_MINUTES_NS: u64 = 120_000_000_000;

fn attack(name: &[u8], n: usize) -> Option<Outputs> {
    let mut counts = vec![0u32; n];
    Some(match name {
        b"alias-frames" => {
            let (data, _) = frame_of(&vec![7u8; 10_000_000]).into_parts();
            counts[0] = 1000;
            Outputs {
                counts,
                records: Batch {
                    data,
                    index: vec![0; 1000],
                },
                failures: vec![],
            }
        }
        b"overlap" => {
            let mut b = frame_of(b"first");
            b.push(&Frame {
                partition: -1,
                offset: -1,
                timestamp_ms: None,
                key: None,
                value: Some(b"second"),
                headers: &[],
            });
            let (data, mut index) = b.into_parts();
            index[1] -= 4;
            counts[0] = 2;
            Outputs {
                counts,
                records: Batch { data, index },
                failures: vec![],
            }
        }
        b"uncounted" => {
            counts[0] = 5;
            outputs(counts, frame_of(b"only one"), vec![])
        }
        b"ten-million" => {
            let (data, _) = frame_of(b"x").into_parts();
            counts[0] = 10_000_000;
            Outputs {
                counts,
                records: Batch {
                    data,
                    index: vec![0; 10_000_000],
                },
                failures: vec![],
            }
        }
        b"alias-failures" => {
            let message: &'static mut str = "x".repeat(20 << 20).leak();
            let (ptr, len) = (message.as_mut_ptr(), message.len());
            let failures = (0..1000)
                .map(|i| Failure {
                    index: i,
                    error: RecordError {
                        // Every message is the same bytes: the host copies
                        // each. The guest never frees them (the call traps).
                        message: unsafe { String::from_raw_parts(ptr, len, len) },
                    },
                })
                .collect();
            outputs(counts, BatchBuilder::default(), failures)
        }
        b"long-failure" => {
            let failures = vec![Failure {
                index: 0,
                error: RecordError {
                    message: "y".repeat(1 << 20),
                },
            }];
            outputs(counts, BatchBuilder::default(), failures)
        }
        b"poll" => {
            let clock = wasi::clocks::monotonic_clock::subscribe_duration(TWO_MINUTES_NS);
            wasi::io::poll::poll(&[&clock]);
            outputs(counts, BatchBuilder::default(), vec![])
        }
        b"block" => {
            wasi::clocks::monotonic_clock::subscribe_duration(TWO_MINUTES_NS).block();
            outputs(counts, BatchBuilder::default(), vec![])
        }
        b"write" => {
            let stdout = wasi::cli::stdout::get_stdout();
            let _ = stdout.write(&vec![b'z'; 100 << 20]);
            outputs(counts, BatchBuilder::default(), vec![])
        }
        b"handles" => {
            let mut kept = Vec::new();
            loop {
                kept.push(wasi::cli::stdout::get_stdout());
                std::hint::black_box(&kept);
            }
        }
        _ => return None,
    })
}

impl Guest for Component {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if config.iter().any(|(k, v)| k == "init" && v == "long") {
            return Err("n".repeat(1 << 20));
        }
        if config.iter().any(|(k, v)| k == "init" && v == "loop") {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Ok(())
    }

    fn map(batch: Batch) -> Outputs {
        let view = BatchRef::new(&batch.data, &batch.index);
        for record in view.iter().flatten() {
            if let Some(out) = attack(record.value().unwrap_or_default(), view.len()) {
                return out;
            }
        }
        let mut out = BatchBuilder::default();
        let mut counts = Vec::with_capacity(view.len());
        for record in view.iter().flatten() {
            out.push(&Frame {
                partition: -1,
                offset: -1,
                timestamp_ms: None,
                key: record.key(),
                value: record.value(),
                headers: &[],
            });
            counts.push(1);
        }
        outputs(counts, out, vec![])
    }
}

export!(Component);
