//! `runnel run`'s exit codes and messages, in process.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use clap::Parser;
use runnel_host::cli::run::{RunArgs, run};
use runnel_tests::guests;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RunArgs,
}

/// Runs `runnel run ARGS` with `stdin`, returning (exit code, stdout, stderr).
fn runnel(args: &[&str], stdin: &str) -> (u8, String, String) {
    let argv = ["runnel-run", "--no-cache"].iter().chain(args).copied();
    let cli = Cli::try_parse_from(argv).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(&cli.args, &mut stdin.as_bytes(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn all_records_processed_is_exit_0() {
    let (code, out, err) = runnel(&[guests::IDENTITY_FILTER, "--format", "lines"], "a\nb\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "{\"line\":1,\"value\":\"a\"}\n{\"line\":2,\"value\":\"b\"}\n"
    );
    assert_eq!(
        err,
        "2 records: 2 outputs, 0 dropped, 0 failed (0 traps, 1 batches)\n"
    );
}

#[test]
fn a_trapping_record_is_exit_4_and_the_rest_flow() {
    let input = "{\"value\":\"ok\"}\n{\"value\":\"panic\"}\n{\"value\":\"ok2\"}\n";
    let (code, out, err) = runnel(&[guests::HOSTILE], input);
    assert_eq!(code, 4);
    assert_eq!(out.lines().count(), 2);
    assert!(
        err.starts_with("line 2: function `hostile` panicked: "),
        "{err}"
    );
    assert!(
        err.ends_with("3 records: 2 outputs, 0 dropped, 1 failed (2 traps, 1 batches)\n"),
        "{err}"
    );
}

#[test]
fn a_refused_module_is_exit_3() {
    let (code, _, err) = runnel(&[guests::UNKNOWN_WORLD], "");
    assert_eq!(code, 3);
    assert!(err.contains("implements none of runnel's worlds"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").unwrap();
    let (code, _, err) = runnel(&[junk.to_str().unwrap()], "");
    assert_eq!(code, 3);
    assert!(
        err.contains("junk.wasm was refused: not a WebAssembly binary"),
        "{err}"
    );

    let (code, _, err) = runnel(&[guests::THRESHOLD_FILTER], "");
    assert_eq!(code, 3);
    assert_eq!(
        err,
        "error: function `threshold_filter` refused to start: missing config `field` (set it with --config field=...)\n"
    );

    let (code, _, err) = runnel(
        &[guests::IDENTITY_FILTER, "--model", guests::IDENTITY_MAP],
        "",
    );
    assert_eq!(code, 3);
    assert!(err.contains("--model is for scorers"), "{err}");
}

#[test]
fn a_missing_file_is_exit_1() {
    let (code, _, err) = runnel(&["/nonexistent/f.wasm"], "");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: cannot read /nonexistent/f.wasm: "),
        "{err}"
    );
    let (code, _, err) = runnel(
        &[guests::IDENTITY_FILTER, "--input", "/nonexistent/in.jsonl"],
        "",
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: cannot read /nonexistent/in.jsonl: "),
        "{err}"
    );
}

#[test]
fn a_scorer_reads_its_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.txt");
    std::fs::write(&model, "p=").unwrap();
    let (code, out, err) = runnel(
        &[guests::ECHO_SCORER, "--model", model.to_str().unwrap()],
        "{\"key\":\"k\",\"value\":\"v\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "{\"line\":1,\"key\":\"k\",\"value\":\"p=v\",\"headers\":{\"scored-by\":\"echo\"}}\n"
    );
}

#[test]
fn a_processors_state_is_kept_in_a_state_dir_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_str().unwrap();
    let input = "{\"key\":\"a\",\"value\":\"x\"}\n{\"key\":\"a\",\"value\":\"x\"}\n";
    let args = [
        guests::RUNNING_COUNT,
        "--store",
        "counts",
        "--state-dir",
        state_dir,
    ];
    let (code, out, err) = runnel(&args, input);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\"value\":\"2\"}\n"), "{out}");
    let (code, out, err) = runnel(&args, input);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\"value\":\"4\"}\n"), "{out}");
    // Without --state-dir, each run starts empty.
    let (_, out, _) = runnel(&args[..3], input);
    assert!(out.ends_with("\"value\":\"2\"}\n"), "{out}");
}

#[test]
fn store_flags_are_for_processors_only() {
    let (code, _, err) = runnel(&[guests::IDENTITY_FILTER, "--store", "counts"], "");
    assert_eq!(code, 3);
    assert!(
        err.contains("--store and --state-dir are for processors"),
        "{err}"
    );
}
