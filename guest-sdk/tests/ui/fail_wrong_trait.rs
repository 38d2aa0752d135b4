use runnel_sdk::{Config, Map, Output, Record, Result};

struct Twice;

#[runnel_sdk::filter]
impl Map for Twice {
    fn new(_: &Config) -> Result<Self> {
        Ok(Twice)
    }
    fn map(&mut self, record: &Record) -> Result<Vec<Output>> {
        Ok(vec![record.to_output(), record.to_output()])
    }
}

fn main() {}
