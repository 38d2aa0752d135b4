//! `GET /v1/deployments/{name}/state/{store}`: a processor's state, asked
//! of any node and answered by the one that holds the key's partition.
//!
//! A key lives in the partition its records went to: Kafka's default
//! partitioner (murmur2, [`crate::kafka::partitioner`]) over the input's
//! partitions, unless the request names the partition. A node that holds
//! the partition restored answers from its store; one that holds it while
//! it restores answers 503 "restoring, retry"; any other forwards the
//! request to the node whose report lists the partition (once: a forwarded
//! request is answered where it lands, or with a 503 to retry). So an
//! answer is never a value from a store that is not the partition's
//! current one.
//!
//! Without a key it lists a store's entries in pages, partition by
//! partition, in key order within each: `next` is the cursor of the next
//! page, `null` after the last.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::AppState;
use crate::kafka::partitioner;
use crate::runner::query::Lookup;

/// The header of a request one node forwards to another: answered there,
/// never forwarded again.
pub const FORWARDED: &str = "x-runnel-forwarded";
/// Entries per page of a listing, by default and at most.
pub const PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// About how many bytes of keys and values one page holds at most.
const PAGE_BYTES: usize = 1 << 20;
/// How long a node waits for the one it forwards to.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// The key as UTF-8 text.
    key: Option<String>,
    /// The key as hex, for keys that are not text (the SDK's integer keys).
    key_hex: Option<String>,
    /// The partition to look in, instead of the key's by the partitioner.
    partition: Option<i32>,
    /// A listing's cursor: the `next` of the page before.
    after: Option<String>,
    /// Entries per page of a listing (1 to 1000, default 100).
    limit: Option<usize>,
}

/// An answer: a status and a JSON body (an error is `{"error": ...}`).
#[derive(Debug)]
pub struct Answer(StatusCode, Value);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(self.1)).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    Answer(status, json!({ "error": message.into() }))
}

fn retry(message: impl Into<String>) -> Answer {
    Answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": message.into(), "retry": true }),
    )
}

fn store_failed(e: crate::state::StoreError) -> Answer {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the state store failed: {e}"),
    )
}

/// `bytes` as JSON: UTF-8 text (or `null`) and hex.
fn bytes_json(bytes: &[u8]) -> (Value, String) {
    (
        std::str::from_utf8(bytes).map_or(Value::Null, Value::from),
        hex::encode(bytes),
    )
}

pub async fn get_state(
    State(state): State<Arc<AppState>>,
    Path((name, store)): Path<(String, String)>,
    query: Result<Query<StateQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Answer {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; a query takes key or key_hex, partition, after and limit",
                    e.body_text()
                ),
            );
        }
    };
    match answer(&state, &name, &store, q, &headers).await {
        Ok(a) | Err(a) => a,
    }
}

async fn answer(
    state: &AppState,
    name: &str,
    store: &str,
    q: StateQuery,
    headers: &HeaderMap,
) -> Result<Answer, Answer> {
    // A deployment of the registry, or of this node's config file.
    let (topic, stores) = match state.registry.deployment(name) {
        Some(r) => (r.input.first().cloned().unwrap_or_default(), r.stores),
        None => {
            let served = state.node.served(name).ok_or_else(|| {
                error(
                    StatusCode::NOT_FOUND,
                    format!("no deployment named {name:?}"),
                )
            })?;
            (served.topic().to_owned(), served.stores().to_vec())
        }
    };
    if stores.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("deployment {name:?} keeps no state: only a processor declares stores"),
        ));
    }
    if !stores.iter().any(|s| s == store) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "deployment {name:?} has no store named {store:?} (it declares {})",
                stores.join(", ")
            ),
        ));
    }
    let key = match (&q.key, &q.key_hex) {
        (Some(_), Some(_)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "give the key once: as `key` (text) or as `key_hex`, not both",
            ));
        }
        (Some(k), None) => Some(k.as_bytes().to_vec()),
        (None, Some(h)) => Some(hex::decode(h).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("key_hex {h:?} is not hex: {e}"),
            )
        })?),
        (None, None) => None,
    };
    if let Some(k) = &key
        && k.len() > crate::rules::STATE_MAX_KEY_BYTES
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "a key of {} bytes, over the limit of {} bytes of a state key",
                k.len(),
                crate::rules::STATE_MAX_KEY_BYTES
            ),
        ));
    }
    let limit = q.limit.unwrap_or(PAGE);
    if key.is_none() && !(1..=MAX_PAGE).contains(&limit) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is not 1 to {MAX_PAGE}"),
        ));
    }
    if key.is_some() && (q.after.is_some() || q.limit.is_some()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "`after` and `limit` page a listing; a query of one key takes neither",
        ));
    }
    let partitions = partitions_of(state, name, &topic).await?;
    if let Some(p) = q.partition
        && !(0..partitions).contains(&p)
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("partition {p} is not one of the {partitions} of {topic}"),
        ));
    }
    let forwarded = headers.contains_key(FORWARDED);
    let at = Target {
        state,
        name,
        store,
        topic: &topic,
        forwarded,
        headers,
    };
    match key {
        Some(key) => {
            let partition = q
                .partition
                .unwrap_or_else(|| partitioner::partition(&key, partitions));
            at.get(partition, &key).await
        }
        None => {
            let (first, after) = match &q.after {
                Some(cursor) => parse_cursor(cursor, partitions)?,
                None => (q.partition.unwrap_or(0), None),
            };
            if q.partition.is_some_and(|p| p != first) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "the cursor `after` is of another partition than `partition`",
                ));
            }
            let last = q.partition.unwrap_or(partitions - 1);
            at.list(first, last, after, limit).await
        }
    }
}

/// How many partitions the deployment's input has: as this node's run of
/// it found, or else from the cluster's metadata.
async fn partitions_of(state: &AppState, name: &str, topic: &str) -> Result<i32, Answer> {
    if let Some(n) = state.node.served(name).and_then(|s| s.partitions()) {
        return Ok(n);
    }
    let kafka = state.kafka.clone();
    let topic_owned = topic.to_owned();
    let n = tokio::task::spawn_blocking(move || {
        crate::kafka::partition_count(&kafka, &topic_owned, Duration::from_secs(10))
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        retry(format!(
            "cannot read how many partitions the input {topic} has: {e:#}"
        ))
    })?;
    n.ok_or_else(|| retry(format!("the input topic {topic} does not exist (yet)")))
}

/// A listing's cursor: `<partition>:<hex of the last key>` (no key: from
/// the partition's first).
fn parse_cursor(cursor: &str, partitions: i32) -> Result<(i32, Option<Vec<u8>>), Answer> {
    let bad = || {
        error(
            StatusCode::BAD_REQUEST,
            format!("the cursor {cursor:?} is not one this API gave (`next` of a page)"),
        )
    };
    let (p, k) = cursor.split_once(':').ok_or_else(bad)?;
    let p: i32 = p.parse().map_err(|_| bad())?;
    if !(0..partitions).contains(&p) {
        return Err(bad());
    }
    let k = if k.is_empty() {
        None
    } else {
        Some(hex::decode(k).map_err(|_| bad())?)
    };
    Ok((p, k))
}

struct Target<'a> {
    state: &'a AppState,
    name: &'a str,
    store: &'a str,
    topic: &'a str,
    forwarded: bool,
    headers: &'a HeaderMap,
}

impl Target<'_> {
    fn node(&self) -> &str {
        &self.state.node_id
    }

    async fn get(&self, partition: i32, key: &[u8]) -> Result<Answer, Answer> {
        let lookup = match self.state.node.served(self.name) {
            Some(served) => served
                .get(self.store, partition, key)
                .map_err(store_failed)?,
            None => Lookup::NotHere,
        };
        match lookup {
            Lookup::Here(value) => {
                let (key_text, key_hex) = bytes_json(key);
                let mut out = json!({
                    "deployment": self.name,
                    "store": self.store,
                    "topic": self.topic,
                    "partition": partition,
                    "node": self.node(),
                    "key": key_text,
                    "key_hex": key_hex,
                    "found": value.is_some(),
                    "value": Value::Null,
                    "value_hex": Value::Null,
                });
                if let Some(v) = value {
                    let (text, hex) = bytes_json(&v);
                    out["value"] = text;
                    out["value_hex"] = hex.into();
                }
                Ok(Answer(StatusCode::OK, out))
            }
            Lookup::Restoring => Err(self.restoring(partition)),
            Lookup::NotHere => {
                let query = format!("key_hex={}&partition={partition}", hex::encode(key));
                self.forward(partition, &query).await
            }
        }
    }

    fn restoring(&self, partition: i32) -> Answer {
        retry(format!(
            "partition {partition} of {} is restoring its state on node {}: retry",
            self.topic,
            self.node()
        ))
    }

    /// Up to `limit` entries from partition `first` (after key `after`) on,
    /// through partition `last`: the rest of one partition, and the next
    /// partitions while the page is still empty.
    async fn list(
        &self,
        first: i32,
        last: i32,
        mut after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Answer, Answer> {
        let mut partition = first;
        loop {
            let (entries, more) = self.page(partition, after.as_deref(), limit).await?;
            let next = match (more, entries.last()) {
                (true, Some(last_entry)) => Some(format!(
                    "{partition}:{}",
                    last_entry["key_hex"].as_str().unwrap_or_default()
                )),
                _ if partition < last => Some(format!("{}:", partition + 1)),
                _ => None,
            };
            if !entries.is_empty() || next.is_none() {
                return Ok(Answer(
                    StatusCode::OK,
                    json!({
                        "deployment": self.name,
                        "store": self.store,
                        "topic": self.topic,
                        "partition": partition,
                        "entries": entries,
                        "next": next,
                    }),
                ));
            }
            partition += 1;
            after = None;
        }
    }

    /// One partition's entries after `after`: here, or from its node.
    async fn page(
        &self,
        partition: i32,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Value>, bool), Answer> {
        let lookup = match self.state.node.served(self.name) {
            Some(served) => served
                .scan(self.store, partition, after, limit, PAGE_BYTES)
                .map_err(store_failed)?,
            None => Lookup::NotHere,
        };
        match lookup {
            Lookup::Here(page) => {
                let entries = page
                    .entries
                    .iter()
                    .map(|(k, v)| {
                        let (key, key_hex) = bytes_json(k);
                        let (value, value_hex) = bytes_json(v);
                        json!({"key": key, "key_hex": key_hex, "value": value, "value_hex": value_hex})
                    })
                    .collect();
                Ok((entries, page.more))
            }
            Lookup::Restoring => Err(self.restoring(partition)),
            Lookup::NotHere => {
                let cursor = format!("{partition}:{}", after.map(hex::encode).unwrap_or_default());
                let query = format!("partition={partition}&after={cursor}&limit={limit}");
                let Answer(status, body) = self.forward(partition, &query).await?;
                if status != StatusCode::OK {
                    return Err(Answer(status, body));
                }
                let entries = body["entries"].as_array().cloned().unwrap_or_default();
                Ok((entries, !body["next"].is_null()))
            }
        }
    }

    /// Asks the node whose report lists `partition` of the input, with this
    /// query string; its answer, as it gave it.
    async fn forward(&self, partition: i32, query: &str) -> Result<Answer, Answer> {
        if self.forwarded {
            return Err(retry(format!(
                "partition {partition} of {} is no longer on node {} (a rebalance): retry",
                self.topic,
                self.node()
            )));
        }
        let owner = self
            .state
            .registry
            .nodes(super::REPORT_STALE)
            .into_iter()
            .find(|report| {
                report["node"].as_str() != Some(self.node())
                    && holds(report, self.name, self.topic, partition)
            });
        let Some(owner) = owner else {
            return Err(retry(format!(
                "no node holds partition {partition} of {} for {} now (a rebalance, or the \
                 deployment is paused): retry",
                self.topic, self.name
            )));
        };
        let node = owner["node"].as_str().unwrap_or("?").to_owned();
        let api = owner["api"].as_str().unwrap_or_default().to_owned();
        let mut url = url::Url::parse(&api).map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                format!("node {node} reports an API address that is not a URL ({api:?}): {e}"),
            )
        })?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["v1", "deployments", self.name, "state", self.store]);
        }
        url.set_query(Some(query));
        // No redirects: the caller's credentials go to the node the report
        // names, and nowhere it might send them on.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let mut request = client
            .get(url)
            .timeout(FORWARD_TIMEOUT)
            .header(FORWARDED, self.node());
        if let Some(auth) = self.headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, auth.as_bytes());
        }
        let unreachable = |e: reqwest::Error| {
            error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "node {node} holds partition {partition} of {} but its API at {api} did not \
                     answer: {e}",
                    self.topic
                ),
            )
        };
        let response = request.send().await.map_err(unreachable)?;
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body: Value = response.json().await.map_err(unreachable)?;
        Ok(Answer(status, body))
    }
}

/// Whether a node's report says it runs `partition` of `topic` for
/// deployment `name`.
fn holds(report: &Value, name: &str, topic: &str, partition: i32) -> bool {
    report["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["name"] == name)
        .flat_map(|d| d["partitions"].as_array().into_iter().flatten())
        .any(|p| p["topic"] == topic && p["partition"] == partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_cursor("2:", 3).ok().unwrap(), (2, None));
        assert_eq!(
            parse_cursor("0:6b30", 3).ok().unwrap(),
            (0, Some(b"k0".to_vec()))
        );
        for bad in ["", "x", "3:", "-1:", "1:zz", "1"] {
            assert!(parse_cursor(bad, 3).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_report_holds_the_partitions_it_lists() {
        let report = json!({
            "node": "n1",
            "deployments": [
                {"name": "other", "partitions": [{"topic": "in", "partition": 1}]},
                {"name": "count", "partitions": [{"topic": "in", "partition": 2}]},
            ],
        });
        assert!(holds(&report, "count", "in", 2));
        assert!(!holds(&report, "count", "in", 1));
        assert!(!holds(&report, "count", "other-topic", 2));
        assert!(!holds(&json!({"node": "n2"}), "count", "in", 2));
    }
}
