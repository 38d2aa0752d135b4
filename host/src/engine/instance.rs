//! One instance of a function: its own `Store`, memory limit, deadline per call
//! and log streams. An instance that trapped is never called again: the
//! [`Worker`](super::Worker) drops it and instantiates a fresh one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, Batch, Outputs, Verdicts};
use super::deadline::{BlockedAtDeadline, CallDeadline};
use super::guest_log::{CallLog, GuestLog, Stream};
use super::state_calls::Lent;
use super::{EPOCH_TICK, Limits, Module, WorldPre};
use crate::state::State;

/// Bytes, for people: "128 MiB", "1.5 GiB", "900 B".
pub(crate) struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            n if n >= 1 << 30 => write!(f, "{:.1} GiB", b / f64::from(1u32 << 30)),
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", b / f64::from(1u32 << 20)),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", b / 1024.0),
            n => write!(f, "{n} B"),
        }
    }
}

/// Why a call into a function failed. Every variant names the function and,
/// where one applies, the limit it hit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("function `{function}` ran past its deadline of {limit:?} per call and was stopped")]
    Deadline { function: Arc<str>, limit: Duration },
    #[error(
        "function `{function}` was still waiting in `{call}` (a sleep or a poll) at its deadline \
         of {limit:?} per call and was stopped"
    )]
    Blocked {
        function: Arc<str>,
        /// The WASI function it waited in.
        call: &'static str,
        limit: Duration,
    },
    #[error(
        "function `{function}` tried to grow its memory to {}, over its limit of {}",
        HumanBytes(*requested),
        HumanBytes(*limit)
    )]
    MemoryLimit {
        function: Arc<str>,
        requested: u64,
        limit: u64,
    },
    #[error(
        "function `{function}` tried to grow a table to {requested} elements, over the limit of \
         {limit} per table"
    )]
    TableLimit {
        function: Arc<str>,
        requested: u64,
        limit: u64,
    },
    #[error("function `{function}` overflowed its stack (unbounded recursion?)")]
    StackOverflow { function: Arc<str> },
    #[error("function `{function}` panicked: {message}")]
    Panic { function: Arc<str>, message: String },
    #[error("function `{function}` trapped: {trap}")]
    Trap { function: Arc<str>, trap: String },
    #[error("function `{function}` returned a malformed result: {reason}")]
    BadOutput { function: Arc<str>, reason: String },
    /// An output of a record of a processor's batch picks no output topic:
    /// the batch runs again one record at a time (not a trap).
    #[error("function `{function}` made an output that picks no output topic")]
    Unroutable { function: Arc<str> },
    #[error("function `{function}` refused to start: {message}")]
    InitFailed { function: Arc<str>, message: String },
    #[error("function `{function}`'s state could not be saved: {reason}")]
    State { function: Arc<str>, reason: String },
    #[error("cannot instantiate function `{function}`: {reason}")]
    Instantiate { function: Arc<str>, reason: String },
    #[error(
        "cannot instantiate function `{function}`: the node's instance pool is full ({reason}); \
         every worker of every deployment on the node that has run a batch holds one \
         instance: start the node with a larger `--max-instances`, lower some deployment's \
         `workers`, or spread the deployments over more nodes"
    )]
    PoolExhausted { function: Arc<str>, reason: String },
}

impl CallError {
    /// Whether the instance is dead (a bug in the function or a limit hit),
    /// as opposed to refusing its config or failing to start.
    pub fn is_trap(&self) -> bool {
        !matches!(
            self,
            CallError::InitFailed { .. }
                | CallError::Instantiate { .. }
                | CallError::State { .. }
                | CallError::PoolExhausted { .. }
        )
    }
}

/// Refuses memory growth past the function's limit, and table growth past
/// [`MAX_TABLE_ELEMENTS`], remembering the request so the trap can say what
/// was asked for.
struct GrowthLimiter {
    limit: u64,
    exceeded: Option<u64>,
    /// The linear memory granted so far, in bytes.
    granted: u64,
    /// The table size asked for past [`MAX_TABLE_ELEMENTS`].
    table_exceeded: Option<u64>,
}

/// The most bytes one call may copy out of the guest, in a host call's
/// arguments or in what an export returns (wasmtime's default, set here so
/// that an upgrade cannot change it unseen). What the host holds for a call
/// is bounded by it: 1,000 failures that alias one 20 MB message in guest
/// memory trap instead of becoming 20 GB in the host.
pub const HOSTCALL_FUEL: usize = 128 << 20;

/// The most resources (streams, pollables) a guest may hold at once, in the
/// host's table and in the component's own handle tables. Each costs host
/// memory outside the guest's limit; a function needs a handful.
pub const MAX_RESOURCES: usize = 10_000;

/// The most random bytes one `get-random-bytes` call returns (wasmtime-wasi's
/// default is 64 MiB).
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Tables hold function references; a guest needs a few thousand at most.
/// The pooling allocator reserves this many per table (a module that
/// declares a larger table is refused when it is loaded), and growing a
/// table past it traps, as growing memory past its limit does: a
/// `table.grow` that returned -1 would leave a guest that ignores it to spin
/// until its deadline, with an error naming the wrong limit.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;

impl ResourceLimiter for GrowthLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.limit {
            self.exceeded = Some(desired);
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        self.granted = self.granted.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.table_exceeded = Some(desired as u64);
            return Err(wasmtime::Error::msg("table limit exceeded"));
        }
        Ok(true)
    }
}

impl GrowthLimiter {
    /// The error for a growth this limiter refused, if it refused one.
    fn refusal(&mut self, function: &Arc<str>, limits: &Limits) -> Option<CallError> {
        if let Some(requested) = self.exceeded.take() {
            return Some(CallError::MemoryLimit {
                function: function.clone(),
                requested,
                limit: limits.memory_bytes,
            });
        }
        self.table_exceeded
            .take()
            .map(|requested| CallError::TableLimit {
                function: function.clone(),
                requested,
                limit: MAX_TABLE_ELEMENTS as u64,
            })
    }
}

pub(crate) struct StoreState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    limiter: GrowthLimiter,
    /// When the current call ends, for host calls that wait.
    pub(crate) deadline: CallDeadline,
    /// A processor's state, lent for each call.
    pub(crate) state: Lent,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

enum Bound {
    Filter(bindings::filter::Filter),
    Map(bindings::map::Map),
    Scorer(bindings::scorer::Scorer),
    Processor(bindings::processor::Processor),
}

/// What one call returned, before the worker checks it.
pub(crate) enum RawResult {
    Filter(Verdicts),
    Outputs(Outputs),
}

/// A live instance of a function.
pub struct Instance {
    store: Store<StoreState>,
    bound: Bound,
    function: Arc<str>,
    limits: Limits,
    stderr: GuestLog,
    /// What the current call logged, against its cap.
    logged: Arc<CallLog>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("function", &self.function)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Instance {
    pub(crate) fn new(module: &Module, limits: Limits) -> Result<Self, CallError> {
        let function = module.name.clone();
        let logged = Arc::new(CallLog::default());
        let stderr = GuestLog::new(module.log.clone(), logged.clone(), Stream::Stderr);
        // No preopens, no environment, no arguments, no network: a function
        // sees only its records, clocks and randomness.
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestLog::new(
                module.log.clone(),
                logged.clone(),
                Stream::Stdout,
            ))
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // The host makes what a guest asks for before the guest's
            // memory limit applies: keep one request small. A guest wanting
            // more asks again.
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = StoreState {
            wasi,
            table,
            limiter: GrowthLimiter {
                limit: limits.memory_bytes,
                exceeded: None,
                granted: 0,
                table_exceeded: None,
            },
            deadline: CallDeadline::new(module.engine.ticks().clone()),
            state: Lent::default(),
        };
        let mut store = Store::new(module.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store.set_max_component_handles(MAX_RESOURCES);
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        store
            .data_mut()
            .deadline
            .start(deadline_ticks(limits.call_timeout));
        store.epoch_deadline_trap();
        let instantiated = match &module.pre {
            WorldPre::Filter(pre) => pre.instantiate(&mut store).map(Bound::Filter),
            WorldPre::Map(pre) => pre.instantiate(&mut store).map(Bound::Map),
            WorldPre::Scorer(pre) => pre.instantiate(&mut store).map(Bound::Scorer),
            WorldPre::Processor(pre) => pre.instantiate(&mut store).map(Bound::Processor),
        };
        let mut instance = Self {
            bound: match instantiated {
                Ok(b) => b,
                Err(e) => {
                    let refused = store.data_mut().limiter.refusal(&function, &limits);
                    return Err(refused.unwrap_or_else(|| {
                        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                            .is_some()
                        {
                            CallError::PoolExhausted {
                                function,
                                reason: format!("{e:#}"),
                            }
                        } else {
                            CallError::Instantiate {
                                function,
                                reason: format!("{e:#}"),
                            }
                        }
                    }));
                }
            },
            store,
            function,
            limits,
            stderr,
            logged,
        };
        instance
            .store
            .set_epoch_deadline(deadline_ticks(limits.call_timeout));
        Ok(instance)
    }

    /// The hostcall fuel each copy out of the guest starts with.
    pub fn hostcall_fuel(&self) -> usize {
        self.store.hostcall_fuel()
    }

    /// The linear memory this instance has, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.granted
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    /// Calls the function's `init` with its config (and, for a scorer, the model).
    #[allow(clippy::ptr_arg)]
    pub fn init(
        &mut self,
        config: &Vec<(String, String)>,
        model: Option<&[u8]>,
    ) -> Result<(), CallError> {
        self.begin_call();
        // The bindings take the config as `&Vec`: `list<tuple<..>>` is lowered element by element.
        let result = match &self.bound {
            Bound::Filter(f) => f.call_init(&mut self.store, config),
            Bound::Map(f) => f.call_init(&mut self.store, config),
            Bound::Scorer(f) => f.call_init(&mut self.store, config, model.unwrap_or_default()),
            Bound::Processor(f) => f.call_init(&mut self.store, config),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(CallError::InitFailed {
                function: self.function.clone(),
                message: super::worker::cut_message(message),
            }),
            Err(e) => Err(self.classify(e)),
        }
    }

    /// Runs one batch.
    pub(crate) fn call(&mut self, batch: &Batch) -> Result<RawResult, CallError> {
        self.begin_call();
        let result = match &self.bound {
            Bound::Filter(f) => f.call_filter(&mut self.store, batch).map(RawResult::Filter),
            Bound::Map(f) => f.call_map(&mut self.store, batch).map(RawResult::Outputs),
            Bound::Scorer(f) => f.call_score(&mut self.store, batch).map(RawResult::Outputs),
            Bound::Processor(f) => f
                .call_process(&mut self.store, batch)
                .map(RawResult::Outputs),
        };
        result.map_err(|e| self.classify(e))
    }

    /// Lends a processor's state to the instance for the next call.
    pub(crate) fn lend_state(&mut self, state: State) {
        self.store.data_mut().state.0 = Some(state);
    }

    /// Takes back the state lent by [`Instance::lend_state`], whatever the
    /// call did (a trapped instance still holds it).
    pub(crate) fn take_state(&mut self) -> Option<State> {
        self.store.data_mut().state.0.take()
    }

    fn begin_call(&mut self) {
        let ticks = deadline_ticks(self.limits.call_timeout);
        self.store.set_epoch_deadline(ticks);
        self.store.data_mut().deadline.start(ticks);
        self.stderr.clear_tail();
        self.logged.reset();
    }

    /// Names what killed the instance.
    fn classify(&mut self, error: wasmtime::Error) -> CallError {
        let function = self.function.clone();
        if let Some(refused) = self
            .store
            .data_mut()
            .limiter
            .refusal(&function, &self.limits)
        {
            return refused;
        }
        if let Some(blocked) = error.downcast_ref::<BlockedAtDeadline>() {
            return CallError::Blocked {
                function,
                call: blocked.call,
                limit: self.limits.call_timeout,
            };
        }
        let said = self.stderr.tail();
        let trap = error.downcast_ref::<Trap>().copied();
        match trap {
            Some(Trap::Interrupt) => CallError::Deadline {
                function,
                limit: self.limits.call_timeout,
            },
            Some(Trap::StackOverflow) => CallError::StackOverflow { function },
            // Rust keeps large locals on a "shadow stack" at the bottom of
            // linear memory; overflowing it wraps the stack pointer below
            // zero, to just under 4 GiB.
            Some(Trap::MemoryOutOfBounds)
                if fault_address(&error).is_some_and(|a| a >= SHADOW_STACK_WRAP) =>
            {
                CallError::StackOverflow { function }
            }
            Some(Trap::UnreachableCodeReached)
                if said.as_deref().is_some_and(|s| s.contains("panicked")) =>
            {
                CallError::Panic {
                    function,
                    message: said.unwrap_or_default(),
                }
            }
            _ => {
                // A host call's error, without the wasm backtrace that
                // wasmtime wraps around it (the innermost frame is named below).
                let mut trap = trap.map_or_else(
                    || {
                        error
                            .chain()
                            .map(ToString::to_string)
                            .filter(|e| !e.starts_with("error while executing at wasm backtrace"))
                            .collect::<Vec<_>>()
                            .join(": ")
                    },
                    |t| t.to_string(),
                );
                if let Some(at) = innermost_function(&error) {
                    trap.push_str(&format!(" in `{at}`"));
                }
                if let Some(said) = said {
                    trap.push_str(&format!(" (the function wrote: {said})"));
                }
                CallError::Trap { function, trap }
            }
        }
    }
}

/// Addresses at or above this, in a memory fault, come from a shadow-stack
/// pointer that went below zero.
const SHADOW_STACK_WRAP: u64 = 0xFFF0_0000;

/// The faulting address of an out-of-bounds access, from wasmtime's message.
fn fault_address(error: &wasmtime::Error) -> Option<u64> {
    let text = format!("{error:#}");
    let hex = text.split("memory fault at wasm address 0x").nth(1)?;
    let end = hex
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(hex.len());
    u64::from_str_radix(&hex[..end], 16).ok()
}

/// The name of the function where the trap happened, if the module kept names.
fn innermost_function(error: &wasmtime::Error) -> Option<String> {
    let backtrace = error.downcast_ref::<wasmtime::WasmBacktrace>()?;
    let frame = backtrace.frames().first()?;
    let name = frame.func_name()?;
    // Drop the hash that Rust's mangling leaves: `crate::f::h0123abcd`.
    Some(match name.rsplit_once("::h") {
        Some((path, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            path.to_owned()
        }
        _ => name.to_owned(),
    })
}

/// Ticks from now until `timeout` has surely passed: one more than the
/// division, since the current tick is already under way.
fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes() {
        assert_eq!(HumanBytes(900).to_string(), "900 B");
        assert_eq!(HumanBytes(128 << 20).to_string(), "128.0 MiB");
        assert_eq!(HumanBytes(3 << 29).to_string(), "1.5 GiB");
    }

    #[test]
    fn deadlines_round_up() {
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 11);
    }
}
