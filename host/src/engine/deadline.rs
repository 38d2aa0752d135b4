//! The deadline of a call covers the host calls it makes, not only its wasm.
//!
//! Epoch interruption stops wasm code at its next loop or call, but it cannot
//! reach host code: a guest that sleeps (`std::thread::sleep`, which WASI
//! turns into a monotonic-clock timer and `pollable.block`) would hold its
//! worker thread, and with it revokes and shutdown, for as long as it asked.
//! With no files, sockets or stdin behind a guest's WASI, the only host calls
//! that wait are the two of `wasi:io/poll` that wait for pollables: `poll`
//! and `pollable.block` (the `blocking-*` stream calls wait on streams that
//! are always ready). They are replaced here by versions that wait at most
//! until the call's deadline, then trap with [`BlockedAtDeadline`].
//!
//! The deadline is kept in the engine's own count of epoch ticks
//! ([`Ticks`]), advanced with the epoch, so that starting a call costs one
//! atomic load, not a clock read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi::runtime::in_tokio;

use super::EPOCH_TICK;
use super::instance::StoreState;

/// The `wasi:io/poll` that wasmtime-wasi defines. Guests import an older or
/// equal 0.2 version, which the linker resolves to this one; the sleep tests
/// fail if a wasmtime-wasi upgrade moves it and the shadowing misses.
const WASI_IO_POLL: &str = "wasi:io/poll@0.2.12";

/// Epoch ticks since the engine started, counted alongside the epoch itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ticks(Arc<AtomicU64>);

impl Ticks {
    pub(crate) fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn advance(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The trap of a guest still waiting in a host call when its deadline came.
#[derive(Debug, thiserror::Error)]
#[error("still waiting in `{call}` when the call's deadline passed")]
pub(crate) struct BlockedAtDeadline {
    /// The WASI function it waited in.
    pub call: &'static str,
}

/// What a store needs to bound its waits: the clock and the current call's end.
#[derive(Debug)]
pub(crate) struct CallDeadline {
    ticks: Ticks,
    /// The tick at which the current call is stopped.
    at: u64,
}

impl CallDeadline {
    pub(crate) fn new(ticks: Ticks) -> Self {
        Self { ticks, at: 0 }
    }

    /// Starts a call that may last `ticks` epoch ticks (as the epoch deadline is set).
    pub(crate) fn start(&mut self, ticks: u64) {
        self.at = self.ticks.now() + ticks;
    }

    /// How long a host call may still wait.
    fn remaining(&self) -> Duration {
        let left = self.at.saturating_sub(self.ticks.now());
        EPOCH_TICK.saturating_mul(u32::try_from(left).unwrap_or(u32::MAX))
    }
}

/// Replaces `poll` and `pollable.block` of `wasi:io/poll` in `linker` (after
/// wasmtime-wasi has added its own) with versions bounded by the call's deadline.
pub(crate) fn bound_blocking_calls(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_IO_POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, StoreState>,
         (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state = store.data_mut();
            let remaining = state.deadline.remaining();
            let table = &mut state.table;
            // The timeout is made inside the runtime: a tokio timer needs one.
            match in_tokio(async { tokio::time::timeout(remaining, table.poll(pollables)).await }) {
                Ok(ready) => Ok((ready?,)),
                Err(_) => Err(BlockedAtDeadline {
                    call: "wasi:io/poll.poll",
                }
                .into()),
            }
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, StoreState>, (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            let remaining = state.deadline.remaining();
            let table = &mut state.table;
            match in_tokio(async { tokio::time::timeout(remaining, table.block(pollable)).await }) {
                Ok(done) => done,
                Err(_) => Err(BlockedAtDeadline {
                    call: "wasi:io/poll.pollable.block",
                }
                .into()),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remaining_time_counts_down_with_the_ticks() {
        let ticks = Ticks::default();
        let mut deadline = CallDeadline::new(ticks.clone());
        deadline.start(3);
        assert_eq!(deadline.remaining(), EPOCH_TICK * 3);
        ticks.advance();
        assert_eq!(deadline.remaining(), EPOCH_TICK * 2);
        for _ in 0..5 {
            ticks.advance();
        }
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }
}
