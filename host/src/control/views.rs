//! What an operator reads of a deployment beyond its status, from any node:
//! its log lines and events (`GET /v1/deployments/{name}/logs`, from the
//! logs topic, see [`crate::journal`]), its throughput and lag over the last
//! 15 minutes (`.../series`, from every node's report, see [`super::series`])
//! and the tail of its dead-letter topic (`.../dead-letters`).
//!
//! Each read is bounded (lines, records, bytes, time) whatever another
//! client wrote to the topics it reads.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, AppState};
use crate::kafka::KafkaOptions;
use crate::registry::now_ms;
use crate::runner::headers;

type S = State<std::sync::Arc<AppState>>;
type Result<T> = std::result::Result<T, ApiError>;

/// How long a read of a topic may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The default and largest number of dead letters one call returns.
const DEAD_LETTERS: usize = 50;
const MAX_DEAD_LETTERS: usize = 500;
/// The bytes of a dead letter's key and value shown.
const PREVIEW: usize = 256;
/// How far back the logs go when not told: 10 minutes.
const LOGS_SINCE: Duration = Duration::from_secs(600);
/// The default number of lines of one call.
const LOG_LINES: usize = 1_000;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// How far back: a duration (`10m`, `1h`, `90s`), default 10 minutes.
    since: Option<String>,
    /// From this time, in ms since the epoch (instead of `since`).
    since_ms: Option<u64>,
    /// After the cursor a previous call returned as `next` (for `--follow`).
    after: Option<i64>,
    /// At most this many lines, the last ones (default 1,000, at most 10,000).
    limit: Option<usize>,
}

/// Parses `10m`, `2h`, `30s` (humantime) into a duration.
pub fn parse_since(since: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(since.trim())
        .map_err(|e| format!("since {since:?} is not a duration such as 10m, 2h or 30s: {e}"))
}

pub async fn logs(
    State(state): S,
    Path(name): Path<String>,
    query: std::result::Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    crate::rules::check_name(&name).map_err(bad)?;
    let from = match (q.after, q.since_ms, q.since.as_deref()) {
        (Some(after), None, None) => crate::journal::From::After(after),
        (None, Some(ms), None) => crate::journal::From::Time(ms),
        (None, None, since) => {
            let back = match since {
                Some(s) => parse_since(s).map_err(bad)?,
                None => LOGS_SINCE,
            };
            crate::journal::From::Time(now_ms().saturating_sub(back.as_millis() as u64))
        }
        _ => return Err(bad("give one of after, since_ms and since")),
    };
    let limit = q.limit.unwrap_or(LOG_LINES);
    if limit == 0 || limit > crate::journal::MAX_LINES {
        return Err(bad(format!(
            "limit {limit} is not between 1 and {}",
            crate::journal::MAX_LINES
        )));
    }
    let (kafka, topic) = (state.kafka.clone(), state.registry.topics().logs.clone());
    let deployment = name.clone();
    let read = tokio::task::spawn_blocking(move || {
        crate::journal::read(&kafka, &topic, &deployment, from, limit, READ_TIMEOUT)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok(Json(json!({
        "name": name,
        "lines": read.lines,
        "next": read.next,
        "skipped": read.skipped,
        "until_ms": now_ms(),
    })))
}

pub async fn series(State(state): S, Path(name): Path<String>) -> Result<Json<Value>> {
    if state.registry.deployment(&name).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no deployment {name:?}"),
        ));
    }
    let reports = state.registry.nodes(super::REPORT_STALE);
    let window = (super::series::STEP * super::series::POINTS as u32).as_millis() as u64;
    let points = super::series::merge(&reports, &name, now_ms().saturating_sub(window));
    Ok(Json(json!({
        "name": name,
        "step_ms": super::series::STEP.as_millis() as u64,
        "points": points,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersQuery {
    /// How many of the last dead letters (default 50, at most 500).
    limit: Option<usize>,
}

pub async fn dead_letters(
    State(state): S,
    Path(name): Path<String>,
    query: std::result::Result<Query<DeadLettersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEAD_LETTERS);
    if limit == 0 || limit > MAX_DEAD_LETTERS {
        return Err(bad(format!(
            "limit {limit} is not between 1 and {MAX_DEAD_LETTERS}"
        )));
    }
    let Some(record) = state.registry.deployment(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no deployment {name:?}"),
        ));
    };
    let topic = record
        .dead_letter
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", record.output.first()));
    let kafka = state.kafka.clone();
    let read = {
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || tail(&kafka, &topic, limit))
    }
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok(Json(
        json!({ "name": name, "topic": topic, "dead_letters": read }),
    ))
}

/// Lossy UTF-8 of at most [`PREVIEW`] bytes, control characters shown as
/// `\u{..}`.
fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(PREVIEW)];
    let mut s: String = String::from_utf8_lossy(shown)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    if bytes.len() > PREVIEW {
        s.push('…');
    }
    s
}

/// The last `limit` records of `topic` (every partition), newest first,
/// with what runnel's dead-letter headers say of each.
pub fn tail(kafka: &KafkaOptions, topic: &str, limit: usize) -> anyhow::Result<Vec<Value>> {
    use anyhow::Context as _;
    let consumer: BaseConsumer = kafka
        .consumer(&format!("runnel.dead-letters.{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a reader of the dead-letter topic")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, READ_TIMEOUT)
            .with_context(|| format!("cannot read the end of {topic} [{p}]"))?;
        let start = (high - limit as i64).max(low);
        if start < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
            ends.insert(p, high);
        }
    }
    let mut found = Vec::new();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl)?;
    let until = std::time::Instant::now() + READ_TIMEOUT;
    let mut done = std::collections::HashSet::new();
    while done.len() < ends.len() && std::time::Instant::now() < until {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.context("reading the dead-letter topic")?;
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition());
        }
        let raw: Vec<(&[u8], Option<&[u8]>)> = m
            .headers()
            .map(|h| crate::kafka::headers::raw(h).collect())
            .unwrap_or_default();
        let header = |name: &str| {
            raw.iter()
                .find(|(k, _)| *k == name.as_bytes())
                .and_then(|(_, v)| *v)
                .map(|v| {
                    let mut s = String::from_utf8_lossy(v).into_owned();
                    if s.len() > 1024 {
                        s.truncate(s.floor_char_boundary(1024));
                        s.push('…');
                    }
                    s
                })
        };
        let number = |name: &str| header(name).and_then(|v| v.parse::<i64>().ok());
        found.push(json!({
            "partition": m.partition(),
            "offset": m.offset(),
            "timestamp_ms": m.timestamp().to_millis(),
            "kind": header(headers::ERROR_KIND),
            "error": header(headers::ERROR),
            "source_topic": header(headers::SOURCE_TOPIC),
            "source_partition": number(headers::SOURCE_PARTITION),
            "source_offset": number(headers::SOURCE_OFFSET),
            "key_preview": m.key().map(preview),
            "value_preview": m.payload().map(preview),
            "value_size": m.payload().map_or(0, <[u8]>::len),
        }));
    }
    found.sort_by_key(|v| {
        std::cmp::Reverse((
            v["timestamp_ms"].as_i64().unwrap_or(0),
            v["offset"].as_i64().unwrap_or(0),
        ))
    });
    found.truncate(limit);
    Ok(found)
}

/// What every node reports of a deployment, summed: for the overview.
pub fn cluster_summary(reports: &[Value], name: &str) -> Value {
    let mut nodes = Vec::new();
    let (mut records_in, mut records_out, mut dead, mut traps) = (0u64, 0u64, 0u64, 0u64);
    let mut lag: Option<i64> = None;
    let mut last_error: Option<Value> = None;
    for report in reports {
        let Some(d) = super::reported_deployment(report, name) else {
            continue;
        };
        nodes.push(report["node"].clone());
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        records_in = records_in.saturating_add(n("records_in"));
        records_out = records_out.saturating_add(n("records_out"));
        dead = dead.saturating_add(n("dead_lettered"));
        traps = traps.saturating_add(n("traps"));
        for p in d["partitions"].as_array().into_iter().flatten() {
            if let Some(l) = p["lag"].as_i64() {
                lag = Some(lag.unwrap_or(0).saturating_add(l));
            }
        }
        if last_error.is_none() && d["last_error"].is_string() {
            last_error = Some(d["last_error"].clone());
        }
    }
    let recent = now_ms().saturating_sub(3 * super::series::STEP.as_millis() as u64);
    let last = super::series::merge(reports, name, recent).pop();
    json!({
        "nodes": nodes,
        "records_in": records_in,
        "records_out": records_out,
        "dead_lettered": dead,
        "traps": traps,
        "lag": lag,
        "in_per_s": last.map(|p| p.in_per_s),
        "out_per_s": last.map(|p| p.out_per_s),
        "last_error": last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_is_bounded_and_shows_no_control_characters() {
        let p = preview(&[0x1b, b'[', b'2', b'J', 0xff, b'a']);
        assert!(!p.contains('\u{1b}'), "{p:?}");
        assert!(p.ends_with('a'));
        let long = preview(&vec![b'x'; 10_000]);
        assert!(long.len() <= PREVIEW + 3, "{}", long.len());
    }

    #[test]
    fn since_takes_durations_and_says_what_it_wants() {
        assert_eq!(parse_since("10m"), Ok(Duration::from_secs(600)));
        let e = parse_since("yesterday").unwrap_err();
        assert!(e.contains("10m"), "{e}");
    }
}
