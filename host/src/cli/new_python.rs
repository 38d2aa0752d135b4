//! `runnel new KIND NAME --lang python`: a Python function, the twin of the
//! Rust crate `runnel new` writes. It does the same thing, so it shares the
//! Rust crate's golden test data (`testdata/`): `app.py` (the function),
//! `test_app.py` (unit tests that CPython runs natively), and a README.

use std::path::Path;

use super::new::{
    FILTER_EXPECTED, FILTER_INPUT, Kind, MAP_EXPECTED, MAP_INPUT, SCORER_EXPECTED, SCORER_INPUT,
    SCORER_MODEL, describe, golden_command,
};

/// The component `runnel build` writes for the function `name`.
pub fn wasm(name: &str) -> String {
    format!("target/{name}.wasm")
}

/// The function's files: (path in its folder, contents). `sdk` is the
/// `guest-sdk` folder; its `python` folder is the SDK the tests import.
pub fn files(kind: Kind, name: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    let python_sdk = sdk.join("python").display().to_string();
    let (app, test, input, expected) = match kind {
        Kind::Filter => (FILTER, FILTER_TEST, FILTER_INPUT, FILTER_EXPECTED),
        Kind::Map => (MAP, MAP_TEST, MAP_INPUT, MAP_EXPECTED),
        Kind::Scorer => (SCORER, SCORER_TEST, SCORER_INPUT, SCORER_EXPECTED),
    };
    // A Python string literal of the SDK's path.
    let sdk_literal = serde_json::Value::String(python_sdk).to_string();
    let mut files = vec![
        ("app.py", app.replace("{name}", name)),
        (
            "test_app.py",
            TEST_PRELUDE.replace("{sdk}", &sdk_literal) + test,
        ),
        (".gitignore", "/target\n__pycache__/\n".to_owned()),
        ("testdata/input.jsonl", input.to_owned()),
        ("testdata/expected.jsonl", expected.to_owned()),
        ("README.md", readme(kind, name)),
    ];
    if kind == Kind::Scorer {
        files.push(("testdata/model.txt", SCORER_MODEL.to_owned()));
    }
    files
}

fn readme(kind: Kind, name: &str) -> String {
    let wasm = wasm(name);
    let golden = golden_command(kind, &wasm);
    let (what, model, config) = describe(kind);
    format!(
        r##"# {name}

A runnel function in Python, {what}. The function is in `app.py`; the
SDK's reference is the docstring of `runnel/__init__.py` in runnel's
`guest-sdk/python`.

## Build

```sh
runnel build                                    # writes {wasm}
```

The first build installs componentize-py (pinned by runnel) into a virtual
environment of runnel's own, `~/.cache/runnel-tools/`. The component embeds
CPython: it is about 18 MB, and a node compiles it once (a few seconds)
and then loads it from its cache. Only the standard library is there:
modules of your own go beside `app.py`.

## Test

```sh
python3 -m unittest                             # the unit tests, natively
{golden}
```

The second command runs the component over `testdata/input.jsonl` and
compares its outputs and errors with `testdata/expected.jsonl`; it exits 5
with a diff when they differ. After a change you meant, add `--bless` to
write the new expectation, and read its diff before you commit it.

State that must last between records lives on the object your class makes
(or at module level): it is made once per instance.

## Deploy

```sh
runnel dev                                      # an embedded broker and a node; admin API on 127.0.0.1:7070
runnel deploy {wasm} --name {name}{model}{config} --input in --output out
runnel produce --brokers 127.0.0.1:9092 --topic in --input testdata/input.jsonl
runnel consume --brokers 127.0.0.1:9092 --topic out
```

A Python instance has about 13 MiB of linear memory after `init` (CPython
and its heap), within the default limit of 128 MiB per instance; a function
that keeps more (a large model) needs a higher one, `--memory-mib`.
"##
    )
}

const TEST_PRELUDE: &str = r##""""Unit tests, run natively by CPython: python3 -m unittest"""

import os
import sys
import unittest

# The runnel SDK of the checkout that wrote this function (or RUNNEL_SDK_PYTHON).
sys.path.insert(0, os.environ.get("RUNNEL_SDK_PYTHON", {sdk}))

import runnel  # noqa: E402

import app  # noqa: E402

"##;

const FILTER: &str = r##""""{name}: a filter. It keeps the records whose value contains a word:
`error`, unless the config says otherwise (`--config word=...`)."""

import runnel


@runnel.filter
class Keep:
    def __init__(self, config: runnel.Config):
        """Runs once per instance; an exception here refuses the deployment."""
        self.word = config.get("word", "error")
        if not self.word:
            raise runnel.ConfigError("config `word` is empty: give the word to keep records by")

    def filter(self, record: runnel.Record) -> bool:
        """A RecordError sends the record to the dead-letter topic; the stream goes on.
        Any other exception is a bug: the call traps, with its traceback."""
        if record.value is None:
            raise runnel.RecordError("the record has no value")
        return self.word in record.value_str()
"##;

const FILTER_TEST: &str = r##"
class KeepTest(unittest.TestCase):
    def test_keeps_the_records_with_the_word(self):
        keep = app.Keep(runnel.Config())
        self.assertTrue(keep.filter(runnel.Record.of(value="disk error")))
        self.assertFalse(keep.filter(runnel.Record.of(value="all good")))
        warn = app.Keep(runnel.Config(word="warn"))
        self.assertTrue(warn.filter(runnel.Record.of(value="warn: hot")))
        with self.assertRaises(runnel.RecordError):
            keep.filter(runnel.Record.of())


if __name__ == "__main__":
    unittest.main()
"##;

const MAP: &str = r##""""{name}: a map. Each record becomes one record per word of its value,
keyed like it; a record without a value is an error."""

import runnel


@runnel.map
def words(record: runnel.Record) -> list[runnel.Output]:
    """A RecordError sends the record to the dead-letter topic; the stream goes on."""
    if record.value is None:
        raise runnel.RecordError("the record has no value")
    return [runnel.Output(word, key=record.key) for word in record.value_str().split()]
"##;

const MAP_TEST: &str = r##"
class WordsTest(unittest.TestCase):
    def test_one_record_per_word(self):
        out = app.words(runnel.Record.of(value="to be", key="k"))
        self.assertEqual([o.value for o in out], [b"to", b"be"])
        self.assertEqual(bytes(out[0].key), b"k")
        self.assertEqual(app.words(runnel.Record.of(value="")), [])


if __name__ == "__main__":
    unittest.main()
"##;

const SCORER: &str = r##""""{name}: a scorer. Its model is a text file of `WORD WEIGHT` lines;
each record's score is the sum of the weights of the words of its value,
written as JSON: `{"score": 2.5, "words": 4}`."""

import runnel


@runnel.scorer
class Weights:
    def __init__(self, config: runnel.Config, model: bytes):
        """Loads the model, once per instance and again when the model is
        swapped; an exception here refuses the deployment (or the new model)."""
        try:
            text = model.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the model is not UTF-8 text") from None
        self.weights = {}
        for i, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise ValueError(f"model line {i}: expected `WORD WEIGHT`, got {line!r}")
            try:
                self.weights[parts[0].lower()] = float(parts[1])
            except ValueError:
                raise ValueError(f"model line {i}: weight {parts[1].strip()!r}") from None
        if not self.weights:
            raise ValueError("the model has no `WORD WEIGHT` line")

    def score(self, record: runnel.Record) -> runnel.Output:
        """A RecordError sends the record to the dead-letter topic; the stream goes on."""
        if record.value is None:
            raise runnel.RecordError("the record has no value")
        words = [w.lower() for w in record.value_str().split()]
        score = 0.0
        for w in words:
            if w in self.weights:
                score += self.weights[w]
        return runnel.Output.json({"score": score, "words": len(words)}, key=record.key)
"##;

const SCORER_TEST: &str = r##"
class WeightsTest(unittest.TestCase):
    def test_sums_the_weights_of_known_words(self):
        scorer = app.Weights(runnel.Config(), b"late 2\nstorm 0.5\n")
        out = scorer.score(runnel.Record.of(value="Storm and LATE"))
        self.assertEqual(out.value, b'{"score":2.5,"words":3}')
        with self.assertRaises(ValueError):
            app.Weights(runnel.Config(), b"late two")


if __name__ == "__main__":
    unittest.main()
"##;
