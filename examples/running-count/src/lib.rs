//! Counts records per key and emits each key's new count: the smallest
//! stateful function. It shows a processor's keyed state: the store
//! `counts` maps a key to how many of its records were seen, one store per
//! input partition (a key's records all arrive in one partition). A record
//! without a key goes to the dead-letter topic and changes no count.
//!
//! ```text
//! runnel run running_count.wasm --store counts --input events.jsonl
//! ```

use runnel_sdk::{Output, ProcessorContext, Record, Result};

/// Adds one to the record's key's count and emits `key -> count`.
#[runnel_sdk::processor]
pub fn count(record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>> {
    let counts = ctx.store::<str, u64>("counts")?;
    let key = record.key_str()?;
    let n = counts.get(key)?.unwrap_or(0) + 1;
    counts.put(key, &n)?;
    Ok(vec![Output::new(n.to_string()).with_key(key)])
}

#[cfg(test)]
mod tests {
    use runnel_sdk::testing::{TestRecord, TestState};

    use super::*;

    #[test]
    fn counts_per_key_and_partition() {
        let state = TestState::new(&["counts"]);
        let a = TestRecord::value("x").with_key("a");
        let b = TestRecord::value("x").with_key("b");
        let last = |r: &TestRecord| {
            let out = state.process(r, count).unwrap();
            String::from_utf8(out[0].value().unwrap().to_vec()).unwrap()
        };
        assert_eq!(last(&a), "1");
        assert_eq!(last(&b), "1");
        assert_eq!(last(&a), "2");
        // Another partition keeps its own counts.
        assert_eq!(last(&a.clone().at(1, 0)), "1");
        assert_eq!(state.get::<str, u64>(0, "counts", "a"), Some(2));
    }

    #[test]
    fn a_record_without_a_key_fails_and_counts_nothing() {
        let state = TestState::new(&["counts"]);
        assert!(state.process(&TestRecord::value("x"), count).is_err());
        assert_eq!(state.get::<str, u64>(0, "counts", ""), None);
    }
}
