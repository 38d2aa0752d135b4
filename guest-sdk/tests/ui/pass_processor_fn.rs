use runnel_sdk::{ProcessorContext, Output, Record, Result};

#[runnel_sdk::processor]
fn count(record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>> {
    let counts = ctx.store::<str, u64>("counts")?;
    let key = record.key_str()?;
    let n = counts.get(key)?.unwrap_or(0) + 1;
    counts.put(key, &n)?;
    Ok(vec![Output::new(n.to_string()).with_key(key)])
}

fn main() {}
