//! Shared pieces of runnel's benchmarks (see `benches/`).

use std::time::{Duration, Instant};

/// The fastest of `runs` timings of `f`: on a shared machine, the minimum is
/// the run least disturbed by others.
pub fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Nanoseconds per item.
pub fn per(d: Duration, items: usize) -> f64 {
    d.as_nanos() as f64 / items.max(1) as f64
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`
/// (clock ticks of 10 ms). `None` is this process.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    stat_cpu_seconds(&std::fs::read_to_string(path).unwrap_or_default())
}

/// CPU seconds (user + system) in the text of a `/proc/.../stat` file, a
/// process's or a thread's (`/proc/self/task/<tid>/stat`).
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// This process's threads now: each one's id, its name (`comm`) and the CPU
/// time it has run so far (`/proc/self/task/<tid>/schedstat`, nanoseconds;
/// the time of threads that have ended is not in it).
pub fn threads() -> std::collections::HashMap<u32, (String, Duration)> {
    let mut all = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let ns: u64 = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        all.insert(
            tid,
            (read("comm").trim_end().to_owned(), Duration::from_nanos(ns)),
        );
    }
    all
}

/// The id of the calling thread (from `/proc/thread-self`).
pub fn thread_id() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

pub mod kafka;

/// The flight-delay example's files, for the benchmarks of its scorer.
pub mod flight {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};

    /// A path inside `examples/flight-delay`.
    pub fn example(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/flight-delay")
            .join(path)
    }

    /// The held-out flights (`data/heldout.csv.gz`), one CSV line each.
    pub fn flights() -> Vec<String> {
        let file = std::fs::File::open(example("data/heldout.csv.gz")).expect("held-out flights");
        BufReader::new(flate2::read::GzDecoder::new(file))
            .lines()
            .map(|l| l.expect("a line"))
            .collect()
    }
}
