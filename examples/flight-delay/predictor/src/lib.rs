//! The flight-delay predictor, in plain Rust: a LightGBM evaluator
//! ([`gbdt`]), the model artifact that wraps it ([`FlightModel`]), and the
//! features read from a flight, given as a CSV line of the US airline on-time
//! format or as JSON. The Wasm scorer (`examples/flight-delay`) and the
//! native benchmark loop both use this crate, so they evaluate the very same
//! code.

mod forest;
pub mod gbdt;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

pub use gbdt::{Booster, ModelError};
use serde::{Deserialize, Serialize};

/// The model's features, in the order of its columns.
pub const FEATURES: [&str; 7] = [
    "month",
    "day_of_week",
    "dep_hour",
    "carrier",
    "origin",
    "dest",
    "distance",
];

/// The artifact format this crate reads.
pub const FORMAT: &str = "runnel-lightgbm/1";

/// The model artifact: a JSON object holding the LightGBM text model, the
/// vocabularies of its categorical features and the decision threshold.
#[derive(Debug, Deserialize)]
struct Artifact {
    format: String,
    name: String,
    features: Vec<String>,
    categorical: Categorical,
    threshold: f64,
    threshold_logit: f64,
    lightgbm: String,
}

#[derive(Debug, Deserialize)]
struct Categorical {
    carrier: Vec<String>,
    origin: Vec<String>,
    dest: Vec<String>,
}

/// A loaded flight-delay model.
#[derive(Debug, Clone)]
pub struct FlightModel {
    booster: Booster,
    name: String,
    threshold: f64,
    threshold_logit: f64,
    carriers: Vocabulary,
    origins: Vocabulary,
    dests: Vocabulary,
}

/// One scored flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// LightGBM's raw score: the log-odds of a delay.
    pub raw_score: f64,
    /// The probability of a delay.
    pub probability: f64,
    /// Whether a delay is predicted: `raw_score >= logit(threshold)`.
    pub delayed: bool,
}

/// The JSON the scorer writes for one flight.
#[derive(Debug, Serialize)]
pub struct Scored<'a> {
    pub prediction: &'static str,
    pub probability: f64,
    pub raw_score: f64,
    pub threshold: f64,
    pub model: &'a str,
}

impl FlightModel {
    /// Reads a model artifact (see `examples/flight-delay/README.md`).
    pub fn from_json(bytes: &[u8]) -> Result<FlightModel, ModelError> {
        let artifact: Artifact = serde_json::from_slice(bytes).map_err(|e| {
            ModelError::new(format!("the model is not a {FORMAT} JSON artifact: {e}"))
        })?;
        if artifact.format != FORMAT {
            return Err(ModelError::new(format!(
                "the model's format is {:?}; this scorer reads {FORMAT:?}",
                artifact.format
            )));
        }
        if artifact.features != FEATURES {
            return Err(ModelError::new(format!(
                "the model's features are {:?}; this scorer computes {FEATURES:?}",
                artifact.features
            )));
        }
        if !(artifact.threshold > 0.0 && artifact.threshold < 1.0) {
            return Err(ModelError::new(format!(
                "the threshold {} is not a probability strictly between 0 and 1",
                artifact.threshold
            )));
        }
        let booster = Booster::parse(&artifact.lightgbm)?;
        if booster.num_features() != FEATURES.len() {
            return Err(ModelError::new(format!(
                "the LightGBM model has {} features, not {}",
                booster.num_features(),
                FEATURES.len()
            )));
        }
        let vocabulary = |words: Vec<String>| -> Vocabulary {
            words
                .into_iter()
                .enumerate()
                .map(|(i, w)| (w, i as f64))
                .collect()
        };
        Ok(FlightModel {
            booster,
            name: artifact.name,
            threshold: artifact.threshold,
            threshold_logit: artifact.threshold_logit,
            carriers: vocabulary(artifact.categorical.carrier),
            origins: vocabulary(artifact.categorical.origin),
            dests: vocabulary(artifact.categorical.dest),
        })
    }

    /// The model's name, from its artifact.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The decision threshold, as a probability.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The number of trees.
    pub fn num_trees(&self) -> usize {
        self.booster.num_trees()
    }

    /// The model's input row for `flight`. A category the model never saw
    /// is missing (NaN), which LightGBM sends down the "other" side of every
    /// categorical split — as LightGBM itself scores it.
    pub fn features(&self, flight: &Flight<'_>) -> [f64; 7] {
        let code = |map: &Vocabulary, word: Option<&str>| {
            word.and_then(|w| map.get(w).copied()).unwrap_or(f64::NAN)
        };
        [
            flight.month,
            flight.day_of_week,
            flight.dep_hour,
            code(&self.carriers, flight.carrier.as_deref()),
            code(&self.origins, flight.origin.as_deref()),
            code(&self.dests, flight.dest.as_deref()),
            flight.distance,
        ]
    }

    /// Scores one flight.
    pub fn predict(&self, flight: &Flight<'_>) -> Prediction {
        let raw_score = self.booster.raw_score(&self.features(flight));
        Prediction {
            raw_score,
            probability: self.booster.probability(raw_score).unwrap_or(raw_score),
            // Decided on the raw score, so that a last-bit difference in
            // `exp` between libms can never flip a decision.
            delayed: raw_score >= self.threshold_logit,
        }
    }

    /// The output JSON for one prediction.
    pub fn scored(&self, p: &Prediction) -> Scored<'_> {
        Scored {
            prediction: if p.delayed { "YES" } else { "NO" },
            probability: p.probability,
            raw_score: p.raw_score,
            threshold: self.threshold,
            model: &self.name,
        }
    }
}

/// A category's code by its name. The names are a few short strings known
/// to the model, not attacker-chosen keys, so FNV-1a hashes them: SipHash
/// cost more than the rest of the feature row.
type Vocabulary = HashMap<String, f64, BuildHasherDefault<Fnv1a>>;

/// The 64-bit FNV-1a hash.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl ModelError {
    fn new(message: String) -> Self {
        gbdt::model_error(message)
    }
}

/// The model's view of a flight. `NaN` and `None` are missing values.
/// Categories borrow from the record, but for a JSON string written with an
/// escape (`"U\u0041"`), which is unescaped into a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Flight<'a> {
    pub month: f64,
    pub day_of_week: f64,
    pub dep_hour: f64,
    pub carrier: Option<Cow<'a, str>>,
    pub origin: Option<Cow<'a, str>>,
    pub dest: Option<Cow<'a, str>>,
    pub distance: f64,
}

/// Why a record is not a flight; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// The columns of the airline on-time CSV format.
pub const COLUMNS: [&str; 31] = [
    "Year",
    "Month",
    "DayofMonth",
    "DayOfWeek",
    "DepTime",
    "CRSDepTime",
    "ArrTime",
    "CRSArrTime",
    "UniqueCarrier",
    "FlightNum",
    "TailNum",
    "ActualElapsedTime",
    "CRSElapsedTime",
    "AirTime",
    "ArrDelay",
    "DepDelay",
    "Origin",
    "Dest",
    "Distance",
    "TaxiIn",
    "TaxiOut",
    "Cancelled",
    "CancellationCode",
    "Diverted",
    "CarrierDelay",
    "WeatherDelay",
    "NASDelay",
    "SecurityDelay",
    "LateAircraftDelay",
    "IsArrDelayed",
    "IsDepDelayed",
];

const MONTH: usize = 1;
const DAY_OF_WEEK: usize = 3;
const CRS_DEP_TIME: usize = 5;
const CARRIER: usize = 8;
const ORIGIN: usize = 16;
const DEST: usize = 17;
const DISTANCE: usize = 18;

/// Reads a flight from a record value: a JSON object (first non-blank byte
/// `{`) or a CSV line of the on-time format (29 or 31 fields, `NA` missing).
pub fn parse_flight(text: &str) -> Result<Flight<'_>, InputError> {
    if text.trim_start().starts_with('{') {
        parse_json(text)
    } else {
        parse_csv(text)
    }
}

/// Reads the fields the model uses from one on-time CSV line. Only those
/// are checked; the others may hold anything.
pub fn parse_csv(line: &str) -> Result<Flight<'_>, InputError> {
    let line = line.trim_end_matches(['\r', '\n']);
    // One pass over the bytes finds where the fields start; only the fields
    // the model reads are then sliced and trimmed.
    let mut starts = [0usize; 32];
    let mut n = 1;
    for (i, &b) in line.as_bytes().iter().enumerate() {
        if b == b',' {
            if n < starts.len() {
                starts[n] = i + 1;
            }
            n += 1;
        }
    }
    let field = |i: usize| {
        let end = if i + 1 < n {
            starts[i + 1] - 1
        } else {
            line.len()
        };
        line[starts[i]..end].trim()
    };
    if field(0) == "Year" {
        return Err(InputError(
            "this is the CSV header line, not a flight".into(),
        ));
    }
    if n != 29 && n != 31 {
        return Err(InputError(format!(
            "expected 29 or 31 comma-separated fields, found {n}"
        )));
    }
    let number = |i: usize| -> Result<f64, InputError> {
        match field(i) {
            "NA" | "" => Ok(f64::NAN),
            s => s.parse::<i64>().map(|v| v as f64).map_err(|_| {
                InputError(format!(
                    "field {} ({}) is {s:?}, not a whole number or NA",
                    i + 1,
                    COLUMNS[i]
                ))
            }),
        }
    };
    let text = |i: usize| match field(i) {
        "NA" | "" => None,
        s => Some(Cow::Borrowed(s)),
    };
    Ok(Flight {
        month: number(MONTH)?,
        day_of_week: number(DAY_OF_WEEK)?,
        dep_hour: (number(CRS_DEP_TIME)? / 100.0).floor(),
        carrier: text(CARRIER),
        origin: text(ORIGIN),
        dest: text(DEST),
        distance: number(DISTANCE)?,
    })
}

/// Reads a flight from a JSON object with `month`, `day_of_week`, `carrier`,
/// `origin`, `dest`, `distance` and either `dep_hour` or `crs_dep_time`
/// (hhmm, as the airline-csv example writes it). `null` is a missing value;
/// other fields are ignored.
pub fn parse_json(text: &str) -> Result<Flight<'_>, InputError> {
    /// `Some(None)` for `null`, `None` for an absent field.
    fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
    #[derive(Deserialize)]
    struct Json<'a> {
        #[serde(default, deserialize_with = "nullable")]
        month: Option<Option<f64>>,
        #[serde(default, deserialize_with = "nullable")]
        day_of_week: Option<Option<f64>>,
        #[serde(default, deserialize_with = "nullable")]
        dep_hour: Option<Option<f64>>,
        #[serde(default, deserialize_with = "nullable")]
        crs_dep_time: Option<Option<f64>>,
        #[serde(borrow, default, deserialize_with = "nullable")]
        carrier: Option<Option<Cow<'a, str>>>,
        #[serde(borrow, default, deserialize_with = "nullable")]
        origin: Option<Option<Cow<'a, str>>>,
        #[serde(borrow, default, deserialize_with = "nullable")]
        dest: Option<Option<Cow<'a, str>>>,
        #[serde(default, deserialize_with = "nullable")]
        distance: Option<Option<f64>>,
    }
    let j: Json<'_> = serde_json::from_str(text)
        .map_err(|e| InputError(format!("the value is not a flight JSON object: {e}")))?;
    fn required<T>(field: Option<Option<T>>, name: &str) -> Result<Option<T>, InputError> {
        field.ok_or_else(|| InputError(format!("field {name:?} is missing (use null for unknown)")))
    }
    let number = |v: Option<f64>| v.unwrap_or(f64::NAN);
    let month = number(required(j.month, "month")?);
    let day_of_week = number(required(j.day_of_week, "day_of_week")?);
    let dep_hour = match (j.dep_hour, j.crs_dep_time) {
        (Some(h), _) => number(h),
        (None, Some(t)) => (number(t) / 100.0).floor(),
        (None, None) => {
            return Err(InputError(
                "field \"dep_hour\" (or \"crs_dep_time\") is missing (use null for unknown)".into(),
            ));
        }
    };
    Ok(Flight {
        month,
        day_of_week,
        dep_hour,
        carrier: required(j.carrier, "carrier")?,
        origin: required(j.origin, "origin")?,
        dest: required(j.dest, "dest")?,
        distance: number(required(j.distance, "distance")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = "1987,10,14,3,741,730,912,849,PS,1451,NA,91,79,NA,23,11,SAN,SFO,447,NA,NA,0,NA,0,NA,NA,NA,NA,NA,YES,YES";

    #[test]
    fn reads_the_original_demo_line_in_both_lengths() {
        let f = parse_flight(DEMO).unwrap();
        assert_eq!(
            (f.month, f.day_of_week, f.dep_hour, f.distance),
            (10.0, 3.0, 7.0, 447.0)
        );
        assert_eq!(
            (f.carrier.as_deref(), f.origin.as_deref(), f.dest.as_deref()),
            (Some("PS"), Some("SAN"), Some("SFO"))
        );
        let short: Vec<&str> = DEMO.split(',').take(29).collect();
        assert_eq!(parse_flight(&short.join(",")).unwrap(), f);
        assert_eq!(parse_flight(&DEMO.replacen("1987", "1999", 1)).unwrap(), f);
    }

    #[test]
    fn reads_json_and_missing_values() {
        let f = parse_flight(r#"{"month":1,"day_of_week":2,"dep_hour":6,"carrier":"UA","origin":"EWR","dest":"IAH","distance":1400}"#).unwrap();
        assert_eq!(
            (f.dep_hour, f.carrier.as_deref(), f.distance),
            (6.0, Some("UA"), 1400.0)
        );
        let g = parse_flight(r#"{"month":1,"day_of_week":2,"crs_dep_time":659,"carrier":null,"origin":"EWR","dest":"IAH","distance":null,"year":2013}"#).unwrap();
        assert_eq!((g.dep_hour, g.carrier), (6.0, None));
        // A string written with an escape is unescaped, not refused (it
        // was: "expected a borrowed string").
        let e = parse_flight(r#"{"month":1,"day_of_week":2,"dep_hour":6,"carrier":"U\u0041","origin":"E\/WR","dest":"IAH","distance":1400}"#).unwrap();
        assert_eq!(
            (e.carrier.as_deref(), e.origin.as_deref()),
            (Some("UA"), Some("E/WR"))
        );
        assert!(g.distance.is_nan());
        let line = DEMO.replacen(",447,", ",NA,", 1);
        let na = parse_flight(&line).unwrap();
        assert!(na.distance.is_nan());
    }

    #[test]
    fn errors_name_the_field() {
        let msg = |s: &str| parse_flight(s).unwrap_err().0;
        assert_eq!(
            msg(&DEMO.replacen(",730,", ",7x0,", 1)),
            "field 6 (CRSDepTime) is \"7x0\", not a whole number or NA"
        );
        assert_eq!(
            msg("1,2,3"),
            "expected 29 or 31 comma-separated fields, found 3"
        );
        assert!(msg("Year,Month").contains("header"));
        assert!(msg(r#"{"month":1}"#).contains("\"day_of_week\" is missing"));
        assert!(msg(r#"{"month":"x"}"#).starts_with("the value is not a flight JSON object"));
    }
}
