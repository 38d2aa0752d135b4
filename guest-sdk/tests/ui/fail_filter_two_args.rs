use runnel_sdk::{Record, Result};

#[runnel_sdk::filter]
fn keep(record: &Record, extra: u32) -> Result<bool> {
    Ok(record.value().is_some() && extra > 0)
}

fn main() {}
