use runnel_sdk::{Config, ProcessorContext, Output, Processor, Record, Result};

struct Sum {
    store: String,
}

#[runnel_sdk::processor]
impl Processor for Sum {
    fn new(config: &Config) -> Result<Self> {
        Ok(Sum { store: config.get("store").unwrap_or("sums").to_owned() })
    }
    fn process(&mut self, record: &Record, ctx: &mut ProcessorContext<'_>) -> Result<Vec<Output>> {
        let sums = ctx.store::<[u8], i64>(&self.store)?;
        let key = record.key().unwrap_or_default();
        let add: i64 = record.value_str()?.parse()?;
        let total = sums.get(key)?.unwrap_or(0) + add;
        sums.put(key, &total)?;
        Ok(vec![record.to_output()])
    }
}

fn main() {}
