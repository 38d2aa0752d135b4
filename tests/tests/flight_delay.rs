//! The flight-delay scorer (examples/flight-delay) as a Wasm component: its
//! raw scores equal Python LightGBM's bit for bit on the committed parity
//! fixture, for both models, and its decisions follow the threshold's logit.
//! Malformed flights are per-record errors naming the field.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::path::PathBuf;
use std::sync::Arc;

use runnel_abi::BatchBuilder;
use runnel_host::engine::{Limits, Outcome, Worker};
use runnel_tests::{engine, guest, guests};
use serde_json::Value;

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/flight-delay")
        .join(path)
}

fn scorer(model: &str) -> (Worker, f64) {
    let module = engine(None)
        .load("flight-delay", &guest(guests::FLIGHT_DELAY))
        .unwrap();
    let bytes = std::fs::read(example(&format!("model/{model}.json"))).unwrap();
    let logit = serde_json::from_slice::<Value>(&bytes).unwrap()["threshold_logit"]
        .as_f64()
        .unwrap();
    let worker = Worker::new(
        Arc::new(module),
        Limits::default(),
        vec![],
        Some(bytes.into()),
    )
    .unwrap();
    (worker, logit)
}

/// Runs `inputs` through the scorer: each one's output JSON, or its error.
fn score(worker: &mut Worker, inputs: &[&str]) -> Vec<Result<Value, String>> {
    let mut out = Vec::new();
    for chunk in inputs.chunks(256) {
        let mut batch = BatchBuilder::of_values(chunk.iter().map(|v| v.as_bytes()));
        let p = worker.process(&mut batch).unwrap();
        for (i, outcome) in p.outcomes.iter().enumerate() {
            out.push(match outcome {
                Outcome::Emit { .. } => {
                    let record = p.outputs_of(i).next().unwrap();
                    Ok(serde_json::from_slice(record.value().unwrap()).unwrap())
                }
                Outcome::Failed { message, .. } => Err(message.clone()),
                other => panic!("a scorer emits or fails, not {other:?}"),
            });
        }
    }
    out
}

#[test]
fn raw_scores_equal_lightgbm_bit_for_bit_for_both_models() {
    let fixture: Vec<Value> = std::fs::read_to_string(example("testdata/parity.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(fixture.len() >= 3000, "{} fixture rows", fixture.len());
    let inputs: Vec<&str> = fixture
        .iter()
        .map(|r| r["input"].as_str().unwrap())
        .collect();
    for (model, column) in [("flight-delay-v1", "raw_v1"), ("flight-delay-v2", "raw_v2")] {
        let (mut worker, logit) = scorer(model);
        let scored = score(&mut worker, &inputs);
        let mut mismatches = Vec::new();
        for (row, out) in fixture.iter().zip(&scored) {
            let out = out
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", row["key"]));
            let expected = row[column].as_f64().unwrap();
            let raw = out["raw_score"].as_f64().unwrap();
            if raw.to_bits() != expected.to_bits() {
                mismatches.push((row["key"].clone(), raw, expected));
            }
            let yes = out["prediction"] == "YES";
            assert_eq!(yes, expected >= logit, "{}: decision", row["key"]);
            assert_eq!(out["model"], model);
        }
        assert!(
            mismatches.is_empty(),
            "{model}: {} of {} raw scores differ from LightGBM's, e.g. {:?}",
            mismatches.len(),
            fixture.len(),
            &mismatches[..mismatches.len().min(5)]
        );
    }
}

#[test]
fn the_original_demo_line_is_scored_and_malformed_lines_name_the_field() {
    let (mut worker, _) = scorer("flight-delay-v1");
    let demo = "1987,10,14,3,741,730,912,849,PS,1451,NA,91,79,NA,23,11,SAN,SFO,447,NA,NA,0,NA,0,NA,NA,NA,NA,NA,YES,YES";
    let demo_1999 = demo.replacen("1987", "1999", 1);
    let bad_time = demo.replacen(",730,", ",7:30,", 1);
    let out = score(
        &mut worker,
        &[
            demo,
            &demo_1999,
            "1,2,3",
            &bad_time,
            "{\"month\": 1}",
            "Year,Month",
        ],
    );
    let first = out[0].as_ref().unwrap();
    assert!(matches!(first["prediction"].as_str(), Some("YES" | "NO")));
    assert_eq!(out[1].as_ref().unwrap(), first, "the year is not a feature");
    assert_eq!(
        out[2].as_ref().unwrap_err(),
        "expected 29 or 31 comma-separated fields, found 3"
    );
    assert_eq!(
        out[3].as_ref().unwrap_err(),
        "field 6 (CRSDepTime) is \"7:30\", not a whole number or NA"
    );
    assert_eq!(
        out[4].as_ref().unwrap_err(),
        "field \"day_of_week\" is missing (use null for unknown)"
    );
    assert!(out[5].as_ref().unwrap_err().contains("header line"));
}

#[test]
fn a_model_that_is_not_an_artifact_is_refused_with_the_reason() {
    let module = engine(None)
        .load("flight-delay", &guest(guests::FLIGHT_DELAY))
        .unwrap();
    let module = Arc::new(module);
    let refuse = |model: &[u8]| {
        Worker::new(
            module.clone(),
            Limits::default(),
            vec![],
            Some(model.into()),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(refuse(b"tree\nversion=v4").contains("not a runnel-lightgbm/1 JSON artifact"));
    let v1 = std::fs::read_to_string(example("model/flight-delay-v1.json")).unwrap();
    let broken = v1.replacen("num_leaves=", "num_leaves=x", 1);
    let err = refuse(broken.as_bytes());
    assert!(
        err.contains("tree 0: num_leaves=\\\"x") || err.contains("tree 0: num_leaves="),
        "{err}"
    );
}
