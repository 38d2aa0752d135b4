//! Golden-file tests of the examples, run through `runnel run` as an author
//! would: `examples/<name>/testdata/` holds the input, the arguments, and the
//! expected stdout and stderr. `RUNNEL_BLESS=1 cargo test` rewrites the
//! expectations from the current output.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::path::{Path, PathBuf};

use clap::Parser;
use runnel_host::cli::run::{RunArgs, run};
use runnel_tests::guests;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RunArgs,
}

fn golden(example: &str, module: &str, input: &str, expected_code: u8) {
    golden_with(example, module, input, expected_code, &[]);
}

/// `golden`, with arguments the `args` file cannot hold (paths, which
/// resolve from the test's folder).
fn golden_with(example: &str, module: &str, input: &str, expected_code: u8, more: &[String]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data: PathBuf = root.join("examples").join(example).join("testdata");
    let extra = std::fs::read_to_string(data.join("args")).unwrap_or_default();
    let input_path = data.join(input);
    let mut argv = vec![
        "runnel-run".to_owned(),
        module.to_owned(),
        "--no-cache".to_owned(),
    ];
    argv.extend(["--input".to_owned(), input_path.display().to_string()]);
    argv.extend(extra.split_whitespace().map(str::to_owned));
    argv.extend(more.iter().cloned());
    let cli = Cli::try_parse_from(&argv).expect("valid arguments");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(&cli.args, &mut std::io::empty(), &mut out, &mut err);
    let (out, err) = (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    );
    if std::env::var_os("RUNNEL_BLESS").is_some() {
        std::fs::write(data.join("expected.jsonl"), &out).unwrap();
        std::fs::write(data.join("expected.stderr"), &err).unwrap();
    }
    let expected_out = std::fs::read_to_string(data.join("expected.jsonl")).unwrap();
    let expected_err = std::fs::read_to_string(data.join("expected.stderr")).unwrap();
    assert_eq!(
        out, expected_out,
        "stdout of {example} differs from expected.jsonl"
    );
    assert_eq!(
        err, expected_err,
        "stderr of {example} differs from expected.stderr"
    );
    assert_eq!(code, expected_code, "exit code of {example}: {err}");
}

#[test]
fn threshold_filter() {
    golden(
        "threshold-filter",
        guests::THRESHOLD_FILTER,
        "input.jsonl",
        4,
    );
}

#[test]
fn airline_csv() {
    golden("airline-csv", guests::AIRLINE_CSV, "input.csv", 4);
}

#[test]
fn running_count() {
    golden("running-count", guests::RUNNING_COUNT, "input.jsonl", 4);
}

#[test]
fn dedupe() {
    golden("dedupe", guests::DEDUPE, "input.jsonl", 4);
}

/// The flight-delay scorer with model v1 over flights in CSV lines (and a
/// JSON one), the header line and malformed lines among them. Its Python
/// twin passes the same files (`tests/tests/python.rs`).
#[test]
fn flight_delay() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/flight-delay/model/flight-delay-v1.json");
    golden_with(
        "flight-delay",
        guests::FLIGHT_DELAY,
        "input.csv",
        4,
        &["--model".to_owned(), model.display().to_string()],
    );
}
