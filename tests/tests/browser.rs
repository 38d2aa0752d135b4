//! The web console in a real browser: Debian's `chromium`, headless, driven
//! through `chromedriver` (W3C WebDriver, plain HTTP) against nodes on the
//! embedded broker. It loads the overview and sees a deployment, pauses it
//! from its page and sees the state change through the API, uploads a
//! model and swaps to it, and asks for a token when the node has one. The
//! pages are also checked at a phone's width and for keyboard use (buttons
//! are buttons, inputs have labels).
//!
//! A screenshot of each page is saved to `$RUNNEL_SCREENSHOTS` (default
//! `target/console-screenshots`). Without chromium and chromedriver the
//! test fails, saying how to install them: it is never skipped.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use runnel_host::cli::control::{ApiArgs, ControlCommand, DeployArgs, run};
use runnel_host::control::{ControlOptions, ControlPlane};
use runnel_host::engine::{Engine, EngineConfig};
use runnel_host::kafka::KafkaOptions;
use runnel_host::registry::RegistryTopics;
use runnel_tests::guests;
use runnel_tests::kafka::{Rec, broker, produce, topics, unique};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

async fn driver() -> Driver {
    let missing = "the browser tests need Debian's chromium and chromedriver: \
                   `apt-get install chromium chromium-driver` (.ci/test installs them)";
    let chromedriver = find("chromedriver").unwrap_or_else(|| panic!("{missing}"));
    find("chromium").unwrap_or_else(|| panic!("{missing}"));
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/status")).await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { child, url }
}

/// A browser session.
struct Browser {
    http: reqwest::Client,
    session: String,
    shots: PathBuf,
}

impl Browser {
    async fn open(driver: &Driver) -> Self {
        let http = reqwest::Client::new();
        let args = [
            "--headless=new",
            // As root in a container.
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,900",
        ];
        let r: Value = http
            .post(format!("{}/session", driver.url))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": find("chromium").unwrap(), "args": args},
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {r}"))
            .to_owned();
        let shots = std::env::var_os("RUNNEL_SCREENSHOTS").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots"),
            PathBuf::from,
        );
        std::fs::create_dir_all(&shots).unwrap();
        Self {
            http,
            session: format!("{}/session/{session}", driver.url),
            shots,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The element `css` names once it is there and shown.
    async fn element(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                let shown = self
                    .call(
                        reqwest::Method::GET,
                        &format!("/element/{id}/displayed"),
                        None,
                    )
                    .await;
                if shown == json!(true) {
                    return id.to_owned();
                }
            }
            assert!(Instant::now() < deadline, "never shown: {css}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the text of `css` satisfies `check`.
    async fn until_text(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.text(css).await;
            if check(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "{css} says {t:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// A file input takes a file's path as its keys; it may be hidden
    /// behind a styled label, so it is not waited to be shown.
    async fn choose_file(&self, css: &str, path: &std::path::Path) {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no {css}: {v}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": path.to_str().unwrap()})),
        )
        .await;
    }

    async fn size(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Interactive elements a keyboard cannot reach or a screen reader
    /// cannot name: clickable things that are not buttons or links, inputs
    /// without a label.
    async fn inaccessible(&self) -> Value {
        self.script(
            r#"const bad = [];
               for (const e of document.querySelectorAll('[onclick], div[tabindex]:not([role][aria-label]), span[tabindex]')) bad.push(e.outerHTML.slice(0, 80));
               for (const e of document.querySelectorAll('input, select, textarea')) {
                 if (e.type === 'hidden') continue;
                 const labelled = (e.id && document.querySelector(`label[for="${e.id}"]`)) || e.closest('label') || e.getAttribute('aria-label');
                 if (!labelled) bad.push(e.outerHTML.slice(0, 80));
               }
               for (const b of document.querySelectorAll('button')) if (!b.textContent.trim() && !b.getAttribute('aria-label')) bad.push(b.outerHTML.slice(0, 80));
               return bad;"#,
            json!([]),
        )
        .await
    }

    async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

async fn node(kafka: &KafkaOptions, registry: &str, token: Option<&str>) -> ControlPlane {
    let engine = Engine::new(EngineConfig {
        cache_dir: None,
        max_instances: 64,
        ..EngineConfig::default()
    })
    .unwrap();
    let options = ControlOptions {
        topics: RegistryTopics::with_prefix(registry),
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.map(str::to_owned),
        ..ControlOptions::new(kafka.clone())
    };
    ControlPlane::start(options, engine, vec![]).await.unwrap()
}

async fn api_get(url: String, token: Option<&str>) -> Value {
    let mut r = reqwest::Client::new().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_pauses_and_swaps_a_deployment_and_asks_for_a_token() {
    runnel_tests::journal_layer();
    let driver = driver().await;
    let (_broker, kafka) = broker().await;
    let (input, output) = (unique("in"), unique("out"));
    topics(&kafka, &[&input, &output, &format!("{output}.dlq")], 2).await;
    let registry = unique("reg");
    let token = "s3cret-token";
    let cp = node(&kafka, &registry, Some(token)).await;
    let dir = tempfile::tempdir().unwrap();
    let model = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let name = "echo";
    let api = ApiArgs {
        api: cp.url(),
        token: Some(token.to_owned()),
        json: false,
        api_timeout: 60,
    };
    run(
        &api,
        &ControlCommand::Deploy(DeployArgs {
            module: guests::ECHO_SCORER.into(),
            name: name.to_owned(),
            input: vec![input.clone()],
            output: vec![output.clone()],
            dead_letter: None,
            model: Some(model("v1.model", "v1:")),
            config: Vec::new(),
            memory_mib: None,
            timeout_ms: None,
            batch_size: None,
            linger_ms: None,
            workers: None,
            stores: Vec::new(),
            provenance: None,
            from: None,
        }),
        &mut String::new(),
    )
    .await
    .unwrap();

    // Records flow while the pages are looked at.
    let flow = tokio::spawn({
        let (kafka, input) = (kafka.clone(), input.clone());
        async move {
            for round in 0..120 {
                let records: Vec<Rec> = (0..50)
                    .map(|i| (Some(format!("k{i}")), format!("r{round}-{i}"), vec![]))
                    .collect();
                produce(&kafka, &input, &records).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let browser = Browser::open(&driver).await;
    let record = format!("{}/v1/deployments/{name}", cp.url());

    // The node has a token: the page asks for it; a wrong one is refused
    // with a message; the right one shows the overview.
    browser.go(&format!("{}/", cp.url())).await;
    browser.element("#token-form").await;
    browser.screenshot("token").await;
    browser.type_into("#token", "wrong").await;
    browser.click("#token-submit").await;
    let said = browser.until_text("#token-error", |t| !t.is_empty()).await;
    assert!(said.contains("401") || said.contains("refused"), "{said}");
    let clear = browser
        .script(
            "const e = document.querySelector('#token'); e.value = ''; return true;",
            json!([]),
        )
        .await;
    assert_eq!(clear, json!(true));
    browser.type_into("#token", token).await;
    browser.click("#token-submit").await;

    // The overview lists the deployment.
    let row = format!(r#"tr[data-deployment="{name}"] .state"#);
    browser.until_text(&row, |t| t.contains("running")).await;
    browser.screenshot("overview").await;
    let kept = browser
        .script(
            "return [sessionStorage.getItem('runnel.token'), location.href, document.cookie];",
            json!([]),
        )
        .await;
    assert_eq!(kept[0], token, "kept for the tab: {kept}");
    assert!(
        !kept[1].as_str().unwrap().contains(token),
        "never in a URL: {kept}"
    );
    assert_eq!(kept[2], "", "no cookie: {kept}");
    assert_eq!(browser.inaccessible().await, json!([]));

    // Its page: pause, seen through the API; then resume.
    browser
        .click(&format!(
            r##"tr[data-deployment="{name}"] a[href="#/d/{name}"]"##
        ))
        .await;
    browser
        .element(&format!(r#"section#deployment[data-name="{name}"]"#))
        .await;
    browser.element("#partitions").await;
    browser.click("#pause").await;
    let deadline = Instant::now() + WAIT;
    while api_get(record.clone(), Some(token)).await["paused"] != json!(true) {
        assert!(Instant::now() < deadline, "the pause never reached the API");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.until_text("#state", |t| t.contains("paused")).await;
    browser.click("#resume").await;
    let deadline = Instant::now() + WAIT;
    while api_get(record.clone(), Some(token)).await["paused"] != json!(false) {
        assert!(
            Instant::now() < deadline,
            "the resume never reached the API"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Upload a model and swap to it.
    let v2 = model("v2.model", "v2:");
    browser.choose_file("#model-file", &v2).await;
    browser.click("#swap-submit").await;
    let result = browser
        .until_text("#swap-result", |t| {
            t.contains("version 2") || t.contains("rror")
        })
        .await;
    assert!(result.contains("version 2"), "{result}");
    let r = api_get(record.clone(), Some(token)).await;
    assert_eq!(r["current"], 2, "{r}");
    let digest = runnel_host::registry::digest(b"v2:");
    assert_eq!(r["versions"][1]["model"], digest.as_str(), "{r}");
    assert_eq!(
        r["versions"][1]["module"], r["versions"][0]["module"],
        "{r}"
    );
    browser.until_text("#version", |t| t.contains('2')).await;
    browser.element("#versions").await;
    // The charts fill in live, from the nodes' reports (a point per 10 s).
    browser.size(1280, 2200).await;
    browser
        .until_text("#chart-throughput", |t| !t.contains("No data"))
        .await;
    browser
        .until_text("#logs", |t| t.contains("partitions assigned"))
        .await;
    browser
        .script("window.scrollTo(0, 0); return true;", json!([]))
        .await;
    browser.screenshot("deployment").await;
    browser.size(1280, 900).await;
    assert_eq!(browser.inaccessible().await, json!([]));

    // The cluster page.
    browser.go(&format!("{}/#/cluster", cp.url())).await;
    browser
        .element(&format!(r#"tr[data-node="{}"]"#, cp.node_id()))
        .await;
    browser.screenshot("cluster").await;

    // A phone's width: nothing wider than the screen but the tables'
    // own scrolling boxes. Then, at that width, roll back to version 1 and
    // delete the deployment, as a thumb would.
    browser.size(390, 844).await;
    browser.go(&format!("{}/#/d/{name}", cp.url())).await;
    browser.element("#pause").await;
    let overflow = browser
        .script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 1,
        "the page scrolls sideways by {overflow} px"
    );
    browser.screenshot("deployment-phone").await;
    browser.click(r#"#rollback-to option[value="1"]"#).await;
    browser.click("#rollback").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = api_get(record.clone(), Some(token)).await;
        if r["current"] == 3 {
            assert_eq!(r["versions"][2]["model"], r["versions"][0]["model"], "{r}");
            assert!(
                r["versions"][2]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("rollback"),
                "{r}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollback never reached the API: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.click("#delete").await;
    browser.element("#confirm-delete").await;
    browser.click("#confirm-delete-yes").await;
    let deadline = Instant::now() + WAIT;
    while api_get(record.clone(), Some(token)).await["error"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the delete never reached the API"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    browser.close().await;
    flow.abort();
    cp.stop();
}
