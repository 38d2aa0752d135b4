//! The wasm engine: loads function components, checks that they implement one
//! of runnel's worlds, and runs them over packed batches in a sandbox.
//!
//! Owns the wasmtime `Engine` (pooling allocator, copy-on-write memory,
//! epoch interruption, `concurrency_support(false)`), the on-disk cache of
//! compiled artifacts, and the per-instance limits (memory, deadline per call).
//! It knows nothing of Kafka: [`Worker::process`] takes a batch and returns
//! what happened to each record.
//!
//! Guests get WASI with nothing behind it: no preopened folders, no
//! environment, no arguments, no sockets, an empty stdin. Their stdout and
//! stderr become host log lines labelled with the function's name.

mod bindings;
mod cache;
mod deadline;
mod guest_log;
mod instance;
mod state_calls;
mod worker;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, types::ComponentItem};

pub use cache::{ArtifactCache, CacheError, default_dir as default_cache_dir};
pub use guest_log::{
    DROP_NOTE_INTERVAL, LOG_BURST, LOG_BYTES_PER_CALL, LOG_BYTES_PER_SECOND, MAX_LINE, WRITE_PERMIT,
};
pub use instance::{
    CallError, HOSTCALL_FUEL, Instance, MAX_RANDOM_BYTES, MAX_RESOURCES, MAX_TABLE_ELEMENTS,
};
pub use worker::MAX_FAILURE_MESSAGE;
pub use worker::{OUTPUT_HEADER, Outcome, Processed, Worker, pick_output};

/// Cranelift's optimisation levels ([`Codegen::opt_level`]).
pub use wasmtime::OptLevel;

use deadline::Ticks;
use guest_log::LogBudget;
use instance::StoreState;

/// The WIT package (`wit/runnel.wit`) this host speaks. A component built
/// against another version is refused, naming both ([`LoadError::Version`]).
pub const WIT_PACKAGE: &str = "runnel:stream@0.1.0";

/// The most core module instances one component may make: a Python
/// component makes 14 (see `Engine::new`).
pub const MAX_CORE_INSTANCES: u32 = 32;

/// How often the epoch ticks: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How many instances a node may hold at once by default (`--max-instances`).
pub const MAX_INSTANCES: u32 = 256;

/// Engine-wide settings. Limits per function are [`Limits`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// How many instances may exist at once (the size of the pooling allocator).
    pub max_instances: u32,
    /// The most linear memory any instance may have; a function's own limit
    /// ([`Limits::memory_bytes`]) must not exceed it.
    pub max_memory_bytes: u64,
    /// How function code is compiled and its memory guarded.
    pub codegen: Codegen,
}

/// How wasmtime compiles function code and guards its memory. The defaults
/// are the fastest measured (`cargo bench -p runnel-bench --bench scorer`
/// compares the others side by side); every setting is equally safe, the
/// sandbox holds with each.
#[derive(Debug, Clone, PartialEq)]
pub struct Codegen {
    /// Cranelift's optimisation level.
    pub opt_level: OptLevel,
    /// Out-of-bounds accesses and other traps are caught by signal handlers
    /// (`true`), or by explicit checks in the generated code (`false`).
    pub signals_based_traps: bool,
    /// Address space reserved for each linear memory; `None` is wasmtime's
    /// default (4 GiB on 64-bit hosts), which lets Cranelift drop the bounds
    /// checks of 32-bit memories. Smaller reservations need a check per
    /// access.
    pub memory_reservation: Option<u64>,
    /// Unmapped bytes after each linear memory; `None` is wasmtime's default
    /// (32 MiB), which lets loads at constant offsets skip their checks.
    pub memory_guard_size: Option<u64>,
}

impl Default for Codegen {
    fn default() -> Self {
        Self {
            opt_level: OptLevel::Speed,
            signals_based_traps: true,
            memory_reservation: None,
            memory_guard_size: None,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            max_module_bytes: usize::try_from(crate::cli::node::MAX_MODULE_MIB << 20)
                .unwrap_or(usize::MAX),
            max_instances: MAX_INSTANCES,
            max_memory_bytes: 1 << 30,
            codegen: Codegen::default(),
        }
    }
}

/// What one instance of a function may use, and return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in bytes. An ML scorer needs its model's size and more.
    pub memory_bytes: u64,
    /// Wall-clock time one call (`init`, or one batch) may take, host calls
    /// (a sleep, a poll) included.
    pub call_timeout: Duration,
    /// The most output records one input record may produce (a scorer's is
    /// always 1). Default 10,000.
    pub max_outputs_per_record: u32,
    /// The most bytes of output frames one call may return. Default 64 MiB;
    /// whatever the setting, what one call returns is also bounded by the
    /// hostcall fuel ([`HOSTCALL_FUEL`]).
    pub max_output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            call_timeout: Duration::from_secs(5),
            max_outputs_per_record: 10_000,
            max_output_bytes: 64 << 20,
        }
    }
}

/// The kind of function a component is: which world of `runnel:stream` it
/// implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    Filter,
    Map,
    Scorer,
    /// A map with keyed state (`crate::state`).
    Processor,
}

impl World {
    pub const ALL: [World; 4] = [World::Filter, World::Map, World::Scorer, World::Processor];

    /// The function, besides `init`, that a component of this world exports.
    fn export(self) -> &'static str {
        match self {
            World::Filter => "filter",
            World::Map => "map",
            World::Scorer => "score",
            World::Processor => "process",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Filter => "filter",
            World::Map => "map",
            World::Scorer => "scorer",
            World::Processor => "processor",
        })
    }
}

/// Why a module was refused. Nothing is cached for a refused module.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "the module is {size} bytes, over the limit of {limit} bytes (a node's --max-module-mib)"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly binary (it does not start with the `\\0asm` magic number)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build the function for the \
         `wasm32-wasip2` target (`cargo build --target wasm32-wasip2`), or wrap a core module \
         with `wasm-tools component new`"
    )]
    CoreModule,
    #[error(
        "unsupported WebAssembly version or layer {0:02x?} (expected a component, 0d 00 01 00)"
    )]
    UnknownVersion([u8; 4]),
    #[error("the component does not compile: {0}")]
    Invalid(String),
    #[error(
        "the component implements none of runnel's worlds (filter, map, scorer or processor of \
         runnel:stream@0.1.0, exporting `init` and `filter`, `map`, `score` or `process`); it \
         exports: {exports}"
    )]
    UnknownWorld { exports: String },
    #[error(
        "the component exports the functions of more than one world ({0}); a function is exactly one kind"
    )]
    AmbiguousWorld(String),
    #[error(
        "the component was built against {built}, and this runnel speaks {WIT_PACKAGE}: rebuild \
         it with an SDK made for {WIT_PACKAGE}"
    )]
    Version { built: String },
    #[error("the component's `{world}` exports do not match runnel:stream@0.1.0: {reason}")]
    Signature { world: World, reason: String },
    #[error("the component needs imports that runnel does not give functions: {0}")]
    Imports(String),
    #[error("cannot set up the engine: {0}")]
    Engine(String),
}

/// A loaded, validated function component, ready to be instantiated many times.
#[derive(Clone)]
pub struct Module {
    engine: Engine,
    name: Arc<str>,
    digest: String,
    world: World,
    size: usize,
    from_cache: bool,
    pre: WorldPre,
    /// What the guest may log, shared by every instance of this module.
    log: Arc<LogBudget>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("world", &self.world)
            .field("size", &self.size)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

#[derive(Clone)]
enum WorldPre {
    Filter(bindings::filter::FilterPre<StoreState>),
    Map(bindings::map::MapPre<StoreState>),
    Scorer(bindings::scorer::ScorerPre<StoreState>),
    Processor(bindings::processor::ProcessorPre<StoreState>),
}

impl Module {
    /// The name used in logs and errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same compiled module under another name, with a log budget of its
    /// own: one loaded module serves every deployment that runs it, and each
    /// deployment's log lines and errors must carry its own name, and its
    /// log rate must be its own.
    pub fn with_name(&self, name: &str) -> Module {
        let name: Arc<str> = name.into();
        Module {
            log: Arc::new(LogBudget::new(name.clone())),
            name,
            ..self.clone()
        }
    }

    /// Bytes of guest output (stdout and stderr) that were not logged: past
    /// the cap per call, over the deployment's rate, or cut from long lines.
    pub fn log_dropped_bytes(&self) -> u64 {
        self.log.dropped_bytes()
    }

    /// sha256 of the module's bytes, in hex: its identity.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn world(&self) -> World {
        self.world
    }

    /// Size of the module's bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// A fresh instance with its own store. Call [`Instance::init`] before any batch.
    pub fn instantiate(&self, limits: Limits) -> Result<Instance, CallError> {
        Instance::new(self, limits)
    }
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    linker: Linker<StoreState>,
    cache: Option<ArtifactCache>,
    config: EngineConfig,
    /// Epoch ticks so far: host calls that wait measure the deadline in them.
    ticks: Ticks,
}

/// Compiles and validates function components. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, LoadError> {
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        let n = config.max_instances;
        pool.total_component_instances(n)
            // A Rust wasm32-wasip2 component has 3 core modules (the program
            // and wit-component's shims), one memory and 2 tables. A Python
            // one (componentize-py 0.25.1) links CPython from 14 core
            // modules (libc, libpython, the runtime, adapters...) into one
            // memory and 2 tables; native extensions add modules. Slots for
            // core instances are small (a vmctx each), so there is room for
            // every instance to be a Python one.
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n)
            .total_tables(n.saturating_mul(4))
            .max_memories_per_component(2)
            .max_tables_per_component(8)
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            // Memories and tables stay mapped between instances of a module.
            .max_unused_warm_slots(n / 2);
        let mut wt = wasmtime::Config::new();
        wt.wasm_component_model(true)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .memory_init_cow(true)
            .cranelift_opt_level(config.codegen.opt_level)
            .signals_based_traps(config.codegen.signals_based_traps)
            // On by default since wasmtime 43; it makes every sync call
            // several times slower and runnel's calls are sync.
            .concurrency_support(false);
        if let Some(bytes) = config.codegen.memory_reservation {
            wt.memory_reservation(bytes);
        }
        if let Some(bytes) = config.codegen.memory_guard_size {
            wt.memory_guard_size(bytes);
        }
        #[cfg(feature = "profiling")]
        if let Some(how) = std::env::var_os("RUNNEL_PERFMAP") {
            // `jitdump` keeps the machine code too, for `perf annotate`
            // (after `perf record -k mono` and `perf inject --jit`).
            wt.profiler(if how == "jitdump" {
                wasmtime::ProfilingStrategy::JitDump
            } else {
                wasmtime::ProfilingStrategy::PerfMap
            });
        }
        let wasmtime = wasmtime::Engine::new(&wt).map_err(engine_err)?;
        let mut linker = Linker::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        deadline::bound_blocking_calls(&mut linker).map_err(engine_err)?;
        bindings::processor::runnel::stream::state::add_to_linker::<_, HasSelf<state_calls::Lent>>(
            &mut linker,
            |s: &mut StoreState| &mut s.state,
        )
        .map_err(engine_err)?;
        let ticks = Ticks::default();
        spawn_epoch_ticker(&wasmtime, ticks.clone());
        let cache = config.cache_dir.clone().and_then(|dir| {
            ArtifactCache::open(dir, &wasmtime)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "compiled modules will not be cached");
                })
                .ok()
        });
        Ok(Self {
            inner: Arc::new(EngineInner {
                wasmtime,
                linker,
                cache,
                config,
                ticks,
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.inner.cache.as_ref()
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    pub(crate) fn ticks(&self) -> &Ticks {
        &self.inner.ticks
    }

    /// Validates and compiles `bytes` (or loads the compiled code from the
    /// cache). `name` labels the function in logs and errors.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Module, LoadError> {
        let limit = self.inner.config.max_module_bytes;
        if bytes.len() > limit {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        check_header(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let started = Instant::now();
        let cached = self.cache().and_then(|c| c.get(self.wasmtime(), &digest));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => Component::new(self.wasmtime(), bytes)
                .map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
        };
        check_version(self.wasmtime(), &component)?;
        let world = detect_world(self.wasmtime(), &component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        let signature = |e: wasmtime::Error| LoadError::Signature {
            world,
            reason: format!("{e:#}"),
        };
        let pre = match world {
            World::Filter => {
                WorldPre::Filter(bindings::filter::FilterPre::new(instance_pre).map_err(signature)?)
            }
            World::Map => {
                WorldPre::Map(bindings::map::MapPre::new(instance_pre).map_err(signature)?)
            }
            World::Scorer => {
                WorldPre::Scorer(bindings::scorer::ScorerPre::new(instance_pre).map_err(signature)?)
            }
            World::Processor => WorldPre::Processor(
                bindings::processor::ProcessorPre::new(instance_pre).map_err(signature)?,
            ),
        };
        if !from_cache && let Some(cache) = self.cache() {
            cache.put(&digest, &component);
        }
        tracing::debug!(function = name, %digest, %world, from_cache, elapsed = ?started.elapsed(), "module loaded");
        let name: Arc<str> = name.into();
        Ok(Module {
            engine: self.clone(),
            log: Arc::new(LogBudget::new(name.clone())),
            name,
            digest,
            world,
            size: bytes.len(),
            from_cache,
            pre,
        })
    }
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match [bytes[4], bytes[5], bytes[6], bytes[7]] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(LoadError::CoreModule),
        other => Err(LoadError::UnknownVersion(other)),
    }
}

/// Refuses a component that imports or exports an interface of another
/// version of `runnel:stream` than [`WIT_PACKAGE`]. Every function
/// component imports `runnel:stream/types@VERSION` (its worlds use its
/// types), whatever language made it; a component that names no
/// `runnel:stream` interface at all is judged by its exports instead.
fn check_version(engine: &wasmtime::Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let (package, ours) = WIT_PACKAGE.split_once('@').unwrap_or((WIT_PACKAGE, ""));
    let names = ty
        .imports(engine)
        .map(|(name, _)| name)
        .chain(ty.exports(engine).map(|(name, _)| name));
    for name in names {
        let Some(rest) = name.strip_prefix(package).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let version = rest.split_once('@').map(|(_, v)| v);
        if version != Some(ours) {
            return Err(LoadError::Version {
                built: match version {
                    Some(v) => format!("{package}@{v}"),
                    None => format!("{package} without a version"),
                },
            });
        }
    }
    Ok(())
}

fn detect_world(engine: &wasmtime::Engine, component: &Component) -> Result<World, LoadError> {
    let ty = component.component_type();
    let funcs: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
        .map(|(name, _)| name.to_owned())
        .collect();
    let has = |f: &str| funcs.iter().any(|n| n == f);
    let worlds: Vec<World> = World::ALL.into_iter().filter(|w| has(w.export())).collect();
    match worlds.as_slice() {
        [w] if has("init") => Ok(*w),
        [] | [_] => {
            let all: Vec<String> = ty.exports(engine).map(|(n, _)| format!("`{n}`")).collect();
            Err(LoadError::UnknownWorld {
                exports: if all.is_empty() {
                    "nothing".to_owned()
                } else {
                    all.join(", ")
                },
            })
        }
        many => Err(LoadError::AmbiguousWorld(
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Advances the engine's epoch, and `ticks` with it, every [`EPOCH_TICK`]
/// until the engine is dropped.
fn spawn_epoch_ticker(engine: &wasmtime::Engine, ticks: Ticks) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("runnel-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                ticks.advance();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        // Without the ticker no deadline fires; refuse to run rather than run unbounded.
        panic!("cannot start the epoch thread that enforces call deadlines: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(matches!(check_header(b"\0asm\x0d\0\x01\0"), Ok(())));
        assert!(matches!(
            check_header(b"\0asm\x02\0\0\0"),
            Err(LoadError::UnknownVersion(_))
        ));
    }

    #[test]
    fn a_core_module_is_refused_before_compiling() {
        let engine = Engine::new(EngineConfig {
            cache_dir: None,
            max_instances: 4,
            ..EngineConfig::default()
        })
        .unwrap();
        let core = b"\0asm\x01\0\0\0";
        let err = engine.load("core", core).unwrap_err();
        assert!(err.to_string().contains("not a component"), "{err}");
    }
}
