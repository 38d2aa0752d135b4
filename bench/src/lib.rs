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
