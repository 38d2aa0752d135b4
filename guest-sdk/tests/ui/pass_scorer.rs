use runnel_sdk::{Config, Output, Record, Result, Scorer};

struct Model {
    weights: Vec<u8>,
}

#[runnel_sdk::scorer]
impl Scorer for Model {
    fn new(_config: &Config, model: &[u8]) -> Result<Self> {
        Ok(Model { weights: model.to_vec() })
    }
    fn score(&mut self, record: &Record) -> Result<Output> {
        let n = record.value().map_or(0, <[u8]>::len) + self.weights.len();
        Output::json(&n)
    }
}

fn main() {}
