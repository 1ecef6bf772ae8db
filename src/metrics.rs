//! Prometheus metrics of what happens off the request path: wakes (with their phases), sleeps,
//! refused requests.
//!
//! Why a layer of its own, below the backend: the watcher, the waiting code and the HTTP front
//! count into it, and the admin listener reads it; none of them should know the others. What is
//! a *level* rather than an event (each route's state, its held requests, its requests in flight)
//! is not counted here at all: the admin listener reads those atomics when it is scraped
//! (`admin::gauges`), so the ready path pays nothing for them — no lock, no allocation, not even
//! a counter.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Buckets of the wake phases, in seconds: a paused container is up in milliseconds, a Proxmox
/// guest or a JVM in tens of seconds.
const WAKE_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Why a metric could not be registered (a name used twice: a programming error).
pub type MetricsError = prometheus::Error;

/// The gateway's metrics: one registry, the event counters and histograms in it.
pub struct Metrics {
    registry: Registry,
    wakes: IntCounterVec,
    wake_duration: HistogramVec,
    sleeps: IntCounterVec,
    rejected: IntCounterVec,
}

/// The phases of a wake, as the `phase` label of `idlewatcher_wake_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakePhase {
    /// Waking the dependencies, until each reached its condition.
    Dependencies,
    /// The provider's status and start (or unpause) calls.
    Start,
    /// From started until the readiness probe (or health check) passed.
    Ready,
    /// The whole wake.
    Total,
}

impl WakePhase {
    fn label(self) -> &'static str {
        match self {
            WakePhase::Dependencies => "dependencies",
            WakePhase::Start => "start",
            WakePhase::Ready => "ready",
            WakePhase::Total => "total",
        }
    }
}

impl Metrics {
    /// A fresh registry with every event metric registered.
    pub fn new() -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let wakes = IntCounterVec::new(
            Opts::new(
                "idlewatcher_wakes_total",
                "Wakes by outcome: ok, or the kind of failure.",
            ),
            &["route", "result"],
        )?;
        let wake_duration = HistogramVec::new(
            HistogramOpts::new(
                "idlewatcher_wake_duration_seconds",
                "How long wakes took, by phase (dependencies, start, ready, total).",
            )
            .buckets(WAKE_BUCKETS.to_vec()),
            &["route", "phase"],
        )?;
        let sleeps = IntCounterVec::new(
            Opts::new(
                "idlewatcher_sleeps_total",
                "Backends put to sleep, by result (ok, failed).",
            ),
            &["route", "result"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "idlewatcher_requests_rejected_total",
                "Requests (and held connections) refused while a route was not ready, by reason.",
            ),
            &["route", "reason"],
        )?;
        registry.register(Box::new(wakes.clone()))?;
        registry.register(Box::new(wake_duration.clone()))?;
        registry.register(Box::new(sleeps.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Arc::new(Self {
            registry,
            wakes,
            wake_duration,
            sleeps,
            rejected,
        }))
    }

    /// The registry, to gather from (or to register more collectors in).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Where one backend counts, labelled with `route` (the first route that fronts it). Its
    /// series are made on its first wake or sleep, not here: a route that never wakes costs no
    /// metric memory (a napping route's budget is 2 KB; four histograms alone take 2.5 KB).
    pub fn for_backend(self: &Arc<Self>, route: &str) -> BackendMetrics {
        BackendMetrics {
            route: route.into(),
            metrics: Arc::clone(self),
        }
    }

    /// Counts `count` requests refused on `route` for `reason` (off the ready path: the route
    /// was not ready, so the request waited or was turned away).
    pub fn rejected(&self, route: &str, reason: &str, count: u64) {
        self.rejected
            .with_label_values(&[route, reason])
            .inc_by(count);
    }
}

/// One backend's wake and sleep metrics (see [`Metrics::for_backend`]). Wakes and sleeps are
/// rare, so each looks its series up when it counts.
pub struct BackendMetrics {
    route: Box<str>,
    metrics: Arc<Metrics>,
}

impl BackendMetrics {
    /// Records a finished wake: its `result` (`ok` or a failure kind) and the phases it went
    /// through (a phase it never reached is not recorded).
    pub fn wake_finished(&self, result: &str, phases: &[(WakePhase, Duration)]) {
        self.metrics
            .wakes
            .with_label_values(&[&self.route, result])
            .inc();
        for (phase, took) in phases {
            self.metrics
                .wake_duration
                .with_label_values(&[&self.route, phase.label()])
                .observe(took.as_secs_f64());
        }
    }

    /// Records the end of an attempt to put the backend to sleep.
    pub fn slept(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.metrics
            .sleeps
            .with_label_values(&[&self.route, result])
            .inc();
    }

    /// The registry these count into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    fn text(metrics: &Metrics) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&metrics.registry().gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_wake_counts_its_result_and_every_phase_it_reached() {
        let metrics = Metrics::new().unwrap();
        let app = metrics.for_backend("app");
        assert!(
            !text(&metrics).contains("route=\"app\""),
            "a backend that never woke has no series (no memory)"
        );
        app.wake_finished(
            "ok",
            &[
                (WakePhase::Start, Duration::from_millis(20)),
                (WakePhase::Ready, Duration::from_millis(300)),
                (WakePhase::Total, Duration::from_millis(330)),
            ],
        );
        app.wake_finished("timeout", &[(WakePhase::Total, Duration::from_secs(60))]);
        app.slept(true);
        metrics.rejected("app", "full", 1);
        let text = text(&metrics);
        assert!(text.contains("idlewatcher_wakes_total{result=\"ok\",route=\"app\"} 1"));
        assert!(text.contains("idlewatcher_wakes_total{result=\"timeout\",route=\"app\"} 1"));
        assert!(text
            .contains("idlewatcher_wake_duration_seconds_count{phase=\"total\",route=\"app\"} 2"));
        assert!(text
            .contains("idlewatcher_wake_duration_seconds_count{phase=\"ready\",route=\"app\"} 1"));
        assert!(!text.contains("phase=\"dependencies\",route=\"app\"} 1"));
        assert!(text.contains("idlewatcher_sleeps_total{result=\"ok\",route=\"app\"} 1"));
        assert!(
            text.contains("idlewatcher_requests_rejected_total{reason=\"full\",route=\"app\"} 1")
        );
    }
}
