//! `runnel build [DIR]`: builds the function in a folder into a component,
//! whatever its language.
//!
//! - **Rust** (a `Cargo.toml`): `cargo build --release --target
//!   wasm32-wasip2`; the component is the `.wasm` cargo reports.
//! - **Python** (an `app.py`): `componentize-py`, at the version pinned
//!   here ([`COMPONENTIZE_PY`]), against the WIT the Python SDK ships
//!   (`guest-sdk/python/runnel/wit`), for the world the module's decorator
//!   names (`@runnel.filter`, `@runnel.map` or `@runnel.scorer`). The
//!   component is `target/<folder>.wasm`. componentize-py is found at
//!   `RUNNEL_COMPONENTIZE_PY`, else in runnel's own virtual environment
//!   (`~/.cache/runnel-tools/componentize-py-VERSION`), which the first build
//!   makes (`python3 -m venv`, then `pip install`); `.ci/setup` makes it
//!   too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// The componentize-py that builds Python functions: pinned, because the
/// runtime it embeds (CPython, its libc and adapters) is part of every
/// component it makes.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// A function's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The function's folder: a Rust crate (`Cargo.toml`) or a Python
    /// function (`app.py`).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The language, when the folder has both a `Cargo.toml` and an `app.py`.
    #[arg(long, value_enum)]
    pub lang: Option<Lang>,
    /// Where to write a Python component; default: `DIR/target/<folder>.wasm`.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The runnel SDK: the `guest-sdk` folder of a runnel checkout (a Python
    /// function is built with its `python` folder). Default: the one of the
    /// checkout this runnel was built from.
    #[arg(long, env = "RUNNEL_SDK", value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// What was built.
#[derive(Debug)]
pub struct Built {
    pub component: PathBuf,
    pub lang: Lang,
    pub bytes: u64,
    pub seconds: f64,
}

/// Builds the function; progress goes to stderr as the tools print it.
pub fn build(args: &BuildArgs) -> anyhow::Result<Built> {
    let dir = &args.dir;
    anyhow::ensure!(
        dir.is_dir(),
        "{} is not a folder: give the function's folder (with a Cargo.toml or an app.py)",
        dir.display()
    );
    let lang = match (
        args.lang,
        dir.join("Cargo.toml").is_file(),
        dir.join("app.py").is_file(),
    ) {
        (Some(lang), _, _) => lang,
        (None, true, false) => Lang::Rust,
        (None, false, true) => Lang::Python,
        (None, true, true) => bail!(
            "{} has both a Cargo.toml and an app.py: say which to build with --lang rust or --lang python",
            dir.display()
        ),
        (None, false, false) => bail!(
            "{} has neither a Cargo.toml (a Rust function) nor an app.py (a Python function): \
             run runnel build in a function's folder, or make one with runnel new",
            dir.display()
        ),
    };
    let started = Instant::now();
    let component = match lang {
        Lang::Rust => build_rust(dir)?,
        Lang::Python => {
            let sdk = super::new::sdk_path(args.sdk.as_deref(), &super::new::built_sdk())?;
            let out = match &args.out {
                Some(out) => out.clone(),
                None => python_output(dir)?,
            };
            build_python(dir, &sdk.join("python"), &out)?;
            out
        }
    };
    let bytes = std::fs::metadata(&component)
        .with_context(|| format!("the build wrote no {}", component.display()))?
        .len();
    Ok(Built {
        component,
        lang,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What to tell the author once it is built.
pub fn said(built: &Built) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "built {} ({:.1} MB, {}) in {:.1} s",
        built.component.display(),
        built.bytes as f64 / 1e6,
        match built.lang {
            Lang::Rust => "Rust".to_owned(),
            Lang::Python => format!("Python, componentize-py {COMPONENTIZE_PY}"),
        },
        built.seconds
    );
    s
}

/// `DIR/target/<folder name>.wasm`.
pub fn python_output(dir: &Path) -> anyhow::Result<PathBuf> {
    let abs =
        std::fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = abs
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("function");
    Ok(dir.join("target").join(format!("{name}.wasm")))
}

fn build_rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo (is Rust installed? https://rustup.rs)")?;
    if !output.status.success() {
        bail!(
            "cargo build failed ({}); if it says the wasm32-wasip2 target is missing, run \
             `rustup target add wasm32-wasip2`",
            output.status
        );
    }
    // The artifacts cargo reports: the last `.wasm` is the crate's own.
    let mut wasm = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = file.as_str().filter(|f| f.ends_with(".wasm")) {
                wasm = Some(PathBuf::from(f));
            }
        }
    }
    wasm.context(
        "cargo built no .wasm: a function crate needs `crate-type = [\"cdylib\"]` under [lib] \
         (runnel new writes one)",
    )
}

/// The world the module's decorator names.
pub fn python_world(source: &str) -> anyhow::Result<&'static str> {
    let mut found: Vec<&'static str> = Vec::new();
    for line in source.lines() {
        let line = line.trim_start();
        for (decorator, world) in [
            ("@runnel.filter", "filter"),
            ("@runnel.map", "map"),
            ("@runnel.scorer", "scorer"),
        ] {
            let rest = line.strip_prefix(decorator);
            if rest.is_some_and(|r| r.trim().is_empty() || r.trim_start().starts_with('#'))
                && !found.contains(&world)
            {
                found.push(world);
            }
        }
    }
    match found.as_slice() {
        [world] => Ok(world),
        [] => bail!(
            "app.py puts none of @runnel.filter, @runnel.map or @runnel.scorer on a function or class: \
             say which kind of function it is"
        ),
        many => bail!(
            "app.py has more than one kind of function ({}): a component is exactly one",
            many.join(", ")
        ),
    }
}

fn build_python(dir: &Path, sdk: &Path, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        sdk.join("runnel").join("__init__.py").is_file() && sdk.join("runnel/wit").is_dir(),
        "{} is not the runnel Python SDK (no runnel/__init__.py and runnel/wit): give the \
         guest-sdk folder of a runnel checkout with --sdk PATH",
        sdk.display()
    );
    let app = dir.join("app.py");
    let source =
        std::fs::read_to_string(&app).with_context(|| format!("cannot read {}", app.display()))?;
    let world = python_world(&source)?;
    let wit = sdk.join("runnel/wit");
    // Qualified, in WIT's syntax (`runnel:%stream/%map@0.1.0`): `stream`
    // and `map` are WIT keywords, and componentize-py parses the name.
    let package = wit_package(&wit)?;
    let qualified = match package.split_once('@') {
        Some((name, version)) => format!("{name}/%{world}@{version}"),
        None => format!("{package}/%{world}"),
    };
    let tool = componentize_py()?;
    let target = dir.join("target");
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot make the folder {}", parent.display()))?;
    }
    // The app module componentize-py exports: the author's module, and the
    // SDK's WitWorld that calls into what its decorator registered.
    let entry = target.join("runnel-build");
    std::fs::create_dir_all(&entry)
        .with_context(|| format!("cannot make the folder {}", entry.display()))?;
    std::fs::write(
        entry.join("runnel_app.py"),
        "# Made by runnel build: the component's exports.\nimport app  # noqa: F401\nfrom runnel._world import WitWorld  # noqa: F401\n",
    )
    .context("cannot write the component's entry module")?;
    eprintln!(
        "runnel: building {} ({world}) with componentize-py {COMPONENTIZE_PY}",
        app.display()
    );
    let status = Command::new(&tool)
        .arg("-d")
        .arg(&wit)
        .args(["-w", &qualified, "componentize", "runnel_app", "-p"])
        .arg(&entry)
        .arg("-p")
        .arg(dir)
        .arg("-p")
        .arg(sdk)
        .arg("-o")
        .arg(out)
        .status()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    anyhow::ensure!(
        status.success(),
        "componentize-py could not build {} ({status}): its message is above",
        app.display()
    );
    Ok(())
}

/// The WIT package in `wit` as the file spells it (`runnel:%stream@0.1.0`).
fn wit_package(wit: &Path) -> anyhow::Result<String> {
    let file = wit.join("runnel.wit");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').to_owned())
        .with_context(|| format!("{} has no `package` line", file.display()))
}

/// The pinned componentize-py: `RUNNEL_COMPONENTIZE_PY`, else runnel's own
/// virtual environment, made on first use.
pub fn componentize_py() -> anyhow::Result<PathBuf> {
    if let Some(given) = std::env::var_os("RUNNEL_COMPONENTIZE_PY").filter(|v| !v.is_empty()) {
        let given = PathBuf::from(given);
        check_version(&given)?;
        return Ok(given);
    }
    let venv = venv_dir()?;
    let tool = venv.join("bin").join("componentize-py");
    if !tool.is_file() {
        eprintln!(
            "runnel: installing componentize-py {COMPONENTIZE_PY} into {} (once; about 40 MB from PyPI)",
            venv.display()
        );
        let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        let status = Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("cannot run python3 to make a virtual environment: install Python 3 (with venv), or set RUNNEL_COMPONENTIZE_PY to a componentize-py")?;
        anyhow::ensure!(
            status.success(),
            "python3 -m venv {} failed ({status}); on Debian, install python3-venv",
            venv.display()
        );
        let status = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet"])
            .arg(format!("componentize-py=={COMPONENTIZE_PY}"))
            .status()
            .context("cannot run pip")?;
        anyhow::ensure!(
            status.success(),
            "pip could not install componentize-py {COMPONENTIZE_PY} into {} ({status})",
            venv.display()
        );
    }
    check_version(&tool)?;
    Ok(tool)
}

/// `~/.cache/runnel-tools/componentize-py-VERSION` (or under `XDG_CACHE_HOME`).
pub fn venv_dir() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .context("neither XDG_CACHE_HOME nor HOME is set: set RUNNEL_COMPONENTIZE_PY to a componentize-py")?;
    // Not in runnel's compiled-module cache (`~/.cache/runnel`), which is
    // kept private and holds only what runnel wrote.
    Ok(cache
        .join("runnel-tools")
        .join(format!("componentize-py-{COMPONENTIZE_PY}")))
}

fn check_version(tool: &Path) -> anyhow::Result<()> {
    let output = Command::new(tool)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    let said = String::from_utf8_lossy(&output.stdout);
    let version = said
        .trim()
        .strip_prefix("componentize-py ")
        .unwrap_or(said.trim());
    anyhow::ensure!(
        version == COMPONENTIZE_PY,
        "{} is componentize-py {version:?}; runnel builds with {COMPONENTIZE_PY} \
         (pip install componentize-py=={COMPONENTIZE_PY}, or unset RUNNEL_COMPONENTIZE_PY)",
        tool.display()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for
mod tests {
    use super::*;

    #[test]
    fn the_decorator_names_the_world() {
        assert_eq!(
            python_world("import runnel\n@runnel.filter\ndef f(r): ...").unwrap(),
            "filter"
        );
        assert_eq!(
            python_world("@runnel.scorer  # the model's\nclass S: ...").unwrap(),
            "scorer"
        );
        assert_eq!(
            python_world("    @runnel.map\n    def m(r): ...\n@runnel.map\ndef n(r): ...").unwrap(),
            "map"
        );
        let none = python_world("def f(r): return True")
            .unwrap_err()
            .to_string();
        assert!(none.contains("none of @runnel.filter"), "{none}");
        let two = python_world("@runnel.filter\ndef f(r): ...\n@runnel.map\ndef m(r): ...")
            .unwrap_err()
            .to_string();
        assert!(
            two.contains("more than one kind of function (filter, map)"),
            "{two}"
        );
        // `@runnel.filters` or a comment that mentions one is not a decorator.
        assert!(python_world("@runnel.filters\n# @runnel.map").is_err());
    }

    #[test]
    fn the_sdk_builds_against_the_package_the_host_speaks() {
        let wit = super::super::new::built_sdk().join("python/runnel/wit");
        assert_eq!(
            wit_package(&wit).unwrap().replace('%', ""),
            crate::engine::WIT_PACKAGE
        );
    }

    #[test]
    fn ci_installs_the_pinned_componentize_py() {
        let setup = include_str!("../../../.ci/setup");
        assert!(
            setup.contains(&format!("cpy_version={COMPONENTIZE_PY}\n")),
            ".ci/setup installs another componentize-py than {COMPONENTIZE_PY}"
        );
    }

    #[test]
    fn a_folder_of_no_function_says_what_it_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let refused = || {
            build(&BuildArgs {
                dir: dir.path().to_owned(),
                lang: None,
                out: None,
                sdk: None,
            })
            .unwrap_err()
            .to_string()
        };
        let err = refused();
        assert!(err.contains("neither a Cargo.toml"), "{err}");
        std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        let err = refused();
        assert!(err.contains("--lang rust or --lang python"), "{err}");
    }
}
