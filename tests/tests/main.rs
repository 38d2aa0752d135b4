//! runnel's end-to-end tests, one module per file of this folder, in one
//! test binary: linked once instead of once per file, and with every test in
//! one queue, so that both test threads stay busy to the end rather than
//! waiting for the slowest test of each file in turn.
//!
//! `cargo test -p runnel-tests --test end_to_end sandbox::` runs one file's.

mod api_client;
mod broker;
mod browser;
mod console;
mod control;
mod engine;
mod examples;
mod flight_delay;
mod hardening;
mod kafka;
mod kubernetes;
mod lost;
mod poison;
mod provenance;
mod python;
mod routing;
mod run_cli;
mod sandbox;
mod scaffold;
mod state;
mod state_kafka;
mod state_query;
mod swap;
mod topics;
