//! The Proxmox VE provider family: LXC guests of one PVE cluster, driven through the PVE REST API
//! with an API token.
//!
//! * `client.rs`: [`PveClient`], the API over reqwest + rustls, PVE's error shapes decoded.
//! * `tls.rs`: trusting the API: a CA file, a pinned leaf fingerprint, or (warned) nothing.
//! * `task.rs`: following a power call's UPID task to its end (`OK`, `WARNINGS: N`, or an error).
//! * `guest.rs`: [`ProxmoxGuest`], the driver of one guest (`stop` = shutdown, `kill` = stop).
//! * `poller.rs`: [`Poller`], the one bulk status poll for every guest of the cluster.
//! * [`FAMILY`] registers the family; [`ProxmoxFamily`] is the connected family.

mod client;
mod guest;
mod poller;
mod task;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

pub use client::{PveClient, PveError};
pub use guest::{GuestLocks, ProxmoxGuest};
pub use poller::Poller;
pub use task::{follow, upid_node, TaskError};
pub use tls::{client_config, fingerprint_of, format_fingerprint, TlsError};

use crate::config::{
    BackendConfig, GatewayConfig, ProxmoxConfig, PveTrust, StopMethod, TokenSecret,
};
use crate::providers::{BackendObserver, FamilyKind, Provider, ProviderError, ProviderFamily};

/// How long start-up waits for the API to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The Proxmox family's registration. No `pause`: LXC suspend is an experimental CRIU
/// checkpoint that leaves the guest stopped (the configuration check says so).
pub static FAMILY: FamilyKind = FamilyKind {
    name: "proxmox",
    shown: "the Proxmox VE API",
    sleep_methods: &[StopMethod::Stop, StopMethod::Kill],
    reports_health: false,
    connect_timeout: CONNECT_TIMEOUT,
    claims: |backend| matches!(backend, BackendConfig::Proxmox { .. }),
    connect: connect_family,
};

fn connect_family(
    config: &GatewayConfig,
) -> BoxFuture<'_, Result<Arc<dyn ProviderFamily>, ProviderError>> {
    async move {
        let Some(proxmox) = &config.proxmox else {
            return Err(ProviderError::Api {
                action: "connect to",
                backend: "the Proxmox VE API".into(),
                message: "no idlewatcher.proxmox section in the configuration".into(),
            });
        };
        let family: Arc<dyn ProviderFamily> = Arc::new(ProxmoxFamily::connect(proxmox).await?);
        Ok(family)
    }
    .boxed()
}

/// The secret of the token, read from the file when it is in one (warning when the file is
/// readable by everyone).
fn read_secret(config: &ProxmoxConfig) -> Result<String, ProviderError> {
    match &config.token_secret {
        TokenSecret::Inline(secret) => Ok(secret.trim().to_string()),
        TokenSecret::File(path) => {
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o004 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        "the Proxmox token secret file is readable by every user; chmod o-r it"
                    );
                }
            }
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| ProviderError::Api {
                    action: "read the token secret for",
                    backend: config.url.clone(),
                    message: format!("{}: {e}", path.display()),
                })
        }
    }
}

/// The connected Proxmox family: one API client and one poller for all its guests.
#[derive(Debug)]
pub struct ProxmoxFamily {
    client: PveClient,
    poller: Arc<Poller>,
    locks: Arc<GuestLocks>,
}

impl ProxmoxFamily {
    /// Builds the client and checks the token and the certificate with one call (`/version`),
    /// so a wrong token or a pin mismatch stops the gateway at start-up, not at the first wake.
    pub async fn connect(config: &ProxmoxConfig) -> Result<Self, ProviderError> {
        let shown = format!("PVE API at {} with token {}", config.url, config.token_id);
        let api_error = |message: String| ProviderError::Api {
            action: "connect to",
            backend: shown.clone(),
            message,
        };
        if config.trust == PveTrust::Insecure {
            tracing::warn!(api = %config.url, "proxmox.insecure: the PVE API's certificate is NOT checked; set ca_file or fingerprint");
        }
        let secret = read_secret(config)?;
        let tls = client_config(&config.trust).map_err(|e| api_error(e.to_string()))?;
        let client = PveClient::new(&config.url, &config.token_id, &secret, tls)
            .map_err(|e| api_error(e.to_string()))?;
        let version: serde_json::Value = client
            .get("/version")
            .await
            .map_err(|e| api_error(e.to_string()))?;
        tracing::info!(
            api = %config.url,
            token = %config.token_id,
            version = %version.get("version").and_then(serde_json::Value::as_str).unwrap_or("?"),
            poll = ?config.poll,
            "connected to the Proxmox VE API"
        );
        let locks = Arc::new(GuestLocks::default());
        let poller = Arc::new(Poller::new(client.clone(), config.poll, Arc::clone(&locks)));
        Ok(Self {
            client,
            poller,
            locks,
        })
    }

    fn guest(backend: &BackendConfig) -> Option<(&str, u32)> {
        match backend {
            BackendConfig::Proxmox { node, vmid } => Some((node, *vmid)),
            _ => None,
        }
    }
}

#[async_trait]
impl ProviderFamily for ProxmoxFamily {
    fn kind(&self) -> &'static FamilyKind {
        &FAMILY
    }

    fn driver(&self, backend: &BackendConfig) -> Option<Arc<dyn Provider>> {
        let (node, vmid) = Self::guest(backend)?;
        Some(Arc::new(ProxmoxGuest::new(
            self.client.clone(),
            Arc::clone(&self.locks),
            node,
            vmid,
        )))
    }

    fn watch(&self, backend: &BackendConfig, observer: Arc<dyn BackendObserver>) {
        if let Some((node, vmid)) = Self::guest(backend) {
            self.poller.watch(node, vmid, observer);
        }
    }

    fn unwatch(&self, backend: &BackendConfig, observer: &Arc<dyn BackendObserver>) {
        if let Some((_, vmid)) = Self::guest(backend) {
            self.poller.unwatch(vmid, observer);
        }
    }

    async fn run_events(&self, shutdown: watch::Receiver<bool>) {
        self.poller.run(shutdown).await;
    }
}
