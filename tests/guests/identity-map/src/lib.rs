//! Copies every record to the output: the benchmark's map.

use runnel_sdk::{Output, Record, Result};

#[runnel_sdk::map]
fn identity(record: &Record) -> Result<Vec<Output>> {
    Ok(vec![record.to_output()])
}
