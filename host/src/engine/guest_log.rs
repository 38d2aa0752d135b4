//! A guest's stdout and stderr: each line becomes a host log line labelled
//! with the function, and the last lines of stderr are kept so that a trap can
//! say what the guest printed before it died (a Rust panic message, say).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A line longer than this is logged in pieces, so a guest cannot make the
/// host buffer without bound.
const MAX_LINE: usize = 4096;
/// How many stderr lines a trap report can quote.
const TAIL_LINES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

/// One of a guest's output streams. Clones share the same buffer.
#[derive(Debug, Clone)]
pub struct GuestLog {
    function: Arc<str>,
    stream: Stream,
    state: Arc<Mutex<State>>,
}

impl GuestLog {
    pub fn new(function: Arc<str>, stream: Stream) -> Self {
        Self {
            function,
            stream,
            state: Arc::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn write(&self, bytes: &[u8]) {
        self.with(|s| {
            s.partial.extend_from_slice(bytes);
            while let Some(end) = s
                .partial
                .iter()
                .position(|&b| b == b'\n')
                .or((s.partial.len() >= MAX_LINE).then_some(MAX_LINE))
            {
                let line: Vec<u8> = s.partial.drain(..end.min(s.partial.len())).collect();
                if s.partial.first() == Some(&b'\n') {
                    s.partial.remove(0);
                }
                self.emit(s, String::from_utf8_lossy(&line).trim_end().to_owned());
            }
        });
    }

    fn emit(&self, s: &mut State, line: String) {
        tracing::info!(target: "runnel::guest", function = %self.function, stream = self.stream.name(), "{line}");
        if self.stream == Stream::Stderr {
            if s.tail.len() == TAIL_LINES {
                s.tail.pop_front();
            }
            s.tail.push_back(line);
        }
    }

    /// Logs a line left without its newline.
    pub fn flush_partial(&self) {
        self.with(|s| {
            if !s.partial.is_empty() {
                let line = String::from_utf8_lossy(&std::mem::take(&mut s.partial))
                    .trim_end()
                    .to_owned();
                self.emit(s, line);
            }
        });
    }

    /// Forgets the kept stderr lines (at the start of a call).
    pub fn clear_tail(&self) {
        self.with(|s| s.tail.clear());
    }

    /// What the guest wrote to stderr since [`GuestLog::clear_tail`], minus
    /// Rust's advice about backtraces, joined on one line.
    pub fn tail(&self) -> Option<String> {
        self.flush_partial();
        self.with(|s| {
            let lines: Vec<&str> = s
                .tail
                .iter()
                .map(String::as_str)
                .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
                .collect();
            (!lines.is_empty()).then(|| lines.join(" "))
        })
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        GuestLog::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_stderr_tail_without_rust_advice() {
        let log = GuestLog::new("f".into(), Stream::Stderr);
        log.write(b"thread '<unnamed>' panicked at src/lib.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n");
        assert_eq!(
            log.tail().as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:3:5: boom")
        );
        log.clear_tail();
        assert_eq!(log.tail(), None);
        log.write(b"no newline");
        assert_eq!(log.tail().as_deref(), Some("no newline"));
    }

    #[test]
    fn long_lines_are_cut() {
        let log = GuestLog::new("f".into(), Stream::Stderr);
        log.write(&vec![b'x'; MAX_LINE * 3]);
        assert_eq!(log.with(|s| s.tail.len()), 3);
    }
}
