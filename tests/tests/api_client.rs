//! The CLI's HTTP client, against a fake API on a loopback socket that
//! records what it was sent: names escaped in paths, a timeout with a
//! sentence, and TLS spoken to an `https://` address.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is what it is for

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::Receiver;

use clap::Parser;
use runnel_host::cli::control::{ApiArgs, ControlCommand, run};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: ControlCommand,
}

/// Runs `runnel ARGS` against the API: its output, or its error with causes.
async fn runnel(args: &[&str]) -> Result<String, String> {
    let cli = Cli::try_parse_from(["runnel"].iter().chain(args)).unwrap();
    let mut out = String::new();
    run(&cli.api, &cli.command, &mut out)
        .await
        .map(|()| out)
        .map_err(|e| format!("{e:#}"))
}

/// A one-connection server on a free loopback port. It reads the request
/// (up to the end of its headers, or whatever arrives first when it is not
/// HTTP) and hands it over, then writes `answer` if there is one, and
/// otherwise holds the connection until the client gives up.
fn fake_api(answer: Option<&'static str>) -> (u16, Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.windows(4).any(|w| w == b"\r\n\r\n") || got.first() == Some(&0x16) {
                break;
            }
        }
        let tls = got.first() == Some(&0x16);
        let _ = tx.send(got);
        match answer {
            Some(a) => socket.write_all(a.as_bytes()).unwrap(),
            None if tls => {}
            None => while socket.read(&mut buf).is_ok_and(|n| n > 0) {},
        }
    });
    (port, rx)
}

#[tokio::test]
async fn a_deployment_name_is_one_escaped_path_segment() {
    let body = r#"{"error":"no deployment named \"a/b?c d\""}"#;
    let answer: &'static str = Box::leak(
        format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let (port, server) = fake_api(Some(answer));
    let api = format!("http://127.0.0.1:{port}");
    let err = runnel(&["--api", &api, "status", "a/b?c d"])
        .await
        .unwrap_err();
    let request = String::from_utf8(server.recv().unwrap()).unwrap();
    assert!(
        request.starts_with("GET /v1/deployments/a%2Fb%3Fc%20d/status HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(err.contains("no deployment named \"a/b?c d\""), "{err}");
}

#[tokio::test]
async fn an_api_that_does_not_answer_times_out_with_a_sentence() {
    let (port, server) = fake_api(None);
    let api = format!("http://127.0.0.1:{port}");
    // A guard, not a measure: without a timeout the client would wait forever.
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        runnel(&["--api", &api, "--api-timeout", "1", "ls"]),
    )
    .await
    .expect("the client gave up by itself")
    .unwrap_err();
    assert!(
        err.starts_with(&format!(
            "the runnel API at {api} did not answer within 1 s (--api-timeout SECS waits longer)"
        )),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&server.recv().unwrap()).starts_with("GET /v1/deployments "));
}

#[tokio::test]
async fn an_https_address_is_spoken_to_in_tls() {
    let (port, server) = fake_api(None);
    let api = format!("https://127.0.0.1:{port}");
    let err = runnel(&["--api", &api, "ls"]).await.unwrap_err();
    let got = server.recv().unwrap();
    // A TLS record of type handshake (a ClientHello), not an HTTP request.
    assert_eq!(got.get(..2), Some(&[0x16, 0x03][..]), "{err}");
    assert!(err.contains(&api), "{err}");
}

#[tokio::test]
async fn an_unreachable_api_says_where_and_what_starts_one() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = format!("http://127.0.0.1:{port}");
    let err = runnel(&["--api", &api, "ls"]).await.unwrap_err();
    assert!(
        err.starts_with(&format!(
            "cannot reach the runnel API at {api}: is a node running there?"
        )),
        "{err}"
    );
}
