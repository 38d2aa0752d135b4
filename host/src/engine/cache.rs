//! Compiled components on disk, keyed by the module's sha256 and a hash of the
//! engine's compilation settings, so a second load of the same module (by this
//! process or the next) skips Cranelift. Only modules that passed validation
//! are written, and writes are atomic (temporary file, then rename).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, engine: &wasmtime::Engine) -> Self {
        // `precompile_compatibility_hash` covers wasmtime's version and every
        // setting that changes the compiled code; the file name carries it so
        // that engines with other settings never read each other's files.
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Self {
            dir,
            engine_tag: format!("{:016x}", h.finish()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_tag))
    }

    /// The compiled component for `digest`, if this cache holds one that loads.
    pub fn get(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file is one this cache wrote from `Component::serialize`
        // of a component compiled by an engine with the same settings (the
        // name says so). wasmtime still checks its header and version; a file
        // that fails that check is removed and compiled again.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring an unusable compiled artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component. Failing to write is logged, not fatal:
    /// the next load compiles again.
    pub fn put(&self, digest: &str, component: &Component) {
        let result = (|| -> anyhow::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let bytes = component.serialize()?;
            let mut tmp = tempfile_in(&self.dir)?;
            tmp.1.write_all(&bytes)?;
            tmp.1.sync_all()?;
            std::fs::rename(&tmp.0, self.path(digest))?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), error = %format!("{e:#}"), "could not cache a compiled module");
        }
    }

    /// How many artifacts the cache holds (for tests and `status`).
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let path = dir.join(name.replace(['(', ')'], ""));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// The default cache folder: `$RUNNEL_CACHE_DIR`, else `$XDG_CACHE_HOME/runnel`,
/// else `~/.cache/runnel`, else a folder under the system's temporary folder.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RUNNEL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("runnel");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("runnel");
    }
    std::env::temp_dir().join("runnel-cache")
}
