use runnel_sdk::{Output, Record, Result};

#[runnel_sdk::map]
fn split(record: &runnel_sdk::Record<'_>) -> runnel_sdk::Result<Vec<runnel_sdk::Output>> {
    let text = record.value_str()?;
    Ok(text.split(',').map(Output::new).collect())
}

#[allow(dead_code)]
fn uses(_: &Record, _: Result<()>) {}

fn main() {}
