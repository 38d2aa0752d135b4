//! A filter whose rule comes from its config: keep the records whose JSON value
//! has a numeric field at or above a threshold (and, optionally, below a
//! ceiling). It shows a stateful function: the rule is parsed once, in `new`,
//! and a bad config refuses the deployment with a message naming the key.
//!
//! Config:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `field` | the field to test; `a.b` reaches into nested objects | required |
//! | `min` | keep records whose field is at least this | none |
//! | `max` | keep records whose field is below this | none |
//! | `on-missing` | `drop` or `error`: what to do when the field is absent, null or not a number | `drop` |
//!
//! ```text
//! runnel run threshold_filter.wasm --config field=dep_delay --config min=15 --input flights.jsonl
//! ```

use runnel_sdk::{Config, Filter, Record, Result, bail};
use serde_json::Value;

pub struct Threshold {
    path: Vec<String>,
    min: Option<f64>,
    max: Option<f64>,
    error_on_missing: bool,
}

#[runnel_sdk::filter]
impl Filter for Threshold {
    fn new(config: &Config) -> Result<Self> {
        let field = config.require("field")?;
        let min = config
            .get("min")
            .map(|_| config.parse_or("min", 0.0))
            .transpose()?;
        let max = config
            .get("max")
            .map(|_| config.parse_or("max", 0.0))
            .transpose()?;
        if min.is_none() && max.is_none() {
            bail!("set `min`, `max` or both (for instance --config min=15)");
        }
        let error_on_missing = match config.get("on-missing").unwrap_or("drop") {
            "drop" => false,
            "error" => true,
            other => bail!("config `on-missing` = {other:?} is not valid: use `drop` or `error`"),
        };
        Ok(Self {
            path: field.split('.').map(str::to_owned).collect(),
            min,
            max,
            error_on_missing,
        })
    }

    fn filter(&mut self, record: &Record) -> Result<bool> {
        let value: Value = record.value_json()?;
        let field = self.path.iter().try_fold(&value, |v, k| v.get(k));
        let Some(x) = field.and_then(Value::as_f64) else {
            if self.error_on_missing {
                bail!("field `{}` is missing or not a number", self.path.join("."));
            }
            return Ok(false);
        };
        Ok(self.min.is_none_or(|min| x >= min) && self.max.is_none_or(|max| x < max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_sdk::testing::TestRecord;

    fn threshold(pairs: &[(&str, &str)]) -> Result<Threshold> {
        Threshold::new(&Config::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    #[test]
    fn keeps_values_in_range() {
        let mut t = threshold(&[("field", "a.b"), ("min", "10"), ("max", "20")]).unwrap();
        let keep = |t: &mut Threshold, v: &str| t.filter(&TestRecord::value(v).view());
        assert!(keep(&mut t, r#"{"a":{"b":10}}"#).unwrap());
        assert!(!keep(&mut t, r#"{"a":{"b":20}}"#).unwrap());
        assert!(!keep(&mut t, r#"{"a":{"b":null}}"#).unwrap());
        assert!(keep(&mut t, "not json").is_err());
    }

    #[test]
    fn bad_config_names_the_key() {
        assert_eq!(
            threshold(&[]).err().unwrap().message(),
            "missing config `field` (set it with --config field=...)"
        );
        assert!(
            threshold(&[("field", "x")])
                .err()
                .unwrap()
                .message()
                .starts_with("set `min`")
        );
        assert!(
            threshold(&[("field", "x"), ("min", "ten")])
                .err()
                .unwrap()
                .message()
                .starts_with("config `min` = \"ten\"")
        );
    }
}
