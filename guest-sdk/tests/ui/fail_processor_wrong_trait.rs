use runnel_sdk::{Config, Output, Map, Record, Result};

struct Split;

#[runnel_sdk::processor]
impl Map for Split {
    fn new(_: &Config) -> Result<Self> {
        Ok(Split)
    }
    fn map(&mut self, record: &Record) -> Result<Vec<Output>> {
        Ok(vec![record.to_output()])
    }
}

fn main() {}
