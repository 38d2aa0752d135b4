//! Shared helpers of runnel's end-to-end tests and benchmarks.
//!
//! [`guests`] names the wasm artifacts that `build.rs` builds: the examples
//! and the test-only guests of `tests/guests/`.

use runnel_abi::BatchBuilder;
use runnel_host::engine::{Engine, EngineConfig};

/// Paths of the built wasm guests.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// Reads a built guest.
pub fn guest(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read the guest {path}: {e}"))
}

/// An engine with a small pool, caching compiled modules in `cache_dir` (or not at all).
pub fn engine(cache_dir: Option<&std::path::Path>) -> Engine {
    Engine::new(EngineConfig {
        cache_dir: cache_dir.map(Into::into),
        max_instances: 32,
        ..EngineConfig::default()
    })
    .expect("the engine starts")
}

/// A batch of records with these values, at offsets 0, 1, 2...
pub fn batch_of(values: &[&str]) -> BatchBuilder {
    BatchBuilder::of_values(values.iter().map(|v| v.as_bytes()))
}

pub mod kafka;
