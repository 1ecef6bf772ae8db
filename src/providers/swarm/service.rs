//! One Swarm service driven as a backend: woken by scaling it to the route's `replicas`, put to
//! sleep by scaling it to 0, each a versioned update of the whole spec (`spec.rs`).
//!
//! Several gateways may front one service. Each keeps an activity lease on it, the label
//! `idlewatcher.active.<instance>=<unix seconds>` of its last traffic, renewed from the idle
//! clock's side (at most every `idle_timeout / 4`, see [`Provider::activity`]). A gateway scales
//! the service to 0 only when no OTHER gateway's lease is younger than `idle_timeout` plus a
//! grace, and decides that on the very read its versioned scale-down is based on: a lease
//! renewed in between makes the write fail, and the next read sees it. A wake writes the lease
//! in the same update as the replicas, and a service already scaled up is left as it is: two
//! gateways waking it at once give one scale-up. Labels live on the service spec, not the task
//! template, so writing a lease never redeploys a task.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bollard::models::{Task, TaskState};
use bollard::query_parameters::ListTasksOptions;
use bollard::Docker;

use super::spec::{
    drop_lease, inspect, other_lease, replicas, set_lease, set_replicas, unix_seconds, update,
    BeforeWrite, Decision,
};
use crate::providers::docker::{map_error, DockerProvider, EngineLink};
use crate::providers::{Activity, BackendStatus, Provider, ProviderError, SleepVerdict};

/// Longest a wake waits for a task to run after scaling up (`wake_timeout` usually ends it
/// first).
const START_LIMIT: Duration = Duration::from_secs(120);
/// Added to `stop_timeout` for the tasks to be gone after scaling to 0.
const STOP_MARGIN: Duration = Duration::from_secs(10);
/// Pause between two looks at the tasks.
const TASK_POLL: Duration = Duration::from_millis(100);
/// Added to `idle_timeout` before another gateway's lease expires: its renewals come every
/// `idle_timeout / 4` (plus a tick), and the gateways' clocks may differ by a second or so.
const LEASE_GRACE: Duration = Duration::from_secs(2);

/// The whole hold of another gateway's lease: `idle_timeout`, a quarter of it for its renewal
/// period, and [`LEASE_GRACE`].
pub(crate) fn lease_hold(idle_timeout: Duration) -> Duration {
    idle_timeout + idle_timeout / 4 + LEASE_GRACE
}

/// One Swarm service.
pub struct SwarmService {
    docker: Docker,
    link: Arc<EngineLink>,
    service: String,
    replicas: u64,
    instance: String,
    describe: String,
    before_write: Option<BeforeWrite>,
    /// The route's `idle_timeout` in milliseconds, as the idle clock last said (the stop itself
    /// is not told it, and checks the leases again with it).
    idle_timeout_ms: AtomicU64,
}

impl std::fmt::Debug for SwarmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl SwarmService {
    /// Service `service` on the manager behind `docker`, woken to `replicas`, leased as gateway
    /// `instance`. Nothing is checked here (it may not exist yet).
    pub fn new(
        docker: Docker,
        link: Arc<EngineLink>,
        service: &str,
        replicas: u64,
        instance: &str,
    ) -> Self {
        Self {
            docker,
            link,
            service: service.to_string(),
            replicas,
            instance: instance.to_string(),
            describe: format!("swarm service \"{service}\""),
            before_write: None,
            idle_timeout_ms: AtomicU64::new(0),
        }
    }

    fn remember_idle_timeout(&self, idle_timeout: Duration) {
        let ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        self.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The idle timeout the leases are judged with.
    fn hold_from(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// What kill, pause and unpause answer: a service only scales (`-t` rejects those methods).
    fn only_scaled(&self, action: &'static str) -> ProviderError {
        ProviderError::Api {
            action,
            backend: self.describe.clone(),
            message: "a Swarm service is only scaled to 0 and back (stop_method: stop)".into(),
        }
    }

    /// Runs `hook` between every read of the service and the versioned write based on it: a
    /// seam for tests, to change the service in that window and see the conflict re-decided.
    pub fn with_before_write(mut self, hook: BeforeWrite) -> Self {
        self.before_write = Some(hook);
        self
    }

    /// Reads, decides with `decide`, writes with the version read; again on a conflict.
    async fn update(
        &self,
        decide: impl FnMut(&bollard::models::Service) -> Result<Decision, ProviderError>,
    ) -> Result<bool, ProviderError> {
        self.link.check()?;
        update(
            &self.docker,
            &self.service,
            &self.describe,
            self.before_write.as_ref(),
            decide,
        )
        .await
    }

    /// The spec of a service as read, or an error when it has none or is not replicated.
    fn spec_of(
        &self,
        service: &bollard::models::Service,
    ) -> Result<bollard::models::ServiceSpec, ProviderError> {
        let spec = service.spec.clone().unwrap_or_default();
        if replicas(&spec).is_none() {
            return Err(ProviderError::Api {
                action: "scale",
                backend: self.describe.clone(),
                message: "not a replicated service (global services cannot be scaled)".into(),
            });
        }
        Ok(spec)
    }

    /// Another gateway's lease holding the service, as the error a scale-down gives.
    fn held(
        &self,
        spec: &bollard::models::ServiceSpec,
        idle_timeout: Duration,
    ) -> Option<ProviderError> {
        let (holder, left) = other_lease(
            spec,
            &self.instance,
            lease_hold(idle_timeout),
            SystemTime::now(),
        )?;
        Some(ProviderError::InUse {
            backend: self.describe.clone(),
            reason: format!(
                "gateway \"{holder}\" saw traffic for it recently (its lease holds {}s more)",
                left.as_secs()
            ),
            retry_in: left.max(Duration::from_secs(1)),
        })
    }

    /// The tasks the manager wants running.
    async fn tasks(&self) -> Result<Vec<Task>, ProviderError> {
        let filters = std::collections::HashMap::from([
            ("service".to_string(), vec![self.service.clone()]),
            ("desired-state".to_string(), vec!["running".to_string()]),
        ]);
        let options = ListTasksOptions {
            filters: Some(filters),
        };
        self.docker
            .list_tasks(Some(options))
            .await
            .map_err(|e| map_error("list the tasks of", &self.describe, e))
    }

    /// A running task, if any.
    async fn running_task(&self) -> Result<Option<Task>, ProviderError> {
        Ok(self
            .tasks()
            .await?
            .into_iter()
            .find(|task| task.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)))
    }

    /// Waits until `done` says yes of the running task (or its absence), for at most `limit`;
    /// the running task then, if any, and whether `done` said yes.
    async fn wait_tasks(
        &self,
        limit: Duration,
        done: impl Fn(Option<&Task>) -> bool,
    ) -> Result<(bool, Option<Task>), ProviderError> {
        let deadline = Instant::now() + limit;
        loop {
            let task = self.running_task().await?;
            if done(task.as_ref()) {
                return Ok((true, task));
            }
            if Instant::now() >= deadline {
                return Ok((false, task));
            }
            tokio::time::sleep(TASK_POLL).await;
        }
    }

    /// The address of the node a task runs on (a task on another node of the swarm).
    async fn node_address(&self, task: &Task) -> Result<IpAddr, ProviderError> {
        let no_address = || ProviderError::NoAddress {
            backend: self.describe.clone(),
        };
        let node = task.node_id.as_deref().ok_or_else(no_address)?;
        let node = self
            .docker
            .inspect_node(node)
            .await
            .map_err(|e| map_error("inspect the node of", &self.describe, e))?;
        let address: IpAddr = node
            .status
            .and_then(|status| status.addr)
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(no_address)?;
        // A single node advertised on 0.0.0.0 is this machine.
        Ok(if address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            address
        })
    }
}

#[async_trait]
impl Provider for SwarmService {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn noun(&self) -> &'static str {
        "service"
    }

    async fn status(&self) -> Result<BackendStatus, ProviderError> {
        self.link.check()?;
        match inspect(&self.docker, &self.service, &self.describe).await {
            Ok(service) => Ok(super::spec::status_of(&service)),
            Err(ProviderError::NotFound { .. }) => Ok(BackendStatus::Missing),
            Err(error) => Err(error),
        }
    }

    /// Scales to `replicas` (unless it already asks for as many) and writes this gateway's
    /// lease in the same update, then waits for a task to run.
    async fn start(&self) -> Result<(), ProviderError> {
        let now = unix_seconds(SystemTime::now());
        self.update(|service| {
            let mut spec = self.spec_of(service)?;
            let current = replicas(&spec).unwrap_or(0);
            let scale = current < self.replicas;
            if scale {
                set_replicas(&mut spec, self.replicas);
            }
            let leased = set_lease(&mut spec, &self.instance, now);
            Ok(if scale || leased {
                Decision::Write(Box::new(spec))
            } else {
                Decision::Keep
            })
        })
        .await?;
        if self.wait_tasks(START_LIMIT, |task| task.is_some()).await?.0 {
            Ok(())
        } else {
            Err(ProviderError::Api {
                action: "start",
                backend: self.describe.clone(),
                message: format!("no task running {START_LIMIT:?} after scaling up"),
            })
        }
    }

    /// Scales to 0 and drops this gateway's lease, unless another gateway's lease holds the
    /// service ([`ProviderError::InUse`]); decided on the read the versioned write is based on.
    /// Swarm stops the tasks with the service's own stop signal and grace period.
    async fn stop(&self, _signal: Option<&str>, timeout: Duration) -> Result<(), ProviderError> {
        let hold_from = self.hold_from();
        self.update(|service| {
            let mut spec = self.spec_of(service)?;
            if let Some(held) = self.held(&spec, hold_from) {
                return Err(held);
            }
            let scale = replicas(&spec).unwrap_or(0) > 0;
            if scale {
                set_replicas(&mut spec, 0);
            }
            let dropped = drop_lease(&mut spec, &self.instance);
            Ok(if scale || dropped {
                Decision::Write(Box::new(spec))
            } else {
                Decision::Keep
            })
        })
        .await?;
        if !self
            .wait_tasks(timeout + STOP_MARGIN, |task| task.is_none())
            .await?
            .0
        {
            tracing::warn!(service = %self.service, "tasks still running after scaling to 0");
        }
        Ok(())
    }

    async fn kill(&self, _signal: Option<&str>) -> Result<(), ProviderError> {
        Err(self.only_scaled("kill"))
    }

    async fn pause(&self) -> Result<(), ProviderError> {
        Err(self.only_scaled("pause"))
    }

    async fn unpause(&self) -> Result<(), ProviderError> {
        Err(self.only_scaled("unpause"))
    }

    /// The running task's address: its container's, when the container is on this engine's
    /// node (`127.0.0.1` with host networking), else its node's. A service scaled up by someone
    /// else (adopted on its event) may have no task running yet: waited for, like a start.
    async fn address(&self) -> Result<IpAddr, ProviderError> {
        self.link.check()?;
        let (_, task) = self.wait_tasks(START_LIMIT, |task| task.is_some()).await?;
        let task = task.ok_or_else(|| ProviderError::NoAddress {
            backend: self.describe.clone(),
        })?;
        let container = task
            .status
            .as_ref()
            .and_then(|status| status.container_status.as_ref())
            .and_then(|status| status.container_id.clone());
        if let Some(container) = container {
            let local = DockerProvider::new(self.docker.clone(), &container);
            match local.address().await {
                Ok(address) => return Ok(address),
                Err(ProviderError::NotFound { .. }) => {} // On another node.
                Err(error) => return Err(error),
            }
        }
        self.node_address(&task).await
    }

    fn reports_activity(&self) -> bool {
        true
    }

    /// Renews this gateway's lease (a label on the service spec: no task is redeployed).
    async fn activity(&self, activity: Activity) -> Result<(), ProviderError> {
        self.remember_idle_timeout(activity.idle_timeout);
        let seconds = unix_seconds(activity.last_seen);
        self.update(|service| {
            let Some(mut spec) = service.spec.clone() else {
                return Ok(Decision::Keep);
            };
            // A service at 0 needs no lease: nothing to keep awake.
            if replicas(&spec) == Some(0) || !set_lease(&mut spec, &self.instance, seconds) {
                return Ok(Decision::Keep);
            }
            Ok(Decision::Write(Box::new(spec)))
        })
        .await
        .map(|_| ())
    }

    /// No while another gateway's lease is younger than `idle_timeout` plus the grace.
    async fn may_sleep(&self, activity: Activity) -> Result<SleepVerdict, ProviderError> {
        self.remember_idle_timeout(activity.idle_timeout);
        self.link.check()?;
        let service = inspect(&self.docker, &self.service, &self.describe).await?;
        let spec = service.spec.unwrap_or_default();
        Ok(match self.held(&spec, activity.idle_timeout) {
            Some(ProviderError::InUse {
                reason, retry_in, ..
            }) => SleepVerdict::Postpone { retry_in, reason },
            _ => SleepVerdict::Now,
        })
    }
}
