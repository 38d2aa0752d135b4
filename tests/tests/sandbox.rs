//! The sandbox against modules written to break it: guests that sleep in host
//! calls, return outputs that alias one another, flood stdout, loop in
//! `init`, start over their memory limit, fill their resource tables or grow
//! a core wasm table. Most are written against `wit/` directly
//! (`tests/guests/contract-breaker`), to do what `runnel-sdk` never would;
//! one is component text (`tests/guests/table-grower.wat`), to do what Rust
//! cannot.
//!
//! Each test checks three things:
//!
//! - the call is stopped or refused, with an error that names the function
//!   and the rule or limit;
//! - a well-behaved function on the same engine (another deployment of the
//!   node) keeps running while the hostile one is stopped, and after;
//! - the process's peak resident memory (`VmHWM` in `/proc/self/status`)
//!   stays under [`PEAK_BASE`] plus the memory limit of each instance that
//!   ran at once. To measure one scenario's peak and not that of the tests
//!   running beside it, each test runs its scenario in a child process: this
//!   test binary, filtered to the one test.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use runnel_host::engine::{
    CallError, Engine, HOSTCALL_FUEL, LOG_BYTES_PER_CALL, Limits, MAX_FAILURE_MESSAGE,
    MAX_TABLE_ELEMENTS, Module, Outcome, Processed, WRITE_PERMIT, Worker,
};
use runnel_tests::{batch_of, engine, guest, guests};

/// Set in the child process that runs one scenario.
const CHILD: &str = "RUNNEL_SANDBOX_SCENARIO";

/// What the process may hold besides its instances' linear memory: the test
/// harness, the engine and its compiled code, and what the host copies out
/// of a guest in one call (at most the hostcall fuel, 128 MiB).
const PEAK_BASE: u64 = 256 << 20;

/// Runs `scenario` in a child process and checks, there, that the peak
/// resident memory stayed under [`PEAK_BASE`] plus the memory that the
/// instances it reports may have had. `test` is the name of the calling test.
fn isolated(test: &str, scenario: impl FnOnce() -> u64) {
    if std::env::var_os(CHILD).is_some() {
        let instance_memory = scenario();
        let peak = peak_rss();
        let bound = PEAK_BASE + instance_memory;
        println!(
            "{test}: peak RSS {} MiB, bound {} MiB",
            peak >> 20,
            bound >> 20
        );
        assert!(
            peak <= bound,
            "peak RSS {peak} bytes is over the bound of {bound}"
        );
        return;
    }
    // The test's name in the harness: its path in the test binary's crate.
    let (_crate, module) = module_path!().split_once("::").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{module}::{test}"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario {test} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "scenario {test} did not run:\n{stdout}"
    );
    for line in stdout.lines().filter(|l| l.contains("peak RSS")) {
        println!("{line}");
    }
}

/// `VmHWM` of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

fn limits() -> Limits {
    Limits {
        call_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// For guests that build tens of MB before they return: time enough on a
/// busy machine.
fn roomy() -> Limits {
    Limits::default()
}

fn load(engine: &Engine, name: &str, path: &str) -> Arc<Module> {
    Arc::new(engine.load(name, &guest(path)).unwrap())
}

/// Runs `batch` through `hostile` on one thread while a well-behaved filter,
/// on the same engine, runs batches on this one until the hostile call is
/// over, then once more. Returns what the hostile call gave and how many
/// healthy batches ran during it (each checked).
fn beside_a_healthy_function(
    engine: &Engine,
    hostile: Worker,
    batch: &[&str],
) -> (Result<Processed, CallError>, Worker, u64) {
    let healthy_module = load(engine, "healthy", guests::IDENTITY_FILTER);
    let mut healthy = Worker::new(healthy_module, Limits::default(), vec![], None).unwrap();
    let values: Vec<String> = batch.iter().map(ToString::to_string).collect();
    let thread = std::thread::spawn({
        let mut hostile = hostile;
        move || {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let result = hostile.process(&mut batch_of(&refs));
            (result, hostile)
        }
    });
    let mut during = 0;
    while !thread.is_finished() {
        let p = healthy.process(&mut batch_of(&["a", "b"])).unwrap();
        assert_eq!(p.outcomes, vec![Outcome::Keep, Outcome::Keep]);
        during += 1;
    }
    let (result, hostile) = thread.join().unwrap();
    let after = healthy.process(&mut batch_of(&["c"])).unwrap();
    assert_eq!(after.outcomes, vec![Outcome::Keep]);
    (result, hostile, during)
}

fn trap_of(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failed {
            message,
            trapped: true,
        } => message,
        other => panic!("expected a trap, got {other:?}"),
    }
}

/// A hostile call and a record after it in the same batch: the hostile
/// record fails with `expected`'s message, the other is processed.
fn assert_isolated(p: &Processed, expected: impl Fn(&str) -> bool) {
    let message = trap_of(&p.outcomes[0]);
    assert!(expected(message), "unexpected error: {message}");
    assert!(
        !matches!(p.outcomes[1], Outcome::Failed { .. }),
        "{:?}",
        p.outcomes[1]
    );
}

/// A guest that sleeps (`std::thread::sleep` for two minutes) is stopped at
/// its deadline: the sleep is a WASI clock and a wait in the host, which
/// epoch interruption alone cannot stop.
#[test]
fn a_sleep_is_stopped_at_the_deadline() {
    isolated("a_sleep_is_stopped_at_the_deadline", || {
        let engine = engine(None);
        let module = load(&engine, "sleeper", guests::HOSTILE);
        let hostile = Worker::new(module, limits(), vec![], None).unwrap();
        let (result, hostile, during) =
            beside_a_healthy_function(&engine, hostile, &["sleep", "ok"]);
        let p = result.unwrap();
        assert_isolated(&p, |m| {
            m.starts_with("function `sleeper` was still waiting in `wasi:io/poll.")
                && m.ends_with(
                    "(a sleep or a poll) at its deadline of 300ms per call and was stopped",
                )
        });
        assert!(during > 0);
        // The batch, then the sleeping record alone.
        assert_eq!(hostile.stats().traps, 2);
        2 * limits().memory_bytes
    });
}

/// `poll` and `pollable.block` called directly, on a two-minute clock.
#[test]
fn poll_and_block_are_stopped_at_the_deadline() {
    isolated("poll_and_block_are_stopped_at_the_deadline", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        for (attack, call) in [
            ("poll", "wasi:io/poll.poll"),
            ("block", "wasi:io/poll.pollable.block"),
        ] {
            let hostile = Worker::new(module.clone(), limits(), vec![], None).unwrap();
            let (result, _, during) = beside_a_healthy_function(&engine, hostile, &[attack, "ok"]);
            let p = result.unwrap();
            assert_isolated(&p, |m| {
                m == format!(
                    "function `breaker` was still waiting in `{call}` (a sleep or a poll) at its \
                     deadline of 300ms per call and was stopped"
                )
            });
            assert!(during > 0);
        }
        2 * limits().memory_bytes
    });
}

/// Stdin is empty and closed: reading it returns at once, it cannot block.
#[test]
fn reading_stdin_cannot_block() {
    isolated("reading_stdin_cannot_block", || {
        let engine = engine(None);
        let module = load(&engine, "reader", guests::HOSTILE);
        let mut w = Worker::new(module, limits(), vec![], None).unwrap();
        let p = w.process(&mut batch_of(&["stdin"])).unwrap();
        assert_eq!(p.outcomes, vec![Outcome::Keep]);
        limits().memory_bytes
    });
}

/// A busy loop in `init` is stopped by the deadline, and the function is
/// refused with an error saying so.
#[test]
fn a_loop_in_init_is_stopped() {
    isolated("a_loop_in_init_is_stopped", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let config = vec![("init".to_owned(), "loop".to_owned())];
        let err = Worker::new(module, limits(), config, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "function `breaker` ran past its deadline of 300ms per call and was stopped"
        );
        let healthy = load(&engine, "healthy", guests::IDENTITY_FILTER);
        let mut w = Worker::new(healthy, Limits::default(), vec![], None).unwrap();
        assert_eq!(
            w.process(&mut batch_of(&["x"])).unwrap().outcomes,
            vec![Outcome::Keep]
        );
        2 * limits().memory_bytes
    });
}

/// One 10 MB frame and 1,000 index entries pointing at it: 10 GB of output
/// from 10 MB of guest memory, before frames had to be in order and apart.
#[test]
fn output_frames_that_alias_one_another_are_refused() {
    isolated("output_frames_that_alias_one_another_are_refused", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        for attack in ["alias-frames", "overlap"] {
            let hostile = Worker::new(module.clone(), roomy(), vec![], None).unwrap();
            let (result, _, _) = beside_a_healthy_function(&engine, hostile, &[attack, "ok"]);
            let p = result.unwrap();
            assert_isolated(&p, |m| {
                m.starts_with("function `breaker` returned a malformed result: output frame 1 starts at byte ")
                    && m.ends_with("frames must be in order and must not overlap")
            });
            // Only the record that was not an attack produced anything.
            assert_eq!(p.outputs.len(), 1);
        }
        2 * roomy().memory_bytes
    });
}

/// Counts that add up to more frames than were returned.
#[test]
fn counts_that_do_not_add_up_are_refused() {
    isolated("counts_that_do_not_add_up_are_refused", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let hostile = Worker::new(module, limits(), vec![], None).unwrap();
        let (result, _, _) = beside_a_healthy_function(&engine, hostile, &["uncounted", "ok"]);
        assert_isolated(&result.unwrap(), |m| {
            m == "function `breaker` returned a malformed result: the counts add up to 5 output \
                  records but 1 were returned"
        });
        2 * limits().memory_bytes
    });
}

/// Ten million outputs for one record: over the limit per record (10,000 by
/// default, and set per deployment).
#[test]
fn ten_million_outputs_from_one_record_are_refused() {
    isolated("ten_million_outputs_from_one_record_are_refused", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let hostile = Worker::new(module.clone(), roomy(), vec![], None).unwrap();
        let (result, _, _) = beside_a_healthy_function(&engine, hostile, &["ten-million", "ok"]);
        assert_isolated(&result.unwrap(), |m| {
            m == "function `breaker` returned a malformed result: record 0 produced 10000000 \
                  outputs, over the limit of 10000 per record"
        });
        // With the limit raised past it, the frames (all one) are refused.
        let raised = Limits {
            max_outputs_per_record: 20_000_000,
            ..roomy()
        };
        let mut w = Worker::new(module, raised, vec![], None).unwrap();
        let p = w.process(&mut batch_of(&["ten-million"])).unwrap();
        assert!(
            trap_of(&p.outcomes[0]).ends_with("frames must be in order and must not overlap"),
            "{:?}",
            p.outcomes
        );
        2 * roomy().memory_bytes
    });
}

/// The bytes of output per call are limited per deployment.
#[test]
fn output_bytes_per_call_are_limited() {
    isolated("output_bytes_per_call_are_limited", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let small = Limits {
            max_output_bytes: 1000,
            ..limits()
        };
        let mut w = Worker::new(module, small, vec![], None).unwrap();
        let big = "v".repeat(600);
        let p = w.process(&mut batch_of(&[&big, &big])).unwrap();
        // Together over the limit; each alone within it.
        assert_eq!(w.stats().traps, 1);
        assert_eq!(p.outputs.len(), 2);
        let p = w.process(&mut batch_of(&[&"v".repeat(2000)])).unwrap();
        assert_eq!(
            trap_of(&p.outcomes[0]),
            "function `breaker` returned a malformed result: its outputs take 2.0 KiB (2032 \
             bytes), over the limit of 1000 B per call"
        );
        limits().memory_bytes
    });
}

/// 1,000 failures whose messages alias one 20 MB string: wasmtime's hostcall
/// fuel, which runnel sets to 128 MiB, stops the copy (20 GB otherwise).
#[test]
fn failures_that_alias_one_huge_message_exhaust_the_hostcall_fuel() {
    isolated(
        "failures_that_alias_one_huge_message_exhaust_the_hostcall_fuel",
        || {
            let engine = engine(None);
            let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
            let hostile = Worker::new(module.clone(), limits(), vec![], None).unwrap();
            let (result, _, _) =
                beside_a_healthy_function(&engine, hostile, &["alias-failures", "ok"]);
            assert_isolated(&result.unwrap(), |m| {
                m.starts_with("function `breaker` trapped: ")
                    && m.contains("too much data is being copied between the host and the guest")
            });
            let instance = module.instantiate(limits()).unwrap();
            assert_eq!(instance.hostcall_fuel(), HOSTCALL_FUEL);
            assert_eq!(HOSTCALL_FUEL, 128 << 20);
            2 * limits().memory_bytes
        },
    );
}

/// A failure message of 1 MB is cut to 1 KiB: it travels in a Kafka header.
#[test]
fn a_long_failure_message_is_cut() {
    isolated("a_long_failure_message_is_cut", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let mut w = Worker::new(module, limits(), vec![], None).unwrap();
        let p = w.process(&mut batch_of(&["long-failure"])).unwrap();
        let Outcome::Failed {
            message,
            trapped: false,
        } = &p.outcomes[0]
        else {
            panic!("{:?}", p.outcomes);
        };
        assert_eq!(
            *message,
            format!("{} [{} more bytes cut]", "y".repeat(1024), (1 << 20) - 1024)
        );
        limits().memory_bytes
    });
}

/// A trap's message quotes what the guest last wrote to stderr: a panic
/// with a 100 KB message after 16 lines of 4,000 bytes is cut to 1 KiB too,
/// as it becomes the dead letter's `runnel-error` header.
#[test]
fn a_traps_message_is_cut_like_a_failure() {
    isolated("a_traps_message_is_cut_like_a_failure", || {
        let engine = engine(None);
        let module = load(&engine, "hostile", guests::HOSTILE);
        let mut w = Worker::new(module, limits(), vec![], None).unwrap();
        let p = w.process(&mut batch_of(&["shout", "ok"])).unwrap();
        let message = trap_of(&p.outcomes[0]);
        assert!(
            message.starts_with("function `hostile` panicked: "),
            "{message}"
        );
        assert!(
            message.len() <= MAX_FAILURE_MESSAGE + 32 && message.ends_with("more bytes cut]"),
            "{} bytes: {message}",
            message.len()
        );
        assert_eq!(p.outcomes[1], Outcome::Keep);
        limits().memory_bytes
    });
}

/// `init` refusing to start with a 1 MiB message: the error, which the
/// deployment's status and the log show, is cut to 1 KiB.
#[test]
fn an_init_errors_message_is_cut() {
    isolated("an_init_errors_message_is_cut", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let config = vec![("init".to_owned(), "long".to_owned())];
        let err = Worker::new(module, limits(), config, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("function `breaker` refused to start: nnn"),
            "{err}"
        );
        assert!(
            err.len() <= MAX_FAILURE_MESSAGE + 80 && err.ends_with("more bytes cut]"),
            "{} bytes",
            err.len()
        );
        limits().memory_bytes
    });
}

/// 100 MB to stdout in one `output-stream.write`, past the 64 KiB that
/// `check-write` permits: the write traps (wasmtime-wasi does not check the
/// permit; runnel's stream does). The host's copy of the argument is bounded
/// by the hostcall fuel.
#[test]
fn a_single_huge_write_to_stdout_traps() {
    isolated("a_single_huge_write_to_stdout_traps", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let hostile = Worker::new(module.clone(), limits(), vec![], None).unwrap();
        let (result, _, _) = beside_a_healthy_function(&engine, hostile, &["write", "ok"]);
        assert_isolated(&result.unwrap(), |m| {
            m.starts_with(&format!(
                "function `breaker` trapped: a single write of {} bytes to stdout is over the \
                 {WRITE_PERMIT} bytes that `check-write` permits",
                100 << 20
            ))
        });
        // Nothing of it was logged, nor counted as dropped: it was refused.
        assert_eq!(module.log_dropped_bytes(), 0);
        2 * limits().memory_bytes
    });
}

/// 100 MB of lines printed through std (which writes within the permit):
/// the call logs at most its cap and counts the rest as dropped.
#[test]
fn a_flood_of_stdout_is_capped_per_call() {
    isolated("a_flood_of_stdout_is_capped_per_call", || {
        let engine = engine(None);
        let module = load(&engine, "flooder", guests::HOSTILE);
        // Time enough to print it all, most likely.
        let hostile = Worker::new(module.clone(), Limits::default(), vec![], None).unwrap();
        let (result, _, _) = beside_a_healthy_function(&engine, hostile, &["flood", "ok"]);
        let p = result.unwrap();
        // Either the flood finished within the deadline or the deadline
        // stopped it; both ways the host logged at most one call's cap.
        let written: u64 = 100 << 20;
        let dropped = module.log_dropped_bytes();
        match &p.outcomes[0] {
            Outcome::Keep => assert!(dropped >= written - LOG_BYTES_PER_CALL, "{dropped}"),
            other => assert!(trap_of(other).contains("deadline"), "{other:?}"),
        }
        assert!(dropped > 0);
        2 * limits().memory_bytes
    });
}

/// Opening stdout again and again, keeping every handle: the resource table
/// is limited (10,000 entries), and the guest traps when it is full.
#[test]
fn a_resource_table_that_grows_without_bound_traps() {
    isolated("a_resource_table_that_grows_without_bound_traps", || {
        let engine = engine(None);
        let module = load(&engine, "breaker", guests::CONTRACT_BREAKER);
        let hostile = Worker::new(module, limits(), vec![], None).unwrap();
        let (result, _, _) = beside_a_healthy_function(&engine, hostile, &["handles", "ok"]);
        assert_isolated(&result.unwrap(), |m| {
            m.starts_with("function `breaker` trapped: ") && !m.contains("deadline")
        });
        2 * limits().memory_bytes
    });
}

/// A filter in component text that grows a funcref table by 1,000 elements
/// at a time, forever, whatever `table.grow` returns. A table holds at most
/// [`MAX_TABLE_ELEMENTS`] (20,000) elements: the pooling allocator reserves
/// no more per table, and growing past it traps with the limit named, where
/// a -1 would have left this guest spinning until its deadline.
#[test]
fn a_table_that_grows_without_bound_traps() {
    isolated("a_table_that_grows_without_bound_traps", || {
        assert_eq!(MAX_TABLE_ELEMENTS, 20_000);
        let engine = engine(None);
        let text = include_str!("../guests/table-grower.wat");
        let module = Arc::new(
            engine
                .load("tables", &wat::parse_str(text).unwrap())
                .unwrap(),
        );
        let hostile = Worker::new(module, limits(), vec![], None).unwrap();
        let (result, hostile, _) = beside_a_healthy_function(&engine, hostile, &["grow", "ok"]);
        assert_isolated(&result.unwrap(), |m| {
            m == "function `tables` tried to grow a table to 21000 elements, over the limit of \
                  20000 per table"
        });
        // The batch, then the growing record alone.
        assert_eq!(hostile.stats().traps, 2);
        // The same module declaring a table past the cap never loads.
        let over = text.replace("(table $t 0 funcref)", "(table $t 20001 funcref)");
        assert_ne!(over, text);
        let err = engine
            .load("tables", &wat::parse_str(&over).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("minimum element size of 20001 which exceeds the limit of 20000"),
            "{err}"
        );
        2 * limits().memory_bytes
    });
}

/// Data segments of 3 MiB under a memory limit of 2 MiB: refused when it is
/// instantiated, before any of its code runs.
#[test]
fn data_segments_over_the_memory_limit_are_refused_at_instantiation() {
    isolated(
        "data_segments_over_the_memory_limit_are_refused_at_instantiation",
        || {
            let engine = engine(None);
            let module = load(&engine, "big", guests::BIG_DATA);
            let small = Limits {
                memory_bytes: 2 << 20,
                ..limits()
            };
            let err = Worker::new(module.clone(), small, vec![], None).unwrap_err();
            assert!(matches!(err, CallError::MemoryLimit { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("function `big` tried to grow its memory to ")
                    && err.to_string().ends_with("over its limit of 2.0 MiB"),
                "{err}"
            );
            // Within a limit that holds them, it runs.
            let mut w = Worker::new(module, limits(), vec![], None).unwrap();
            assert_eq!(
                w.process(&mut batch_of(&["x"])).unwrap().outcomes,
                vec![Outcome::Keep]
            );
            limits().memory_bytes
        },
    );
}
