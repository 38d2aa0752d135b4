//! `runnel deploy`, `ls`, `status`, `swap`, `rollback`, `pause`, `resume`,
//! `delete`: the admin API from the command line. Readable tables by
//! default, `--json` for scripts; an error from the API is shown as the
//! sentence it sent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use url::{Host, Url};

use crate::control::api::error_message;

/// Where the API is.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The admin API of any node.
    #[arg(
        long,
        env = "RUNNEL_API",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub api: String,
    /// The API's bearer token, if it needs one.
    #[arg(long, env = "RUNNEL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the API's answer (an upload included) before giving up.
    #[arg(
        long,
        env = "RUNNEL_API_TIMEOUT",
        default_value_t = 60,
        value_name = "SECS",
        global = true,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub api_timeout: u64,
}

/// The control commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ControlCommand {
    /// Upload a module (and model) and deploy it onto topics, or make a new
    /// version of an existing deployment of that name.
    Deploy(DeployArgs),
    /// List the deployments.
    Ls,
    /// A deployment's version, state, partitions, offsets and lag, and history.
    Status { name: String },
    /// Replace a deployment's module, model or config while records flow.
    Swap(SwapArgs),
    /// Go back to a kept version (default: the one before the current).
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Move where a deployment reads its inputs from, to process records
    /// again (or skip them): pauses it, waits until no node is in its
    /// consumer group, moves the group's committed offsets, and resumes it.
    Reset {
        name: String,
        /// earliest, latest, a time (2026-12-01T10:00:00Z, or @<ms since
        /// 1970>: the first record written at or after it), or
        /// PARTITION:OFFSET[,PARTITION:OFFSET...] (other partitions stay).
        #[arg(long, value_name = "POSITION")]
        to: String,
    },
    /// Stop processing a deployment (its offsets stay committed).
    Pause { name: String },
    /// Start processing a paused deployment again.
    Resume { name: String },
    /// Delete a deployment. A processor's state needs one of the flags.
    Delete {
        name: String,
        /// Delete a processor's changelog topics with it, once no node runs
        /// it: its state is gone for good.
        #[arg(long, conflicts_with = "keep_state")]
        drop_state: bool,
        /// Keep a processor's changelog topics: a deployment of the same
        /// name restores from them.
        #[arg(long)]
        keep_state: bool,
    },
    /// Read a processor's state, from whichever node holds it.
    #[command(subcommand)]
    State(StateCommand),
    /// A deployment's function log lines and events (swaps, traps,
    /// back-offs, dead letters), from every node that ran it, in time
    /// order, each with the node that wrote it.
    Logs {
        name: String,
        /// Keep printing lines as they are written, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// From how long ago: 30s, 10m, 2h, 1d.
        #[arg(long, default_value = "10m", value_name = "DURATION")]
        since: String,
    },
}

/// `runnel state`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StateCommand {
    /// The value of one key.
    Get {
        name: String,
        store: String,
        key: String,
        #[command(flatten)]
        how: StateArgs,
    },
    /// Every entry of a store (of one partition with --partition), in key
    /// order within each partition.
    Ls {
        name: String,
        store: String,
        #[command(flatten)]
        how: StateArgs,
        /// Entries per request to the API (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// The key is hex (the SDK's integer keys are big-endian bytes).
    #[arg(long)]
    pub key_hex: bool,
    /// Look in this partition, not the key's by Kafka's default partitioner.
    #[arg(long)]
    pub partition: Option<i32>,
    /// How to print values: `text` (UTF-8, else hex), `hex`, or the SDK's
    /// encodings of `u64` and `i64` (postcard varints), `string`.
    #[arg(long = "as", value_enum, default_value_t = ValueAs::Text)]
    pub value_as: ValueAs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValueAs {
    Text,
    Hex,
    U64,
    I64,
    String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The function: a wasm32-wasip2 component.
    pub module: PathBuf,
    #[arg(long)]
    pub name: String,
    /// An input topic; repeat for more.
    #[arg(long = "input", required = true)]
    pub input: Vec<String>,
    /// An output topic; repeat for more (up to 8). The first is where an
    /// output goes unless it picks another (`Output::to`).
    #[arg(long = "output", required = true)]
    pub output: Vec<String>,
    /// Where failed records go; default `<first output>.dlq`.
    #[arg(long)]
    pub dead_letter: Option<String>,
    /// The model file, for a scorer.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A config entry for the function's init; repeat for more.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = super::run::parse_key_value)]
    pub config: Vec<(String, String)>,
    #[arg(long)]
    pub memory_mib: Option<u64>,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub linger_ms: Option<u64>,
    #[arg(long)]
    pub workers: Option<usize>,
    /// A store a processor keeps state in; repeat for more.
    #[arg(long = "store", value_name = "NAME")]
    pub stores: Vec<String>,
    /// What each output says of where it came from: four `runnel-*`
    /// headers (default), one compact `runnel-provenance` header, or none.
    #[arg(long, value_enum)]
    pub provenance: Option<crate::config::Provenance>,
    /// Where a new deployment starts reading: earliest (the default),
    /// latest, an offset, or a time (2026-12-01T10:00:00Z, or @<ms>). An
    /// existing one moves with `runnel reset`.
    #[arg(long, value_name = "POSITION")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SwapArgs {
    pub name: String,
    /// A new module; default: keep the running one.
    pub module: Option<PathBuf>,
    /// A new model; default: keep the running one.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Replace the config with these entries; default: keep it.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = super::run::parse_key_value)]
    pub config: Vec<(String, String)>,
    /// A processor: start the new version with empty stores, and delete
    /// the old changelog topics once every node runs it (needs --yes).
    #[arg(long)]
    pub reset_state: bool,
    /// Confirms --reset-state: the state is gone for good.
    #[arg(long, requires = "reset_state")]
    pub yes: bool,
}

struct Client {
    http: reqwest::Client,
    base: Url,
    args: ApiArgs,
}

impl Client {
    fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let base = api_url(&args.api)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.api_timeout))
            .connect_timeout(Duration::from_secs(args.api_timeout.min(10)))
            .build()
            .context("cannot make an HTTP client")?;
        Ok(Self {
            http,
            base,
            args: args.clone(),
        })
    }

    /// The API's URL for these path segments, each escaped (a deployment's
    /// name cannot reach another path or the query). URLs drop `.` and `..`
    /// segments, even escaped, so no name can be one.
    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        if let Some(s) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            anyhow::bail!(
                "{s:?} cannot be a deployment name: use 1 to 200 letters, digits, '-', '_' or '.'"
            );
        }
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        Ok(url)
    }

    /// Sends `request` with the CLI's header and token: the status and body.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        // Says this is no web page's simple request (see `check_not_simple`).
        let request = request.header(crate::control::api::CLIENT_HEADER, "cli");
        let request = match &self.args.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        Ok((status, body))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let (status, body) = self.exchange(request).await?;
        if !status.is_success() {
            anyhow::bail!("{}", error_message(status.as_u16(), &body));
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body)
            .with_context(|| format!("the API answered something that is not JSON: {body}"))
    }

    /// What went wrong between here and the API, as a sentence.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let api = &self.args.api;
        let sentence = if e.is_timeout() {
            format!(
                "the runnel API at {api} did not answer within {} s (--api-timeout SECS waits longer)",
                self.args.api_timeout
            )
        } else if e.is_connect() {
            format!(
                "cannot reach the runnel API at {api}: is a node running there? (`runnel dev` starts one; --api or RUNNEL_API says where)"
            )
        } else {
            format!("cannot talk to the runnel API at {api}")
        };
        anyhow::Error::new(e).context(sentence)
    }

    async fn get(&self, segments: &[&str]) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(segments)?)).await
    }

    /// GETs with a query, asking again while the API answers 503 (a
    /// partition being restored or moved), up to `--api-timeout`.
    async fn get_retrying(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let until = std::time::Instant::now() + Duration::from_secs(self.args.api_timeout);
        loop {
            let mut url = self.url(segments)?;
            url.query_pairs_mut().extend_pairs(query);
            let (status, body) = self.exchange(self.http.get(url)).await?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && std::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if !status.is_success() {
                anyhow::bail!("{}", error_message(status.as_u16(), &body));
            }
            return serde_json::from_str(&body)
                .with_context(|| format!("the API answered something that is not JSON: {body}"));
        }
    }

    async fn post_json(&self, segments: &[&str], body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(segments)?).json(body))
            .await
    }

    async fn put_deployment(&self, name: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(
            self.http
                .put(self.url(&["v1", "deployments", name])?)
                .json(body),
        )
        .await
    }

    /// POSTs a file to `/v1/<what>` with this `query`.
    async fn upload(&self, what: &str, query: &str, file: &PathBuf) -> anyhow::Result<Value> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut url = self.url(&["v1", what])?;
        url.set_query((!query.is_empty()).then_some(query));
        self.send(
            self.http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        )
        .await
        .with_context(|| format!("uploading {}", file.display()))
    }
}

/// The API's base URL, checked: http or https, with a host.
fn api_url(api: &str) -> anyhow::Result<Url> {
    let url = Url::parse(api).map_err(|e| {
        anyhow::anyhow!("--api {api:?} is not a URL ({e}): give one like http://127.0.0.1:7070")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.cannot_be_a_base() {
        anyhow::bail!(
            "--api {api:?} is not an http:// or https:// address: give one like http://127.0.0.1:7070"
        );
    }
    Ok(url)
}

/// A warning when a token would cross the network in clear: plain http to
/// an address that is not this machine's.
pub fn clear_token_warning(api: &str, token: Option<&str>) -> Option<String> {
    let url = Url::parse(api).ok()?;
    let loopback = match url.host()? {
        Host::Ipv4(a) => a.is_loopback(),
        Host::Ipv6(a) => a.is_loopback(),
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"),
    };
    (token.is_some() && url.scheme() == "http" && !loopback).then(|| {
        format!(
            "warning: sending the API token in clear over plain http to {}: anyone on the way can read it; put TLS in front of the node and use an https:// address",
            url.host_str().unwrap_or_default()
        )
    })
}

/// Runs one command; what it prints goes to `out`.
/// A token about to cross the network in clear is warned about on stderr
/// first.
pub async fn run(api: &ApiArgs, command: &ControlCommand, out: &mut String) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    if let Some(warning) = clear_token_warning(&api.api, api.token.as_deref()) {
        eprintln!("{warning}");
    }
    let (value, table) = match command {
        ControlCommand::Deploy(a) => {
            let model = match &a.model {
                Some(m) => Some(client.upload("models", "", m).await?),
                None => None,
            };
            let module = client
                .upload(
                    "modules",
                    &module_query(model.as_ref().map(|m| &m["digest"]), &a.config),
                    &a.module,
                )
                .await?;
            let config: BTreeMap<String, String> = a.config.iter().cloned().collect();
            let mut body = json!({
                "module": module["digest"],
                "input": a.input,
                "output": crate::config::Outputs::new(a.output.clone()),
                "config": config,
            });
            if !a.stores.is_empty() {
                body["stores"] = json!(a.stores);
            }
            let fields = [
                ("model", model.map(|m| m["digest"].clone())),
                ("dead_letter", a.dead_letter.clone().map(Value::from)),
                ("memory_mib", a.memory_mib.map(Value::from)),
                ("timeout_ms", a.timeout_ms.map(Value::from)),
                ("batch_size", a.batch_size.map(Value::from)),
                ("linger_ms", a.linger_ms.map(Value::from)),
                ("workers", a.workers.map(Value::from)),
                ("from", a.from.clone().map(Value::from)),
                (
                    "provenance",
                    a.provenance
                        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null)),
                ),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let r = client.put_deployment(&a.name, &body).await?;
            let mut lines = String::new();
            for topic in r["created_topics"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    lines,
                    "created topic {} ({} partitions)",
                    text(topic),
                    r["partitions"]
                );
            }
            let _ = writeln!(
                lines,
                "deployed {} version {} ({}, module {})",
                a.name,
                r["version"],
                r["world"].as_str().unwrap_or("?"),
                short(module["digest"].as_str())
            );
            if !r["from"].is_null() {
                let _ = writeln!(lines, "starting from {}:", text(&r["from"]));
                lines.push_str(&moved_table(&r["placed"]));
            }
            (r, lines)
        }
        ControlCommand::Ls => {
            let r = client.get(&["v1", "deployments"]).await?;
            let table = ls_table(&r);
            (r, table)
        }
        ControlCommand::Status { name } => {
            let r = client.get(&["v1", "deployments", name, "status"]).await?;
            let table = status_table(&r);
            (r, table)
        }
        ControlCommand::Swap(a) => {
            let current = client.get(&["v1", "deployments", &a.name]).await?;
            let version = current["versions"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["version"] == current["current"]))
                .cloned()
                .context("the deployment has no current version")?;
            if a.module.is_none() && a.model.is_none() && a.config.is_empty() && !a.reset_state {
                anyhow::bail!(
                    "nothing to swap: give a module, --model FILE, --config KEY=VALUE or --reset-state"
                );
            }
            if a.reset_state && !a.yes {
                anyhow::bail!(
                    "--reset-state deletes every key of {}'s stores for good (the new version \
                     starts empty): add --yes to confirm",
                    a.name
                );
            }
            let model = match &a.model {
                Some(m) => client.upload("models", "", m).await?["digest"].clone(),
                None => version["model"]
                    .as_str()
                    .map_or(Value::Null, |m| json!(format!("sha256:{m}"))),
            };
            let config: Vec<(String, String)> = if a.config.is_empty() {
                version["config"]
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                    .unwrap_or_default()
            } else {
                a.config.clone()
            };
            let module = match &a.module {
                Some(m) => {
                    let query = module_query((!model.is_null()).then_some(&model), &config);
                    client.upload("modules", &query, m).await?["digest"].clone()
                }
                None => json!(format!(
                    "sha256:{}",
                    version["module"].as_str().unwrap_or("")
                )),
            };
            let config = json!(config.into_iter().collect::<BTreeMap<_, _>>());
            let mut body = json!({
                "module": module,
                "input": current["input"],
                "output": current["output"],
                "config": config,
                "memory_mib": version["memory_mib"],
                "timeout_ms": version["timeout_ms"],
            });
            if !model.is_null() {
                body["model"] = model;
            }
            if !current["dead_letter"].is_null() {
                body["dead_letter"] = current["dead_letter"].clone();
            }
            if !current["stores"].is_null() {
                body["stores"] = current["stores"].clone();
            }
            if a.reset_state {
                body["reset_state"] = json!(true);
            }
            let r = client.put_deployment(&a.name, &body).await?;
            let mut line = format!(
                "swapped {} to version {} (from {})\n",
                a.name, r["version"], current["current"]
            );
            let reset = &r["state_reset"];
            for topic in reset["dropped_topics"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    line,
                    "state reset: deleted the old changelog topic {}",
                    text(topic)
                );
            }
            if let Some(kept) = reset["kept_topics"].as_array() {
                let kept: Vec<String> = kept.iter().map(text).collect();
                let _ = writeln!(
                    line,
                    "state reset, but the old changelog topics are kept ({}): {}",
                    kept.join(", "),
                    text(&reset["why"])
                );
            }
            (r, line)
        }
        ControlCommand::Rollback { name, to } => {
            let body = to.map_or_else(|| json!({}), |v| json!({ "to": v }));
            let r = client
                .post_json(&["v1", "deployments", name, "rollback"], &body)
                .await?;
            let line = format!(
                "rolled {name} back to version {} as version {}\n",
                r["to"], r["version"]
            );
            (r, line)
        }
        ControlCommand::Reset { name, to } => {
            let r = client
                .post_json(&["v1", "deployments", name, "reset"], &json!({ "to": to }))
                .await?;
            let mut out = format!(
                "reset {name} to {} (version {}{}):\n",
                text(&r["to"]),
                r["version"],
                if r["paused"] == true {
                    ", still paused"
                } else {
                    ""
                }
            );
            out.push_str(&moved_table(&r["partitions"]));
            (r, out)
        }
        ControlCommand::Pause { name } => {
            let r = client
                .post_json(&["v1", "deployments", name, "pause"], &json!({}))
                .await?;
            (r, format!("paused {name}\n"))
        }
        ControlCommand::Resume { name } => {
            let r = client
                .post_json(&["v1", "deployments", name, "resume"], &json!({}))
                .await?;
            (r, format!("resumed {name}\n"))
        }
        ControlCommand::State(command) => state_command(&client, command).await?,
        ControlCommand::Logs {
            name,
            follow,
            since,
        } => {
            crate::control::views::parse_since(since).map_err(|e| anyhow::anyhow!("--{e}"))?;
            let mut url = client.url(&["v1", "deployments", name, "logs"])?;
            url.query_pairs_mut().append_pair("since", since);
            let r = client.send(client.http.get(url)).await?;
            if !*follow {
                let text = log_lines(&r);
                (r, text)
            } else {
                follow_logs(&client, name, r, api.json).await?;
                unreachable!("following ends with an error or an interrupt");
            }
        }
        ControlCommand::Delete {
            name,
            drop_state,
            keep_state,
        } => {
            let mut url = client.url(&["v1", "deployments", name])?;
            if *drop_state {
                url.set_query(Some("state=drop"));
            } else if *keep_state {
                url.set_query(Some("state=keep"));
            }
            let r = client.send(client.http.delete(url)).await?;
            let mut lines = format!("deleted {name}\n");
            for topic in r["dropped_topics"].as_array().into_iter().flatten() {
                let _ = writeln!(lines, "deleted its changelog topic {}", text(topic));
            }
            (
                json!({ "deleted": name, "dropped_topics": r["dropped_topics"] }),
                lines,
            )
        }
    };
    if api.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        out.push_str(&table);
    }
    Ok(())
}

/// Lines of the journal as a person reads them: time, node, kind, level,
/// message, with control characters shown escaped (a function's output
/// must not drive the terminal).
fn log_lines(v: &Value) -> String {
    let mut out = String::new();
    for l in v["lines"].as_array().into_iter().flatten() {
        let at = l["at_ms"]
            .as_u64()
            .map(|ms| {
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            })
            .unwrap_or_else(|| "?".to_owned());
        let kind = match (l["kind"].as_str(), l["stream"].as_str()) {
            (Some("log"), Some(stream)) => stream.to_owned(),
            (Some(k), _) => k.to_owned(),
            _ => "?".to_owned(),
        };
        let _ = writeln!(
            out,
            "{at} {} {kind} {} {}",
            escaped(&text(&l["node"])),
            escaped(&text(&l["level"])),
            escaped(&text(&l["message"]))
        );
    }
    out
}

fn escaped(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let show: Vec<char> = if c.is_control() && c != '\t' {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            show
        })
        .collect()
}

/// `runnel logs --follow`: prints what the first read found, then asks
/// for what came after it every second, until interrupted.
async fn follow_logs(client: &Client, name: &str, first: Value, json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let print = |v: &Value| {
        let mut stdout = std::io::stdout().lock();
        if json {
            for l in v["lines"].as_array().into_iter().flatten() {
                let _ = writeln!(stdout, "{l}");
            }
        } else {
            let _ = stdout.write_all(log_lines(v).as_bytes());
        }
        let _ = stdout.flush();
    };
    print(&first);
    let mut next = first["next"].as_i64().unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut url = client.url(&["v1", "deployments", name, "logs"])?;
        url.query_pairs_mut()
            .append_pair("after", &next.to_string());
        let r = client.send(client.http.get(url)).await?;
        print(&r);
        next = r["next"].as_i64().unwrap_or(next);
    }
}

/// The query of `/v1/modules` that lets the API run the function's init:
/// its config and, for a scorer, its model.
fn module_query(model: Option<&Value>, config: &[(String, String)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in config {
        query.append_pair("config", &format!("{k}={v}"));
    }
    if let Some(m) = model.and_then(Value::as_str) {
        query.append_pair("model", m);
    }
    query.finish()
}

/// `sha256:0123456789ab…` → `0123456789ab`.
/// `runnel state get` and `ls`: the answer, and lines to print.
async fn state_command(client: &Client, command: &StateCommand) -> anyhow::Result<(Value, String)> {
    match command {
        StateCommand::Get {
            name,
            store,
            key,
            how,
        } => {
            let mut query = vec![if how.key_hex {
                ("key_hex", key.clone())
            } else {
                ("key", key.clone())
            }];
            if let Some(p) = how.partition {
                query.push(("partition", p.to_string()));
            }
            let r = client
                .get_retrying(&["v1", "deployments", name, "state", store], &query)
                .await?;
            if r["found"] != true {
                anyhow::bail!(
                    "no value for key {key:?} in store {store:?} of {name} (partition {} on node {})",
                    r["partition"],
                    text(&r["node"])
                );
            }
            let line = format!(
                "{}
",
                show_value(&r, how.value_as)?
            );
            Ok((r, line))
        }
        StateCommand::Ls {
            name,
            store,
            how,
            page,
        } => {
            let mut entries = Vec::new();
            let mut lines = String::new();
            let mut after: Option<String> = None;
            loop {
                let mut query = vec![("limit", page.to_string())];
                if let Some(p) = how.partition {
                    query.push(("partition", p.to_string()));
                }
                if let Some(a) = &after {
                    query.push(("after", a.clone()));
                }
                let r = client
                    .get_retrying(&["v1", "deployments", name, "state", store], &query)
                    .await?;
                for e in r["entries"].as_array().into_iter().flatten() {
                    let key = match e["key"].as_str() {
                        Some(k) if !how.key_hex => k.to_owned(),
                        _ => text(&e["key_hex"]),
                    };
                    let _ = writeln!(lines, "{key}\t{}", show_value(e, how.value_as)?);
                    entries.push(e.clone());
                }
                match r["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
            Ok((json!({ "entries": entries }), lines))
        }
    }
}

/// A state value of an answer (`value`, `value_hex`) as `how` says.
fn show_value(answer: &Value, how: ValueAs) -> anyhow::Result<String> {
    let hex_text = answer["value_hex"].as_str().unwrap_or_default();
    let bytes = hex::decode(hex_text).context("the API sent a value that is not hex")?;
    let not = |what: &str| {
        anyhow::anyhow!(
            "the value {hex_text} is not a {what} as the SDK encodes it (postcard); try --as hex"
        )
    };
    Ok(match how {
        ValueAs::Hex => hex_text.to_owned(),
        ValueAs::Text => match answer["value"].as_str() {
            Some(t) if !t.chars().any(char::is_control) => t.to_owned(),
            _ => format!("0x{hex_text}"),
        },
        ValueAs::U64 => varint(&bytes).ok_or_else(|| not("u64"))?.to_string(),
        ValueAs::I64 => {
            let v = varint(&bytes).ok_or_else(|| not("i64"))?;
            ((v >> 1) as i64 ^ -((v & 1) as i64)).to_string()
        }
        ValueAs::String => {
            let (len, used) = varint_prefix(&bytes).ok_or_else(|| not("string"))?;
            let text = bytes
                .get(used..)
                .filter(|t| t.len() as u64 == len)
                .and_then(|t| std::str::from_utf8(t).ok())
                .ok_or_else(|| not("string"))?;
            text.to_owned()
        }
    })
}

/// A postcard (LEB128) varint that is the whole of `bytes`.
fn varint(bytes: &[u8]) -> Option<u64> {
    let (v, used) = varint_prefix(bytes)?;
    (used == bytes.len()).then_some(v)
}

/// The LEB128 varint at the start of `bytes`, and how many bytes it took.
fn varint_prefix(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn short(digest: Option<&str>) -> String {
    digest
        .map(|d| d.trim_start_matches("sha256:").chars().take(12).collect())
        .unwrap_or_else(|| "-".to_owned())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.contains_key("state") => text(&o["state"]),
        other => other.to_string(),
    }
}

/// Left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

fn ls_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| {
            vec![
                text(&d["name"]),
                text(&d["version"]),
                text(&d["state"]),
                text(&d["input"]),
                text(&d["output"]),
                short(d["module"].as_str()),
                short(d["model"].as_str()),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no deployments\n".to_owned();
    }
    table(
        &[
            "NAME", "VERSION", "STATE", "INPUT", "OUTPUT", "MODULE", "MODEL",
        ],
        &rows,
    )
}

/// Per partition, where a group was and where it starts now.
fn moved_table(partitions: &Value) -> String {
    let rows: Vec<Vec<String>> = partitions
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                text(&p["topic"]),
                text(&p["partition"]),
                text(&p["was"]),
                text(&p["now"]),
            ]
        })
        .collect();
    table(&["TOPIC", "PARTITION", "WAS", "NOW"], &rows)
}

fn status_table(v: &Value) -> String {
    let node = &v["node"];
    let s = &node["status"];
    let mut out = String::new();
    let _ = writeln!(out, "name:      {}", text(&v["name"]));
    let _ = writeln!(
        out,
        "version:   {} (running here: {})",
        text(&v["version"]),
        text(&node["running_version"])
    );
    let _ = writeln!(out, "state:     {}", text(&v["state"]));
    let _ = writeln!(
        out,
        "topics:    {} -> {}",
        text(&v["input"]),
        text(&v["output"])
    );
    let _ = writeln!(out, "module:    {}", text(&v["module"]));
    if !v["model"].is_null() {
        let _ = writeln!(out, "model:     {}", text(&v["model"]));
    }
    if !s.is_null() {
        let _ = writeln!(
            out,
            "records:   {} in, {} out, {} filtered, {} dead-lettered, {} traps",
            text(&s["records_in"]),
            text(&s["records_out"]),
            text(&s["filtered"]),
            text(&s["dead_lettered"]),
            text(&s["traps"])
        );
        let _ = writeln!(out, "last error: {}", text(&s["last_error"]));
    }
    if !node["error"].is_null() {
        let _ = writeln!(out, "not running here: {}", text(&node["error"]));
    }
    for r in node["rollbacks"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
    {
        let _ = writeln!(out, "rollback:  {}", text(r));
    }
    let parts: Vec<Vec<String>> = s["partitions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                text(&p["topic"]),
                text(&p["partition"]),
                text(&p["offset"]),
                text(&p["high_watermark"]),
                text(&p["lag"]),
            ]
        })
        .collect();
    let cluster: Vec<Vec<String>> = v["cluster"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let parts = n["partitions"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default();
            let list: Vec<String> = parts.iter().map(|p| text(&p["partition"])).collect();
            let lag: i64 = parts.iter().filter_map(|p| p["lag"].as_i64()).sum();
            vec![
                text(&n["node"]),
                text(&n["version"]),
                text(&n["state"]),
                if list.is_empty() {
                    "-".to_owned()
                } else {
                    list.join(",")
                },
                lag.to_string(),
                text(&n["records_in"]),
            ]
        })
        .collect();
    out.push_str("\ncluster (every node's last report):\n");
    if cluster.is_empty() {
        out.push_str("  no node runs it\n");
    } else {
        out.push_str(&table(
            &[
                "NODE",
                "VERSION",
                "STATE",
                "PARTITIONS",
                "LAG",
                "RECORDS IN",
            ],
            &cluster,
        ));
    }
    out.push_str("\npartitions on this node:\n");
    if parts.is_empty() {
        out.push_str("  none\n");
    } else {
        out.push_str(&table(
            &["TOPIC", "PARTITION", "OFFSET", "END", "LAG"],
            &parts,
        ));
    }
    let versions: Vec<Vec<String>> = v["versions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|x| {
            vec![
                text(&x["version"]),
                short(x["module"].as_str()),
                short(x["model"].as_str()),
                text(&x["reason"]),
            ]
        })
        .collect();
    out.push_str("\nversions:\n");
    out.push_str(&table(&["VERSION", "MODULE", "MODEL", "REASON"], &versions));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for
mod tests {
    use super::*;

    fn client(api: &str) -> Client {
        Client::new(&ApiArgs {
            api: api.to_owned(),
            token: None,
            json: false,
            api_timeout: 60,
        })
        .expect("a valid API address")
    }

    #[test]
    fn state_values_print_as_the_sdk_encoded_them() {
        let v = |hex: &str| json!({ "value": Value::Null, "value_hex": hex });
        // postcard: 20 is one byte; 300 is 0xac 0x02; -3 zigzags to 5.
        assert_eq!(show_value(&v("14"), ValueAs::U64).unwrap(), "20");
        assert_eq!(show_value(&v("ac02"), ValueAs::U64).unwrap(), "300");
        assert_eq!(show_value(&v("05"), ValueAs::I64).unwrap(), "-3");
        assert_eq!(show_value(&v("026869"), ValueAs::String).unwrap(), "hi");
        assert_eq!(show_value(&v("14"), ValueAs::Text).unwrap(), "0x14");
        assert_eq!(
            show_value(&json!({"value": "ok", "value_hex": "6f6b"}), ValueAs::Text).unwrap(),
            "ok"
        );
        for (hex, how) in [
            ("ac", ValueAs::U64),
            ("1414", ValueAs::U64),
            ("036869", ValueAs::String),
            ("ffffffffffffffffffff01", ValueAs::U64),
        ] {
            let e = show_value(&v(hex), how).unwrap_err().to_string();
            assert!(e.contains("try --as hex"), "{hex}: {e}");
        }
    }

    #[test]
    fn names_are_escaped_in_paths() {
        let c = client("http://127.0.0.1:7070/");
        assert_eq!(
            c.url(&["v1", "deployments", "a/b?c#d e", "status"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:7070/v1/deployments/a%2Fb%3Fc%23d%20e/status"
        );
        let c = client("https://runnel.example/prefix");
        assert_eq!(
            c.url(&["v1", "deployments", "d"]).unwrap().as_str(),
            "https://runnel.example/prefix/v1/deployments/d"
        );
        for name in ["", ".", ".."] {
            let err = c.url(&["v1", "deployments", name]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{name:?} cannot be a deployment name")),
                "{err}"
            );
        }
    }

    #[test]
    fn an_api_address_must_be_http_or_https() {
        for bad in ["127.0.0.1:7070", "ftp://host", "http//host", ""] {
            let err = api_url(bad).expect_err(bad).to_string();
            assert!(err.starts_with(&format!("--api {bad:?} is not")), "{err}");
            assert!(err.contains("http://127.0.0.1:7070"), "{err}");
        }
    }

    #[test]
    fn a_token_in_clear_off_this_machine_is_warned_about() {
        let t = Some("secret");
        for quiet in [
            ("http://127.0.0.1:7070", t),
            ("http://127.8.9.10:7070", t),
            ("http://[::1]:7070", t),
            ("http://localhost:7070", t),
            ("https://runnel.example", t),
            ("http://runnel.example", None),
        ] {
            assert_eq!(clear_token_warning(quiet.0, quiet.1), None, "{quiet:?}");
        }
        let w = clear_token_warning("http://10.0.0.7:7070", t).unwrap_or_default();
        assert!(
            w.starts_with("warning: sending the API token in clear over plain http to 10.0.0.7"),
            "{w}"
        );
        assert!(w.contains("https://"), "{w}");
    }
}
