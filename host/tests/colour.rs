//! Log lines carry no colour codes when stderr is not a terminal: a file, a
//! pipe, a journal or a pod's log reads plain text.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn log_lines_to_a_pipe_are_plain_text() {
    let cache = tempfile::tempdir().unwrap();
    // The hostile guest prints a line to its stderr for the value `print`:
    // runnel logs it, at info, labelled with the function.
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["run", runnel_tests::guests::HOSTILE, "--format", "lines"])
        .env_remove("NO_COLOR")
        .env_remove("RUNNEL_LOG")
        .env("RUNNEL_CACHE_DIR", cache.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"print\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("hello from stderr"), "{stderr}");
    assert!(
        !out.stderr.contains(&0x1b),
        "escape codes in the log: {stderr:?}"
    );
}
