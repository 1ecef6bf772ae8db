//! Utilities shared by the integration tests (`mod common;` in a test file), one concern a file:
//!
//! | module | concern |
//! |---|---|
//! | [`image`] | the `FROM scratch` busybox test image |
//! | [`container`] | throw-away test containers: unique names, the label, cleanup |
//! | [`echo`] | a static TCP/UDP echo server compiled by the test, in a test container |
//! | [`engine`] | the `docker` CLI, the engine's events, a severable path to the engine |
//! | [`gateway`] | running the `idlewatcher` binary |
//! | [`http`] | raw HTTP/1.1, answer checks, bodies, Server-Sent Events |
//! | [`muted_engine`] | a path to the engine whose event stream can be silenced |
//! | [`podman`] | a private Podman engine (`podman system service` on its own socket and storage) |
//! | [`tls_engine`] | a test PKI (CA, server and client certificates) and a TLS front for the engine |
//! | [`pve`] | a fake Proxmox VE API over HTTPS (token auth, UPID tasks, PVE's error shapes) |
//! | [`recorder`] | a `BackendObserver` that records events |
//! | [`swarm`] | a single-node swarm on loopback (joined or made, then left) and throw-away services |
//! | [`browser`] | headless Chromium |
//!
//! The fixtures are `async` (on `tokio::process` and tokio sockets: they never block the test's
//! runtime), so tests that use them are `#[tokio::test]`s. Only destructors block, as they must.
//!
//! Each integration test binary compiles this module on its own and uses only part of it, so
//! unused items are expected here rather than warned about.
#![allow(dead_code)]

pub mod browser;
pub mod container;
pub mod echo;
pub mod engine;
pub mod gateway;
pub mod http;
pub mod image;
pub mod muted_engine;
pub mod podman;
pub mod pve;
pub mod recorder;
pub mod swarm;
pub mod tls_engine;

/// Sends the library's `tracing` output to the test harness (shown for failed tests, or with
/// `--nocapture`); level from `RUST_LOG`, default `info`. Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Tries `attempt` every `every` until it succeeds, for at most `timeout`: its value, or its last
/// error (to put in the caller's failure message). One poller for every "wait until" of the tests.
pub async fn eventually<T, E, F>(
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(last) if std::time::Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
