//! Counts records per key (store `counts`) and sends each record's new
//! count to the output topics its value names: a comma-separated list of
//! targets, each a topic name, `#N` for the output at index N, or `-` for
//! the default (no choice). `audit,#0` emits two outputs. A target that is
//! not one of the deployment's outputs fails the record as a whole: none
//! of its outputs is produced and its count does not move.

use runnel_sdk::{Output, ProcessorContext, Record, Result};

#[runnel_sdk::processor]
pub fn route(record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>> {
    let counts = ctx.store::<str, u64>("counts")?;
    let key = record.key_str()?;
    let n = counts.get(key)?.unwrap_or(0) + 1;
    counts.put(key, &n)?;
    let targets = record.value_str()?;
    Ok(targets
        .split(',')
        .map(|target| {
            let out = Output::new(n.to_string()).with_key(key);
            match target.strip_prefix('#') {
                _ if target == "-" => out,
                Some(index) => out.to_index(index.parse().unwrap_or(usize::MAX)),
                None => out.to(target),
            }
        })
        .collect())
}
