//! Drops a record whose key was seen in the last N minutes, by the records'
//! own timestamps: the first record of a key passes, and later ones within
//! the window are dropped. It shows state with expiry: the store `seen`
//! maps a key to when it was first seen, and the store `expiry` indexes the
//! same entries by time (`timestamp ++ key`), so that each record also
//! removes a few entries older than the window, found with a range scan.
//! State stays proportional to the keys seen in one window.
//!
//! Config:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `window-minutes` | how long a key stays seen | 10 |
//!
//! ```text
//! runnel run dedupe.wasm --store seen --store expiry --config window-minutes=5 --input events.jsonl
//! ```

use runnel_sdk::{Config, Key, Output, Processor, ProcessorContext, Record, Result, bail};

/// Expired entries removed per record, at most: enough to keep up with any
/// stream whose keys arrive no faster than records do.
const SWEEP: u32 = 4;

pub struct Dedupe {
    window_ms: i64,
}

#[runnel_sdk::processor]
impl Processor for Dedupe {
    fn new(config: &Config) -> Result<Self> {
        let minutes: i64 = config.parse_or("window-minutes", 10)?;
        if minutes <= 0 {
            bail!("window-minutes must be at least 1, not {minutes}");
        }
        Ok(Dedupe {
            window_ms: minutes * 60_000,
        })
    }

    fn process(&mut self, record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>> {
        let Some(key) = record.key() else {
            bail!("a record without a key cannot be deduplicated");
        };
        let Some(now) = record.timestamp_ms() else {
            bail!("a record without a timestamp cannot be deduplicated");
        };
        let seen = ctx.store::<[u8], i64>("seen")?;
        let expiry = ctx.store::<[u8], ()>("expiry")?;
        self.sweep(now, &seen, &expiry)?;
        if let Some(first) = seen.get(key)?
            && now - first < self.window_ms
        {
            return Ok(Vec::new());
        }
        seen.put(key, &now)?;
        expiry.put(&by_time(now, key), &())?;
        Ok(vec![record.to_output()])
    }
}

impl Dedupe {
    /// Removes up to [`SWEEP`] keys first seen a window or more before `now`.
    fn sweep(
        &self,
        now: i64,
        seen: &runnel_sdk::Store<'_, [u8], i64>,
        expiry: &runnel_sdk::Store<'_, [u8], ()>,
    ) -> Result<()> {
        let before = (now - self.window_ms + 1).to_key();
        let old = expiry.range(None, Some(before.as_slice()), SWEEP)?;
        for (entry, ()) in old.entries {
            // The key may have been seen again since: only its newest entry counts.
            if let Some((at, key)) = entry.split_at_checked(8)
                && seen.get(key)? == Some(i64::read_key(at).map_err(runnel_sdk::Error::msg)?)
            {
                seen.delete(key)?;
            }
            expiry.delete(&entry)?;
        }
        Ok(())
    }
}

/// `expiry`'s key: the time, in an order-keeping encoding, then the key.
fn by_time(at: i64, key: &[u8]) -> Vec<u8> {
    let mut k = at.to_key();
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
mod tests {
    use runnel_sdk::testing::{TestRecord, TestState};

    use super::*;

    const MINUTE: i64 = 60_000;

    fn passes(state: &TestState, d: &mut Dedupe, key: &str, at: i64) -> bool {
        let r = TestRecord::value("v").with_key(key).with_timestamp_ms(at);
        !state
            .process(&r, |r, ctx| d.process(r, ctx))
            .unwrap()
            .is_empty()
    }

    #[test]
    fn drops_repeats_within_the_window_and_forgets_old_keys() {
        let state = TestState::new(&["seen", "expiry"]);
        let config = Config::new(vec![("window-minutes".into(), "5".into())]);
        let mut d = Dedupe::new(&config).unwrap();
        assert!(passes(&state, &mut d, "a", 0));
        assert!(!passes(&state, &mut d, "a", 4 * MINUTE));
        assert!(passes(&state, &mut d, "b", 4 * MINUTE));
        // Five minutes after it was first seen, `a` passes again, and the
        // sweep has removed the old entry of `a`.
        assert!(passes(&state, &mut d, "a", 5 * MINUTE));
        assert_eq!(
            state.get::<[u8], i64>(0, "seen", b"a".as_slice()),
            Some(5 * MINUTE)
        );
        // Much later, `b` is swept by any record.
        assert!(passes(&state, &mut d, "c", 20 * MINUTE));
        assert_eq!(state.get::<[u8], i64>(0, "seen", b"b".as_slice()), None);
    }

    #[test]
    fn a_bad_window_is_refused() {
        let config = Config::new(vec![("window-minutes".into(), "0".into())]);
        assert!(Dedupe::new(&config).is_err());
    }
}
