//! runnel-host: runs sandboxed WebAssembly stream functions.
//!
//! - [`engine`] loads, validates and runs function components (wasmtime).
//! - [`runner`] binds them to Kafka topics: the worker pool, at-least-once.
//! - [`registry`] keeps modules, models and deployments in Kafka; [`control`]
//!   reconciles a node with it and serves the admin API.
//! - [`journal`] writes each node's deployment log lines and events to the
//!   registry's logs topic, and reads them back.
//! - [`kafka`] holds the rdkafka client settings; [`broker`] the embedded broker.
//! - [`config`] reads `runnel.toml`; [`rules`] says what a deployment may be,
//!   for the API, `runnel.toml` and the registry alike; [`cli`] is the
//!   `runnel` command line.
//!
//! Run a function over records in memory:
//!
//! ```no_run
//! use runnel_host::engine::{Engine, EngineConfig, Limits, Worker};
//! use runnel_abi::{BatchBuilder, Frame};
//!
//! # fn main() -> anyhow::Result<()> {
//! let engine = Engine::new(EngineConfig::default())?;
//! let module = engine.load("keep-big", &std::fs::read("threshold_filter.wasm")?)?;
//! let config = vec![("field".to_owned(), "x".to_owned()), ("min".to_owned(), "10".to_owned())];
//! let mut worker = Worker::new(module.into(), Limits::default(), config, None)?;
//! let mut batch = BatchBuilder::default();
//! batch.push(&Frame { partition: 0, offset: 0, timestamp_ms: None, key: None, value: Some(br#"{"x": 12}"#), headers: &[] });
//! let processed = worker.process(&mut batch)?;
//! println!("{:?}", processed.outcomes);
//! # Ok(()) }
//! ```

pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod engine;
pub mod journal;
pub mod kafka;
pub mod registry;
pub mod rules;
pub mod runner;
pub mod state;
