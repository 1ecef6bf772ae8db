//! A path to the Docker engine whose event stream can be silenced while every other API call
//! still goes through: the engine's events are lost (as with an engine that names them
//! differently, or a stream that hangs), not ended, so the gateway has no reason to resync.
//!
//! ```ignore
//! let engine = MutedEngine::start().await;   // docker: { host: <engine.host> }
//! engine.mute();                              // events from now on never arrive
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The engine's socket (`DOCKER_HOST=unix://…` or the default).
fn engine_socket() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => host.trim_start_matches("unix://").into(),
        _ => "/var/run/docker.sock".into(),
    }
}

/// A TCP front for the engine (`tcp://127.0.0.1:PORT`) that can drop what its event streams
/// carry. Stops when dropped.
pub struct MutedEngine {
    /// `tcp://127.0.0.1:PORT`, for `docker: { host: … }`.
    pub host: String,
    muted: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl MutedEngine {
    /// Listens on an ephemeral local port, forwarding to the engine's unix socket.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the engine front");
        let host = format!("tcp://{}", listener.local_addr().expect("local addr"));
        let muted = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&muted);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let muted = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(engine) = tokio::net::UnixStream::connect(engine_socket()).await else {
                        return;
                    };
                    forward(client, engine, muted).await;
                });
            }
        });
        Self {
            host,
            muted,
            accept,
        }
    }

    /// From now on, nothing more reaches the gateway on its event streams (they stay open).
    pub fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }
}

impl Drop for MutedEngine {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways; once a request for `/events` went through this connection and `muted` is
/// set, the engine's bytes are dropped instead of forwarded.
async fn forward(
    client: tokio::net::TcpStream,
    engine: tokio::net::UnixStream,
    muted: Arc<AtomicBool>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut engine_read, mut engine_write) = engine.into_split();
    let events = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&events);
    let up = async move {
        let mut buffer = vec![0u8; 16384];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if buffer[..n].windows(7).any(|w| w == b"/events") {
                seen.store(true, Ordering::SeqCst);
            }
            if engine_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buffer = vec![0u8; 16384];
        loop {
            let n = match engine_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if events.load(Ordering::SeqCst) && muted.load(Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}
