//! Compiled components on disk, keyed by the module's sha256 and a hash of the
//! engine's compilation settings, so a second load of the same module (by this
//! process or the next) skips Cranelift. Only modules that passed validation
//! are written.
//!
//! Loading a compiled artifact runs its machine code as it is, so the cache
//! is only as trustworthy as its folder and its files:
//!
//! - the folder is private: created with mode 0700, and refused unless this
//!   process's user owns it and it is a real folder (not a symlink). A folder
//!   of ours that others could write to is made private again and its
//!   artifacts are thrown away, since anyone could have put them there.
//!   There is no shared fallback (such as `/tmp`): without a private place,
//!   nothing is cached.
//! - files are written to a temporary file with a random name, created with
//!   `O_EXCL` (which follows no symlink) and mode 0600, then renamed into
//!   place: a reader sees a whole file or none.
//! - each file starts with the sha256 of the compiled bytes after it, checked
//!   before `deserialize`; a file that is truncated or changed is removed,
//!   and the module is compiled again and its file replaced. The digest
//!   catches damage, not an attacker who can write the folder: the folder's
//!   privacy is what keeps those out.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// What every cache file starts with, before the digest of the rest.
const MAGIC: &[u8; 16] = b"runnel-cwasm-v1\n";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// Why the cache folder cannot be used. The engine then runs without a cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the cache folder {dir}: {source}")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cache folder {dir} is a symlink or not a folder; remove it or set RUNNEL_CACHE_DIR"
    )]
    NotAFolder { dir: PathBuf },
    #[error(
        "the cache folder {dir} belongs to user {owner}, not to this process's user {me}; \
         a compiled module from it would run as it is. Remove it or set RUNNEL_CACHE_DIR"
    )]
    NotOurs { dir: PathBuf, owner: u32, me: u32 },
    #[error("cannot tell which user this process runs as (reading /proc/self): {0}")]
    WhoAmI(std::io::Error),
    #[error("cannot make the cache folder {dir} private: {source}")]
    Protect {
        dir: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
}

impl ArtifactCache {
    /// Opens (creating it if needed) the private cache folder `dir`.
    pub fn open(dir: PathBuf, engine: &wasmtime::Engine) -> Result<Self, CacheError> {
        make_private_dir(&dir)?;
        // `precompile_compatibility_hash` covers wasmtime's version and every
        // setting that changes the compiled code; the file name carries it so
        // that engines with other settings never read each other's files.
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(Self {
            dir,
            engine_tag: format!("{:016x}", h.finish()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_tag))
    }

    /// The compiled component for `digest`, if this cache holds one whose
    /// bytes match the digest written with them.
    pub fn get(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        let file = match std::fs::read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a compiled artifact; compiling again");
                return None;
            }
        };
        let compiled = match verified(&file) {
            Some(c) => c,
            None => {
                tracing::warn!(path = %path.display(), "a compiled artifact is truncated or changed; removing it and compiling again");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        // SAFETY: the bytes are the ones this cache wrote from
        // `Component::serialize` of a component compiled by an engine with
        // the same settings (the name says so), in a folder only this user
        // can write, and they match the digest written with them. wasmtime
        // still checks their header and version.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, compiled) };
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
            let bytes = component.serialize()?;
            let (tmp, mut file) = create_temp(&self.dir)?;
            let written = (|| -> std::io::Result<()> {
                file.write_all(MAGIC)?;
                file.write_all(&Sha256::digest(&bytes))?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                std::fs::rename(&tmp, self.path(digest))
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            Ok(written?)
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

/// The compiled bytes of a cache file, if its digest matches them.
fn verified(file: &[u8]) -> Option<&[u8]> {
    let (header, compiled) = file.split_at_checked(HEADER_LEN)?;
    let (magic, digest) = header.split_at(MAGIC.len());
    (magic == MAGIC && digest == Sha256::digest(compiled).as_slice()).then_some(compiled)
}

/// Creates `dir` (mode 0700) if needed and checks that it is a private
/// folder of this process's user, making it private if only its mode is wrong.
fn make_private_dir(dir: &Path) -> Result<(), CacheError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CacheError::Create {
            dir: dir.into(),
            source,
        })?;
    let meta = std::fs::symlink_metadata(dir).map_err(|source| CacheError::Create {
        dir: dir.into(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CacheError::NotAFolder { dir: dir.into() });
    }
    // /proc/self belongs to the process's effective user: std has no
    // `geteuid`, and this keeps the engine free of unsafe calls.
    let me = std::fs::metadata("/proc/self")
        .map_err(CacheError::WhoAmI)?
        .uid();
    if meta.uid() != me {
        return Err(CacheError::NotOurs {
            dir: dir.into(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o077 != 0 {
        let protect = |source| CacheError::Protect {
            dir: dir.into(),
            source,
        };
        std::fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(protect)?;
        // Others could write here until now: nothing in it can be trusted.
        let mut removed = 0;
        for entry in std::fs::read_dir(dir).map_err(protect)?.flatten() {
            if entry.path().extension().is_some_and(|x| x == "cwasm")
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), removed,
            "the cache folder was open to other users: made it private (0700) and removed its compiled modules");
    }
    Ok(())
}

/// A new file with a random name in `dir`, created with `O_EXCL` and mode 0600.
fn create_temp(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((path, file))
}

/// The default cache folder: `$RUNNEL_CACHE_DIR`, else `$XDG_CACHE_HOME/runnel`,
/// else `~/.cache/runnel`; `None` (no cache) when none of these is set, rather
/// than a folder under the system's shared temporary folder.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("RUNNEL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("runnel"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("runnel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_file_with_its_digest_is_trusted() {
        let compiled = b"machine code".to_vec();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&Sha256::digest(&compiled));
        file.extend_from_slice(&compiled);
        assert_eq!(verified(&file), Some(&compiled[..]));
        assert_eq!(verified(&file[..file.len() - 1]), None);
        assert_eq!(verified(&file[..10]), None);
        let mut changed = file.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(verified(&changed), None);
    }

    #[test]
    fn the_folder_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        make_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // Ours but open to others: made private, and emptied of artifacts.
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.join("planted.cwasm"), b"x").unwrap();
        make_private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert!(!dir.join("planted.cwasm").exists());

        // A symlink to a folder is refused, not followed.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            make_private_dir(&link),
            Err(CacheError::NotAFolder { .. })
        ));
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("theirs");
        make_private_dir(&dir).unwrap();
        // Only root can give a folder away; elsewhere there is nothing to test.
        if std::os::unix::fs::chown(&dir, Some(65534), None).is_err() {
            return;
        }
        let err = make_private_dir(&dir).unwrap_err();
        assert!(
            matches!(err, CacheError::NotOurs { owner: 65534, .. }),
            "{err}"
        );
    }

    #[test]
    fn temporary_names_are_random_and_never_reused() {
        let root = tempfile::tempdir().unwrap();
        let (a, _) = create_temp(root.path()).unwrap();
        let (b, _) = create_temp(root.path()).unwrap();
        assert_ne!(a, b);
        let mode = std::fs::metadata(&a).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
