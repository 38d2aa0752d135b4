use runnel_sdk::{Record, Result};

#[runnel_sdk::filter]
async fn keep(record: &Record<'_>) -> Result<bool> {
    Ok(record.value().is_some())
}

fn main() {}
