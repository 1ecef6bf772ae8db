//! The traffic veto for a container shared by several gateways on one Docker engine (no swarm,
//! so no place for leases): before stopping it, a gateway compares the container's network
//! counters (`stats` one-shot: `rx_bytes` + `tx_bytes` over its interfaces) with a baseline
//! taken after its own last traffic; grown by more than the threshold (health checks and other
//! noise stay below it), another gateway is using it, and the stop is postponed.
//!
//! Limits: a container on the host's network (or sharing another's) has no counters of its
//! own, and the veto then never holds it (logged once); traffic sparser than the threshold per
//! look goes unseen (the other gateway simply wakes the container again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bollard::query_parameters::StatsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::container::map_error;
use crate::providers::{Activity, ProviderError, SleepVerdict};

/// The shortest wait before looking again after a veto.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// The counters of one container, as last sampled.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: SystemTime,
    bytes: u64,
}

/// One container's veto: its threshold and its baseline.
#[derive(Debug)]
pub(crate) struct TrafficVeto {
    threshold: u64,
    baseline: Mutex<Option<Sample>>,
    /// When traffic without this gateway was last seen: the container is then held for an
    /// `idle_timeout` from then, as the gateway serving it would hold it.
    foreign_at: Mutex<Option<SystemTime>>,
    /// "No counters" was logged for this container.
    told_no_counters: AtomicBool,
}

impl TrafficVeto {
    /// A veto holding the container when it exchanged more than `threshold` bytes.
    pub(crate) fn new(threshold: u64) -> Self {
        Self {
            threshold,
            baseline: Mutex::new(None),
            foreign_at: Mutex::new(None),
            told_no_counters: AtomicBool::new(false),
        }
    }

    /// Takes a baseline now (this gateway saw traffic, or its traffic just ended).
    pub(crate) async fn record(
        &self,
        docker: &Docker,
        container: &str,
        describe: &str,
    ) -> Result<(), ProviderError> {
        let sample = self.sample(docker, container, describe).await?;
        *self.baseline.lock() = sample;
        Ok(())
    }

    /// Whether the container may stop: its counters grew by at most the threshold since a
    /// baseline taken after this gateway's last traffic, and no such growth was seen within an
    /// `idle_timeout` (the gateway serving it keeps it that long after its last request). A
    /// baseline older than this gateway's last traffic (it counts this gateway's own bytes) is
    /// renewed and the question asked again a moment later.
    pub(crate) async fn verdict(
        &self,
        docker: &Docker,
        container: &str,
        describe: &str,
        activity: Activity,
    ) -> Result<SleepVerdict, ProviderError> {
        let Some(now) = self.sample(docker, container, describe).await? else {
            return Ok(SleepVerdict::Now);
        };
        let retry_in = (activity.idle_timeout / 4).max(MIN_RETRY);
        let before = self.baseline.lock().replace(now);
        let Some(before) = before.filter(|before| before.at > activity.last_seen) else {
            return Ok(SleepVerdict::Postpone {
                retry_in,
                reason: "no traffic baseline since this gateway's last request yet".into(),
            });
        };
        let grown = now.bytes.saturating_sub(before.bytes);
        if grown > self.threshold {
            *self.foreign_at.lock() = Some(now.at);
            return Ok(SleepVerdict::Postpone {
                retry_in,
                reason: format!(
                    "its network counters grew by {grown} bytes in {:?} without this gateway (traffic_veto: {})",
                    now.at.duration_since(before.at).unwrap_or_default(),
                    self.threshold
                ),
            });
        }
        let foreign_at = *self.foreign_at.lock();
        if let Some(held) = foreign_at
            .map(|at| at + activity.idle_timeout)
            .and_then(|until| until.duration_since(now.at).ok())
            .filter(|left| !left.is_zero())
        {
            return Ok(SleepVerdict::Postpone {
                retry_in: retry_in.min(held).max(MIN_RETRY),
                reason: format!(
                    "traffic without this gateway was seen {:?} ago (held for idle_timeout)",
                    activity.idle_timeout.saturating_sub(held)
                ),
            });
        }
        Ok(SleepVerdict::Now)
    }

    /// The container's bytes received and sent over all its interfaces; `None` when it has no
    /// counters of its own (host network, a shared network namespace, not running).
    async fn sample(
        &self,
        docker: &Docker,
        container: &str,
        describe: &str,
    ) -> Result<Option<Sample>, ProviderError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stats = docker.stats(container, Some(options));
        let answer = match stats.next().await {
            Some(Ok(answer)) => answer,
            Some(Err(error)) => return Err(map_error("read the counters of", describe, error)),
            None => return Ok(None),
        };
        let networks = answer.networks.unwrap_or_default();
        if networks.is_empty() {
            if !self.told_no_counters.swap(true, Ordering::Relaxed) {
                tracing::debug!(container = %describe, "no network counters of its own (host network?): the traffic veto never holds it");
            }
            return Ok(None);
        }
        let bytes = networks
            .values()
            .map(|n| n.rx_bytes.unwrap_or(0).saturating_add(n.tx_bytes.unwrap_or(0)))
            .fold(0u64, u64::saturating_add);
        Ok(Some(Sample {
            at: SystemTime::now(),
            bytes,
        }))
    }
}
