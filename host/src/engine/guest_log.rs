//! A guest's stdout and stderr: each line becomes a host log line labelled
//! with the deployment's name, and the last lines of stderr are kept so that
//! a trap can say what the guest printed before it died (a Rust panic
//! message, say).
//!
//! A guest must not be able to flood the host's log, nor make the host work
//! more than linearly in what it writes. A single `write` runs in host code,
//! where epoch interruption cannot stop it, so every bound sits here, in the
//! write path:
//!
//! - a `write` may carry at most [`WRITE_PERMIT`] bytes, the permit that
//!   `check-write` grants (wasmtime-wasi does not enforce it; a bigger write
//!   traps, as `wasi:io/streams` says it must);
//! - a line is cut at [`MAX_LINE`] bytes, and the host never holds more than
//!   that of a line;
//! - one call logs at most [`LOG_BYTES_PER_CALL`] (stdout and stderr
//!   together), and one deployment (all its instances) at most
//!   [`LOG_BYTES_PER_SECOND`] on average, in bursts up to [`LOG_BURST`];
//! - what is not logged is counted ([`LogBudget::dropped_bytes`]) and noted
//!   in the host's log at most once per [`DROP_NOTE_INTERVAL`].
//!
//! Each byte is looked at a bounded number of times, so a write costs time
//! linear in its size.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The longest line logged; the rest of a longer line is dropped (and counted).
pub const MAX_LINE: usize = 4096;
/// The most a single `write` may carry: what `check-write` permits.
pub const WRITE_PERMIT: usize = 64 * 1024;
/// The most one call (`init` or one batch) logs, stdout and stderr together.
pub const LOG_BYTES_PER_CALL: u64 = 64 * 1024;
/// The most one deployment logs per second, on average, over all its instances.
pub const LOG_BYTES_PER_SECOND: u64 = 64 * 1024;
/// The most one deployment logs at once after a quiet spell.
pub const LOG_BURST: u64 = 256 * 1024;
/// How often, at most, dropped guest output is noted in the host's log.
pub const DROP_NOTE_INTERVAL: Duration = Duration::from_secs(10);
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

/// What one deployment may log, shared by all its instances: a token bucket
/// refilled at [`LOG_BYTES_PER_SECOND`], and the count of what was dropped.
#[derive(Debug)]
pub struct LogBudget {
    function: Arc<str>,
    dropped: AtomicU64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: u64,
    refilled: Instant,
    /// Dropped since the last note, and when that note was.
    unnoted: u64,
    noted: Option<Instant>,
}

impl LogBudget {
    pub fn new(function: Arc<str>) -> Self {
        Self {
            function,
            dropped: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                tokens: LOG_BURST,
                refilled: Instant::now(),
                unnoted: 0,
                noted: None,
            }),
        }
    }

    /// Bytes of guest output not logged so far: over a cap, or cut from long lines.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes from the bucket, if it holds them.
    fn take(&self, n: u64) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.duration_since(b.refilled);
        let earned = (elapsed.as_secs_f64() * LOG_BYTES_PER_SECOND as f64) as u64;
        if earned > 0 {
            b.tokens = (b.tokens + earned).min(LOG_BURST);
            b.refilled = now;
        }
        if b.tokens >= n {
            b.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Counts `n` dropped bytes, and notes the drops in the host's log if
    /// the last note is older than [`DROP_NOTE_INTERVAL`].
    fn drop_bytes(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        b.unnoted += n;
        let now = Instant::now();
        if b.noted
            .is_none_or(|t| now.duration_since(t) >= DROP_NOTE_INTERVAL)
        {
            tracing::warn!(target: "runnel::guest", function = %self.function, dropped_bytes = b.unnoted,
                "guest output dropped: lines are cut at {MAX_LINE} bytes, and a function logs at most \
                 {LOG_BYTES_PER_CALL} bytes per call and {LOG_BYTES_PER_SECOND} bytes per second \
                 (counted in `dropped_bytes`, noted at most every {DROP_NOTE_INTERVAL:?})");
            b.unnoted = 0;
            b.noted = Some(now);
        }
    }
}

/// What one instance logged in its current call (both streams share it).
/// An atomic rather than a lock: it is reset at the start of every call.
#[derive(Debug, Default)]
pub struct CallLog(AtomicU64);

impl CallLog {
    /// Starts a new call: its cap is whole again.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Counts `n` more bytes against this call's cap, if they fit.
    fn take(&self, n: u64) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + n <= LOG_BYTES_PER_CALL).then_some(used + n)
            })
            .is_ok()
    }
}

#[derive(Debug, Default)]
struct State {
    /// The line being written, at most [`MAX_LINE`] bytes.
    partial: Vec<u8>,
    /// Bytes of the current line past [`MAX_LINE`], dropped.
    cut: u64,
    tail: VecDeque<String>,
}

/// Why a write was refused: it trapped the guest.
#[derive(Debug, thiserror::Error)]
#[error(
    "a single write of {len} bytes to {stream} is over the {WRITE_PERMIT} bytes that \
     `check-write` permits (wasi:io/streams)"
)]
pub struct WriteTooLarge {
    len: usize,
    stream: &'static str,
}

/// One of a guest's output streams. Clones share the same buffer.
#[derive(Debug, Clone)]
pub struct GuestLog {
    budget: Arc<LogBudget>,
    call: Arc<CallLog>,
    stream: Stream,
    state: Arc<Mutex<State>>,
}

impl GuestLog {
    pub fn new(budget: Arc<LogBudget>, call: Arc<CallLog>, stream: Stream) -> Self {
        Self {
            budget,
            call,
            stream,
            state: Arc::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn write(&self, mut bytes: &[u8]) {
        let dropped = self.with(|s| {
            let mut dropped = 0;
            while !bytes.is_empty() {
                let (line, rest, ended) = match bytes.iter().position(|&b| b == b'\n') {
                    Some(end) => (&bytes[..end], &bytes[end + 1..], true),
                    None => (bytes, &[][..], false),
                };
                let room = MAX_LINE - s.partial.len();
                let kept = line.len().min(room);
                s.partial.extend_from_slice(&line[..kept]);
                s.cut += (line.len() - kept) as u64;
                if ended {
                    dropped += self.end_line(s, 1);
                }
                bytes = rest;
            }
            dropped
        });
        // Counted once per write, not per line: a write of empty lines
        // stays a scan.
        self.budget.drop_bytes(dropped);
    }

    /// Logs the line in `s.partial`, and returns how many of its bytes were
    /// dropped. `newline` is the length of what ended it: an empty line
    /// costs a byte too.
    #[must_use]
    fn end_line(&self, s: &mut State, newline: u64) -> u64 {
        let cut = std::mem::take(&mut s.cut);
        let n = s.partial.len() as u64 + newline;
        let line = String::from_utf8_lossy(&s.partial).trim_end().to_owned();
        s.partial.clear();
        let logged = self.call.take(n) && self.budget.take(n);
        if logged {
            if cut > 0 {
                tracing::info!(target: "runnel::guest", function = %self.budget.function, stream = self.stream.name(), "{line} [{cut} more bytes cut]");
            } else {
                tracing::info!(target: "runnel::guest", function = %self.budget.function, stream = self.stream.name(), "{line}");
            }
        }
        if self.stream == Stream::Stderr {
            if s.tail.len() == TAIL_LINES {
                s.tail.pop_front();
            }
            s.tail.push_back(line);
        }
        if logged { cut } else { n + cut }
    }

    /// Logs a line left without its newline.
    pub fn flush_partial(&self) {
        self.with(|s| {
            if !s.partial.is_empty() || s.cut > 0 {
                let dropped = self.end_line(s, 0);
                self.budget.drop_bytes(dropped);
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
        if bytes.len() > WRITE_PERMIT {
            return Err(StreamError::Trap(wasmtime::Error::new(WriteTooLarge {
                len: bytes.len(),
                stream: self.stream.name(),
            })));
        }
        GuestLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

/// Used by WASI 0.3 guests only (runnel links 0.2); bounded all the same, by
/// taking at most a permit at a time.
impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(WRITE_PERMIT);
        GuestLog::write(&self, &buf[..n]);
        Poll::Ready(Ok(n))
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

    fn log(stream: Stream) -> GuestLog {
        GuestLog::new(Arc::new(LogBudget::new("f".into())), Arc::default(), stream)
    }

    /// A `Write` into a shared buffer, for reading what was logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_the_deployments_name() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let budget = Arc::new(LogBudget::new("orders-enricher".into()));
            GuestLog::new(budget, Arc::default(), Stream::Stdout).write(b"hello\n");
        });
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains("function=orders-enricher stream=\"stdout\"") && out.contains("hello"),
            "{out}"
        );
    }

    #[test]
    fn keeps_the_stderr_tail_without_rust_advice() {
        let log = log(Stream::Stderr);
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
    fn long_lines_are_cut_not_split() {
        let log = log(Stream::Stderr);
        log.write(&vec![b'x'; MAX_LINE * 3]);
        log.write(b"\nnext\n");
        let tail = log.with(|s| s.tail.clone());
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0].len(), MAX_LINE);
        assert_eq!(tail[1], "next");
        assert_eq!(log.budget.dropped_bytes(), (MAX_LINE * 2) as u64);
    }

    #[test]
    fn one_call_logs_at_most_its_cap_and_counts_the_rest() {
        let log = log(Stream::Stdout);
        // 99 bytes and a newline.
        let line = [b'y'; 99];
        let lines = 2 * LOG_BYTES_PER_CALL / 100;
        for _ in 0..lines {
            log.write(&line);
            log.write(b"\n");
        }
        let logged = LOG_BYTES_PER_CALL / 100 * 100;
        assert_eq!(log.budget.dropped_bytes(), lines * 100 - logged);
        // The next call has its cap again, within the deployment's burst.
        log.call.reset();
        log.write(b"again\n");
        assert_eq!(log.budget.dropped_bytes(), lines * 100 - logged);
    }

    #[test]
    fn the_deployment_rate_holds_across_instances() {
        let budget = Arc::new(LogBudget::new("f".into()));
        let line = vec![b'z'; 999];
        let mut offered = 0;
        // A hundred instances, each within its own call cap, share one bucket.
        for _ in 0..100 {
            let log = GuestLog::new(budget.clone(), Arc::default(), Stream::Stdout);
            for _ in 0..60 {
                log.write(&line);
                log.write(b"\n");
                offered += 1000;
            }
        }
        let logged = offered - budget.dropped_bytes();
        // The burst, and what the rate earned while the test ran.
        assert!(logged >= LOG_BURST - 1000, "{logged}");
        assert!(logged < offered / 2, "{logged} of {offered}");
    }

    #[test]
    fn a_write_over_the_permit_traps() {
        let mut log = log(Stream::Stdout);
        let err = OutputStream::write(&mut log, Bytes::from(vec![0u8; WRITE_PERMIT + 1]));
        let Err(StreamError::Trap(e)) = err else {
            panic!("expected a trap");
        };
        assert!(e.to_string().contains("`check-write` permits"), "{e}");
        assert!(OutputStream::write(&mut log, Bytes::from(vec![b'a'; WRITE_PERMIT])).is_ok());
    }

    /// 16 MiB in one write (past the permit: the stream's own check is
    /// bypassed here), as one line and as lines of one byte. The buffer used
    /// to shift once per 4 KiB piece, which took minutes for this; each byte
    /// is now looked at a bounded number of times.
    #[test]
    fn big_writes_are_linear() {
        let log = log(Stream::Stderr);
        let mut flood = vec![b'a'; 16 << 20];
        log.write(&flood);
        log.write(b"\n");
        assert_eq!(log.budget.dropped_bytes(), (16 << 20) - MAX_LINE as u64);
        flood.fill(b'\n');
        log.write(&flood);
        assert_eq!(log.with(|s| s.partial.len()), 0);
        assert!(log.budget.dropped_bytes() >= (32 << 20) - LOG_BYTES_PER_CALL);
    }
}
