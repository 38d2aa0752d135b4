use runnel_sdk::{Output, Record, Result};

#[runnel_sdk::processor]
fn count(record: &Record) -> Result<Vec<Output>> {
    Ok(vec![record.to_output()])
}

fn main() {}
