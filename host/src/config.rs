//! `runnel.toml`: the deployments a node runs, declared in a file (for
//! GitOps). Every field has a `///` saying what it does; unknown keys are
//! errors, so a typo is caught instead of ignored.
//!
//! ```toml
//! [[deployment]]
//! name = "delays"
//! module = "examples/target/wasm32-wasip2/release/threshold_filter.wasm"
//! input = ["flights"]
//! output = "delayed-flights"
//! config = { field = "dep_delay", min = "15" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The deployments this node runs.
    #[serde(default, rename = "deployment")]
    pub deployments: Vec<DeploymentSpec>,
}

/// One function bound to its topics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Unique name; the consumer group is `runnel.<name>`.
    pub name: String,
    /// Path of the function's component (`.wasm`), relative to the file.
    pub module: PathBuf,
    /// Path of a scorer's model artifact, relative to the file.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Topics to read.
    pub input: Vec<String>,
    /// Topic to write outputs to, or up to 8 of them (`["ok", "slow"]`):
    /// an output record picks one by name or index, the first by default.
    pub output: Outputs,
    /// Topic for records that failed; default `<first output>.dlq`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Key/value config given to the function's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Memory limit of one instance, in MiB.
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: u64,
    /// Time limit of one call into the function, in milliseconds.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// The most output records one input record may produce; more is a
    /// bug of the function (it traps). Default 10,000.
    #[serde(default = "defaults::max_outputs_per_record")]
    pub max_outputs_per_record: u32,
    /// The most bytes of output records one call may return, in MiB; more
    /// is a bug of the function (it traps). Default 64.
    #[serde(default = "defaults::max_output_mib")]
    pub max_output_mib: u64,
    /// Records per call into the function.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// How long to wait for a batch to fill before running it anyway, in ms.
    #[serde(default = "defaults::linger_ms")]
    pub linger_ms: u64,
    /// Worker threads, each with its own instance, running partitions in
    /// parallel (a partition always runs on the same one, in order).
    /// Default: one per core.
    #[serde(default = "defaults::workers")]
    pub workers: usize,
    /// A processor's named stores (keyed state, see `docs/state.md`).
    #[serde(default)]
    pub stores: Vec<String>,
    /// What each output says of where it came from (`headers`, `compact`
    /// or `none`; see [`Provenance`]).
    #[serde(default)]
    pub provenance: Provenance,
}

/// What each output record says of where it came from. Dead letters always
/// carry the full headers, and `runnel-` headers that an input or a
/// function brings are dropped in every mode: provenance cannot be spoofed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provenance {
    /// `runnel-deployment`, `runnel-version`, `runnel-module` and, for a
    /// scorer, `runnel-model`: one header each.
    #[default]
    Headers,
    /// One header, `runnel-provenance`:
    /// `DEPLOYMENT/VERSION/sha256:MODULE[/sha256:MODEL]`.
    Compact,
    /// No runnel header at all.
    None,
}

impl Provenance {
    pub fn is_default(&self) -> bool {
        *self == Provenance::default()
    }
}

/// The topics a deployment writes to, in order: the first is where an
/// output goes unless it picks another (see `docs/node.md`, "Several
/// outputs"). Written as one topic name when there is one, as a list
/// otherwise; read from either, so that a record stored with a single
/// `output` is a list of one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outputs(Vec<String>);

impl Outputs {
    pub fn new(topics: Vec<String>) -> Self {
        Self(topics)
    }

    /// The default output (empty when there is none, which the checks
    /// refuse).
    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    pub fn topics(&self) -> &[String] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Outputs {
    fn from(topic: &str) -> Self {
        Self(vec![topic.to_owned()])
    }
}

impl From<String> for Outputs {
    fn from(topic: String) -> Self {
        Self(vec![topic])
    }
}

impl From<Vec<String>> for Outputs {
    fn from(topics: Vec<String>) -> Self {
        Self(topics)
    }
}

impl std::fmt::Display for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl Serialize for Outputs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Outputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(String),
            Many(Vec<String>),
        }
        match Either::deserialize(d) {
            Ok(Either::One(t)) => Ok(Self(vec![t])),
            Ok(Either::Many(ts)) => Ok(Self(ts)),
            Err(_) => Err(serde::de::Error::custom(
                "an output is a topic name or a list of 1 to 8 topic names",
            )),
        }
    }
}

pub mod defaults {
    pub fn memory_mib() -> u64 {
        128
    }
    pub fn timeout_ms() -> u64 {
        5000
    }
    pub fn max_outputs_per_record() -> u32 {
        crate::engine::Limits::default().max_outputs_per_record
    }
    pub fn max_output_mib() -> u64 {
        crate::engine::Limits::default().max_output_bytes >> 20
    }
    pub fn batch_size() -> usize {
        256
    }
    pub fn linger_ms() -> u64 {
        20
    }
    pub fn workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl DeploymentSpec {
    /// The dead-letter topic, defaulted.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.output.first()))
    }

    /// The consumer group of this deployment.
    pub fn group(&self) -> String {
        format!("runnel.{}", self.name)
    }
}

/// Why the file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid runnel.toml: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl NodeConfig {
    /// Reads and checks the file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for d in &mut config.deployments {
            d.module = base.join(&d.module);
            d.model = d.model.as_ref().map(|m| base.join(m));
        }
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every deployment with the rules the API applies
    /// ([`crate::rules`]). Registry topics are checked by the node, which
    /// knows their prefix: see [`NodeConfig::check_reserved`].
    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for d in &self.deployments {
            crate::rules::check_name(&d.name)?;
            if !names.insert(&d.name) {
                return Err(format!("two deployments are named {:?}", d.name));
            }
            let at = |e: String| format!("deployment {:?}: {e}", d.name);
            crate::rules::check_topics(&d.input, d.output.topics(), d.dead_letter.as_deref(), &[])
                .map_err(at)?;
            d.settings().check().map_err(at)?;
            crate::rules::check_config(&d.config).map_err(at)?;
            crate::state::check_store_names(&d.stores).map_err(at)?;
            crate::state::changelog::check_topic_names(&d.name, &d.stores).map_err(at)?;
        }
        Ok(())
    }

    /// Refuses a deployment bound to one of runnel's own topics.
    pub fn check_reserved(&self, reserved: &[&str]) -> Result<(), String> {
        for d in &self.deployments {
            crate::rules::check_topics(
                &d.input,
                d.output.topics(),
                d.dead_letter.as_deref(),
                reserved,
            )
            .map_err(|e| format!("deployment {:?}: {e}", d.name))?;
        }
        Ok(())
    }
}

impl DeploymentSpec {
    /// The settings [`crate::rules`] checks.
    pub fn settings(&self) -> crate::rules::Settings {
        crate::rules::Settings {
            batch_size: self.batch_size as u64,
            linger_ms: self.linger_ms,
            workers: Some(self.workers as u64),
            memory_mib: self.memory_mib,
            timeout_ms: self.timeout_ms,
            max_outputs_per_record: u64::from(self.max_outputs_per_record),
            max_output_mib: self.max_output_mib,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let c = NodeConfig::parse(
            r#"
            [[deployment]]
            name = "d"
            module = "f.wasm"
            input = ["in"]
            output = "out"
            config = { field = "x" }
            "#,
        )
        .unwrap();
        let d = &c.deployments[0];
        assert_eq!((d.batch_size, d.linger_ms, d.memory_mib), (256, 20, 128));
        assert_eq!(d.dead_letter_topic(), "out.dlq");
        assert_eq!(d.group(), "runnel.d");
        assert_eq!(d.config["field"], "x");
        assert_eq!(d.provenance, Provenance::Headers);
    }

    #[test]
    fn provenance_is_one_of_three_words() {
        let with = |p: &str| {
            NodeConfig::parse(&format!(
                "[[deployment]]\nname = \"d\"\nmodule = \"f\"\ninput = [\"i\"]\noutput = \"o\"\nprovenance = \"{p}\"\n"
            ))
        };
        assert_eq!(
            with("compact").unwrap().deployments[0].provenance,
            Provenance::Compact
        );
        assert_eq!(
            with("none").unwrap().deployments[0].provenance,
            Provenance::None
        );
        let e = with("all").unwrap_err();
        assert!(
            e.contains("unknown variant `all`, expected one of `headers`, `compact`, `none`"),
            "{e}"
        );
    }

    #[test]
    fn typos_and_bad_specs_are_errors() {
        let e = NodeConfig::parse("[[deployment]]\nname = \"d\"\nmodul = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `modul`"), "{e}");
        let c = NodeConfig::parse(
            "[[deployment]]\nname = \"d\"\nmodule = \"f\"\ninput = [\"t\"]\noutput = \"t\"\n",
        )
        .unwrap();
        assert!(c.check().unwrap_err().contains("also an input"));
        let c = NodeConfig::parse(
            "[[deployment]]\nname = \"d\"\nmodule = \"f\"\ninput = [\"t\"]\noutput = \"o\"\nworkers = 1000000\n",
        )
        .unwrap();
        assert!(c.check().unwrap_err().contains("workers must be 1 to 256"));
        let c = NodeConfig::parse(
            "[[deployment]]\nname = \"d\"\nmodule = \"f\"\ninput = [\"t\"]\noutput = \"runnel.artifacts\"\n",
        )
        .unwrap();
        assert!(c.check().is_ok());
        assert!(
            c.check_reserved(&["runnel.artifacts"])
                .unwrap_err()
                .contains("registry")
        );
    }

    #[test]
    fn outputs_are_one_topic_or_a_list_and_each_is_checked() {
        let parse = |output: &str| {
            NodeConfig::parse(&format!(
                "[[deployment]]\nname = \"d\"\nmodule = \"f\"\ninput = [\"in\"]\noutput = {output}\n"
            ))
        };
        let one = parse("\"a\"").unwrap();
        assert_eq!(one.deployments[0].output, Outputs::from("a"));
        let many = parse("[\"a\", \"b\", \"c\"]").unwrap();
        let d = &many.deployments[0];
        assert_eq!(d.output.topics(), ["a", "b", "c"]);
        assert_eq!(d.dead_letter_topic(), "a.dlq", "the first output's");
        assert!(many.check().is_ok());
        for (bad, why) in [
            ("[]", "no output topic"),
            ("[\"a\", \"a\"]", "named twice"),
            ("[\"a\", \"in\"]", "also an input"),
            (
                "[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]",
                "1 to 8",
            ),
        ] {
            let e = parse(bad).unwrap().check().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            many.check_reserved(&["b"])
                .unwrap_err()
                .contains("registry")
        );
        assert!(parse("3").unwrap_err().contains("a topic name or a list"));
        // Stored as before when there is one; a list otherwise.
        assert_eq!(serde_json::to_string(&Outputs::from("a")).unwrap(), "\"a\"");
        assert_eq!(
            serde_json::to_string(&d.output).unwrap(),
            "[\"a\",\"b\",\"c\"]"
        );
    }

    #[test]
    fn an_output_is_picked_by_name_or_index() {
        use crate::engine::pick_output;
        let outputs = ["ok".to_owned(), "slow".to_owned(), "7".to_owned()];
        for (choice, want) in [
            ("ok", Some(0)),
            ("slow", Some(1)),
            ("1", Some(1)),
            ("7", Some(2)),
            ("2", Some(2)),
            ("3", None),
            ("+1", None),
            ("-1", None),
            ("", None),
            ("OK", None),
            ("18446744073709551616", None),
        ] {
            assert_eq!(pick_output(&outputs, choice.as_bytes()), want, "{choice:?}");
        }
        assert_eq!(pick_output(&outputs, b"\xff"), None);
    }
}
