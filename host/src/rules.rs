//! What a deployment may be: one set of rules for the admin API, for
//! `runnel.toml`, and for every node reading the registry (where any client
//! with write access to `runnel.deployments` can put any bytes).
//!
//! Each range is stated once, here, with its unit; the errors quote it, and
//! `docs/openapi.yaml` and `docs/node.md` list the same figures.

use std::collections::BTreeMap;
use std::fmt;

/// An inclusive range a setting must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub setting: &'static str,
    pub min: u64,
    pub max: u64,
}

impl Range {
    /// `Err` with a sentence naming the setting, its value and its range.
    pub fn check(&self, value: u64) -> Result<(), String> {
        if (self.min..=self.max).contains(&value) {
            Ok(())
        } else {
            Err(format!("{} {value} is out of range: {self}", self.setting))
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} must be {} to {}", self.setting, self.min, self.max)
    }
}

/// Records per call into the function.
pub const BATCH_SIZE: Range = Range {
    setting: "batch_size",
    min: 1,
    max: 10_000,
};
/// How long a batch may wait to fill, in milliseconds.
pub const LINGER_MS: Range = Range {
    setting: "linger_ms",
    min: 0,
    max: 60_000,
};
/// Worker threads (each with an instance) per node. Instances come from the
/// node's shared pool (256 by default): see [`crate::engine::EngineConfig`].
pub const WORKERS: Range = Range {
    setting: "workers",
    min: 1,
    max: 256,
};
/// Memory limit of one instance, in MiB (a node's engine may allow less:
/// 1 GiB by default).
pub const MEMORY_MIB: Range = Range {
    setting: "memory_mib",
    min: 1,
    max: 4096,
};
/// Deadline of one call, in milliseconds. A revoke or a stop waits for at
/// most one call, so this also bounds how long they wait on the function.
pub const TIMEOUT_MS: Range = Range {
    setting: "timeout_ms",
    min: 1,
    max: 60_000,
};
/// Outputs one input record may make.
pub const MAX_OUTPUTS_PER_RECORD: Range = Range {
    setting: "max_outputs_per_record",
    min: 1,
    max: 1_000_000,
};
/// Output bytes one call may return, in MiB.
pub const MAX_OUTPUT_MIB: Range = Range {
    setting: "max_output_mib",
    min: 1,
    max: 1024,
};
/// Input topics of one deployment.
pub const INPUTS: Range = Range {
    setting: "the number of input topics",
    min: 1,
    max: 100,
};
/// Output topics of one deployment (Redpanda's transforms take 8 too).
pub const OUTPUTS: Range = Range {
    setting: "the number of output topics",
    min: 1,
    max: 8,
};
/// Entries of a function's config.
pub const CONFIG_ENTRIES: usize = 1000;
/// Bytes of a function's config, keys and values together. The registry
/// keeps the last 20 versions of a deployment in one Kafka record, which
/// must stay under the broker's message size (1 MB by default).
pub const CONFIG_BYTES: usize = 32 << 10;

// State of processors (`crate::state`). A guest chooses what it asks for,
// so each bound is on what the host holds for it: per key and value, per
// call (buffered writes, bytes read), and per partition on disk or in memory.

/// Named stores one deployment may declare.
pub const STATE_STORES: usize = 16;
/// Bytes of a store's name.
pub const STATE_STORE_NAME_BYTES: usize = 64;
/// Bytes of one state key.
pub const STATE_MAX_KEY_BYTES: usize = 4 << 10;
/// Bytes of one state value: 960 KiB, so that a value with the largest key
/// and its changelog headers fits in one Kafka record under librdkafka's
/// default `message.max.bytes` (1,000,000). At 1 MiB a processor could
/// put a value its changelog can never take, and fail its deployment on
/// every restart.
pub const STATE_MAX_VALUE_BYTES: usize = 960 << 10;
/// Bytes of writes one call may buffer until it returns (each write counts
/// its key twice, its value, and [`STATE_WRITE_OVERHEAD`]).
pub const STATE_WRITE_BYTES_PER_CALL: usize = 16 << 20;
/// What one buffered write costs besides its key and value: the journal's
/// and the index's bookkeeping. It bounds the writes of one call (to
/// 16 MiB / 96 B, about 175,000) when keys and values are empty.
pub const STATE_WRITE_OVERHEAD: usize = 96;
/// Bytes of values one `get-many`, or of keys and values one `scan` page,
/// may return.
pub const STATE_READ_BYTES_PER_CALL: usize = 4 << 20;
/// Keys one `get-many` may ask for.
pub const STATE_KEYS_PER_GET: usize = 10_000;
/// Entries one `scan` page may return.
pub const STATE_SCAN_ENTRIES: usize = 10_000;
/// Bytes of state one partition of one deployment may hold (on disk: the
/// size of its file; in memory: keys, values and 64 bytes per entry).
pub const STATE_PARTITION_BYTES: u64 = 1 << 30;

/// A deployment name: 1 to 200 ASCII letters, digits, `-`, `_` or `.`, and
/// not `.` or `..` (it is a path segment of the API and part of a
/// consumer group's name).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a deployment name: use 1 to 200 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A Kafka topic name: 1 to 249 ASCII letters, digits, `-`, `_` or `.`, and
/// not `.` or `..` (Kafka's own rule).
pub fn check_topic(role: &str, topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{role} topic {topic:?} is not a Kafka topic name: use 1 to 249 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// The topics a deployment binds, checked together: legal names, at least
/// one input and no more than [`INPUTS`], no input twice, 1 to [`OUTPUTS`]
/// outputs, none twice, outputs and a dead-letter topic that are not
/// inputs (a function would read its own outputs forever), and none of
/// runnel's own topics (`reserved`: the registry's) in any role.
pub fn check_topics(
    input: &[String],
    outputs: &[String],
    dead_letter: Option<&str>,
    reserved: &[&str],
) -> Result<(), String> {
    INPUTS.check(input.len() as u64)?;
    for (i, t) in input.iter().enumerate() {
        check_topic("input", t)?;
        if input[..i].contains(t) {
            return Err(format!("input topic {t:?} is named twice"));
        }
    }
    if outputs.is_empty() {
        return Err("no output topic is named: name 1 to 8".to_owned());
    }
    OUTPUTS.check(outputs.len() as u64)?;
    for (i, t) in outputs.iter().enumerate() {
        check_topic("output", t)?;
        if outputs[..i].contains(t) {
            return Err(format!("output topic {t:?} is named twice"));
        }
    }
    if let Some(d) = dead_letter {
        check_topic("dead-letter", d)?;
    }
    let dead_letter = dead_letter.map_or_else(|| format!("{}.dlq", outputs[0]), str::to_owned);
    let written = outputs
        .iter()
        .map(|t| ("output", t.as_str()))
        .chain([("dead-letter", dead_letter.as_str())]);
    for (role, t) in written.clone() {
        if input.iter().any(|i| i == t) {
            return Err(format!(
                "the {role} topic {t:?} is also an input: the function would read what it writes"
            ));
        }
    }
    for (role, t) in input.iter().map(|t| ("input", t.as_str())).chain(written) {
        if reserved.contains(&t) {
            return Err(format!(
                "the {role} topic {t:?} is one of runnel's own registry topics: functions cannot be bound to it"
            ));
        }
    }
    Ok(())
}

/// A function's config: at most [`CONFIG_ENTRIES`] entries and
/// [`CONFIG_BYTES`] bytes, and no empty key.
pub fn check_config(config: &BTreeMap<String, String>) -> Result<(), String> {
    if config.len() > CONFIG_ENTRIES {
        return Err(format!(
            "config has {} entries, over the limit of {CONFIG_ENTRIES}",
            config.len()
        ));
    }
    let bytes: usize = config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > CONFIG_BYTES {
        return Err(format!(
            "config is {bytes} bytes, over the limit of {CONFIG_BYTES} (keys and values together)"
        ));
    }
    if config.contains_key("") {
        return Err("config has an empty key".to_owned());
    }
    Ok(())
}

/// The settings of a deployment that do not name topics.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_size: u64,
    pub linger_ms: u64,
    pub workers: Option<u64>,
    pub memory_mib: u64,
    pub timeout_ms: u64,
    pub max_outputs_per_record: u64,
    pub max_output_mib: u64,
}

impl Settings {
    /// Every setting in its range.
    pub fn check(&self) -> Result<(), String> {
        BATCH_SIZE.check(self.batch_size)?;
        LINGER_MS.check(self.linger_ms)?;
        if let Some(w) = self.workers {
            WORKERS.check(w)?;
        }
        MEMORY_MIB.check(self.memory_mib)?;
        TIMEOUT_MS.check(self.timeout_ms)?;
        MAX_OUTPUTS_PER_RECORD.check(self.max_outputs_per_record)?;
        MAX_OUTPUT_MIB.check(self.max_output_mib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(input: &[&str], output: &str, dlq: Option<&str>) -> Result<(), String> {
        let input: Vec<String> = input.iter().map(|s| (*s).to_owned()).collect();
        check_topics(
            &input,
            &[output.to_owned()],
            dlq,
            &["runnel.artifacts", "runnel.deployments"],
        )
    }

    #[test]
    fn ranges_name_the_setting_and_the_range() {
        assert_eq!(
            BATCH_SIZE.check(0).unwrap_err(),
            "batch_size 0 is out of range: batch_size must be 1 to 10000"
        );
        assert!(BATCH_SIZE.check(1).is_ok() && BATCH_SIZE.check(10_000).is_ok());
        assert!(WORKERS.check(1_000_000).unwrap_err().contains("1 to 256"));
        assert!(MEMORY_MIB.check(u64::MAX).is_err());
    }

    #[test]
    fn names_and_topics_are_checked() {
        for bad in ["", ".", "..", "a\0b", "a/b", "ä", &"x".repeat(201)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("flight-delays_v2.1").is_ok());
        assert!(topics(&["in"], "out", None).is_ok());
        assert!(
            topics(&[], "out", None)
                .unwrap_err()
                .contains("input topics")
        );
        assert!(
            topics(&["in"], "in", None)
                .unwrap_err()
                .contains("also an input")
        );
        assert!(
            topics(&["in", "d"], "out", Some("d"))
                .unwrap_err()
                .contains("dead-letter topic \"d\" is also an input")
        );
        assert!(
            topics(&["out.dlq"], "out", None)
                .unwrap_err()
                .contains("also an input"),
            "the default dead-letter topic counts"
        );
        assert!(
            topics(&["in"], "runnel.deployments", None)
                .unwrap_err()
                .contains("registry")
        );
        assert!(
            topics(&["in"], "out", Some("runnel.artifacts"))
                .unwrap_err()
                .contains("registry")
        );
        assert!(
            topics(&["in", "in"], "out", None)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            topics(&["in"], "a b", None)
                .unwrap_err()
                .contains("not a Kafka topic")
        );
    }

    #[test]
    fn config_is_bounded() {
        let big: BTreeMap<String, String> = [("k".to_owned(), "v".repeat(CONFIG_BYTES))].into();
        assert!(check_config(&big).unwrap_err().contains("over the limit"));
        let many: BTreeMap<String, String> = (0..=CONFIG_ENTRIES)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(check_config(&many).unwrap_err().contains("entries"));
        assert!(check_config(&BTreeMap::new()).is_ok());
    }
}

#[cfg(test)]
mod state_limit_tests {
    /// librdkafka's default `message.max.bytes`, the most a producer sends
    /// in one record.
    const PRODUCER_MAX_MESSAGE_BYTES: usize = 1_000_000;

    #[test]
    fn the_largest_state_write_fits_in_one_changelog_record() {
        // Key tag, both headers with 20-digit numbers, and Kafka's record
        // framing, generously.
        let overhead = 1 + 2 * (16 + 20) + 512;
        assert!(
            super::STATE_MAX_KEY_BYTES + super::STATE_MAX_VALUE_BYTES + overhead
                < PRODUCER_MAX_MESSAGE_BYTES
        );
    }
}
