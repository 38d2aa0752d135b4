//! `runnel run`: a function over records from a file or stdin, without Kafka.
//!
//! It is the author's test harness: the same engine, limits and trap handling
//! as a node, with records read from JSON lines (or one raw value per line)
//! and outputs written as JSON lines. With `--expect FILE` it is a golden
//! test: the outputs and the errors, in input order, are compared with FILE.
//! A processor gets its declared stores (`--store NAME`) in memory, one
//! state per input partition, or on disk with `--state-dir DIR`.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every record was processed without error |
//! | 1 | runnel could not run (unreadable module, model or input file, broken output) |
//! | 2 | the command line is wrong |
//! | 3 | the module was refused: not a component, unknown world, over a limit, or its `init` failed |
//! | 4 | some records failed (a malformed input line, an error the function returned, or a trap); the others were processed |
//! | 5 | `--expect FILE`: the outputs and errors differ from FILE (a diff is on stderr) |

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use runnel_abi::{BatchBuilder, BatchRef, Frame, RecordRef};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::engine::{Engine, EngineConfig, Limits, Outcome, Worker, World, default_cache_dir};
use crate::state::disk::DiskBackend;
use crate::state::memory::MemoryBackend;
use crate::state::{Backend, State, StateLimits};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_RECORDS_FAILED: u8 = 4;
pub const EXIT_UNEXPECTED: u8 = 5;

/// How input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line: `{"key": .., "value": .., "headers": {..}}`.
    /// `value` (and `key`) is a string taken as UTF-8 bytes, or any other JSON
    /// value taken as its compact text; `value_base64` / `key_base64` carry
    /// binary. Optional: `partition`, `offset`, `timestamp_ms`. The output of
    /// `runnel run` is valid input, so functions chain with a pipe.
    Jsonl,
    /// Each line is one record's value, with no key.
    Lines,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The function: a WebAssembly component (`.wasm`) built with runnel-sdk.
    pub module: PathBuf,
    /// The model artifact given to a scorer's `init`.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// A config entry for the function's `init`; repeat for more.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub config: Vec<(String, String)>,
    /// Where to read records from; `-` is stdin.
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub input: String,
    /// How input lines are read.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Records per call into the function.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Memory limit of the function's instance, in MiB.
    #[arg(long, default_value_t = 128, value_name = "MIB")]
    pub memory_mib: u64,
    /// Time limit of one call into the function, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Neither read nor write the compiled-module cache.
    #[arg(long)]
    pub no_cache: bool,
    /// The largest module to take, in MiB (as a node's `--max-module-mib`).
    #[arg(long, value_name = "MIB", default_value_t = super::node::MAX_MODULE_MIB,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_module_mib: u64,
    /// Compare the outputs and errors with this file instead of printing
    /// them, and exit 5 with a diff when they differ. The file holds, in
    /// input order, each output as `runnel run` prints it and each failed
    /// record as `{"line": N, "error": "message"}`, one JSON value a line.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// With `--expect FILE`: write FILE from this run instead of comparing.
    #[arg(long, requires = "expect")]
    pub bless: bool,
    /// A state store the processor uses; repeat for more. A processor
    /// that opens a store not declared here gets an error.
    #[arg(long = "store", value_name = "NAME")]
    pub stores: Vec<String>,
    /// Keep a processor's state on disk in DIR (one file per partition,
    /// under `<DIR>/<module name>/input/`), so that the next run starts
    /// from it. Without it, state is kept in memory and forgotten at exit.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// One input line in `jsonl` format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    /// Written by `runnel run` on its outputs; ignored, so that runs chain.
    #[serde(default, rename = "line")]
    _line: Option<u64>,
    key: Option<Value>,
    key_base64: Option<String>,
    value: Option<Value>,
    value_base64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    partition: Option<i32>,
    offset: Option<i64>,
    timestamp_ms: Option<i64>,
}

/// An input record, owned, with the line it came from.
#[derive(Debug)]
pub(crate) struct Input {
    pub(crate) line: usize,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

fn bytes_of(
    text: Option<Value>,
    b64: Option<String>,
    what: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(format!("give `{what}` or `{what}_base64`, not both")),
        (Some(Value::Null), None) | (None, None) => Ok(None),
        (Some(Value::String(s)), None) => Ok(Some(s.into_bytes())),
        (Some(other), None) => Ok(Some(other.to_string().into_bytes())),
        (None, Some(b)) => BASE64
            .decode(b)
            .map(Some)
            .map_err(|e| format!("`{what}_base64` is not base64: {e}")),
    }
}

pub(crate) fn parse_line(format: Format, line_no: usize, text: &str) -> Result<Input, String> {
    let offset = line_no as i64 - 1;
    match format {
        Format::Lines => Ok(Input {
            line: line_no,
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            value: Some(text.as_bytes().to_vec()),
            headers: Vec::new(),
        }),
        Format::Jsonl => {
            let l: InputLine =
                serde_json::from_str(text).map_err(|e| format!("not a JSON record: {e}"))?;
            Ok(Input {
                line: line_no,
                partition: l.partition.unwrap_or(0),
                offset: l.offset.unwrap_or(offset),
                timestamp_ms: l.timestamp_ms,
                key: bytes_of(l.key, l.key_base64, "key")?,
                value: bytes_of(l.value, l.value_base64, "value")?,
                headers: l
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, v.map(String::into_bytes)))
                    .collect(),
            })
        }
    }
}

/// A record as one JSON line of output.
pub(crate) fn output_json(line: usize, r: &RecordRef<'_>) -> Value {
    let mut o = Map::new();
    o.insert("line".into(), json!(line));
    bytes_json(&mut o, "key", r.key());
    bytes_json(&mut o, "value", r.value());
    if r.header_count() > 0 {
        let headers: Map<String, Value> = r
            .headers()
            .map_while(Result::ok)
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    v.map_or(Value::Null, |v| String::from_utf8_lossy(v).into()),
                )
            })
            .collect();
        o.insert("headers".into(), Value::Object(headers));
    }
    if let Some(ts) = r.timestamp_ms() {
        o.insert("timestamp_ms".into(), json!(ts));
    }
    Value::Object(o)
}

fn bytes_json(o: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    match bytes.map(std::str::from_utf8) {
        None => {}
        Some(Ok(s)) => {
            o.insert(name.into(), Value::String(s.to_owned()));
        }
        Some(Err(_)) => {
            o.insert(
                format!("{name}_base64"),
                Value::String(BASE64.encode(bytes.unwrap_or_default())),
            );
        }
    }
}

/// Counts for the closing summary.
#[derive(Debug, Default)]
struct Tally {
    records: u64,
    outputs: u64,
    dropped: u64,
    failed: u64,
}

/// Runs `runnel run`, reading `input` (when `args.input` is `-`) and writing
/// outputs to `out` and errors to `err`. Returns the exit code.
pub fn run(
    args: &RunArgs,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match run_inner(args, stdin, out, err) {
        Ok(code) => code,
        Err((code, message)) => {
            let _ = writeln!(err, "error: {message}");
            code
        }
    }
}

fn run_inner(
    args: &RunArgs,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, (u8, String)> {
    let fail = |code: u8| move |e: String| (code, e);
    let bytes = std::fs::read(&args.module).map_err(|e| {
        (
            EXIT_FAILURE,
            format!("cannot read {}: {e}", args.module.display()),
        )
    })?;
    let engine = Engine::new(EngineConfig {
        cache_dir: (!args.no_cache).then(default_cache_dir).flatten(),
        max_instances: 16,
        max_module_bytes: usize::try_from(args.max_module_mib << 20).unwrap_or(usize::MAX),
        ..EngineConfig::default()
    })
    .map_err(|e| (EXIT_FAILURE, e.to_string()))?;
    let name = args
        .module
        .file_stem()
        .map_or("function".into(), |s| s.to_string_lossy().into_owned());
    let module = engine.load(&name, &bytes).map_err(|e| {
        (
            EXIT_REFUSED,
            format!("{} was refused: {e}", args.module.display()),
        )
    })?;
    let model: Option<Arc<[u8]>> = match (&args.model, module.world()) {
        (Some(path), World::Scorer) => Some(
            std::fs::read(path)
                .map_err(|e| {
                    (
                        EXIT_FAILURE,
                        format!("cannot read the model {}: {e}", path.display()),
                    )
                })?
                .into(),
        ),
        (Some(_), world) => {
            return Err((
                EXIT_REFUSED,
                format!(
                    "--model is for scorers, and {} is a {world}",
                    args.module.display()
                ),
            ));
        }
        (None, _) => None,
    };
    let limits = Limits {
        memory_bytes: args.memory_mib << 20,
        call_timeout: Duration::from_millis(args.timeout_ms),
        ..Limits::default()
    };
    let world = module.world();
    let mut worker = Worker::new(Arc::new(module), limits, args.config.clone(), model)
        .map_err(|e| (EXIT_REFUSED, e.to_string()))?;
    if world == World::Processor {
        worker = worker.with_state(state(args, &name)?);
    } else if !args.stores.is_empty() || args.state_dir.is_some() {
        return Err((
            EXIT_REFUSED,
            format!(
                "--store and --state-dir are for processors, and {} is a {world}",
                args.module.display()
            ),
        ));
    }

    let mut file_reader;
    let reader: &mut dyn BufRead = if args.input == "-" {
        stdin
    } else {
        let file = std::fs::File::open(&args.input)
            .map_err(|e| (EXIT_FAILURE, format!("cannot read {}: {e}", args.input)))?;
        file_reader = std::io::BufReader::new(file);
        &mut file_reader
    };

    let mut tally = Tally::default();
    // Lines that did not parse stay in line order with the records, so that
    // errors are reported in the order of the input.
    let mut pending: Vec<Result<Input, (usize, String)>> =
        Vec::with_capacity(args.batch_size as usize);
    let mut batch = BatchBuilder::default();
    let io_err = |e: std::io::Error| (EXIT_FAILURE, format!("cannot write output: {e}"));
    let mut line_no = 0usize;
    let mut text = String::new();
    // With --expect, results are kept as lines to compare instead of printed.
    let mut results: Option<Vec<String>> = args.expect.as_ref().map(|_| Vec::new());
    loop {
        text.clear();
        let n = reader.read_line(&mut text).map_err(|e| {
            (
                EXIT_FAILURE,
                format!("cannot read input line {}: {e}", line_no + 1),
            )
        })?;
        let eof = n == 0;
        if !eof {
            line_no += 1;
            let line = text.trim_end_matches(['\n', '\r']);
            if !line.trim().is_empty() {
                pending.push(parse_line(args.format, line_no, line).map_err(|e| (line_no, e)));
            }
        }
        if pending.len() >= args.batch_size as usize || (eof && !pending.is_empty()) {
            let sink = match results.as_mut() {
                Some(lines) => Sink::Collect(lines),
                None => Sink::Print {
                    out: &mut *out,
                    err: &mut *err,
                },
            };
            run_batch(&mut worker, &mut batch, &pending, &mut tally, sink)
                .map_err(fail(EXIT_REFUSED))?;
            pending.clear();
        }
        if eof {
            break;
        }
    }
    out.flush().map_err(io_err)?;
    let stats = worker.stats();
    writeln!(
        err,
        "{} records: {} outputs, {} dropped, {} failed ({} traps, {} batches)",
        tally.records, tally.outputs, tally.dropped, tally.failed, stats.traps, stats.batches
    )
    .map_err(io_err)?;
    if let (Some(path), Some(got)) = (&args.expect, &results) {
        return expect(path, got, args.bless, err);
    }
    Ok(if tally.failed > 0 {
        EXIT_RECORDS_FAILED
    } else {
        EXIT_OK
    })
}

/// A processor's state: in memory, or on disk under `--state-dir`. Input
/// records are read as if from one topic, named `input`.
fn state(args: &RunArgs, name: &str) -> Result<State, (u8, String)> {
    let backend: Box<dyn Backend> = match &args.state_dir {
        None => Box::new(MemoryBackend),
        Some(dir) => Box::new(
            DiskBackend::for_deployment(dir, name, "input")
                .map_err(|e| (EXIT_FAILURE, e.to_string()))?,
        ),
    };
    State::new("input", &args.stores, backend, StateLimits::default())
        .map_err(|e| (EXIT_REFUSED, format!("--store: {e}")))
}

/// `--expect FILE`: compares `got` with FILE (or writes it, with `--bless`).
fn expect(
    path: &Path,
    got: &[String],
    bless: bool,
    err: &mut dyn Write,
) -> Result<u8, (u8, String)> {
    let io_err = |e: std::io::Error| (EXIT_FAILURE, format!("cannot write output: {e}"));
    if bless {
        let mut text = got.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| {
            (
                EXIT_FAILURE,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        writeln!(err, "wrote {} lines to {}", got.len(), path.display()).map_err(io_err)?;
        return Ok(EXIT_OK);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            EXIT_FAILURE,
            format!(
                "cannot read the expected results {}: {e} (--bless writes it from this run)",
                path.display()
            ),
        )
    })?;
    let expected: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let diff = diff_lines(&expected, got);
    if diff.is_empty() {
        writeln!(err, "the results match {}", path.display()).map_err(io_err)?;
        return Ok(EXIT_OK);
    }
    writeln!(
        err,
        "the results differ from {} (- expected, + this run; line numbers of each):",
        path.display()
    )
    .map_err(io_err)?;
    const SHOWN: usize = 40;
    for d in diff.iter().take(SHOWN) {
        writeln!(err, "{d}").map_err(io_err)?;
    }
    if diff.len() > SHOWN {
        writeln!(err, "... and {} more lines", diff.len() - SHOWN).map_err(io_err)?;
    }
    writeln!(
        err,
        "(if this run is right, --bless writes it to {})",
        path.display()
    )
    .map_err(io_err)?;
    Ok(EXIT_UNEXPECTED)
}

/// Two lines are the same result when they are equal as JSON (key order and
/// spacing aside), or as text when either is not JSON.
fn same(expected: &str, got: &str) -> bool {
    match (
        serde_json::from_str::<Value>(expected),
        serde_json::from_str::<Value>(got),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => expected == got,
    }
}

/// The lines that differ, `-N: line` for an expected line (N: its line in
/// the file) and `+N: line` for a result (N: its position), along a longest
/// common subsequence; position by position when both are long.
fn diff_lines(expected: &[(usize, &str)], got: &[String]) -> Vec<String> {
    let (n, m) = (expected.len(), got.len());
    let mut out = Vec::new();
    if n.saturating_mul(m) > 4_000_000 {
        for i in 0..n.max(m) {
            match (expected.get(i), got.get(i)) {
                (Some((_, e)), Some(g)) if same(e, g) => {}
                (e, g) => {
                    if let Some((no, e)) = e {
                        out.push(format!("-{no}: {e}"));
                    }
                    if let Some(g) = g {
                        out.push(format!("+{}: {g}", i + 1));
                    }
                }
            }
        }
        return out;
    }
    // lcs[i][j]: the longest common subsequence of expected[i..] and got[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if same(expected[i].1, &got[j]) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && same(expected[i].1, &got[j]) {
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{}: {}", expected[i].0, expected[i].1));
            i += 1;
        } else {
            out.push(format!("+{}: {}", j + 1, got[j]));
            j += 1;
        }
    }
    out
}

/// Where a batch's results go: printed (outputs on stdout, errors on
/// stderr), or collected as lines for `--expect`.
enum Sink<'a> {
    Print {
        out: &'a mut dyn Write,
        err: &'a mut dyn Write,
    },
    Collect(&'a mut Vec<String>),
}

impl Sink<'_> {
    fn output(&mut self, line: &Value) -> std::io::Result<()> {
        match self {
            Sink::Print { out, .. } => writeln!(out, "{line}"),
            Sink::Collect(lines) => {
                lines.push(line.to_string());
                Ok(())
            }
        }
    }

    fn error(&mut self, line: usize, message: &str) -> std::io::Result<()> {
        match self {
            Sink::Print { err, .. } => writeln!(err, "line {line}: {message}"),
            Sink::Collect(lines) => {
                lines.push(json!({ "line": line, "error": message }).to_string());
                Ok(())
            }
        }
    }
}

fn run_batch(
    worker: &mut Worker,
    batch: &mut BatchBuilder,
    pending: &[Result<Input, (usize, String)>],
    tally: &mut Tally,
    mut sink: Sink<'_>,
) -> Result<(), String> {
    let write_err = |e: std::io::Error| format!("cannot write output: {e}");
    let inputs: Vec<&Input> = pending.iter().filter_map(|p| p.as_ref().ok()).collect();
    batch.clear();
    for i in &inputs {
        let headers: Vec<(&str, Option<&[u8]>)> = i
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        batch.push(&Frame {
            partition: i.partition,
            offset: i.offset,
            timestamp_ms: i.timestamp_ms,
            key: i.key.as_deref(),
            value: i.value.as_deref(),
            headers: &headers,
        });
    }
    let processed = if inputs.is_empty() {
        Default::default()
    } else {
        worker.process(batch).map_err(|e| e.to_string())?
    };
    let view = BatchRef::new(batch.data(), batch.index());
    let mut k = 0;
    for entry in pending {
        tally.records += 1;
        let input = match entry {
            Ok(input) => input,
            Err((line, message)) => {
                tally.failed += 1;
                sink.error(*line, message).map_err(write_err)?;
                continue;
            }
        };
        let outcome = &processed.outcomes[k];
        k += 1;
        match outcome {
            Outcome::Keep => {
                let record = view.get(k - 1).map_err(|e| e.to_string())?;
                tally.outputs += 1;
                sink.output(&output_json(input.line, &record))
                    .map_err(write_err)?;
            }
            Outcome::Drop => tally.dropped += 1,
            Outcome::Emit { .. } => {
                for record in processed.outputs_of(k - 1) {
                    tally.outputs += 1;
                    sink.output(&output_json(input.line, &record))
                        .map_err(write_err)?;
                }
            }
            Outcome::Failed { message, .. } => {
                tally.failed += 1;
                sink.error(input.line, message).map_err(write_err)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_take_text_json_and_base64() {
        let i = parse_line(
            Format::Jsonl,
            3,
            r#"{"key":"k","value":{"a":1},"headers":{"h":"v"}}"#,
        )
        .unwrap();
        assert_eq!(
            (i.key.as_deref(), i.value.as_deref(), i.offset),
            (Some(&b"k"[..]), Some(&br#"{"a":1}"#[..]), 2)
        );
        let i = parse_line(
            Format::Jsonl,
            1,
            r#"{"value_base64":"/w==","partition":2,"offset":9}"#,
        )
        .unwrap();
        assert_eq!((i.value, i.partition, i.offset), (Some(vec![0xff]), 2, 9));
        assert!(
            parse_line(Format::Jsonl, 1, r#"{"valu":"x"}"#)
                .unwrap_err()
                .contains("unknown field `valu`")
        );
        assert!(
            parse_line(Format::Jsonl, 1, r#"{"value":"x","value_base64":"eA=="}"#)
                .unwrap_err()
                .contains("not both")
        );
        assert!(
            parse_line(Format::Jsonl, 1, "nope")
                .unwrap_err()
                .starts_with("not a JSON record")
        );
    }

    #[test]
    fn config_entries_need_an_equals_sign() {
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
