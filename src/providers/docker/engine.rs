//! Connecting to a Docker (or Podman-compatible) engine, once per gateway.

use bollard::Docker;

use crate::providers::ProviderError;

/// The platform's default engine socket, as bollard uses it when `DOCKER_HOST` is unset.
#[cfg(unix)]
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
#[cfg(windows)]
const DEFAULT_SOCKET: &str = "npipe:////./pipe/docker_engine";

/// Connects to a Docker (or Podman-compatible) engine and negotiates the API version.
///
/// `host` is `unix:///var/run/docker.sock`, a bare socket path, `tcp://h:2375` or
/// `http://h:2375`; `None` means `DOCKER_HOST`, else the platform default socket. Negotiation
/// downgrades the client to the engine's API version, so calls never use a newer API than the
/// engine speaks (and [`DockerProvider::stop`](super::DockerProvider) knows whether it must emulate stop signals).
pub async fn connect(host: Option<&str>) -> Result<Docker, ProviderError> {
    let from_env = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let (client, shown) = match host {
        Some(h) if h.starts_with('/') => (
            Docker::connect_with_host(&format!("unix://{h}")),
            format!("Docker engine at unix://{h}"),
        ),
        Some(h) => (
            Docker::connect_with_host(h),
            format!("Docker engine at {h}"),
        ),
        None => (
            Docker::connect_with_defaults(),
            match from_env {
                Some(h) => format!("Docker engine at {h} (DOCKER_HOST)"),
                None => format!("Docker engine at {DEFAULT_SOCKET}"),
            },
        ),
    };
    let client = client.map_err(|e| ProviderError::Api {
        action: "connect to",
        backend: shown.clone(),
        message: e.to_string(),
    })?;
    let client = client
        .negotiate_version()
        .await
        .map_err(|e| ProviderError::Api {
            // The first request: this is where an unreachable engine shows.
            action: "connect to",
            backend: shown.clone(),
            message: e.to_string(),
        })?;
    let version = client.client_version();
    tracing::info!(engine = %shown, api = %version, "connected to the Docker engine");
    Ok(client)
}
