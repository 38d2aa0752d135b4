use runnel_sdk::{Output, Record, Result};

#[runnel_sdk::map]
fn one(record: &Record) -> Result<Output> {
    Ok(record.to_output())
}

fn main() {}
