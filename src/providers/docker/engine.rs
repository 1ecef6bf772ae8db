//! Docker (or Podman-compatible) engines: where one listens and how it is trusted
//! ([`Endpoint`]), a client for it, and whether it answers right now ([`EngineLink`]).
//!
//! A gateway may drive several engines (a NAS, a mini PC, a VPS). Each is reached on its own:
//! one that is down makes only its own containers fail, at once, naming it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use bollard::Docker;
use parking_lot::Mutex;

use super::tls;
use crate::config::DockerEngine;
use crate::providers::ProviderError;

/// The platform's default engine socket, as bollard uses it when `DOCKER_HOST` is unset.
#[cfg(unix)]
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
#[cfg(windows)]
const DEFAULT_SOCKET: &str = "npipe:////./pipe/docker_engine";

/// bollard's default per-request timeout, in seconds (its `DEFAULT_TIMEOUT` is private).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// One engine as the gateway reaches it: the resolved address and TLS material. Two routes whose
/// engines resolve to the same endpoint share one connection and one event stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `unix:///path`, `tcp://h:p`, `http://h:p` or `https://h:p`.
    pub host: String,
    /// Docker's `ca.pem`, `cert.pem`, `key.pem` directory, when reached over TLS.
    pub cert_path: Option<PathBuf>,
}

impl Endpoint {
    /// Resolves a configured engine: its `host`, else `DOCKER_HOST`, else the local socket. TLS
    /// is its `cert_path`; for a host taken from `DOCKER_HOST`, Docker's own convention applies
    /// (`DOCKER_TLS_VERIFY` set: the material in `DOCKER_CERT_PATH`, else `~/.docker`), and an
    /// `https://` host without material uses that directory too.
    pub fn resolve(engine: &DockerEngine) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (host, from_env) = match &engine.host {
            Some(host) => (host.clone(), false),
            None => match env("DOCKER_HOST") {
                Some(host) => (host, true),
                None => (DEFAULT_SOCKET.to_string(), false),
            },
        };
        // A bare socket path (accepted by `connect`, for embedders).
        let host = if host.starts_with('/') {
            format!("unix://{host}")
        } else {
            host
        };
        let docker_cert_path = || {
            env("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".docker")))
        };
        let cert_path = engine.cert_path.clone().or_else(|| {
            let verify = from_env && env("DOCKER_TLS_VERIFY").is_some();
            (verify || host.starts_with("https://"))
                .then(docker_cert_path)
                .flatten()
        });
        Self { host, cert_path }
    }

    /// How messages name it: `Docker engine at tcp://nas:2376`.
    pub fn shown(&self) -> String {
        format!("Docker engine at {}", self.host)
    }

    /// A client for it (nothing is sent yet). Plain TCP to another machine is allowed but
    /// logged: whoever reaches that port is root on the engine's host.
    pub fn client(&self) -> Result<Docker, ProviderError> {
        let failed = |message: String| ProviderError::Api {
            action: "connect to",
            backend: self.shown(),
            message,
        };
        if let Some(dir) = &self.cert_path {
            if self.host.starts_with("unix://") || self.host.starts_with("http://") {
                return Err(failed(format!(
                    "TLS material {} is configured, but {} is reached without TLS",
                    dir.display(),
                    self.host
                )));
            }
            let config = tls::client_config(dir).map_err(|e| failed(e.to_string()))?;
            return tls::client(&self.host, config, REQUEST_TIMEOUT_SECS)
                .map_err(|e| failed(e.to_string()));
        }
        if self.host.starts_with("https://") {
            return Err(failed(
                "https:// needs TLS material: set tls: { cert_path } (ca.pem, cert.pem, key.pem)"
                    .to_string(),
            ));
        }
        if let Some(authority) = self
            .host
            .strip_prefix("tcp://")
            .or_else(|| self.host.strip_prefix("http://"))
        {
            if !is_loopback(authority) {
                tracing::warn!(
                    engine = %self.shown(),
                    "plain TCP to a Docker engine on another machine: anyone who can reach that port \
                     controls the engine; use tls: {{ cert_path }} (port 2376)"
                );
            }
        }
        Docker::connect_with_host(&self.host).map_err(|e| failed(e.to_string()))
    }
}

/// Whether `host:port` names this machine (`localhost`, `127.x`, `::1`).
fn is_loopback(authority: &str) -> bool {
    let authority = authority.trim_end_matches('/');
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether an engine answers right now, as its event stream last found out. A driver asks it
/// before every call, so the containers of an engine that is down fail at once, naming it,
/// instead of each waiting on a connection (or on `wake_timeout`).
#[derive(Debug)]
pub struct EngineLink {
    shown: String,
    up: AtomicBool,
    reason: Mutex<String>,
}

impl EngineLink {
    /// A link to the engine shown as `shown`, down until it first answers.
    pub fn new(shown: String) -> Self {
        Self {
            shown,
            up: AtomicBool::new(false),
            reason: Mutex::new("not connected yet".to_string()),
        }
    }

    /// How messages name the engine.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the engine answered last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The engine answers (its API version negotiated).
    pub fn set_up(&self) {
        self.up.store(true, Ordering::Release);
    }

    /// The engine stopped answering, because of `reason`.
    pub fn set_down(&self, reason: String) {
        *self.reason.lock() = reason;
        self.up.store(false, Ordering::Release);
    }

    /// `Ok` when the engine is up, else the error every call on it gets meanwhile.
    pub fn check(&self) -> Result<(), ProviderError> {
        if self.is_up() {
            return Ok(());
        }
        Err(ProviderError::Unreachable {
            manager: self.shown.clone(),
            reason: self.reason.lock().clone(),
        })
    }
}

/// Negotiates the API version with the engine behind `docker` (downgrading the client, shared
/// by all its clones, to what the engine speaks): the first request, where an unreachable
/// engine shows.
pub(crate) async fn negotiate(docker: &Docker, shown: &str) -> Result<(), ProviderError> {
    let negotiated = docker
        .clone()
        .negotiate_version()
        .await
        .map_err(|e| ProviderError::Api {
            action: "connect to",
            backend: shown.to_string(),
            message: error_chain(&e),
        })?;
    tracing::info!(engine = %shown, api = %negotiated.client_version(), "connected to the Docker engine");
    Ok(())
}

/// What went wrong talking to an engine, without the "connect to ENGINE" that
/// [`EngineLink::check`]'s error already says.
pub(crate) fn reason_of(error: &ProviderError) -> String {
    match error {
        ProviderError::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// An error with its causes (`client error (Connect): invalid peer certificate: UnknownIssuer`):
/// the top of a transport error alone rarely says what went wrong.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Connects to a Docker (or Podman-compatible) engine and negotiates the API version.
///
/// `host` is `unix:///var/run/docker.sock`, a bare socket path, `tcp://h:2375` or
/// `http://h:2375`; `None` means `DOCKER_HOST`, else the platform default socket. Negotiation
/// downgrades the client to the engine's API version, so calls never use a newer API than the
/// engine speaks (and [`DockerProvider::stop`](super::DockerProvider) knows whether it must emulate stop signals).
pub async fn connect(host: Option<&str>) -> Result<Docker, ProviderError> {
    let endpoint = Endpoint::resolve(&DockerEngine {
        host: host.map(str::to_string),
        cert_path: None,
    });
    let docker = endpoint.client()?;
    negotiate(&docker, &endpoint.shown()).await?;
    Ok(docker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for local in [
            "127.0.0.1:2375",
            "localhost:2375",
            "[::1]:2375",
            "127.1.2.3",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in ["10.0.0.2:2375", "nas.lan:2376", "[2001:db8::1]:2375"] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }

    #[test]
    fn a_configured_host_and_material_are_kept() {
        let engine = DockerEngine {
            host: Some("tcp://nas:2376".into()),
            cert_path: Some("/certs".into()),
        };
        let endpoint = Endpoint::resolve(&engine);
        assert_eq!(endpoint.host, "tcp://nas:2376");
        assert_eq!(endpoint.cert_path, Some(PathBuf::from("/certs")));
        assert_eq!(endpoint.shown(), "Docker engine at tcp://nas:2376");
    }
}
