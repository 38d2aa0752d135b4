//! A scorer whose "model" is a text prefix: each output is the prefix followed
//! by the input value. `init` refuses an empty model, and `fail=<message>` in
//! the config, with that message. `trap=1` makes every record panic.

use runnel_sdk::{Config, Output, Record, Result, Scorer, bail};

struct Echo {
    prefix: String,
    trap: bool,
}

#[runnel_sdk::scorer]
impl Scorer for Echo {
    fn new(config: &Config, model: &[u8]) -> Result<Self> {
        if let Some(message) = config.get("fail") {
            bail!("{message}");
        }
        if model.is_empty() {
            bail!("the model is empty");
        }
        Ok(Echo {
            prefix: String::from_utf8(model.to_vec())?,
            trap: config.get("trap").is_some(),
        })
    }

    fn score(&mut self, record: &Record) -> Result<Output> {
        let value = record.value_str()?;
        assert!(!self.trap, "told to trap on {value}");
        Ok(Output::new(format!("{}{value}", self.prefix))
            .with_key_opt(record.key())
            .with_header("scored-by", "echo"))
    }
}
