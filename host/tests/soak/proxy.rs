//! A TCP proxy in front of the broker, on loopback, that can cut or slow the
//! connections of one node at a time.
//!
//! The broker advertises the proxy's address, so every connection a client
//! makes after its bootstrap comes through here too. A connection is told
//! apart by the `client_id` of its first Kafka request (each node names its
//! clients `runnel-<node id>`); connections of other clients (the soak's own
//! producer and reader) are never disturbed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What is being done to one client id's connections.
#[derive(Debug, Default, Clone, Copy)]
struct Trouble {
    /// Connections are closed, and new ones refused, until then.
    cut_until: Option<Instant>,
    /// Every chunk forwarded either way waits this long, until `delay_until`.
    delay: Duration,
    delay_until: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Proxy {
    addr: SocketAddr,
    trouble: Arc<Mutex<HashMap<String, Trouble>>>,
}

impl Proxy {
    /// Listens on `listener` and forwards every connection to `upstream`.
    pub fn start(listener: TcpListener, upstream: SocketAddr) -> Self {
        let addr = listener.local_addr().unwrap();
        let proxy = Self {
            addr,
            trouble: Arc::default(),
        };
        let trouble = proxy.trouble.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let trouble = trouble.clone();
                tokio::spawn(async move {
                    let _ = forward(client, upstream, trouble).await;
                });
            }
        });
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes `client_id`'s connections and refuses new ones for `span`.
    pub fn cut(&self, client_id: &str, span: Duration) {
        let mut t = self.trouble.lock().unwrap();
        t.entry(client_id.to_owned()).or_default().cut_until = Some(Instant::now() + span);
    }

    /// Delays everything `client_id` sends or receives by `by`, for `span`.
    pub fn delay(&self, client_id: &str, by: Duration, span: Duration) {
        let mut t = self.trouble.lock().unwrap();
        let e = t.entry(client_id.to_owned()).or_default();
        e.delay = by;
        e.delay_until = Some(Instant::now() + span);
    }

    /// What to do now with a connection of `client_id`: `None` to close it,
    /// or how long to hold each chunk.
    fn now(trouble: &Mutex<HashMap<String, Trouble>>, client_id: &str) -> Option<Duration> {
        let t = trouble.lock().unwrap();
        let Some(t) = t.get(client_id) else {
            return Some(Duration::ZERO);
        };
        let now = Instant::now();
        if t.cut_until.is_some_and(|u| now < u) {
            return None;
        }
        Some(if t.delay_until.is_some_and(|u| now < u) {
            t.delay
        } else {
            Duration::ZERO
        })
    }
}

/// Reads the first request's header (`size: i32, api_key: i16,
/// api_version: i16, correlation_id: i32, client_id: nullable string`), then
/// pumps bytes both ways, checking the client's trouble before each chunk.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    trouble: Arc<Mutex<HashMap<String, Trouble>>>,
) -> std::io::Result<()> {
    let mut head = [0u8; 14];
    client.read_exact(&mut head).await?;
    let id_len = i16::from_be_bytes([head[12], head[13]]);
    let mut id = vec![0u8; usize::try_from(id_len).unwrap_or(0)];
    client.read_exact(&mut id).await?;
    let client_id = String::from_utf8_lossy(&id).into_owned();
    if Proxy::now(&trouble, &client_id).is_none() {
        return Ok(()); // cut: the connection closes at once
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&head).await?;
    server.write_all(&id).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = {
        let (trouble, client_id) = (trouble.clone(), client_id.clone());
        async move { pump(&mut cr, &mut sw, &trouble, &client_id).await }
    };
    let down = async move { pump(&mut sr, &mut cw, &trouble, &client_id).await };
    // Either side closing, or a cut, ends both directions.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}

async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    trouble: &Mutex<HashMap<String, Trouble>>,
    client_id: &str,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Wake up now and then, so that a cut closes an idle connection too.
        let n = match tokio::time::timeout(Duration::from_millis(200), from.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => {
                if Proxy::now(trouble, client_id).is_none() {
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        match Proxy::now(trouble, client_id) {
            None => return Ok(()),
            Some(d) if !d.is_zero() => tokio::time::sleep(d).await,
            Some(_) => {}
        }
        to.write_all(&buf[..n]).await?;
    }
}
