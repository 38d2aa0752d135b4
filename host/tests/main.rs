//! The tests that run the real `runnel` binary, or drive the embedded
//! broker directly: one module per file of this folder, in one test binary
//! (linked once instead of once per file). The chaos soak
//! (`tests/soak/`) is a test binary of its own.
//!
//! `cargo test -p runnel-host --test process cluster::` runs one file's.

mod broker_group;
mod broker_sqlite;
mod cluster;
mod colour;
mod common;
mod dev;
mod frozen;
mod restart;
mod stateful;
mod stop;
