//! What the process tests share: a real `runnel serve`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `runnel serve` for the deployments of `config`, admin API on a free port,
/// compiled modules cached next to the config. A rebalance waits at most
/// 30 s for members that never come back (a killed node); librdkafka's
/// default is 5 minutes.
pub fn serve(brokers: &str, config: &Path, log_filter: &str, stderr: Stdio) -> std::process::Child {
    serve_at(brokers, config, log_filter, stderr, "127.0.0.1:0")
}

/// [`serve`] with the admin API at `admin`.
pub fn serve_at(
    brokers: &str,
    config: &Path,
    log_filter: &str,
    stderr: Stdio,
    admin: &str,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["serve", "--brokers", brokers, "--config"])
        .arg(config)
        .args(["--kafka", "max.poll.interval.ms=30000"])
        .args(["--admin", admin])
        .env("RUNNEL_LOG", log_filter)
        .env("NO_COLOR", "1")
        .env(
            "RUNNEL_CACHE_DIR",
            config.parent().expect("in a folder").join("cache"),
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("runnel serve starts")
}

/// A loopback address with a port free now, for a node's admin API.
pub fn free_admin() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("an address").to_string()
}

/// A `runnel.toml` in `dir` with one identity-map deployment (batches of 16)
/// from `input` to `output`; `extra` adds lines to it.
pub fn identity_config(dir: &Path, input: &str, output: &str, extra: &str) -> PathBuf {
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[[deployment]]\nname = {:?}\nmodule = {:?}\ninput = [{input:?}]\noutput = {output:?}\nbatch_size = 16\n{extra}",
            runnel_tests::kafka::unique("copy"),
            runnel_tests::guests::IDENTITY_MAP
        ),
    )
    .expect("the config is written");
    config
}
