//! The Kubernetes manifests of deploy/kubernetes validate against the
//! Kubernetes schemas, with a real validator (`kubernetes-validate` from
//! PyPI, strict: unknown fields are errors; `.ci/setup` installs it). A broken
//! manifest fails, so the validator is not a rubber stamp.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::path::{Path, PathBuf};
use std::process::Command;

fn validator() -> PathBuf {
    if let Some(v) = std::env::var_os("RUNNEL_K8S_VALIDATE") {
        return v.into();
    }
    let home = std::env::var_os("HOME").unwrap();
    let v = Path::new(&home).join(".cache/runnel-k8s-venv/bin/kubernetes-validate");
    assert!(
        v.exists(),
        "{} is missing: run .ci/setup (it makes that virtualenv with `pip install kubernetes-validate`)",
        v.display()
    );
    v
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator())
        .arg("--strict")
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let files: Vec<PathBuf> = ["configmap", "secret", "deployment", "service", "hpa"]
        .iter()
        .map(|f| dir.join(format!("{f}.yaml")))
        .collect();
    let (ok, report) = validate(&files);
    assert!(ok, "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        5,
        "{report}"
    );

    // The Secret ships no usable token: runnel refuses an empty one.
    let secret = std::fs::read_to_string(dir.join("secret.yaml")).unwrap();
    assert!(secret.contains("RUNNEL_TOKEN: \"\""), "{secret}");

    // The probes point at the API's health paths.
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    assert!(deployment.contains("path: /healthz") && deployment.contains("path: /readyz"));

    // A wrong field fails.
    let broken = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    std::fs::write(
        broken.path(),
        deployment.replace(
            "terminationGracePeriodSeconds: 60",
            "terminationGracePeriodSeconds: soon",
        ),
    )
    .unwrap();
    let (ok, report) = validate(&[broken.path().to_owned()]);
    assert!(!ok, "a broken manifest passed: {report}");
    assert!(report.contains("terminationGracePeriodSeconds"), "{report}");
}
