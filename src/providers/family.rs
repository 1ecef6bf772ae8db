//! The seam between the gateway and its provider families (the registry is `FAMILIES`, in
//! the folder's `mod.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::config::{BackendConfig, GatewayConfig, StopMethod};
use crate::providers::{BackendObserver, Provider, ProviderError};

/// One registered kind of provider: how to recognise its backends, what it can do, and how to
/// connect to it (static facts, known without connecting, so `-t` can use them).
pub struct FamilyKind {
    /// The route key of its backends (`docker`, `proxmox`).
    pub name: &'static str,
    /// What it is, in messages (`the Docker engine`).
    pub shown: &'static str,
    /// The sleep methods its backends support; `-t` rejects the others.
    pub sleep_methods: &'static [StopMethod],
    /// Whether its backends report a health check of their own (Docker's `HEALTHCHECK`), so
    /// that `health: { docker: true }` can use it; `-t` rejects it otherwise.
    pub reports_health: bool,
    /// How long start-up waits for it to answer.
    pub connect_timeout: Duration,
    /// Whether a backend belongs to this family.
    pub claims: fn(&BackendConfig) -> bool,
    /// Connects once for the whole gateway.
    pub connect: Connect,
}

/// How a family connects: from the gateway's configuration to the connected family.
pub type Connect =
    fn(&GatewayConfig) -> BoxFuture<'_, Result<Arc<dyn ProviderFamily>, ProviderError>>;

/// A connected provider family: one connection and one event source for all its backends.
#[async_trait]
pub trait ProviderFamily: Send + Sync {
    /// Its registration.
    fn kind(&self) -> &'static FamilyKind;
    /// The driver for one of its backends (`None`: not one of this family's).
    fn driver(&self, backend: &BackendConfig) -> Option<Arc<dyn Provider>>;
    /// Tells `observer` what happens to `backend` from now on, whether or not the event source
    /// already runs (a backend watched while it runs is resynced at once).
    fn watch(&self, backend: &BackendConfig, observer: Arc<dyn BackendObserver>);
    /// Stops telling `observer` (the same `Arc` that was watching) about `backend`.
    fn unwatch(&self, backend: &BackendConfig, observer: &Arc<dyn BackendObserver>);
    /// Runs the family's one event source until `shutdown` turns true.
    async fn run_events(&self, shutdown: watch::Receiver<bool>);
}
