//! `runnel new filter|map|scorer NAME [--lang python]`: a new function that
//! builds as it is written (`runnel build`), with a unit test, golden test
//! data that `runnel run --expect` checks, and a README saying how to run,
//! test and deploy it. Rust is written here; Python in `new_python`.
//!
//! The SDK is not published, so the function depends on it by path: the
//! SDK of the checkout this binary was built from, or `--sdk PATH`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::build::Lang;

/// The SDK of the checkout this binary was built from: `guest-sdk` beside
/// the `host` crate.
pub fn built_sdk() -> PathBuf {
    let host = Path::new(env!("CARGO_MANIFEST_DIR"));
    host.parent().unwrap_or(host).join("guest-sdk")
}

/// The kind of function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Keeps or drops each record (`#[runnel_sdk::filter]`).
    Filter,
    /// Turns each record into zero or more records (`#[runnel_sdk::map]`).
    Map,
    /// Scores each record with a model artifact (`#[runnel_sdk::scorer]`).
    Scorer,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NewArgs {
    /// What the function does with each record.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The crate's name: letters, digits, '-' and '_', starting with a letter.
    pub name: String,
    /// The runnel SDK to depend on: the `guest-sdk` folder of a runnel
    /// checkout. Default: the one of the checkout this runnel was built from.
    #[arg(long, env = "RUNNEL_SDK", value_name = "PATH")]
    pub sdk: Option<PathBuf>,
    /// The folder to write the crate to; default: `./NAME`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The language to write the function in.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
}

/// Writes the crate; returns what to tell the author.
pub fn new(args: &NewArgs) -> anyhow::Result<String> {
    check_name(&args.name)?;
    let sdk = sdk_path(args.sdk.as_deref(), &built_sdk())?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(
            "{} already exists and is not empty: choose another name, or another folder with --dir",
            dir.display()
        );
    }
    let files = match args.lang {
        Lang::Rust => files(args.kind, &args.name, &sdk),
        Lang::Python => super::new_python::files(args.kind, &args.name, &sdk),
    };
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot make the folder {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut said = format!(
        "created the {} {} in {} (runnel SDK from {})\n",
        kind_name(args.kind),
        args.name,
        dir.display(),
        sdk.display()
    );
    let _ = match args.lang {
        Lang::Rust => writeln!(
            said,
            "next: cd {} && runnel build && {}",
            dir.display(),
            golden_command(args.kind, &wasm(&args.name))
        ),
        Lang::Python => writeln!(
            said,
            "next: cd {} && python3 -m unittest && runnel build && {}",
            dir.display(),
            golden_command(args.kind, &super::new_python::wasm(&args.name))
        ),
    };
    Ok(said)
}

pub(super) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Filter => "filter",
        Kind::Map => "map",
        Kind::Scorer => "scorer",
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        && name.len() <= 64;
    anyhow::ensure!(
        ok,
        "{name:?} cannot name a crate: use up to 64 letters, digits, '-' or '_', starting with a letter"
    );
    Ok(())
}

/// The SDK folder to depend on, absolute: `given`, or `built` (the SDK of
/// the checkout this binary came from) when none is given.
pub fn sdk_path(given: Option<&Path>, built: &Path) -> anyhow::Result<PathBuf> {
    let path = given.unwrap_or(built);
    let manifest = std::fs::read_to_string(path.join("Cargo.toml")).unwrap_or_default();
    if !manifest.contains("name = \"runnel-sdk\"") {
        match given {
            Some(p) => anyhow::bail!(
                "{} is not the runnel SDK (it has no Cargo.toml of runnel-sdk): give the guest-sdk folder of a runnel checkout with --sdk PATH",
                p.display()
            ),
            None => anyhow::bail!(
                "the runnel SDK of the checkout this runnel was built from is gone ({}): give the guest-sdk folder of a runnel checkout with --sdk PATH (or RUNNEL_SDK)",
                built.display()
            ),
        }
    }
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// The `.wasm` that `cargo build` writes for crate `name`.
fn wasm(name: &str) -> String {
    format!(
        "target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    )
}

/// The golden check of the function whose component is `wasm`, from its folder.
pub(super) fn golden_command(kind: Kind, wasm: &str) -> String {
    let model = match kind {
        Kind::Scorer => " --model testdata/model.txt",
        _ => "",
    };
    format!(
        "runnel run {wasm}{model} --input testdata/input.jsonl --expect testdata/expected.jsonl"
    )
}

/// The crate's files: (path in the crate, contents).
fn files(kind: Kind, name: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    // A TOML basic string: the path quoted, backslashes and quotes escaped.
    let sdk_toml = toml::Value::String(sdk.display().to_string()).to_string();
    // The scorer writes JSON; the others need nothing else.
    let json = match kind {
        Kind::Scorer => "serde_json = \"1\"\n",
        _ => "",
    };
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A cdylib is the component runnel runs; the rlib lets `cargo test` run the
# unit tests natively.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
# runnel-sdk is not on crates.io: it comes from a runnel checkout.
runnel-sdk = {{ path = {sdk_toml} }}
{json}
[profile.release]
lto = true
codegen-units = 1
strip = "debuginfo"

# A crate of its own, even inside another workspace's folder.
[workspace]
"#
    );
    let (lib, input, expected) = match kind {
        Kind::Filter => (FILTER, FILTER_INPUT, FILTER_EXPECTED),
        Kind::Map => (MAP, MAP_INPUT, MAP_EXPECTED),
        Kind::Scorer => (SCORER, SCORER_INPUT, SCORER_EXPECTED),
    };
    let mut files = vec![
        ("Cargo.toml", cargo),
        (".gitignore", "/target\n".to_owned()),
        ("src/lib.rs", lib.replace("{name}", name)),
        ("testdata/input.jsonl", input.to_owned()),
        ("testdata/expected.jsonl", expected.to_owned()),
        ("README.md", readme(kind, name)),
    ];
    if kind == Kind::Scorer {
        files.push(("testdata/model.txt", SCORER_MODEL.to_owned()));
    }
    files
}

/// What the scaffolded function does (for its README), and the
/// `--model` and `--config` arguments its deploy command needs.
pub(super) fn describe(kind: Kind) -> (&'static str, &'static str, &'static str) {
    match kind {
        Kind::Filter => (
            "a filter: it keeps the records whose value contains a word (`error` unless `--config word=...` says otherwise)",
            "",
            " --config word=error",
        ),
        Kind::Map => (
            "a map: each record becomes one record per word of its value, keyed like it",
            "",
            "",
        ),
        Kind::Scorer => (
            "a scorer: its model (`testdata/model.txt`) gives words a weight, and each record's score is the sum of the weights of its words",
            " --model testdata/model.txt",
            "",
        ),
    }
}

fn readme(kind: Kind, name: &str) -> String {
    let wasm = wasm(name);
    let golden = golden_command(kind, &wasm);
    let (what, model, config) = describe(kind);
    format!(
        r#"# {name}

A runnel function, {what}. The function is in `src/lib.rs`.

## Build

```sh
cargo build --release --target wasm32-wasip2    # writes {wasm}
```

## Test

```sh
cargo test                                      # the unit tests, natively
{golden}
```

The second command runs the component over `testdata/input.jsonl` and
compares its outputs and errors with `testdata/expected.jsonl`; it exits 5
with a diff when they differ. After a change you meant, add `--bless` to
write the new expectation, and read its diff before you commit it. To see
the outputs themselves, leave out `--expect ...`.

## Deploy

```sh
runnel dev                                      # an embedded broker and a node; admin API on 127.0.0.1:7070
runnel deploy {wasm} --name {name}{model}{config} --input in --output out
runnel produce --brokers 127.0.0.1:9092 --topic in --input testdata/input.jsonl
runnel consume --brokers 127.0.0.1:9092 --topic out
```

A `runnel dev` node creates the topics a deployment names (`in`, `out`
and the dead-letter topic `out.dlq`); on a cluster, create them first with
`runnel topic create NAME --brokers HOST:PORT`.
"#
    )
}

const FILTER: &str = r##"//! {name}: a filter. It keeps the records whose value contains a word:
//! `error`, unless the config says otherwise (`--config word=...`).

use runnel_sdk::{Config, Filter, Record, Result, bail};

pub struct Keep {
    word: String,
}

#[runnel_sdk::filter]
impl Filter for Keep {
    /// Runs once per instance; an error here refuses the deployment.
    fn new(config: &Config) -> Result<Self> {
        let word = config.get("word").unwrap_or("error");
        if word.is_empty() {
            bail!("config `word` is empty: give the word to keep records by");
        }
        Ok(Keep {
            word: word.to_owned(),
        })
    }

    /// An `Err` sends the record to the dead-letter topic; the stream goes on.
    fn filter(&mut self, record: &Record) -> Result<bool> {
        if record.value().is_none() {
            bail!("the record has no value");
        }
        Ok(record.value_str()?.contains(&self.word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_sdk::testing::TestRecord;

    #[test]
    fn keeps_the_records_with_the_word() {
        let mut keep = Keep::new(&Config::new(vec![])).unwrap();
        assert!(keep.filter(&TestRecord::value("disk error").view()).unwrap());
        assert!(!keep.filter(&TestRecord::value("all good").view()).unwrap());
        let mut warn = Keep::new(&Config::new(vec![("word".into(), "warn".into())])).unwrap();
        assert!(warn.filter(&TestRecord::value("warn: hot").view()).unwrap());
    }
}
"##;

pub(super) const FILTER_INPUT: &str = r##"{"key": "a", "value": "disk error on sda"}
{"key": "b", "value": "all good"}
{"key": "c"}
{"key": "d", "value": "error: out of paper"}
"##;

pub(super) const FILTER_EXPECTED: &str = r##"{"line":1,"key":"a","value":"disk error on sda"}
{"line":3,"error":"the record has no value"}
{"line":4,"key":"d","value":"error: out of paper"}
"##;

const MAP: &str = r##"//! {name}: a map. Each record becomes one record per word of its value,
//! keyed like it; a record without a value is an error.

use runnel_sdk::{Output, Record, Result, bail};

/// An `Err` sends the record to the dead-letter topic; the stream goes on.
#[runnel_sdk::map]
fn words(record: &Record) -> Result<Vec<Output>> {
    if record.value().is_none() {
        bail!("the record has no value");
    }
    let words = record.value_str()?.split_whitespace();
    Ok(words
        .map(|w| Output::new(w).with_key_opt(record.key()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_sdk::testing::TestRecord;

    #[test]
    fn one_record_per_word() {
        let out = words(&TestRecord::value("to be").with_key("k").view()).unwrap();
        let values: Vec<&[u8]> = out.iter().filter_map(|o| o.value()).collect();
        assert_eq!(values, [&b"to"[..], &b"be"[..]]);
        assert_eq!(out[0].key(), Some(&b"k"[..]));
        assert!(words(&TestRecord::value("").view()).unwrap().is_empty());
    }
}
"##;

pub(super) const MAP_INPUT: &str = r##"{"key": "q1", "value": "to be or not"}
{"key": "q2"}
{"key": "q3", "value": "   "}
{"key": "q4", "value": "done"}
"##;

pub(super) const MAP_EXPECTED: &str = r##"{"line":1,"key":"q1","value":"to"}
{"line":1,"key":"q1","value":"be"}
{"line":1,"key":"q1","value":"or"}
{"line":1,"key":"q1","value":"not"}
{"line":2,"error":"the record has no value"}
{"line":4,"key":"q4","value":"done"}
"##;

const SCORER: &str = r##"//! {name}: a scorer. Its model is a text file of `WORD WEIGHT` lines;
//! each record's score is the sum of the weights of the words of its value,
//! written as JSON: `{"score": 2.5, "words": 4}`.

use std::collections::HashMap;

use runnel_sdk::{Config, Context, Output, Record, Result, Scorer, bail};

pub struct Weights {
    weights: HashMap<String, f64>,
}

#[runnel_sdk::scorer]
impl Scorer for Weights {
    /// Loads the model, once per instance and again when the model is
    /// swapped; an error here refuses the deployment (or the new model).
    fn new(_config: &Config, model: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(model).context("the model is not UTF-8 text")?;
        let mut weights = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((word, weight)) = line.split_once(char::is_whitespace) else {
                bail!("model line {}: expected `WORD WEIGHT`, got {line:?}", i + 1);
            };
            let weight: f64 = weight
                .trim()
                .parse()
                .with_context(|| format!("model line {}: weight {:?}", i + 1, weight.trim()))?;
            weights.insert(word.to_lowercase(), weight);
        }
        if weights.is_empty() {
            bail!("the model has no `WORD WEIGHT` line");
        }
        Ok(Weights { weights })
    }

    /// An `Err` sends the record to the dead-letter topic; the stream goes on.
    fn score(&mut self, record: &Record) -> Result<Output> {
        if record.value().is_none() {
            bail!("the record has no value");
        }
        let words: Vec<String> = record
            .value_str()?
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        // A fold from 0.0: `sum()` of no f64 is -0.0.
        let score = words
            .iter()
            .filter_map(|w| self.weights.get(w))
            .fold(0.0, |sum, w| sum + w);
        let scored = serde_json::json!({ "score": score, "words": words.len() });
        Ok(Output::json(&scored)?.with_key_opt(record.key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_sdk::testing::TestRecord;

    #[test]
    fn sums_the_weights_of_known_words() {
        let mut scorer = Weights::new(&Config::new(vec![]), b"late 2\nstorm 0.5\n").unwrap();
        let out = scorer.score(&TestRecord::value("Storm and LATE").view()).unwrap();
        assert_eq!(out.value(), Some(&br#"{"score":2.5,"words":3}"#[..]));
        assert!(Weights::new(&Config::new(vec![]), b"late two").is_err());
    }
}
"##;

pub(super) const SCORER_MODEL: &str =
    "# WORD WEIGHT: a record's score is the sum of the weights of its words.
late 2
storm 1.5
snow 1
on-time -1
";

pub(super) const SCORER_INPUT: &str = r##"{"key": "f1", "value": "late after the storm"}
{"key": "f2", "value": "on-time"}
{"key": "f3"}
{"key": "f4", "value": "clear skies"}
"##;

pub(super) const SCORER_EXPECTED: &str = r##"{"line":1,"key":"f1","value":"{\"score\":3.5,\"words\":4}"}
{"line":2,"key":"f2","value":"{\"score\":-1.0,\"words\":1}"}
{"line":3,"error":"the record has no value"}
{"line":4,"key":"f4","value":"{\"score\":0.0,\"words\":2}"}
"##;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for
mod tests {
    use super::*;

    #[test]
    fn a_gone_sdk_is_named_with_how_to_give_one() {
        let gone = Path::new("/nonexistent/runnel/guest-sdk");
        let err = sdk_path(None, gone).unwrap_err().to_string();
        assert_eq!(
            err,
            "the runnel SDK of the checkout this runnel was built from is gone (/nonexistent/runnel/guest-sdk): give the guest-sdk folder of a runnel checkout with --sdk PATH (or RUNNEL_SDK)"
        );
        let err = sdk_path(Some(Path::new("/tmp")), gone)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/tmp is not the runnel SDK"), "{err}");
        let built = sdk_path(None, &built_sdk()).unwrap();
        assert!(
            built.is_absolute() && built.ends_with("guest-sdk"),
            "{built:?}"
        );
    }

    #[test]
    fn names_must_make_a_crate() {
        for bad in ["", "1st", "a b", "a/b", "ünï"] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("cannot name a crate"), "{bad:?}: {err}");
        }
        check_name("my-filter_2").unwrap();
    }
}
