use runnel_sdk::{Config, Filter, Record, Result};

struct MinLen(usize);

#[runnel_sdk::filter]
impl Filter for MinLen {
    fn new(config: &Config) -> Result<Self> {
        Ok(MinLen(config.parse_or("min", 1)?))
    }
    fn filter(&mut self, record: &Record) -> Result<bool> {
        Ok(record.value().is_some_and(|v| v.len() >= self.0))
    }
}

fn main() {}
