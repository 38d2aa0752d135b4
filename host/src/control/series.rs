//! Each node's small ring of samples of its deployments' throughput and lag,
//! carried in its report, and their merge over every node's report: the
//! charts of the last 15 minutes (`GET /v1/deployments/{name}/series`) and
//! the rates of the overview (`GET /v1/deployments`).
//!
//! A sample is taken every [`STEP`], at step boundaries of the wall clock so
//! that every node's samples fall in the same buckets; a node keeps
//! [`POINTS`] of them per deployment. A report carries, per deployment,
//! the first bucket and, per bucket, the records in and out over that step
//! (a difference of the status counters; a restart, which zeroes them,
//! counts from zero) and the lag summed over its partitions. A report
//! must stay under [`crate::registry::MAX_NODE_REPORT`]: with many
//! deployments it carries fewer points ([`Rings::report`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

use crate::runner::DeploymentStatus;

/// How often a node samples its deployments.
pub const STEP: Duration = Duration::from_secs(10);
/// How many samples a node keeps per deployment: 15 minutes.
pub const POINTS: usize = 90;
/// What the series of one report may take, at most.
const REPORT_BUDGET: usize = 160 << 10;

#[derive(Debug, Clone, Copy)]
struct Sample {
    bucket: u64,
    records_in: u64,
    records_out: u64,
    lag: Option<i64>,
}

/// A node's rings, one per deployment it runs.
#[derive(Debug, Default)]
pub struct Rings(Mutex<HashMap<String, VecDeque<Sample>>>);

/// The bucket (a multiple of [`STEP`] in ms since the epoch) of `at_ms`.
pub fn bucket(at_ms: u64) -> u64 {
    let step = STEP.as_millis() as u64;
    at_ms / step * step
}

/// The lag of a deployment on this node: the sum over its partitions that
/// know theirs.
pub fn lag(s: &DeploymentStatus) -> Option<i64> {
    let lags: Vec<i64> = s.partitions.iter().filter_map(|p| p.lag).collect();
    (!lags.is_empty()).then(|| lags.iter().sum())
}

impl Rings {
    /// Samples every deployment of `statuses` at `at_ms`; forgets the rings
    /// of deployments no longer there.
    pub fn sample(&self, statuses: &[DeploymentStatus], at_ms: u64) {
        let mut rings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        rings.retain(|name, _| statuses.iter().any(|s| &s.name == name));
        let bucket = bucket(at_ms);
        let step = STEP.as_millis() as u64;
        for s in statuses {
            // A deployment's counters start at zero where it starts: the
            // base of its first step, so that what it did before its first
            // sample counts.
            let ring = rings.entry(s.name.clone()).or_insert_with(|| {
                VecDeque::from([Sample {
                    bucket: bucket.saturating_sub(step),
                    records_in: 0,
                    records_out: 0,
                    lag: None,
                }])
            });
            let sample = Sample {
                bucket,
                records_in: s.records_in,
                records_out: s.records_out,
                lag: lag(s),
            };
            match ring.back_mut() {
                Some(last) if last.bucket == bucket => *last = sample,
                _ => ring.push_back(sample),
            }
            // One more than POINTS: the first is the base of the first step.
            while ring.len() > POINTS + 1 {
                ring.pop_front();
            }
        }
    }

    /// Each deployment's series for the report, as
    /// `{"from_ms", "step_ms", "in": [...], "out": [...], "lag": [...]}`,
    /// a value per step from `from_ms` (null where no sample was taken),
    /// with as many of the last steps as fit the report's budget.
    pub fn report(&self) -> BTreeMap<String, Value> {
        let rings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // About 24 bytes per step (three numbers and their commas).
        let per_deployment = REPORT_BUDGET / rings.len().max(1);
        let points = (per_deployment.saturating_sub(80) / 24).min(POINTS);
        let step = STEP.as_millis() as u64;
        let mut out = BTreeMap::new();
        if points == 0 {
            return out;
        }
        for (name, ring) in rings.iter() {
            let Some(last) = ring.back() else { continue };
            let from = last.bucket.saturating_sub(step * (points as u64 - 1));
            let mut ins = vec![Value::Null; points];
            let mut outs = vec![Value::Null; points];
            let mut lags = vec![Value::Null; points];
            for pair in ring.iter().collect::<Vec<_>>().windows(2) {
                let (before, s) = (pair[0], pair[1]);
                if s.bucket < from {
                    continue;
                }
                let i = ((s.bucket - from) / step) as usize;
                if i >= points {
                    continue;
                }
                // A step after a gap covers more than one step of counts;
                // a restart zeroes the counters.
                let steps = ((s.bucket - before.bucket) / step).max(1);
                let delta = |now: u64, then: u64| {
                    if now >= then { now - then } else { now }
                };
                ins[i] = json!(delta(s.records_in, before.records_in) / steps);
                outs[i] = json!(delta(s.records_out, before.records_out) / steps);
                lags[i] = json!(s.lag);
            }
            out.insert(
                name.clone(),
                json!({ "from_ms": from, "step_ms": step, "in": ins, "out": outs, "lag": lags }),
            );
        }
        out
    }
}

/// One point of a merged series.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Point {
    pub at_ms: u64,
    pub in_per_s: f64,
    pub out_per_s: f64,
    pub lag: Option<i64>,
}

/// `name`'s series over every node's report, summed per step, for the
/// steps since `since_ms`, in time order. What a report carries that is
/// not a series (another client wrote it) counts as nothing.
pub fn merge(reports: &[Value], name: &str, since_ms: u64) -> Vec<Point> {
    let mut by_bucket: BTreeMap<u64, Point> = BTreeMap::new();
    for report in reports {
        let Some(d) = super::reported_deployment(report, name) else {
            continue;
        };
        let series = &d["series"];
        let (Some(from), Some(step)) = (series["from_ms"].as_u64(), series["step_ms"].as_u64())
        else {
            continue;
        };
        if step == 0 {
            continue;
        }
        let per_s = step as f64 / 1000.0;
        let column = |key: &str| series[key].as_array().cloned().unwrap_or_default();
        let (ins, outs, lags) = (column("in"), column("out"), column("lag"));
        let n = ins.len().max(outs.len()).max(lags.len()).min(POINTS * 4);
        for i in 0..n {
            let at_ms = from.saturating_add(step.saturating_mul(i as u64));
            if at_ms < since_ms {
                continue;
            }
            let (r_in, r_out, lag) = (
                ins.get(i).and_then(Value::as_u64),
                outs.get(i).and_then(Value::as_u64),
                lags.get(i).and_then(Value::as_i64),
            );
            if r_in.is_none() && r_out.is_none() && lag.is_none() {
                continue;
            }
            let p = by_bucket.entry(at_ms).or_insert(Point {
                at_ms,
                ..Point::default()
            });
            p.in_per_s += r_in.unwrap_or(0) as f64 / per_s;
            p.out_per_s += r_out.unwrap_or(0) as f64 / per_s;
            if let Some(l) = lag {
                p.lag = Some(p.lag.unwrap_or(0).saturating_add(l));
            }
        }
    }
    by_bucket.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, records_in: u64, records_out: u64) -> DeploymentStatus {
        let mut s = DeploymentStatus::named(name, 1, "00", None);
        s.records_in = records_in;
        s.records_out = records_out;
        s
    }

    #[test]
    fn a_ring_reports_rates_per_step_and_two_nodes_merge_into_one_series() {
        let step = STEP.as_millis() as u64;
        let t0 = 1_000 * step;
        let a = Rings::default();
        let b = Rings::default();
        for i in 0..5u64 {
            a.sample(&[status("d", i * 100, i * 50)], t0 + i * step + 3);
            b.sample(&[status("d", i * 10, i * 10)], t0 + i * step + 7);
        }
        let reports: Vec<Value> = [&a, &b]
            .iter()
            .map(|r| {
                let series = r.report();
                json!({ "deployments": [{ "name": "d", "series": series["d"] }] })
            })
            .collect();
        let points = merge(&reports, "d", 0);
        assert_eq!(points.len(), 5, "{points:?}");
        assert_eq!(points[0].at_ms, t0);
        assert_eq!(points[0].in_per_s, 0.0);
        let per_s = step as f64 / 1000.0;
        for p in &points[1..] {
            assert_eq!(p.in_per_s, 110.0 / per_s, "{p:?}");
            assert_eq!(p.out_per_s, 60.0 / per_s, "{p:?}");
        }
        assert!(merge(&reports, "other", 0).is_empty());
        assert_eq!(merge(&reports, "d", t0 + 3 * step).len(), 2);

        // What a deployment did before its first sample counts in its
        // first step (its counters started at zero).
        let c = Rings::default();
        c.sample(&[status("d", 500, 400)], t0 + 1);
        let s = c.report();
        assert_eq!(s["d"]["in"].as_array().unwrap().last(), Some(&json!(500)));
        assert_eq!(s["d"]["out"].as_array().unwrap().last(), Some(&json!(400)));
    }

    #[test]
    fn a_restart_counts_from_zero_and_a_report_with_many_deployments_stays_small() {
        let step = STEP.as_millis() as u64;
        let (r, t0) = (Rings::default(), 1_000 * step);
        r.sample(&[status("d", 1_000, 0)], t0 + step);
        r.sample(&[status("d", 30, 0)], t0 + 2 * step);
        let s = r.report();
        assert_eq!(s["d"]["in"].as_array().unwrap().last(), Some(&json!(30)));

        let many = Rings::default();
        let statuses: Vec<DeploymentStatus> = (0..2_000)
            .map(|i| status(&format!("deployment-{i}"), 123_456_789, 123_456_789))
            .collect();
        for i in 0..=POINTS as u64 {
            many.sample(&statuses, t0 + i * step);
        }
        let bytes = serde_json::to_vec(&many.report()).unwrap().len();
        assert!(bytes < REPORT_BUDGET + (64 << 10), "{bytes}");
    }

    #[test]
    fn a_series_that_another_client_wrote_counts_as_nothing() {
        let reports = vec![
            json!({ "deployments": [{ "name": "d", "series": { "from_ms": 0, "step_ms": 0 } }] }),
            json!({ "deployments": [{ "name": "d", "series": "garbage" }] }),
            json!({ "deployments": [{ "name": "d", "series": { "from_ms": u64::MAX, "step_ms": u64::MAX, "in": [1, 2, 3] } }] }),
            json!("not a report"),
        ];
        let points = merge(&reports, "d", 0);
        assert!(points.len() <= 1, "{points:?}");
    }
}
