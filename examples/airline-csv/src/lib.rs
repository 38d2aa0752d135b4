//! A map that turns one CSV line of the US airline on-time data (the format of
//! the 2009 ASA Data Expo: `Year,Month,DayofMonth,DayOfWeek,DepTime,...`, 29
//! fields, or 31 with `IsArrDelayed,IsDepDelayed`, `NA` for a missing value)
//! into one JSON object with typed fields. It shows the error path: a line
//! that does not parse is a per-record error naming the field, which the host
//! sends to the dead-letter topic, while the stream goes on.
//!
//! ```text
//! runnel run airline_csv.wasm --format lines --input flights.csv
//! ```
//!
//! The output keeps the input's key and is, for the line
//! `1987,10,14,3,741,730,912,849,PS,1451,NA,91,79,NA,23,11,SAN,SFO,447,NA,NA,0,NA,0,NA,NA,NA,NA,NA,YES,YES`:
//!
//! ```json
//! {"year":1987,"month":10,"day_of_month":14,"day_of_week":3,"dep_time":741,"crs_dep_time":730,...,"is_dep_delayed":true}
//! ```

use runnel_sdk::{Output, Record, Result, bail};
use serde::Serialize;

/// The column names, in order.
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

/// One flight. `None` is `NA` in the CSV.
#[derive(Debug, Serialize, PartialEq)]
pub struct Flight<'a> {
    pub year: i64,
    pub month: i64,
    pub day_of_month: i64,
    pub day_of_week: i64,
    pub dep_time: Option<i64>,
    pub crs_dep_time: Option<i64>,
    pub arr_time: Option<i64>,
    pub crs_arr_time: Option<i64>,
    pub carrier: &'a str,
    pub flight_num: Option<i64>,
    pub tail_num: Option<&'a str>,
    pub actual_elapsed_time: Option<i64>,
    pub crs_elapsed_time: Option<i64>,
    pub air_time: Option<i64>,
    pub arr_delay: Option<i64>,
    pub dep_delay: Option<i64>,
    pub origin: &'a str,
    pub dest: &'a str,
    pub distance: Option<i64>,
    pub taxi_in: Option<i64>,
    pub taxi_out: Option<i64>,
    pub cancelled: Option<bool>,
    pub cancellation_code: Option<&'a str>,
    pub diverted: Option<bool>,
    pub carrier_delay: Option<i64>,
    pub weather_delay: Option<i64>,
    pub nas_delay: Option<i64>,
    pub security_delay: Option<i64>,
    pub late_aircraft_delay: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_arr_delayed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_dep_delayed: Option<bool>,
}

/// The fields of one line, with what went wrong named by column.
struct Fields<'a> {
    values: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    fn text(&self, i: usize) -> Option<&'a str> {
        match self.values[i].trim() {
            "NA" | "" => None,
            s => Some(s),
        }
    }

    fn required_text(&self, i: usize) -> Result<&'a str> {
        match self.text(i) {
            Some(s) => Ok(s),
            None => bail!("field {} ({}) is NA, but it is required", i + 1, COLUMNS[i]),
        }
    }

    fn int(&self, i: usize) -> Result<Option<i64>> {
        let Some(s) = self.text(i) else {
            return Ok(None);
        };
        match s.parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => bail!(
                "field {} ({}) is {s:?}, not a whole number or NA",
                i + 1,
                COLUMNS[i]
            ),
        }
    }

    fn required_int(&self, i: usize) -> Result<i64> {
        match self.int(i)? {
            Some(n) => Ok(n),
            None => bail!("field {} ({}) is NA, but it is required", i + 1, COLUMNS[i]),
        }
    }

    fn flag(&self, i: usize) -> Result<Option<bool>> {
        match self.text(i) {
            None => Ok(None),
            Some("1" | "YES") => Ok(Some(true)),
            Some("0" | "NO") => Ok(Some(false)),
            Some(s) => bail!(
                "field {} ({}) is {s:?}, not 0/1, YES/NO or NA",
                i + 1,
                COLUMNS[i]
            ),
        }
    }
}

/// Parses one CSV line of the on-time format.
pub fn parse(line: &str) -> Result<Flight<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    let values: Vec<&str> = line.split(',').collect();
    if values.first().is_some_and(|v| v.trim() == "Year") {
        bail!("this is the CSV header line, not a flight");
    }
    if values.len() != 29 && values.len() != 31 {
        bail!(
            "expected 29 or 31 comma-separated fields, found {}",
            values.len()
        );
    }
    let f = Fields { values };
    let long = f.values.len() == 31;
    Ok(Flight {
        year: f.required_int(0)?,
        month: f.required_int(1)?,
        day_of_month: f.required_int(2)?,
        day_of_week: f.required_int(3)?,
        dep_time: f.int(4)?,
        crs_dep_time: f.int(5)?,
        arr_time: f.int(6)?,
        crs_arr_time: f.int(7)?,
        carrier: f.required_text(8)?,
        flight_num: f.int(9)?,
        tail_num: f.text(10),
        actual_elapsed_time: f.int(11)?,
        crs_elapsed_time: f.int(12)?,
        air_time: f.int(13)?,
        arr_delay: f.int(14)?,
        dep_delay: f.int(15)?,
        origin: f.required_text(16)?,
        dest: f.required_text(17)?,
        distance: f.int(18)?,
        taxi_in: f.int(19)?,
        taxi_out: f.int(20)?,
        cancelled: f.flag(21)?,
        cancellation_code: f.text(22),
        diverted: f.flag(23)?,
        carrier_delay: f.int(24)?,
        weather_delay: f.int(25)?,
        nas_delay: f.int(26)?,
        security_delay: f.int(27)?,
        late_aircraft_delay: f.int(28)?,
        is_arr_delayed: if long { f.flag(29)? } else { None },
        is_dep_delayed: if long { f.flag(30)? } else { None },
    })
}

#[runnel_sdk::map]
fn to_json(record: &Record) -> Result<Vec<Output>> {
    let flight = parse(record.value_str()?)?;
    Ok(vec![Output::json(&flight)?.with_key_opt(record.key())])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = "1987,10,14,3,741,730,912,849,PS,1451,NA,91,79,NA,23,11,SAN,SFO,447,NA,NA,0,NA,0,NA,NA,NA,NA,NA,YES,YES";

    #[test]
    fn parses_the_original_demo_line() {
        let f = parse(DEMO).unwrap();
        assert_eq!(
            (f.year, f.carrier, f.origin, f.dest, f.distance),
            (1987, "PS", "SAN", "SFO", Some(447))
        );
        assert_eq!(
            (f.tail_num, f.air_time, f.is_dep_delayed),
            (None, None, Some(true))
        );
        let short: Vec<&str> = DEMO.split(',').take(29).collect();
        assert_eq!(parse(&short.join(",")).unwrap().is_arr_delayed, None);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = DEMO.replacen("741", "7x1", 1);
        assert_eq!(
            parse(&bad).unwrap_err().message(),
            "field 5 (DepTime) is \"7x1\", not a whole number or NA"
        );
        assert_eq!(
            parse("1,2,3").unwrap_err().message(),
            "expected 29 or 31 comma-separated fields, found 3"
        );
        let no_origin = DEMO.replace("SAN", "NA");
        assert_eq!(
            parse(&no_origin).unwrap_err().message(),
            "field 17 (Origin) is NA, but it is required"
        );
        assert!(
            parse("Year,Month")
                .unwrap_err()
                .message()
                .contains("header")
        );
    }
}
