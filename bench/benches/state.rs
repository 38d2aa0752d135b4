//! Keyed state: which embedded store, and what a state call costs from
//! wasm.
//!
//! Part 1 compares the candidate stores for a partition's state on the
//! shape runnel gives them: 1 M keys of 16 bytes with 8-byte values
//! (a count), written in transactions of 256 writes (one call's batch),
//! then read-modify-write (a get and a put per record, committed per 256
//! records) on random keys. It prints the time per write and per
//! get+put, the bytes on disk and the growth of the process's resident
//! memory per million keys. redb runs through runnel's own `DiskStore`;
//! fjall runs directly, with the same batching and no fsync per
//! transaction; the in-memory store is `runnel run`'s.
//!
//! Part 2 runs the `running-count` example (a get and a put per record)
//! through the engine, against the same logic written natively over the
//! same `State` (journal, commit per batch), on the memory and disk
//! stores: the ratio is what the wasm boundary adds to a state call.
//!
//! Run: `cargo bench -p runnel-bench --bench state`. Nothing is asserted:
//! the tables are the result.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_abi::{BatchBuilder, Frame};
use runnel_bench::{best_of, per};
use runnel_host::engine::{Limits, Worker};
use runnel_host::state::disk::{DiskBackend, DiskStore};
use runnel_host::state::memory::{MemoryBackend, MemoryStore};
use runnel_host::state::{Backend, Provenance, State, StateLimits, Store, Write};
use runnel_tests::{engine, guest, guests};

const KEYS: usize = 1_000_000;
const TXN: usize = 256;
const UPDATES: usize = 200_000;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

/// A cheap deterministic shuffle of key numbers (an LCG).
fn random_keys(n: usize, of: usize) -> Vec<usize> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) as usize % of
        })
        .collect()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    dir_bytes(&p)
                } else {
                    e.metadata().map_or(0, |m| m.len())
                }
            })
            .sum()
    })
}

/// One store under test: writes in transactions, and point reads.
trait Candidate {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]);
    fn read(&self, key: &[u8]) -> Option<Vec<u8>>;
}

struct Runnel(Box<dyn Store>);

impl Candidate for Runnel {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]) {
        let cause = Provenance {
            topic: Arc::from("in"),
            partition: 0,
            offset: 0,
        };
        let store: Arc<str> = Arc::from("counts");
        let writes: Vec<Write> = batch
            .iter()
            .map(|(k, v)| Write {
                store: store.clone(),
                key: k.clone(),
                value: Some(v.clone()),
                cause: cause.clone(),
            })
            .collect();
        self.0.apply(&writes).expect("writes");
    }
    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get("counts", key).expect("reads")
    }
}

struct Fjall {
    db: fjall::Database,
    counts: fjall::Keyspace,
}

impl Candidate for Fjall {
    fn write(&mut self, batch: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = self.db.batch().durability(None);
        for (k, v) in batch {
            b.insert(&self.counts, k.as_slice(), v.as_slice());
        }
        b.commit().expect("writes");
    }
    fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.counts.get(key).expect("reads").map(|v| v.to_vec())
    }
}

struct Measured {
    put: Duration,
    update: Duration,
    disk: u64,
    memory: u64,
}

fn measure(store: &mut dyn Candidate, dir: Option<&Path>) -> Measured {
    let rss = rss_bytes();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(TXN);
    for i in 0..KEYS {
        batch.push((key(i), 0u64.to_le_bytes().to_vec()));
        if batch.len() == TXN {
            store.write(&batch);
            batch.clear();
        }
    }
    store.write(&batch);
    let put = started.elapsed();
    let started = Instant::now();
    batch.clear();
    for k in random_keys(UPDATES, KEYS) {
        let k = key(k);
        let old = store.read(&k).expect("every key was written");
        let n = u64::from_le_bytes(old.try_into().expect("8 bytes")) + 1;
        batch.push((k, n.to_le_bytes().to_vec()));
        if batch.len() == TXN {
            store.write(&batch);
            batch.clear();
        }
    }
    store.write(&batch);
    let update = started.elapsed();
    Measured {
        put,
        update,
        disk: dir.map_or(0, dir_bytes),
        memory: rss_bytes().saturating_sub(rss),
    }
}

/// Which store a child process measures: each runs alone, so that the
/// resident memory it reports is its own (memory freed by an earlier
/// store would be reused by the next).
const CHILD: &str = "RUNNEL_BENCH_STORE";

fn stores() {
    println!(
        "## Stores: {KEYS} keys of 16 bytes, 8-byte values, {TXN} writes per transaction, then {UPDATES} get+put on random keys (each store in a process of its own)"
    );
    println!();
    println!(
        "| store | ns/write (load) | ns/get+put | MB on disk per M keys | MB resident per M keys |"
    );
    println!("|---|---:|---:|---:|---:|");
    let exe = std::env::current_exe().expect("the bench's own path");
    for store in ["memory", "redb", "fjall"] {
        let status = std::process::Command::new(&exe)
            .env(CHILD, store)
            .status()
            .expect("runs itself");
        assert!(status.success(), "measuring {store} failed");
    }
    println!();
}

/// Measures one store and prints its row (in a child process).
fn store(name: &str) {
    let mb = |b: u64| b as f64 / 1e6 * (1_000_000.0 / KEYS as f64);
    let row = |name: &str, m: Measured| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.1} |",
            per(m.put, KEYS),
            per(m.update, UPDATES),
            mb(m.disk),
            mb(m.memory)
        );
    };
    let dir = tempfile::tempdir().expect("temp dir");
    match name {
        "memory" => row(
            "memory (BTreeMap, `runnel run`)",
            measure(&mut Runnel(Box::new(MemoryStore::default())), None),
        ),
        "redb" => {
            let mut redb = Runnel(Box::new(
                DiskStore::open(&dir.path().join("p.redb")).expect("opens"),
            ));
            row(
                "redb 4 (runnel's DiskStore)",
                measure(&mut redb, Some(dir.path())),
            );
        }
        _ => {
            let db = fjall::Database::builder(dir.path()).open().expect("opens");
            let counts = db
                .keyspace("counts", fjall::KeyspaceCreateOptions::default)
                .expect("opens");
            let m = measure(&mut Fjall { db, counts }, Some(dir.path()));
            row("fjall 3 (LSM, lz4)", m);
        }
    }
}

const RECORDS: usize = 1 << 16;
const COUNTED_KEYS: usize = 10_000;
const BATCH: usize = 256;
const RUNS: usize = 5;

fn input() -> Vec<BatchBuilder> {
    let keys: Vec<Vec<u8>> = random_keys(RECORDS, COUNTED_KEYS)
        .into_iter()
        .map(|k| format!("user-{k:06}").into_bytes())
        .collect();
    keys.chunks(BATCH)
        .enumerate()
        .map(|(c, chunk)| {
            let mut b = BatchBuilder::default();
            for (i, k) in chunk.iter().enumerate() {
                b.push(&Frame {
                    partition: 0,
                    offset: (c * BATCH + i) as i64,
                    timestamp_ms: Some(1_700_000_000_000),
                    key: Some(k),
                    value: Some(b"click"),
                    headers: &[],
                });
            }
            b
        })
        .collect()
}

/// `running-count`, natively, over the host's `State`: the same reads,
/// writes, encoding (postcard) and commit per batch, without wasm.
fn count_natively(state: &mut State, batch: &BatchBuilder, out: &mut Vec<String>) {
    let view = runnel_abi::BatchRef::new(batch.data(), batch.index());
    state.begin(view.iter().map(|r| {
        let r = r.expect("valid");
        (r.partition(), r.offset())
    }));
    let store = state.open("counts").expect("declared");
    for (i, r) in view.iter().enumerate() {
        let key = r.expect("valid").key().expect("keyed");
        let n: u64 = state
            .get(store, i as u32, key)
            .expect("reads")
            .map_or(0, |v| postcard::from_bytes(&v).expect("a u64"))
            + 1;
        let bytes = postcard::to_allocvec(&n).expect("encodes");
        state.put(store, i as u32, key, &bytes).expect("writes");
        out.push(n.to_string());
    }
    state.commit().expect("commits");
}

fn state(backend: Box<dyn Backend>) -> State {
    State::new(
        "in",
        &["counts".to_owned()],
        backend,
        StateLimits::default(),
    )
    .expect("valid")
}

/// Makes the backend of a deployment by name.
type MakeBackend<'a> = &'a dyn Fn(&str) -> Box<dyn Backend>;

fn calls() {
    println!(
        "## A get and a put per record: `running-count`, {RECORDS} records over {COUNTED_KEYS} keys, batches of {BATCH}, best of {RUNS}"
    );
    println!();
    println!("| store | native ns/record | wasm ns/record | wasm - native | wasm/native |");
    println!("|---|---:|---:|---:|---:|");
    let batches = input();
    let module = Arc::new(
        engine(None)
            .load("running-count", &guest(guests::RUNNING_COUNT))
            .expect("loads"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let backends: [(&str, MakeBackend<'_>); 2] = [
        ("memory", &|_| Box::new(MemoryBackend)),
        ("redb", &|name| {
            Box::new(DiskBackend::for_deployment(dir.path(), name, "in").expect("opens"))
        }),
    ];
    for (name, make) in backends {
        let mut native_state = state(make("native"));
        let mut out = Vec::with_capacity(BATCH);
        let native = best_of(RUNS, || {
            for b in &batches {
                out.clear();
                count_natively(&mut native_state, b, &mut out);
                std::hint::black_box(&out);
            }
        });
        let mut worker = Worker::new(module.clone(), Limits::default(), vec![], None)
            .expect("starts")
            .with_state(state(make("wasm")));
        let mut batches = batches.clone();
        let wasm = best_of(RUNS, || {
            for b in &mut batches {
                let p = worker.process(b).expect("runs");
                std::hint::black_box(p.outputs.len());
            }
        });
        let (n, w) = (per(native, RECORDS), per(wasm, RECORDS));
        println!("| {name} | {n:.0} | {w:.0} | {:.0} | {:.2} |", w - n, w / n);
    }
    println!();
}

fn main() {
    if let Ok(name) = std::env::var(CHILD) {
        store(&name);
        return;
    }
    calls();
    stores();
}
