//! The HTTP admin API (axum). Its OpenAPI document is `docs/openapi.yaml`,
//! served at `/v1/openapi.yaml`. Every error is a JSON object
//! `{"error": "<a sentence saying what was wrong>"}` with a 4xx or 5xx status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::reconcile::Reconciled;
use crate::engine::{Engine, Limits, Worker, World};
use crate::kafka::KafkaOptions;
use crate::registry::{ArtifactKind, DeploymentRecord, Registry, Version, now_ms};
use crate::runner::Node;

/// The OpenAPI document, checked in at `docs/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub node: Arc<Node>,
    pub engine: Engine,
    pub kafka: KafkaOptions,
    pub token: Option<String>,
    pub reconciled: Arc<Reconciled>,
    pub max_model_bytes: usize,
    /// Partitions of the topics a deployment names that do not exist yet,
    /// created for it (`runnel dev`); `None` refuses such a deployment.
    pub create_topics: Option<i32>,
}

type S = State<Arc<AppState>>;

/// An error response: a status and a sentence.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type Result<T> = std::result::Result<T, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    let module_limit = state.engine.config().max_module_bytes;
    let model_limit = state.max_model_bytes;
    let v1 = Router::new()
        .route("/v1/openapi.yaml", get(openapi))
        .route(
            "/v1/modules",
            post(upload_module).layer(DefaultBodyLimit::max(module_limit + 1)),
        )
        .route(
            "/v1/models",
            post(upload_model).layer(DefaultBodyLimit::max(model_limit + 1)),
        )
        .route("/v1/deployments", get(list))
        .route("/v1/cluster", get(cluster))
        .route(
            "/v1/deployments/{name}",
            get(get_one).put(put_deployment).delete(delete),
        )
        .route("/v1/deployments/{name}/status", get(status))
        .route("/v1/deployments/{name}/pause", post(pause))
        .route("/v1/deployments/{name}/resume", post(resume))
        .route("/v1/deployments/{name}/rollback", post(rollback))
        .layer(DefaultBodyLimit::max(1 << 20))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such path; see /v1/openapi.yaml")
        })
        .with_state(state)
}

/// A bearer token, when configured, compared in constant time.
async fn auth(State(state): S, request: axum::extract::Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(token.as_bytes()).into();
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this API needs `Authorization: Bearer <token>` with the node's token",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Prometheus metrics of every deployment on this node.
async fn metrics(State(state): S) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics::render(&state.node.status()),
    )
}

/// 200 when the node can do its work: the registry is read (it is, once the
/// node serves), the broker answers, and no deployment here backs off or has
/// stopped; 503 with the reasons otherwise.
async fn readyz(State(state): S) -> (StatusCode, Json<Value>) {
    let kafka = state.kafka.clone();
    let broker = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer as _;
        let producer: rdkafka::producer::BaseProducer =
            kafka.producer().create().map_err(|e| e.to_string())?;
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let mut problems = Vec::new();
    if let Err(e) = &broker {
        problems.push(format!("the broker does not answer: {e}"));
    }
    for s in state.node.status() {
        match &s.state {
            crate::runner::DeploymentState::BackingOff { error, .. } => {
                problems.push(format!("deployment {:?} backs off: {error}", s.name));
            }
            crate::runner::DeploymentState::Failed { error, .. } => {
                problems.push(format!("deployment {:?} failed: {error}", s.name));
            }
            crate::runner::DeploymentState::Stopped => {
                problems.push(format!("deployment {:?} has stopped", s.name));
            }
            _ => {}
        }
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": problems.is_empty(),
            "registry": "caught up",
            "deployments": state.node.names().len(),
            "problems": problems,
        })),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

fn body(
    body: std::result::Result<Bytes, BytesRejection>,
    what: &str,
    limit: usize,
) -> Result<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the {what} is over the limit of {limit} bytes"),
        )
    };
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(e.status(), format!("cannot read the {what}: {e}"))
        }
    })?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the {what} is empty: send its bytes as the request body"),
        ));
    }
    Ok(bytes)
}

/// Accepted only if it is a component of a known world that compiles,
/// instantiates and starts: its `init` runs with the config given as query
/// parameters (`?config=key=value`, repeated) and, for a scorer, the model
/// named by `?model=sha256:...` (uploaded first). Nothing is stored otherwise.
async fn upload_module(
    State(state): S,
    Query(params): Query<Vec<(String, String)>>,
    upload: std::result::Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>)> {
    let limit = state.engine.config().max_module_bytes;
    let bytes = body(upload, "module", limit)?;
    let mut config = Vec::new();
    let mut model = None;
    for (k, v) in params {
        match k.as_str() {
            "config" => match v.split_once('=') {
                Some((key, value)) => config.push((key.to_owned(), value.to_owned())),
                None => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("config {v:?} is not KEY=VALUE"),
                    ));
                }
            },
            "model" => {
                let digest = strip_digest(&v);
                match state.registry.artifact(digest) {
                    Some((ArtifactKind::Model, bytes)) => model = Some(bytes),
                    _ => {
                        return Err(unprocessable(format!(
                            "no model {v} was uploaded: POST it to /v1/models first"
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter {other:?}: use config=KEY=VALUE or model=sha256:..."
                    ),
                ));
            }
        }
    }
    let engine = state.engine.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let module = engine.load("upload", &bytes)?;
        if module.world() == World::Scorer && model.is_none() {
            anyhow::bail!(
                "the module is a scorer: its init needs a model (upload it to /v1/models, then pass ?model=sha256:...)"
            );
        }
        let (world, size) = (module.world(), module.size());
        Worker::new(module.into(), Limits::default(), config, model).map_err(|e| {
            anyhow::anyhow!("{e} (pass the function's config as ?config=KEY=VALUE)")
        })?;
        Ok::<_, anyhow::Error>((world, size, bytes))
    })
    .await
    .map_err(internal)?;
    let (world, size, bytes) = checked.map_err(|e| {
        let status = match e.downcast_ref::<crate::engine::LoadError>() {
            Some(crate::engine::LoadError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, format!("the module was refused: {e}"))
    })?;
    let digest = state
        .registry
        .put_artifact(ArtifactKind::Module, &bytes)
        .await
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "digest": format!("sha256:{digest}"), "world": world.to_string(), "size": size }),
        ),
    ))
}

async fn upload_model(
    State(state): S,
    upload: std::result::Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>)> {
    let bytes = body(upload, "model", state.max_model_bytes)?;
    let digest = state
        .registry
        .put_artifact(ArtifactKind::Model, &bytes)
        .await
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "digest": format!("sha256:{digest}"), "size": bytes.len() })),
    ))
}

/// A deployment to create, or the next version of one.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// `sha256:<hex>` of an uploaded module.
    pub module: String,
    /// `sha256:<hex>` of an uploaded model (scorers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub input: Vec<String>,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{name:?} is not a deployment name: use 1 to 200 letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}

fn strip_digest(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

/// Creates a deployment, or makes a new version of it (a swap: same topics;
/// module, model, config or limits change). Validated before anything is
/// written: the module and model exist, the topics exist, and the function
/// starts with this config and model. A node that creates topics (`runnel
/// dev`) creates the missing ones once the rest is valid, and says which.
async fn put_deployment(
    State(state): S,
    Path(name): Path<String>,
    request: std::result::Result<Json<DeploymentRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>)> {
    check_name(&name)?;
    let Json(req) = request.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let module_digest = strip_digest(&req.module).to_owned();
    let Some((kind, module_bytes)) = state.registry.artifact(&module_digest) else {
        return Err(unprocessable(format!(
            "no module {} was uploaded: POST it to /v1/modules first",
            req.module
        )));
    };
    if kind != ArtifactKind::Module {
        return Err(unprocessable(format!(
            "{} is a model, not a module",
            req.module
        )));
    }
    let model_digest = req.model.as_deref().map(|m| strip_digest(m).to_owned());
    let model = match &model_digest {
        Some(d) => match state.registry.artifact(d) {
            Some((ArtifactKind::Model, bytes)) => Some(bytes),
            Some(_) => {
                return Err(unprocessable(format!(
                    "sha256:{d} is a module, not a model"
                )));
            }
            None => {
                return Err(unprocessable(format!(
                    "no model sha256:{d} was uploaded: POST it to /v1/models first"
                )));
            }
        },
        None => None,
    };
    if req.input.is_empty() {
        return Err(unprocessable("a deployment needs at least one input topic"));
    }
    keeps_topics(state.registry.deployment(&name).as_ref(), &name, &req)?;
    let mut topics: Vec<&str> = req.input.iter().map(String::as_str).collect();
    topics.push(&req.output);
    let dlq = req
        .dead_letter
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", req.output));
    topics.push(&dlq);
    let missing = missing_topics(&state.kafka, &topics).await?;
    if !missing.is_empty() && state.create_topics.is_none() {
        return Err(unprocessable(missing_topics_message(&missing)));
    }

    let memory_mib = req.memory_mib.unwrap_or(128);
    let timeout_ms = req.timeout_ms.unwrap_or(5000);
    let engine = state.engine.clone();
    let config: Vec<(String, String)> = req.config.clone().into_iter().collect();
    let function = name.clone();
    let world = tokio::task::spawn_blocking(move || {
        let module = engine
            .load(&function, &module_bytes)
            .map_err(|e| e.to_string())?;
        let world = module.world();
        if world == World::Scorer && model.is_none() {
            return Err(
                "the module is a scorer: it needs a model (\"model\": \"sha256:...\")".to_owned(),
            );
        }
        let limits = Limits {
            memory_bytes: memory_mib << 20,
            call_timeout: Duration::from_millis(timeout_ms),
            ..Limits::default()
        };
        Worker::new(module.into(), limits, config, model).map_err(|e| e.to_string())?;
        Ok(world)
    })
    .await
    .map_err(internal)?
    .map_err(|e| {
        unprocessable(format!(
            "the function does not start with this config and model: {e}"
        ))
    })?;

    // Validation took a while; what to build on is read again now, under
    // the lock, so that racing changes each get their own version.
    let _writes = state.registry.deployment_writes().await;
    let existing = state.registry.deployment(&name);
    keeps_topics(existing.as_ref(), &name, &req)?;
    let version = Version {
        version: 0,
        module: module_digest,
        model: model_digest,
        config: req.config,
        memory_mib,
        timeout_ms,
        created_ms: now_ms(),
        reason: if existing.is_some() { "swap" } else { "deploy" }.to_owned(),
    };
    let (mut record, status) = match existing {
        Some(old) => (old, StatusCode::OK),
        None => (
            DeploymentRecord {
                name: name.clone(),
                input: req.input,
                output: req.output,
                dead_letter: req.dead_letter,
                batch_size: req.batch_size.unwrap_or(256),
                linger_ms: req.linger_ms.unwrap_or(20),
                workers: req.workers,
                paused: false,
                current: 0,
                versions: Vec::new(),
            },
            StatusCode::CREATED,
        ),
    };
    if let (false, Some(partitions)) = (missing.is_empty(), state.create_topics) {
        let names: Vec<&str> = missing.iter().map(String::as_str).collect();
        crate::kafka::create_topics(&state.kafka, &names, partitions, &[])
            .await
            .map_err(|e| internal(format!("{e:#}")))?;
    }
    let v = record.push_version(version);
    state
        .registry
        .put_deployment(&record)
        .await
        .map_err(internal)?;
    let mut body = json!({ "name": name, "version": v, "world": world.to_string() });
    if !missing.is_empty() {
        body["created_topics"] = json!(missing);
        body["partitions"] = json!(state.create_topics);
    }
    Ok((status, Json(body)))
}

/// A new version keeps the deployment's topics.
fn keeps_topics(
    existing: Option<&DeploymentRecord>,
    name: &str,
    req: &DeploymentRequest,
) -> Result<()> {
    match existing {
        Some(old)
            if old.input != req.input
                || old.output != req.output
                || old.dead_letter != req.dead_letter =>
        {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "deployment {name:?} reads {:?} and writes {:?}: a new version keeps its topics; delete it and deploy again to change them",
                    old.input, old.output
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// What to say when a deployment names topics that do not exist on a node
/// that does not create them.
fn missing_topics_message(missing: &[String]) -> String {
    let quoted: Vec<String> = missing.iter().map(|t| format!("{t:?}")).collect();
    let (what, verb, it) = match missing.len() {
        1 => ("topic", "does", "it"),
        _ => ("topics", "do", "them"),
    };
    format!(
        "{what} {} {verb} not exist: create {it} first with `runnel topic create {}` (a node started with `runnel dev` creates a deployment's topics itself)",
        quoted.join(", "),
        missing.join(" ")
    )
}

/// The topics of `topics` the cluster does not have.
async fn missing_topics(kafka: &KafkaOptions, topics: &[&str]) -> Result<Vec<String>> {
    let kafka = kafka.clone();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer as _;
        let producer: rdkafka::producer::BaseProducer = kafka
            .producer()
            .create()
            .map_err(|e| internal(format!("cannot reach the cluster: {e}")))?;
        let md = producer
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| internal(format!("cannot read the cluster's topics: {e}")))?;
        let known: Vec<&str> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name())
            .collect();
        let mut missing: Vec<String> = Vec::new();
        for t in topics {
            if !known.contains(&t.as_str()) && !missing.contains(&t) {
                missing.push(t);
            }
        }
        Ok(missing)
    })
    .await
    .map_err(internal)?
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no deployment named {name:?}"),
    )
}

fn record_of(state: &AppState, name: &str) -> Result<DeploymentRecord> {
    state
        .registry
        .deployment(name)
        .ok_or_else(|| not_found(name))
}

async fn list(State(state): S) -> Json<Value> {
    let out: Vec<Value> = state
        .registry
        .deployments()
        .iter()
        .map(|r| summary(&state, r))
        .collect();
    Json(Value::Array(out))
}

/// A deployment as `ls` shows it.
fn summary(state: &AppState, r: &DeploymentRecord) -> Value {
    let current = r.current_version();
    let local = state.node.status().into_iter().find(|s| s.name == r.name);
    json!({
        "name": r.name,
        "version": r.current,
        "module": current.map(|v| format!("sha256:{}", v.module)),
        "model": current.and_then(|v| v.model.as_ref().map(|m| format!("sha256:{m}"))),
        "input": r.input,
        "output": r.output,
        "paused": r.paused,
        "state": if r.paused { json!("paused") } else { local.as_ref().map_or(json!("not running here"), |s| json!(s.state)) },
    })
}

async fn get_one(State(state): S, Path(name): Path<String>) -> Result<Json<DeploymentRecord>> {
    Ok(Json(record_of(&state, &name)?))
}

async fn delete(State(state): S, Path(name): Path<String>) -> Result<StatusCode> {
    let _writes = state.registry.deployment_writes().await;
    record_of(&state, &name)?;
    state
        .registry
        .delete_deployment(&name)
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_paused(state: &AppState, name: &str, paused: bool) -> Result<Json<Value>> {
    let _writes = state.registry.deployment_writes().await;
    let mut r = record_of(state, name)?;
    if r.paused != paused {
        r.paused = paused;
        state.registry.put_deployment(&r).await.map_err(internal)?;
    }
    Ok(Json(
        json!({ "name": name, "paused": paused, "version": r.current }),
    ))
}

async fn pause(State(state): S, Path(name): Path<String>) -> Result<Json<Value>> {
    set_paused(&state, &name, true).await
}

async fn resume(State(state): S, Path(name): Path<String>) -> Result<Json<Value>> {
    set_paused(&state, &name, false).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to go back to; default: the one before the current.
    #[serde(default)]
    pub to: Option<u64>,
}

/// Makes a kept version current again, as a new version (history stays linear).
async fn rollback(
    State(state): S,
    Path(name): Path<String>,
    body: Option<Json<RollbackRequest>>,
) -> Result<Json<Value>> {
    let _writes = state.registry.deployment_writes().await;
    let mut r = record_of(&state, &name)?;
    let to = match body.and_then(|Json(b)| b.to) {
        Some(v) => v,
        None => r
            .versions
            .iter()
            .map(|v| v.version)
            .filter(|v| *v < r.current)
            .max()
            .ok_or_else(|| {
                unprocessable(format!(
                    "deployment {name:?} has no version before {}",
                    r.current
                ))
            })?,
    };
    if to == r.current {
        return Err(unprocessable(format!(
            "version {to} of {name:?} is already the current one"
        )));
    }
    let Some(mut back) = r.versions.iter().find(|v| v.version == to).cloned() else {
        let kept: Vec<u64> = r.versions.iter().map(|v| v.version).collect();
        return Err(unprocessable(format!(
            "deployment {name:?} has no version {to}; kept versions: {kept:?}"
        )));
    };
    back.reason = format!("rollback to {to}");
    back.created_ms = now_ms();
    let from = r.current;
    let v = r.push_version(back);
    state.registry.put_deployment(&r).await.map_err(internal)?;
    Ok(Json(
        json!({ "name": name, "version": v, "from": from, "to": to }),
    ))
}

/// Every node's last report (at most [`super::REPORT_STALE`] old).
async fn cluster(State(state): S) -> Json<Value> {
    Json(Value::Array(state.registry.nodes(super::REPORT_STALE)))
}

/// What each node reports of one deployment: which partitions it runs,
/// their lag, its version and state.
fn cluster_view(state: &AppState, name: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for report in state.registry.nodes(super::REPORT_STALE) {
        let Some(d) = report["deployments"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["name"] == name))
        else {
            continue;
        };
        out.push(json!({
            "node": report["node"],
            "api": report["api"],
            "at_ms": report["at_ms"],
            "version": d["version"],
            "state": d["state"],
            "records_in": d["records_in"],
            "records_out": d["records_out"],
            "dead_lettered": d["dead_lettered"],
            "partitions": d["partitions"],
        }));
    }
    out
}

async fn status(State(state): S, Path(name): Path<String>) -> Result<Json<Value>> {
    let r = record_of(&state, &name)?;
    let local = state.node.status().into_iter().find(|s| s.name == name);
    let applied = state.reconciled.get(&name);
    let mut out = summary(&state, &r);
    if let Value::Object(m) = &mut out {
        m.insert("versions".into(), json!(r.versions));
        m.insert("cluster".into(), json!(cluster_view(&state, &name)));
        m.insert(
            "node".into(),
            json!({
                "running_version": applied.version,
                "error": applied.error,
                "rollbacks": applied.rollbacks,
                "status": local,
            }),
        );
    }
    Ok(Json(out))
}

/// For the CLI: the API's error sentence from a response body.
pub fn error_message(status: u16, body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}: {body}"))
}
