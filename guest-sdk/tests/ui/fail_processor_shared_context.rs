use runnel_sdk::{ProcessorContext, Output, Record, Result};

#[runnel_sdk::processor]
fn count(record: &Record, ctx: &ProcessorContext) -> Result<Vec<Output>> {
    let _ = ctx;
    Ok(vec![record.to_output()])
}

fn main() {}
