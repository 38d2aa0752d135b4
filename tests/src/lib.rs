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

/// Builds the Python function in `folder` (relative to the repository) with
/// `runnel build` and returns the component's path. Components are kept in
/// `<target>/runnel-guests/python/`, named by a hash of their sources (the
/// folder's and the SDK's `.py` files, the WIT, the componentize-py
/// version): a build takes seconds, so each source is built once, whichever
/// test binary asks first. componentize-py comes from `.ci/setup`'s virtual
/// environment (or is installed there on first use).
pub fn python_guest(folder: &str) -> String {
    use std::hash::{Hash, Hasher};
    use std::path::{Path, PathBuf};

    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join(folder);
    let sdk = root.join("guest-sdk");
    let mut sources: Vec<PathBuf> = Vec::new();
    for d in [dir.clone(), sdk.join("python/runnel"), root.join("wit")] {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a folder entry").path();
            if path.extension().is_some_and(|e| e == "py" || e == "wit") {
                sources.push(path);
            }
        }
    }
    sources.sort();
    let mut hasher = std::hash::DefaultHasher::new();
    runnel_host::cli::build::COMPONENTIZE_PY.hash(&mut hasher);
    for path in &sources {
        path.file_name().hash(&mut hasher);
        std::fs::read(path)
            .expect("a source file")
            .hash(&mut hasher);
    }
    let name = folder.replace('/', "-");
    let out_dir = Path::new(guests::THRESHOLD_FILTER)
        .ancestors()
        .nth(3)
        .expect("guests live in <target>/runnel-guests/wasm32-wasip2/release")
        .join("python");
    let out = out_dir.join(format!("{name}-{:016x}.wasm", hasher.finish()));
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if !out.exists() {
        std::fs::create_dir_all(&out_dir).expect("the guests' folder");
        let partial = out.with_extension(format!("{}.partial", std::process::id()));
        let built = runnel_host::cli::build::build(&runnel_host::cli::build::BuildArgs {
            dir: dir.clone(),
            lang: Some(runnel_host::cli::build::Lang::Python),
            out: Some(partial.clone()),
            sdk: Some(sdk),
        })
        .unwrap_or_else(|e| panic!("runnel build {}: {e:#}", dir.display()));
        eprint!("{}", runnel_host::cli::build::said(&built));
        std::fs::rename(&partial, &out).expect("the built component moves into place");
    }
    out.display().to_string()
}

/// Makes the process's `tracing` subscriber carry the journal's layer, as
/// `runnel serve` does, so that nodes started in a test journal their
/// deployments' lines (see `runnel_host::journal`). Once per process; a
/// later call does nothing.
pub fn journal_layer() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(runnel_host::journal::layer()),
    );
}
