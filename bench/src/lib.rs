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
