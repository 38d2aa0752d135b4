//! `runnel new`: a crate of each kind, written to a temporary folder, builds
//! as it is with `cargo build --release --target wasm32-wasip2` (the three
//! sharing one target folder), passes its unit tests, and passes its golden
//! check, `runnel run --expect`; a changed expectation fails it with a diff.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::path::Path;
use std::process::Command;

use clap::Parser;
use runnel_host::cli::new::{NewArgs, new};
use runnel_host::cli::run::{EXIT_OK, EXIT_UNEXPECTED, RunArgs, run};

#[derive(Parser)]
struct NewCli {
    #[command(flatten)]
    args: NewArgs,
}

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: RunArgs,
}

/// Runs `runnel run ARGS` in `dir`'s terms: (exit code, stdout, stderr).
fn runnel_run(args: &[String]) -> (u8, String, String) {
    let cli = RunCli::try_parse_from(
        ["runnel-run", "--no-cache"]
            .iter()
            .map(|s| s.to_string())
            .chain(args.iter().cloned()),
    )
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(&cli.args, &mut std::io::empty(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo {args:?} in {} failed",
        dir.display()
    );
}

/// The golden check's arguments for the crate `name` in `dir`.
fn golden(dir: &Path, target: &Path, name: &str, expected: &Path) -> Vec<String> {
    let wasm = target.join(format!(
        "wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ));
    let mut args = vec![
        wasm.display().to_string(),
        "--input".into(),
        dir.join("testdata/input.jsonl").display().to_string(),
        "--expect".into(),
        expected.display().to_string(),
    ];
    if dir.join("testdata/model.txt").exists() {
        args.extend([
            "--model".into(),
            dir.join("testdata/model.txt").display().to_string(),
        ]);
    }
    args
}

#[test]
fn a_new_crate_of_each_kind_builds_and_passes_its_golden_check() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("target");
    for kind in ["filter", "map", "scorer"] {
        let name = format!("my-{kind}");
        let dir = root.path().join(&name);
        let cli =
            NewCli::try_parse_from(["runnel-new", kind, &name, "--dir", dir.to_str().unwrap()])
                .unwrap();
        let said = new(&cli.args).unwrap();
        assert!(
            said.starts_with(&format!("created the {kind} {name} in ")),
            "{said}"
        );
        for file in [
            "Cargo.toml",
            "src/lib.rs",
            "README.md",
            "testdata/input.jsonl",
            "testdata/expected.jsonl",
        ] {
            assert!(dir.join(file).exists(), "{kind}: no {file}");
        }

        cargo(
            &dir,
            &target,
            &["build", "--release", "--target", "wasm32-wasip2"],
        );
        cargo(&dir, &target, &["test"]);
        let expected = dir.join("testdata/expected.jsonl");
        let (code, out, err) = runnel_run(&golden(&dir, &target, &name, &expected));
        assert_eq!(code, EXIT_OK, "{kind}: {err}");
        assert_eq!(out, "", "{kind}: with --expect nothing is printed");
        assert!(
            err.ends_with(&format!("the results match {}\n", expected.display())),
            "{kind}: {err}"
        );

        // Writing over an existing crate is refused.
        let again = new(&cli.args).unwrap_err().to_string();
        assert!(again.contains("already exists and is not empty"), "{again}");
    }
}

#[test]
fn the_golden_check_fails_with_a_diff_and_bless_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "a\nb\nc\n").unwrap();
    let expected = dir.path().join("expected.jsonl");
    // Key order and spacing do not matter; a changed value, a missing and an
    // extra line do.
    std::fs::write(
        &expected,
        "{\"value\": \"a\", \"line\": 1}\n{\"line\":2,\"value\":\"B\"}\n{\"line\":4,\"value\":\"d\"}\n",
    )
    .unwrap();
    let args = |more: &[&str]| -> Vec<String> {
        [
            runnel_tests::guests::IDENTITY_FILTER,
            "--format",
            "lines",
            "--input",
            input.to_str().unwrap(),
            "--expect",
            expected.to_str().unwrap(),
        ]
        .iter()
        .chain(more)
        .map(|s| s.to_string())
        .collect()
    };
    let (code, out, err) = runnel_run(&args(&[]));
    assert_eq!(code, EXIT_UNEXPECTED, "{err}");
    assert_eq!(out, "");
    let diff: Vec<&str> = err.lines().skip(2).collect();
    assert_eq!(
        diff,
        [
            "-2: {\"line\":2,\"value\":\"B\"}",
            "-3: {\"line\":4,\"value\":\"d\"}",
            "+2: {\"line\":2,\"value\":\"b\"}",
            "+3: {\"line\":3,\"value\":\"c\"}",
            &format!(
                "(if this run is right, --bless writes it to {})",
                expected.display()
            ),
        ],
        "{err}"
    );
    assert!(
        err.lines().nth(1).unwrap().starts_with(&format!(
            "the results differ from {} (- expected, + this run",
            expected.display()
        )),
        "{err}"
    );

    let (code, _, err) = runnel_run(&args(&["--bless"]));
    assert_eq!(code, EXIT_OK, "{err}");
    let (code, _, err) = runnel_run(&args(&[]));
    assert_eq!(code, EXIT_OK, "{err}");

    std::fs::remove_file(&expected).unwrap();
    let (code, _, err) = runnel_run(&args(&[]));
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the expected results") && err.contains("--bless writes it"),
        "{err}"
    );
}

/// `runnel new KIND NAME --lang python`: a Python function of each kind
/// passes its unit tests under CPython, builds with `runnel build`
/// (componentize-py), and passes the same golden check as its Rust twin.
#[test]
fn a_new_python_function_of_each_kind_builds_and_passes_its_golden_check() {
    use runnel_host::cli::build::{BuildArgs, Lang, build};

    let root = tempfile::tempdir().unwrap();
    for kind in ["filter", "map", "scorer"] {
        let name = format!("my-{kind}");
        let dir = root.path().join(&name);
        let cli = NewCli::try_parse_from([
            "runnel-new",
            kind,
            &name,
            "--lang",
            "python",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        let said = new(&cli.args).unwrap();
        assert!(
            said.contains("python3 -m unittest && runnel build"),
            "{said}"
        );
        for file in [
            "app.py",
            "test_app.py",
            "README.md",
            "testdata/expected.jsonl",
        ] {
            assert!(dir.join(file).exists(), "{kind}: no {file}");
        }
        let tests = Command::new("python3")
            .args(["-m", "unittest", "-q"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            tests.status.success(),
            "{kind}: python3 -m unittest: {}",
            String::from_utf8_lossy(&tests.stderr)
        );

        let built = build(&BuildArgs {
            dir: dir.clone(),
            lang: None,
            out: None,
            sdk: None,
        })
        .unwrap();
        assert_eq!(built.lang, Lang::Python);
        assert_eq!(built.component, dir.join(format!("target/{name}.wasm")));
        let expected = dir.join("testdata/expected.jsonl");
        let mut args = vec![
            built.component.display().to_string(),
            "--input".into(),
            dir.join("testdata/input.jsonl").display().to_string(),
            "--expect".into(),
            expected.display().to_string(),
        ];
        if kind == "scorer" {
            args.extend([
                "--model".into(),
                dir.join("testdata/model.txt").display().to_string(),
            ]);
        }
        let (code, _, err) = runnel_run(&args);
        assert_eq!(code, EXIT_OK, "{kind}: {err}");
        assert!(
            err.ends_with(&format!("the results match {}\n", expected.display())),
            "{kind}: {err}"
        );
    }
}
