//! Notices that this process was frozen: stopped by SIGSTOP, a paused
//! container or VM, a debugger, or starved of CPU for seconds.
//!
//! A node frozen past its group session wakes up with records in hand —
//! batched, or in a worker's queue — whose partitions the group has given
//! to another node meanwhile. librdkafka learns that the session timed out
//! only when its main thread runs again (it checks at least once a
//! second), and the consumer hands the partitions over as lost a poll
//! later; a worker that ran its batch in those few milliseconds would
//! produce outputs (and changelog writes) after the new owner's. For a
//! keyed count, a downstream reader's last count for a key would then be a
//! stale one: the chaos soak saw `174` land after the rightful `199`.
//!
//! So a thread ticks every [`TICK`]; a tick that comes more than
//! [`FROZEN`] late is a freeze, and for [`HOLD`] after it, and while a
//! tick is overdue by that much (the process is waking and the ticker has
//! not run yet), workers hold a batch's outputs: they send them once the
//! hold is over and the partition is still theirs, and drop them when it
//! was taken meanwhile (see `Exec::wait_out_freeze`). This narrows the
//! window to the instant between a worker's last look and its send; only
//! fencing by the broker (transactions) would close it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the watch ticks.
const TICK: Duration = Duration::from_millis(100);
/// A tick this late is a freeze. Far below the session timeout (10 s by
/// default, 6 s at the least brokers allow), far above a busy machine's
/// scheduling delays.
const FROZEN: Duration = Duration::from_secs(2);
/// How long outputs wait after a freeze: librdkafka's main thread checks
/// the session at least once a second, and the consumer polls every
/// 100 ms at most.
const HOLD: Duration = Duration::from_secs(3);

struct Watch {
    start: Instant,
    /// Milliseconds from `start` to the last tick.
    last_tick: AtomicU64,
    /// Milliseconds from `start` until which outputs wait.
    hold_until: AtomicU64,
    freezes: AtomicU64,
}

impl Watch {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn tick(&self) {
        let now = self.now();
        let gap = now.saturating_sub(self.last_tick.load(Ordering::SeqCst));
        if gap > millis(FROZEN) {
            // The hold is set before the tick: a worker never sees a fresh
            // tick without it.
            self.hold_until.store(now + millis(HOLD), Ordering::SeqCst);
            self.freezes.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                frozen_ms = gap,
                "this process was frozen (stopped, paused or starved of CPU): \
                 outputs wait {} s for the consumer to learn whether its partitions are still its own",
                HOLD.as_secs()
            );
        }
        self.last_tick.store(now, Ordering::SeqCst);
    }

    fn holding(&self) -> bool {
        let now = self.now();
        now.saturating_sub(self.last_tick.load(Ordering::SeqCst)) > millis(FROZEN)
            || now < self.hold_until.load(Ordering::SeqCst)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

static WATCH: OnceLock<Watch> = OnceLock::new();

/// Starts the watch, once per process.
pub(super) fn watch() {
    WATCH.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("runnel-freeze-watch".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TICK);
                    if let Some(w) = WATCH.get() {
                        w.tick();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the freeze watch: a node frozen past its session may send a batch's outputs after the partition's next owner");
        }
        Watch {
            start: Instant::now(),
            last_tick: AtomicU64::new(0),
            hold_until: AtomicU64::new(0),
            freezes: AtomicU64::new(0),
        }
    });
}

/// Whether outputs should wait: the process was frozen a moment ago, or is
/// waking from a freeze now.
pub(super) fn holding() -> bool {
    WATCH.get().is_some_and(Watch::holding)
}

/// How many freezes the watch has seen since the process started.
pub fn freezes() -> u64 {
    WATCH.get().map_or(0, |w| w.freezes.load(Ordering::SeqCst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_at(last_tick: u64, hold_until: u64, age: Duration) -> Watch {
        Watch {
            start: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            last_tick: AtomicU64::new(last_tick),
            hold_until: AtomicU64::new(hold_until),
            freezes: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_late_tick_is_a_freeze_and_outputs_wait_after_it() {
        // Ticked a moment ago: nothing held.
        let w = watch_at(9_950, 0, Duration::from_secs(10));
        assert!(!w.holding());
        // The last tick is 5 s old: waking from a freeze, before the tick.
        let w = watch_at(5_000, 0, Duration::from_secs(10));
        assert!(w.holding());
        // The tick sees the gap, holds, and counts it.
        w.tick();
        assert_eq!(w.freezes.load(Ordering::SeqCst), 1);
        assert!(w.holding(), "held after the tick");
        assert!(w.hold_until.load(Ordering::SeqCst) >= 10_000 + millis(HOLD));
        // An on-time tick is not a freeze.
        let w = watch_at(9_900, 0, Duration::from_secs(10));
        w.tick();
        assert_eq!(w.freezes.load(Ordering::SeqCst), 0);
        assert!(!w.holding());
    }
}
