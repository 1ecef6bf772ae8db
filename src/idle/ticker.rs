//! The background service that advances the idle clock in real time and puts idle backends to
//! sleep with bounded concurrency.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{watch, Semaphore};

use crate::idle::wheel::Tick;
use crate::idle::{IdleClock, IdleTimers};

/// The background service that runs the ticker and the stopper (one for the whole gateway).
pub struct IdleTicker {
    timers: Mutex<Option<IdleTimers>>,
    clock: Arc<IdleClock>,
    max_concurrent_stops: usize,
}

impl IdleTicker {
    /// The service for `timers`, stopping at most `max_concurrent_stops` backends at once.
    pub fn new(timers: IdleTimers, max_concurrent_stops: usize) -> Self {
        Self {
            clock: Arc::clone(&timers.clock),
            timers: Mutex::new(Some(timers)),
            max_concurrent_stops: max_concurrent_stops.max(1),
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let Some(mut timers) = self.timers.lock().take() else {
            return; // Already running.
        };
        let stops = Arc::new(Semaphore::new(self.max_concurrent_stops));
        let mut failures: Arc<Vec<Arc<AtomicU32>>> = Arc::new(
            (0..timers.backends.len())
                .map(|_| Arc::new(AtomicU32::new(0)))
                .collect(),
        );
        let started = Instant::now();
        let tick = self.clock.tick;
        let mut now: Tick = 0;
        loop {
            let next = started + tick.mul_f64((now + 1) as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            // Count ticks from real elapsed time, so a late wake-up never slows the clock.
            now = (started.elapsed().as_nanos() / tick.as_nanos().max(1)) as Tick;
            let to_stop = timers.tick(now);
            if timers.backends.len() > failures.len() {
                // Backends added by a reload: counters for them too (the old ones kept).
                let mut grown: Vec<Arc<AtomicU32>> = failures.iter().cloned().collect();
                grown.resize_with(timers.backends.len(), || Arc::new(AtomicU32::new(0)));
                failures = Arc::new(grown);
            }
            for watcher in to_stop {
                let stops = Arc::clone(&stops);
                let clock = Arc::clone(&self.clock);
                let failures = Arc::clone(&failures);
                tokio::spawn(async move {
                    let Ok(_permit) = stops.acquire().await else {
                        return;
                    };
                    let outcome = watcher.put_to_sleep().await;
                    if let Some(failures) = failures.get(watcher.id() as usize) {
                        IdleTimers::stop_finished(&clock, watcher.as_ref(), failures, outcome);
                    }
                });
            }
        }
        self.clock.shut_down();
    }
}

#[async_trait]
impl BackgroundService for IdleTicker {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}
