//! The HTTP admin API (axum). Its OpenAPI document is `docs/openapi.yaml`,
//! served at `/v1/openapi.yaml`. Every error is a JSON object
//! `{"error": "<a sentence saying what was wrong>"}` with a 4xx or 5xx status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
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
use crate::kafka::offsets::{self, Moved, Position};
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
    /// This node's name in the cluster.
    pub node_id: String,
}

type S = State<Arc<AppState>>;

/// An error response: a status and a sentence.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
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
        .route("/v1/deployments/{name}/reset", post(reset))
        .route(
            "/v1/deployments/{name}/state/{store}",
            get(super::query::get_state),
        )
        .route("/v1/deployments/{name}/logs", get(super::views::logs))
        .route("/v1/deployments/{name}/series", get(super::views::series))
        .route(
            "/v1/deployments/{name}/dead-letters",
            get(super::views::dead_letters),
        )
        .layer(DefaultBodyLimit::max(1 << 20))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(super::console::index))
        .route("/console/{asset}", get(super::console::asset))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such path; see /v1/openapi.yaml")
        })
        .with_state(state)
}

/// The header a client without a body of its own to type (a bodyless
/// `POST`) sends to show it is not a web page's simple request.
pub const CLIENT_HEADER: &str = "x-runnel-request";

/// Refuses a change that a web page in the operator's browser could make
/// without asking: a *simple* cross-origin request (CORS) needs no
/// preflight, so a bodyless `POST` or a form post from any site would reach
/// the API. A change must carry [`CLIENT_HEADER`], an `Authorization`
/// header, or a content type that is not one of a form's; and an `Origin`,
/// when sent, must be the API's own. Holds with or without a token.
pub fn check_not_simple(
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
) -> std::result::Result<(), String> {
    use axum::http::Method;
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let same = origin.to_str().ok().is_some_and(|o| {
            !host.is_empty() && (o == format!("http://{host}") || o == format!("https://{host}"))
        });
        if !same {
            return Err(format!(
                "a request from the web page at {:?} to change this node is refused: the API takes changes only from its own origin",
                String::from_utf8_lossy(origin.as_bytes())
            ));
        }
    }
    let simple_type = match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(t) => {
            let t = String::from_utf8_lossy(t.as_bytes()).to_ascii_lowercase();
            let essence = t.split(';').next().unwrap_or("").trim().to_owned();
            matches!(
                essence.as_str(),
                "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
            )
        }
    };
    if simple_type
        && !headers.contains_key(CLIENT_HEADER)
        && !headers.contains_key(header::AUTHORIZATION)
    {
        return Err(format!(
            "a change must be sent with `Content-Type: application/json` (or application/octet-stream for an upload) or a `{CLIENT_HEADER}: 1` header, so that no web page can send it from a browser"
        ));
    }
    Ok(())
}

/// A bearer token, when configured, compared in constant time; and no
/// change by a simple cross-origin request ([`check_not_simple`]).
async fn auth(State(state): S, request: axum::extract::Request, next: Next) -> Response {
    if let Err(message) = check_not_simple(request.method(), request.headers()) {
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
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

/// 200 while the node can serve: the broker answers and the registry's
/// topics are there, asked with the registry's own client (no new
/// connection per probe). One deployment's trouble does not make the whole
/// node unready, since restarting or unrouting the node would not help it:
/// deployments that back off, have failed or have stopped are listed in
/// `deployments_in_trouble`, and in the status and metrics, for alerting.
async fn readyz(State(state): S) -> (StatusCode, Json<Value>) {
    let registry = state.registry.clone();
    let reachable = tokio::task::spawn_blocking(move || registry.reachable(Duration::from_secs(2)))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let mut problems = Vec::new();
    if let Err(e) = &reachable {
        problems.push(format!("the broker or the registry cannot be reached: {e}"));
    }
    let mut trouble = Vec::new();
    for s in state.node.status() {
        let what = match &s.state {
            crate::runner::DeploymentState::BackingOff { error, .. } => {
                format!("backs off: {error}")
            }
            crate::runner::DeploymentState::Failed { error, .. } => format!("failed: {error}"),
            crate::runner::DeploymentState::Stopped => "has stopped".to_owned(),
            _ => continue,
        };
        trouble.push(json!({ "deployment": s.name, "state": super::metrics::state_name(&s.state), "problem": what }));
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
            "deployments_in_trouble": trouble,
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
            format!(
                "the {what} is over the limit of {limit} bytes{}",
                if what == "module" {
                    " (the node's --max-module-mib)"
                } else {
                    ""
                }
            ),
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
    /// One topic, or a list of up to 8 (the first is the default).
    pub output: crate::config::Outputs,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_outputs_per_record: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_mib: Option<u64>,
    /// A processor's named stores (keyed state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
    /// What its outputs say of where they came from: `headers` (the
    /// default for a new deployment), `compact` or `none`. A new version
    /// without it keeps the running version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::config::Provenance>,
    /// A new version of a processor that starts with empty stores: its
    /// state moves to new changelog topics, and the old ones are deleted
    /// once every node runs the new version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_state: bool,
    /// Where a new deployment starts reading its inputs: `earliest`
    /// (the default), `latest`, an offset, or a time (see
    /// [`crate::kafka::offsets::Position`]). An existing one moves with
    /// `POST .../reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl DeploymentRequest {
    /// Its settings, defaulted as `runnel.toml` defaults them.
    fn settings(&self) -> crate::rules::Settings {
        use crate::config::defaults;
        crate::rules::Settings {
            batch_size: self.batch_size.unwrap_or_else(defaults::batch_size) as u64,
            linger_ms: self.linger_ms.unwrap_or_else(defaults::linger_ms),
            workers: self.workers.map(|w| w as u64),
            memory_mib: self.memory_mib.unwrap_or_else(defaults::memory_mib),
            timeout_ms: self.timeout_ms.unwrap_or_else(defaults::timeout_ms),
            max_outputs_per_record: u64::from(
                self.max_outputs_per_record
                    .unwrap_or_else(defaults::max_outputs_per_record),
            ),
            max_output_mib: self.max_output_mib.unwrap_or_else(defaults::max_output_mib),
        }
    }
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn check_name(name: &str) -> Result<()> {
    crate::rules::check_name(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
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
    let topics = state.registry.topics();
    crate::rules::check_topics(
        &req.input,
        req.output.topics(),
        req.dead_letter.as_deref(),
        &topics.all(),
    )
    .map_err(unprocessable)?;
    let settings = req.settings();
    settings.check().map_err(unprocessable)?;
    crate::rules::check_config(&req.config).map_err(unprocessable)?;
    let engine_memory_mib = state.engine.config().max_memory_bytes >> 20;
    if settings.memory_mib > engine_memory_mib {
        return Err(unprocessable(format!(
            "memory_mib {} is over this node's limit of {engine_memory_mib} per instance",
            settings.memory_mib
        )));
    }
    keeps_topics(state.registry.deployment(&name).as_ref(), &name, &req)?;
    let mut topics: Vec<&str> = req.input.iter().map(String::as_str).collect();
    topics.extend(req.output.topics().iter().map(String::as_str));
    let dlq = req
        .dead_letter
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", req.output.first()));
    topics.push(&dlq);
    let missing = missing_topics(&state.kafka, &topics).await?;
    if !missing.is_empty() && state.create_topics.is_none() {
        return Err(unprocessable(missing_topics_message(&missing)));
    }

    let (memory_mib, timeout_ms) = (settings.memory_mib, settings.timeout_ms);
    let engine = state.engine.clone();
    let config: Vec<(String, String)> = req.config.clone().into_iter().collect();
    let function = name.clone();
    let (input, stores) = (req.input.clone(), req.stores.clone());
    let world = tokio::task::spawn_blocking(move || {
        let module = engine
            .load(&function, &module_bytes)
            .map_err(|e| e.to_string())?;
        let world = module.world();
        crate::runner::check_runs_on_kafka(world, &function, &input, &stores)?;
        if world == World::Scorer && model.is_none() {
            return Err(
                "the module is a scorer: it needs a model (\"model\": \"sha256:...\")".to_owned(),
            );
        }
        let limits = Limits {
            memory_bytes: memory_mib << 20,
            call_timeout: Duration::from_millis(timeout_ms),
            max_outputs_per_record: settings.max_outputs_per_record as u32,
            max_output_bytes: settings.max_output_mib << 20,
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

    let from = match req.from.as_deref() {
        Some(f) => Some(
            f.parse::<Position>()
                .map_err(|e| unprocessable(format!("from: {e}")))?,
        ),
        None => None,
    };
    if matches!(from, Some(Position::Partitions(_))) {
        return Err(unprocessable(
            "from: a new deployment starts at earliest, latest, an offset or a time; \
             PARTITION:OFFSET is for `runnel reset`",
        ));
    }

    // Validation took a while; what to build on is read again now, under
    // the lock, so that racing changes each get their own version.
    let writes = state.registry.deployment_writes().await;
    let existing = state.registry.deployment(&name);
    keeps_topics(existing.as_ref(), &name, &req)?;
    if from.is_some() && existing.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "deployment {name:?} exists: `from` only places a new one; move an existing one \
                 with `runnel reset {name} --to ...`"
            ),
        ));
    }
    if req.reset_state && req.stores.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "deployment {name:?} keeps no state to reset: only a processor declares stores"
            ),
        ));
    }
    let version = Version {
        version: 0,
        module: module_digest,
        model: model_digest,
        config: req.config,
        memory_mib,
        timeout_ms,
        max_outputs_per_record: settings.max_outputs_per_record as u32,
        max_output_mib: settings.max_output_mib,
        provenance: req
            .provenance
            .or_else(|| {
                existing
                    .as_ref()
                    .and_then(|r| r.current_version())
                    .map(|v| v.provenance)
            })
            .unwrap_or_default(),
        created_ms: now_ms(),
        reason: match (&existing, req.reset_state) {
            (Some(_), true) => "swap, state reset",
            (Some(_), false) => "swap",
            (None, _) => "deploy",
        }
        .to_owned(),
    };
    let (mut record, status) = match existing {
        Some(old) => (old, StatusCode::OK),
        None => (
            DeploymentRecord {
                name: name.clone(),
                input: req.input,
                output: req.output,
                dead_letter: req.dead_letter,
                batch_size: settings.batch_size as usize,
                linger_ms: settings.linger_ms,
                workers: req.workers,
                paused: false,
                stores: req.stores.clone(),
                state_generation: 0,
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
    // A reset of an existing processor's state: the next generation's
    // topics (made by the nodes as they start it), the old ones to drop.
    let old_topics: Vec<String> = if req.reset_state && status == StatusCode::OK {
        let old: Vec<String> = record
            .stores
            .iter()
            .map(|s| crate::state::changelog::topic_at(&name, s, record.state_generation))
            .collect();
        record.state_generation += 1;
        old
    } else {
        Vec::new()
    };
    let v = record.push_version(version);
    // What every node will check when it reads the record.
    crate::registry::check_deployment(&record, state.registry.topics()).map_err(unprocessable)?;
    // A new deployment's group is placed before any node runs it.
    let placed = match &from {
        Some(position) => Some(place_group(&state, &name, &record.input, position).await?),
        None => None,
    };
    let written_at = now_ms();
    state
        .registry
        .put_deployment(&record)
        .await
        .map_err(internal)?;
    drop(writes);
    let mut body = json!({ "name": name, "version": v, "world": world.to_string() });
    if let (Some(position), Some(moved)) = (&from, placed) {
        body["from"] = json!(position.to_string());
        body["placed"] = json!(moved);
    }
    if !missing.is_empty() {
        body["created_topics"] = json!(missing);
        body["partitions"] = json!(state.create_topics);
    }
    if !old_topics.is_empty() {
        // Once every node that runs it runs this version, no node writes
        // the old topics any more.
        let waited = wait_for_nodes(&state, written_at, NODES_WAIT, |d| {
            d["name"] == name.as_str() && d["version"].as_u64().is_none_or(|n| n < v)
        })
        .await;
        body["state_reset"] = match waited {
            Ok(()) => {
                let refs: Vec<&str> = old_topics.iter().map(String::as_str).collect();
                match crate::kafka::delete_topics(&state.kafka, &refs).await {
                    Ok(dropped) => json!({ "dropped_topics": dropped }),
                    Err(e) => json!({
                        "kept_topics": old_topics,
                        "why": format!("cannot delete them: {e:#}"),
                    }),
                }
            }
            Err(nodes) => json!({
                "kept_topics": old_topics,
                "why": format!(
                    "node(s) {} did not run version {v} within {} s; delete the old changelog \
                     topics with `runnel topic delete` once they do",
                    nodes.join(", "),
                    NODES_WAIT.as_secs()
                ),
            }),
        };
    }
    Ok((status, Json(body)))
}

/// How long a change that deletes changelog topics waits for the nodes to
/// stop writing them (see [`wait_for_nodes`]).
const NODES_WAIT: Duration = Duration::from_secs(30);

/// Waits until every node that reports has reported since `since_ms`
/// (ms since the epoch) with no deployment for which `still` holds, for up
/// to `wait`; else the nodes that did not.
async fn wait_for_nodes(
    state: &AppState,
    since_ms: u64,
    wait: Duration,
    still: impl Fn(&Value) -> bool,
) -> std::result::Result<(), Vec<String>> {
    let until = std::time::Instant::now() + wait;
    loop {
        let waiting: Vec<String> = state
            .registry
            .nodes(super::REPORT_STALE)
            .iter()
            .filter(|r| {
                r["at_ms"].as_u64().is_none_or(|at| at <= since_ms)
                    || r["deployments"]
                        .as_array()
                        .is_some_and(|ds| ds.iter().any(&still))
            })
            .map(|r| r["node"].as_str().unwrap_or("?").to_owned())
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > until {
            return Err(waiting);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
                    old.input,
                    old.output.topics()
                ),
            ))
        }
        Some(old) if old.stores != req.stores => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "deployment {name:?} keeps the stores {:?}: a new version keeps them; delete it \
                 and deploy again to change them",
                old.stores
            ),
        )),
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
    let reports = state.registry.nodes(super::REPORT_STALE);
    let out: Vec<Value> = state
        .registry
        .deployments()
        .iter()
        .map(|r| {
            let mut s = summary(&state, r);
            s["cluster"] = super::views::cluster_summary(&reports, &r.name);
            s
        })
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// What becomes of a processor's state: `drop` or `keep`.
    #[serde(default)]
    pub state: Option<String>,
}

/// Deletes a deployment. A processor's changelog topics go with it only
/// when asked (`state=drop`), once no node runs it any more (one that did
/// would write to them, and could make them again); `state=keep` keeps
/// them, for a deployment of the same name to restore from. A processor
/// deleted without either is refused, saying so.
async fn delete(
    State(state): S,
    Path(name): Path<String>,
    query: std::result::Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{}; a delete takes state=drop or state=keep", e.body_text()),
        )
    })?;
    let drop_state = match q.state.as_deref() {
        None => None,
        Some("drop") => Some(true),
        Some("keep") => Some(false),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("state={other:?} is neither drop nor keep"),
            ));
        }
    };
    let (topics, deleted_at) = {
        let _writes = state.registry.deployment_writes().await;
        let r = record_of(&state, &name)?;
        let topics: Vec<String> = r
            .stores
            .iter()
            .map(|s| crate::state::changelog::topic_at(&name, s, r.state_generation))
            .collect();
        if !topics.is_empty() && drop_state.is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "deployment {name:?} keeps its state in {}: say what becomes of it. \
                     state=drop deletes those topics with it (the state is gone for good), \
                     state=keep keeps them (a deployment of the same name restores from them); \
                     `runnel delete {name} --drop-state` or `--keep-state`",
                    topics.join(", ")
                ),
            ));
        }
        let deleted_at = now_ms();
        state
            .registry
            .delete_deployment(&name)
            .await
            .map_err(internal)?;
        (topics, deleted_at)
    };
    if drop_state != Some(true) || topics.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Every node that reports must have reported since the delete, without
    // the deployment.
    if let Err(running) = wait_for_nodes(&state, deleted_at, NODES_WAIT, |d| {
        d["name"] == name.as_str()
    })
    .await
    {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "deleted {name}, but node(s) {} still ran it {} s later, so its changelog \
                 topics are kept: {}; delete them with `runnel topic delete` once no node \
                 runs it",
                running.join(", "),
                NODES_WAIT.as_secs(),
                topics.join(", ")
            ),
        ));
    }
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let dropped = crate::kafka::delete_topics(&state.kafka, &refs)
        .await
        .map_err(|e| {
            internal(format!(
                "deleted {name}, but not its changelog topics: {e:#}"
            ))
        })?;
    Ok((
        StatusCode::OK,
        Json(json!({ "deleted": name, "dropped_topics": dropped })),
    )
        .into_response())
}

/// Commits `position` for deployment `name`'s group, which must have no
/// member (a group left behind by a deployment of the same name that was
/// deleted may still have one, for a session's time).
async fn place_group(
    state: &AppState,
    name: &str,
    inputs: &[String],
    position: &Position,
) -> Result<Vec<Moved>> {
    let (kafka, group) = (state.kafka.clone(), format!("runnel.{name}"));
    let (inputs, position) = (inputs.to_vec(), position.clone());
    tokio::task::spawn_blocking(move || {
        let members = offsets::members(&kafka, &group)?;
        if members > 0 {
            anyhow::bail!(
                "its consumer group {group} still has {members} member(s): wait for them to \
                 leave, or deploy without `from`"
            );
        }
        offsets::move_group(&kafka, &group, &inputs, &position)
    })
    .await
    .map_err(internal)?
    .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// `earliest`, `latest`, a time, or `PARTITION:OFFSET[,...]` (see
    /// [`crate::kafka::offsets::Position`]).
    pub to: String,
    /// How long to wait for the group to empty, in ms (default 60,000, at
    /// most 600,000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// How long a reset waits for every node to leave the deployment's group,
/// unless told otherwise.
const RESET_WAIT: Duration = Duration::from_secs(60);

/// Moves an existing deployment's committed offsets: pauses it, waits until
/// its group has no member on any node (Kafka refuses commits for a group
/// with members; the embedded broker accepts them, and a member's next
/// commit would undo the move), commits the new offsets, and resumes it
/// (unless it was paused), recording a version `reset to ...`.
async fn reset(
    State(state): S,
    Path(name): Path<String>,
    request: std::result::Result<Json<ResetRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>> {
    let Json(req) = request.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let position: Position = req
        .to
        .parse()
        .map_err(|e| unprocessable(format!("to: {e}")))?;
    let wait = match req.wait_ms {
        None => RESET_WAIT,
        Some(ms) if (1..=600_000).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => return Err(unprocessable(format!("wait_ms {ms} is not 1 to 600000"))),
    };
    let r = record_of(&state, &name)?;
    let behind: Vec<String> = state
        .registry
        .nodes(super::REPORT_STALE)
        .iter()
        .filter_map(|report| {
            let d = super::reported_deployment(report, &name)?;
            (d["version"].as_u64() != Some(r.current))
                .then(|| report["node"].as_str().unwrap_or("?").to_owned())
        })
        .collect();
    if !behind.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a swap of {name:?} is in progress: node(s) {} do not run version {} yet; reset \
                 once every node runs it",
                behind.join(", "),
                r.current
            ),
        ));
    }
    let was_paused = r.paused;
    let paused_at = now_ms();
    if !was_paused {
        let _ = set_paused(&state, &name, true).await?;
    }
    let resume = |state: Arc<AppState>, name: String| async move {
        if !was_paused {
            let _ = set_paused(&state, &name, false).await;
        }
    };
    let group = format!("runnel.{name}");
    let started = std::time::Instant::now();
    // Every node has stopped it: an empty group alone is not enough, as a
    // node still running it may be between two generations of the group
    // (a rebalance) and commit its old offsets after the move.
    if let Err(nodes) =
        wait_for_nodes(&state, paused_at, wait, |d| d["name"] == name.as_str()).await
    {
        resume(state.clone(), name.clone()).await;
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "node(s) {} still ran {name} {:.1} s after it was paused: nothing was moved",
                nodes.join(", "),
                wait.as_secs_f64()
            ),
        ));
    }
    loop {
        let (kafka, g) = (state.kafka.clone(), group.clone());
        let members = tokio::task::spawn_blocking(move || offsets::members(&kafka, &g))
            .await
            .map_err(internal)?;
        match members {
            Ok(0) => break,
            Ok(n) if started.elapsed() > wait => {
                resume(state.clone(), name.clone()).await;
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "{name}'s group {group} still had {n} member(s) {:.1} s after it was \
                         paused (a node that did not stop it, or another client in the group): \
                         nothing was moved",
                        wait.as_secs_f64()
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                resume(state.clone(), name.clone()).await;
                return Err(internal(format!("{e:#}")));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let waited_ms = started.elapsed().as_millis() as u64;
    let (kafka, g, inputs, p) = (
        state.kafka.clone(),
        group.clone(),
        r.input.clone(),
        position.clone(),
    );
    let moved = tokio::task::spawn_blocking(move || offsets::move_group(&kafka, &g, &inputs, &p))
        .await
        .map_err(internal)?;
    let moved = match moved {
        Ok(m) => m,
        Err(e) => {
            resume(state.clone(), name.clone()).await;
            return Err(unprocessable(format!("{e:#}")));
        }
    };
    // In the history, and resumed, in one write.
    let version = {
        let _writes = state.registry.deployment_writes().await;
        let mut r = record_of(&state, &name)?;
        let mut v = r
            .current_version()
            .cloned()
            .ok_or_else(|| internal(format!("deployment {name:?} has no current version")))?;
        v.reason = format!("reset to {position}");
        v.created_ms = now_ms();
        let version = r.push_version(v);
        r.paused = was_paused;
        state.registry.put_deployment(&r).await.map_err(internal)?;
        version
    };
    tracing::info!(deployment = name, to = %position, version, waited_ms,
        partitions = ?moved.iter().map(|m| (m.partition, m.was, m.now)).collect::<Vec<_>>(),
        "reset: the group's offsets moved");
    Ok(Json(json!({
        "name": name,
        "to": position.to_string(),
        "version": version,
        "paused": was_paused,
        "waited_ms": waited_ms,
        "partitions": moved,
    })))
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
        let Some(d) = super::reported_deployment(&report, name) else {
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
