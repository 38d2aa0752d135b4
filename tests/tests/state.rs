//! Processors and their keyed state, through the engine: the `state`
//! interface against the `state-probe` guest (which does to its state what
//! each record says, hostile requests included) and the `running-count`
//! example. Every limit shows up as a clear error on the record that hit
//! it, never as a host crash, and a trapped or failed record leaves no
//! write behind.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::sync::Arc;

use runnel_abi::{BatchBuilder, Frame};
use runnel_host::engine::{Limits, Outcome, Worker, World};
use runnel_host::state::disk::DiskBackend;
use runnel_host::state::memory::MemoryBackend;
use runnel_host::state::{Backend, State, StateLimits};
use runnel_tests::{engine, guest, guests};

fn worker(path: &str, stores: &[&str], backend: Box<dyn Backend>, limits: StateLimits) -> Worker {
    let module = engine(None).load("probe", &guest(path)).expect("loads");
    assert_eq!(module.world(), World::Processor);
    let stores: Vec<String> = stores.iter().map(|s| (*s).to_owned()).collect();
    let state = State::new("in", &stores, backend, limits).unwrap();
    Worker::new(Arc::new(module), Limits::default(), vec![], None)
        .expect("starts")
        .with_state(state)
}

fn probe(limits: StateLimits) -> Worker {
    worker(
        guests::STATE_PROBE,
        &["main", "counts"],
        Box::new(MemoryBackend),
        limits,
    )
}

/// Runs one batch of (partition, command) records and says what each did:
/// its output's value, `error: ..` or `trap: ..`.
fn run(w: &mut Worker, records: &[(i32, &str)]) -> Vec<String> {
    let mut batch = BatchBuilder::default();
    for (i, (partition, value)) in records.iter().enumerate() {
        batch.push(&Frame {
            partition: *partition,
            offset: i as i64,
            timestamp_ms: None,
            key: Some(b"k"),
            value: Some(value.as_bytes()),
            headers: &[],
        });
    }
    let p = w.process(&mut batch).unwrap();
    (0..records.len())
        .map(|i| match &p.outcomes[i] {
            Outcome::Emit { .. } => {
                let out = p.outputs_of(i).next().unwrap();
                String::from_utf8(out.value().unwrap().to_vec()).unwrap()
            }
            Outcome::Failed { message, trapped } => {
                format!("{}: {message}", if *trapped { "trap" } else { "error" })
            }
            other => format!("{other:?}"),
        })
        .collect()
}

fn run0(w: &mut Worker, commands: &[&str]) -> Vec<String> {
    let records: Vec<(i32, &str)> = commands.iter().map(|c| (0, *c)).collect();
    run(w, &records)
}

#[test]
fn state_is_kept_per_partition_and_reads_see_the_calls_writes() {
    let mut w = probe(StateLimits::default());
    let got = run(
        &mut w,
        &[
            (0, "count a"),
            (1, "count a"),
            (0, "count a"),
            (0, "put x 1"),
            (0, "get x"),
            (1, "get x"),
        ],
    );
    assert_eq!(got, ["1", "1", "2", "ok", "1", "none"]);
    // The next call reads what the last one wrote.
    let got = run(&mut w, &[(0, "count a"), (1, "count a"), (0, "many x y x")]);
    assert_eq!(got, ["3", "2", "1,none,1"]);
}

#[test]
fn deletes_and_scans_page_through_the_store_and_the_calls_writes() {
    let mut w = probe(StateLimits::default());
    run0(
        &mut w,
        &["put a/1 x", "put a/2 y", "put a/3 z", "put b/1 w"],
    );
    let got = run0(
        &mut w,
        &[
            "put a/4 new",
            "del a/2",
            "scan a/ 1",
            "scan a/ 100",
            "scan b 2",
            "scan c 2",
        ],
    );
    assert_eq!(
        got,
        [
            "ok",
            "ok",
            "a/1=x,a/3=z,a/4=new",
            "a/1=x,a/3=z,a/4=new",
            "b/1=w",
            ""
        ]
    );
}

#[test]
fn a_trapped_batch_leaves_no_writes_and_its_good_records_run_alone() {
    let mut w = probe(StateLimits::default());
    let got = run0(&mut w, &["count a", "put-then-panic b 1", "put c 1"]);
    assert_eq!(got[0], "1");
    assert!(
        got[1].starts_with("trap: ") && got[1].contains("panicked"),
        "{}",
        got[1]
    );
    assert_eq!(got[2], "ok");
    // `count a` ran twice (in the trapped batch, then alone) and counted once.
    assert_eq!(
        run0(&mut w, &["count a", "get b", "get c"]),
        ["2", "none", "1"]
    );
}

#[test]
fn a_failed_record_leaves_no_writes() {
    let mut w = probe(StateLimits::default());
    let got = run0(&mut w, &["put-then-fail k v", "get k", "put k w", "get k"]);
    assert_eq!(got, ["error: asked to fail after a put", "none", "ok", "w"]);
}

#[test]
fn an_undeclared_store_is_a_clear_error() {
    let mut w = probe(StateLimits::default());
    let got = run0(&mut w, &["open other", "open main"]);
    assert_eq!(
        got[0],
        "error: store \"other\": no store named \"other\" is declared for this deployment \
         (declared: \"main\", \"counts\")"
    );
    assert_eq!(got[1], "ok");
}

#[test]
fn keys_values_and_reads_over_their_limits_fail_the_record() {
    let mut w = probe(StateLimits::default());
    let got = run0(
        &mut w,
        &[
            "big-key 5000",
            "big-value 2000000",
            "many-keys 20000",
            "scan-all 20000",
            "big-key 4096",
        ],
    );
    let limit = |s: &str, what: &str| {
        assert!(
            s.starts_with("error: store \"main\": ") && s.contains(what),
            "{s}"
        );
    };
    limit(&got[0], "a key of 5000 bytes, over the limit of 4096 bytes");
    limit(
        &got[1],
        "a value of 2000003 bytes, over the limit of 983040 bytes",
    );
    limit(
        &got[2],
        "get-many of 20000 keys, over the limit of 10000 keys per call",
    );
    limit(
        &got[3],
        "a scan of up to 20000 entries, over the limit of 10000 per page",
    );
    assert_eq!(got[4], "ok");
}

#[test]
fn a_call_cannot_buffer_more_than_its_limit_of_writes() {
    let mut w = probe(StateLimits::default());
    // 20,000 values of 1 KiB: 20 MB, over the 16 MiB a call may buffer.
    let got = run0(&mut w, &["flood 20000", "put after 1", "scan-all 10"]);
    assert!(
        got[0].starts_with("error: ") && got[0].contains("the limit per call"),
        "{}",
        got[0]
    );
    // The failed record's writes were discarded; the next record's were not.
    assert_eq!(got[1..], ["ok", "1"]);
}

#[test]
fn a_partition_cannot_hold_more_than_its_quota() {
    let mut w = probe(StateLimits {
        max_partition_bytes: 64 << 10,
        ..StateLimits::default()
    });
    let mut refused = None;
    for i in 0..100 {
        let got = run0(&mut w, &[&format!("flood 10 c{i}")]);
        if got[0] != "ok" {
            refused = Some((i, got[0].clone()));
            break;
        }
    }
    let (i, message) = refused.expect("the quota stops the writes");
    assert!(i > 3, "refused after {i} calls");
    assert!(
        message.contains("over its quota of 65536 bytes"),
        "{message}"
    );
    // Deletes still work at the quota, and other partitions are not full.
    assert_eq!(
        run(&mut w, &[(0, "del flood-c0-000000"), (1, "put x 1")]),
        ["ok", "ok"]
    );
}

#[test]
fn running_count_keeps_its_state_on_disk_across_workers() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = || -> Box<dyn Backend> {
        Box::new(DiskBackend::for_deployment(dir.path(), "counter", "in").unwrap())
    };
    let count = |w: &mut Worker| run0(w, &["x", "y"]);
    let mut w = worker(
        guests::RUNNING_COUNT,
        &["counts"],
        on_disk(),
        StateLimits::default(),
    );
    assert_eq!(count(&mut w), ["1", "2"]);
    drop(w);
    let mut w = worker(
        guests::RUNNING_COUNT,
        &["counts"],
        on_disk(),
        StateLimits::default(),
    );
    assert_eq!(count(&mut w), ["3", "4"]);
    assert!(dir.path().join("counter/in/partition-0.redb").exists());
}
