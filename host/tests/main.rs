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
