use runnel_sdk::{ProcessorContext, Output, Record, Result};

#[runnel_sdk::processor]
fn count(record: &Record, _ctx: &mut ProcessorContext) -> Result<Output> {
    Ok(record.to_output())
}

fn main() {}
