use runnel_sdk::{Output, Record, Result};

#[runnel_sdk::scorer]
fn score(record: &Record) -> Result<Output> {
    Ok(record.to_output())
}

fn main() {}
