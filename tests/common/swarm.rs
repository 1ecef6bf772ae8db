//! A single-node Docker swarm for the tests, and throw-away services of the test image.
//!
//! [`SwarmGuard::acquire`] makes sure the engine is in a swarm: an engine already in one is used
//! as it is; otherwise the guard inits one on loopback (`--advertise-addr 127.0.0.1`) and the
//! last guard of this test binary to be dropped leaves it again (`swarm leave --force`, then
//! removes the `docker_gwbridge` network the init made). Tests in one binary share it.
//!
//! Services run with host networking and `dnsrr` (the machine's kernel may lack IPVS, which the
//! routing mesh needs), from the local test image, never pulled (`--no-resolve-image`).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::container::{unique_name, TEST_LABEL};
use super::engine::docker;
use super::gateway::free_port;
use super::image::ensure_test_image;

/// The engine is in a swarm while a guard lives.
pub struct SwarmGuard {
    /// This binary initialised the swarm: the last guard leaves it.
    created: bool,
}

/// The live guard of this process, if any.
static CURRENT: Mutex<Weak<SwarmGuard>> = Mutex::new(Weak::new());
/// Serialises acquiring and leaving.
static SETUP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl SwarmGuard {
    /// The engine in a swarm, for as long as the returned guard lives.
    pub async fn acquire() -> Arc<SwarmGuard> {
        let _setup = SETUP.lock().await;
        if let Some(guard) = CURRENT.lock().unwrap().upgrade() {
            return guard;
        }
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).await;
        let created = match state.trim() {
            "active" => false,
            _ => {
                docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).await;
                true
            }
        };
        let guard = Arc::new(SwarmGuard { created });
        *CURRENT.lock().unwrap() = Arc::downgrade(&guard);
        guard
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        // Blocking on purpose: a destructor, like the containers' own cleanup.
        let leave = |args: &[&str]| {
            let _ = std::process::Command::new("docker").args(args).output();
        };
        leave(&["swarm", "leave", "--force"]);
        leave(&["network", "rm", "docker_gwbridge"]);
    }
}

/// A replicated service of the test image (busybox httpd on host port [`port`](Self::port)),
/// labelled `idlewatcher-test=1`, at 0 replicas when created. Dropping it removes it.
pub struct TestService {
    /// Its unique name (`iwt-PREFIX-…`).
    pub name: String,
    /// The host port its web server listens on.
    pub port: u16,
    /// Keeps the swarm up while the service exists.
    _swarm: Arc<SwarmGuard>,
}

impl TestService {
    /// Creates the service at 0 replicas (`iwt-PREFIX-…`).
    pub async fn create(prefix: &str) -> Self {
        let swarm = SwarmGuard::acquire().await;
        let image = ensure_test_image().await;
        let name = unique_name(prefix);
        let port = free_port();
        let upgrade_port = free_port();
        docker(&[
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--label",
            &format!("{TEST_LABEL}=1"),
            "--container-label",
            &format!("{TEST_LABEL}=1"),
            "--network",
            "host",
            "--endpoint-mode",
            "dnsrr",
            "--replicas",
            "0",
            "--no-resolve-image",
            "--stop-grace-period",
            "2s",
            "--env",
            &format!("PORT={port}"),
            "--env",
            &format!("UPGRADE_PORT={upgrade_port}"),
            image,
        ])
        .await;
        Self {
            name,
            port,
            _swarm: swarm,
        }
    }

    /// The replicas its spec asks for.
    pub async fn replicas(&self) -> u64 {
        let out = docker(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.Mode.Replicated.Replicas}}",
            &self.name,
        ])
        .await;
        out.trim().parse().expect("replicas")
    }

    /// Scales it by hand (`docker service scale`), without waiting.
    pub async fn scale(&self, replicas: u64) {
        docker(&[
            "service",
            "scale",
            "--detach",
            &format!("{}={replicas}", self.name),
        ])
        .await;
    }

    /// A label of its spec.
    pub async fn label(&self, key: &str) -> Option<String> {
        let out = docker(&[
            "service",
            "inspect",
            "--format",
            &format!("{{{{index .Spec.Labels \"{key}\"}}}}"),
            &self.name,
        ])
        .await;
        let value = out.trim();
        (!value.is_empty() && value != "<no value>").then(|| value.to_string())
    }

    /// Adds (or changes) a label of its spec by hand.
    pub async fn set_label(&self, key: &str, value: &str) {
        docker(&[
            "service",
            "update",
            "--detach",
            "--label-add",
            &format!("{key}={value}"),
            &self.name,
        ])
        .await;
    }

    /// The ids of its tasks that should be running.
    pub async fn running_task_ids(&self) -> Vec<String> {
        let out = docker(&[
            "service",
            "ps",
            "--quiet",
            "--filter",
            "desired-state=running",
            &self.name,
        ])
        .await;
        let mut ids: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
        ids.retain(|id| !id.is_empty());
        ids.sort();
        ids
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["service", "rm", &self.name])
            .output();
    }
}

/// Now, in Unix seconds (what a lease says).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// How long to give a swarm operation on a loaded machine.
pub const SWARM_PATIENCE: Duration = Duration::from_secs(60);
