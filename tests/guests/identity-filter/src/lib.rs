//! Keeps every record that has a value, reading the value: the benchmark's filter.

use runnel_sdk::{Record, Result};

#[runnel_sdk::filter]
fn identity(record: &Record) -> Result<bool> {
    Ok(record.value().is_some_and(|v| !v.is_empty()))
}
