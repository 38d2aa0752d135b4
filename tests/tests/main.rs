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

/// With `autotests = false`, a file added to this folder without a `mod`
/// line above would never be compiled, and its tests never run.
#[test]
fn every_file_of_this_folder_is_a_module() {
    let main = include_str!("main.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(&dir).expect("tests/") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "main") {
            assert!(
                main.contains(&format!("\nmod {module};\n")),
                "tests/{name} is not declared in tests/main.rs: add `mod {module};`"
            );
        }
    }
}
