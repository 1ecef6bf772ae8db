//! The traffic veto for a container shared by several gateways on one Docker engine (no swarm,
//! so no place for leases): before stopping it, a gateway compares the container's network
//! counters (`stats` one-shot: `rx_bytes` + `tx_bytes` over its interfaces) with a baseline
//! taken after its own last traffic; grown by more than the threshold (health checks and other
//! noise stay below it), another gateway is using it, and the stop is postponed; it stays
//! postponed for an `idle_timeout` after such traffic was last seen, as the gateway serving it
//! would keep it.
//!
//! Limits: a container on the host's network (or sharing another's) has no counters of its
//! own, and the veto then never holds it (logged once); traffic sparser than the threshold per
//! look goes unseen (the other gateway simply wakes the container again).
//!
//! Pure decisions: the driver (`container.rs`) reads the counters and hands them in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bollard::models::ContainerStatsResponse;
use parking_lot::Mutex;

use crate::providers::{Activity, SleepVerdict};

/// The shortest wait before looking again after a veto.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// The bytes received and sent over all a container's interfaces; `None` when it has no
/// counters of its own (host network, a shared network namespace, not running).
pub(crate) fn network_bytes(stats: &ContainerStatsResponse) -> Option<u64> {
    let networks = stats.networks.as_ref().filter(|n| !n.is_empty())?;
    Some(
        networks
            .values()
            .map(|n| {
                n.rx_bytes
                    .unwrap_or(0)
                    .saturating_add(n.tx_bytes.unwrap_or(0))
            })
            .fold(0u64, u64::saturating_add),
    )
}

/// The counters of one container, as sampled at a moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: SystemTime,
    bytes: u64,
}

/// One container's veto: its threshold, its baseline, and when traffic without this gateway
/// was last seen.
#[derive(Debug)]
pub(crate) struct TrafficVeto {
    threshold: u64,
    baseline: Mutex<Option<Sample>>,
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

    /// Takes `bytes`, read at `at`, as the baseline (this gateway saw traffic, or its traffic
    /// just ended).
    pub(crate) fn record(&self, bytes: Option<u64>, at: SystemTime, describe: &str) {
        *self.baseline.lock() = self.sample(bytes, at, describe);
    }

    /// Whether the container may stop, its counters reading `bytes` at `at`: they grew by at
    /// most the threshold since a baseline taken after this gateway's last traffic, and no such
    /// growth was seen within an `idle_timeout`. A baseline older than this gateway's last
    /// traffic (it counts this gateway's own bytes) is renewed and the question asked again a
    /// moment later.
    pub(crate) fn verdict(
        &self,
        bytes: Option<u64>,
        at: SystemTime,
        describe: &str,
        activity: Activity,
    ) -> SleepVerdict {
        let Some(now) = self.sample(bytes, at, describe) else {
            return SleepVerdict::Now;
        };
        let retry_in = (activity.idle_timeout / 4).max(MIN_RETRY);
        let before = self.baseline.lock().replace(now);
        let Some(before) = before.filter(|before| before.at > activity.last_seen) else {
            return SleepVerdict::Postpone {
                retry_in,
                reason: "no traffic baseline since this gateway's last request yet".into(),
            };
        };
        let grown = now.bytes.saturating_sub(before.bytes);
        if grown > self.threshold {
            *self.foreign_at.lock() = Some(now.at);
            return SleepVerdict::Postpone {
                retry_in,
                reason: format!(
                    "its network counters grew by {grown} bytes in {:?} without this gateway (traffic_veto: {})",
                    now.at.duration_since(before.at).unwrap_or_default(),
                    self.threshold
                ),
            };
        }
        let foreign_at = *self.foreign_at.lock();
        let held = foreign_at
            .map(|seen| seen + activity.idle_timeout)
            .and_then(|until| until.duration_since(now.at).ok())
            .filter(|left| !left.is_zero());
        match held {
            Some(left) => SleepVerdict::Postpone {
                retry_in: retry_in.min(left).max(MIN_RETRY),
                reason: format!(
                    "traffic without this gateway was seen {:?} ago (held for idle_timeout)",
                    activity.idle_timeout.saturating_sub(left)
                ),
            },
            None => SleepVerdict::Now,
        }
    }

    /// A sample, or `None` (logged once) when the container has no counters of its own.
    fn sample(&self, bytes: Option<u64>, at: SystemTime, describe: &str) -> Option<Sample> {
        if bytes.is_none() && !self.told_no_counters.swap(true, Ordering::Relaxed) {
            tracing::debug!(container = %describe, "no network counters of its own (host network?): the traffic veto never holds it");
        }
        Some(Sample { at, bytes: bytes? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(8);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + seconds)
    }

    fn activity(last_seen: u64) -> Activity {
        Activity {
            last_seen: at(last_seen),
            idle_timeout: IDLE,
        }
    }

    fn postponed(verdict: &SleepVerdict) -> bool {
        matches!(verdict, SleepVerdict::Postpone { .. })
    }

    #[test]
    fn growth_beyond_the_threshold_holds_the_container_for_an_idle_timeout() {
        let veto = TrafficVeto::new(1000);
        veto.record(Some(5_000), at(1), "c"); // After this gateway's traffic at 0.
        assert!(postponed(&veto.verdict(
            Some(9_000),
            at(8),
            "c",
            activity(0)
        )));
        // Quiet since, but the foreign traffic seen at 8 holds it until 8 + IDLE.
        assert!(postponed(&veto.verdict(
            Some(9_100),
            at(12),
            "c",
            activity(0)
        )));
        assert_eq!(
            veto.verdict(Some(9_200), at(17), "c", activity(0)),
            SleepVerdict::Now
        );
    }

    #[test]
    fn noise_below_the_threshold_never_holds_it() {
        let veto = TrafficVeto::new(1000);
        veto.record(Some(5_000), at(1), "c");
        assert_eq!(
            veto.verdict(Some(5_900), at(8), "c", activity(0)),
            SleepVerdict::Now
        );
    }

    #[test]
    fn a_baseline_counting_this_gateways_own_bytes_is_renewed_first() {
        let veto = TrafficVeto::new(1000);
        veto.record(Some(5_000), at(1), "c"); // Before this gateway's traffic at 2.
        let first = veto.verdict(Some(90_000), at(8), "c", activity(2));
        assert!(
            matches!(&first, SleepVerdict::Postpone { reason, .. } if reason.contains("no traffic baseline")),
            "{first:?}"
        );
        assert_eq!(
            veto.verdict(Some(90_100), at(10), "c", activity(2)),
            SleepVerdict::Now
        );
    }

    #[test]
    fn without_counters_the_veto_never_holds() {
        let veto = TrafficVeto::new(1000);
        veto.record(None, at(1), "c");
        assert_eq!(
            veto.verdict(None, at(8), "c", activity(0)),
            SleepVerdict::Now
        );
    }
}
