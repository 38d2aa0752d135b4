use runnel_sdk::{Record, Result};

#[runnel_sdk::filter]
fn keep(record: Record) -> Result<bool> {
    Ok(record.value().is_some())
}

fn main() {}
