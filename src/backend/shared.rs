//! A backend shared with other gateways (several gateways in front of one Swarm service, or one
//! Docker engine): this gateway reports its traffic to the provider from the idle clock's side
//! (never per request), and asks the provider before a sleep whether someone else still uses
//! the backend ([`Provider::may_sleep`](crate::providers::Provider::may_sleep)).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::backend::watcher::NEVER;
use crate::backend::Watcher;
use crate::providers::{Activity, SleepVerdict};

impl Watcher {
    /// How often, in ticks, this backend's provider hears of its traffic: a quarter of
    /// `idle_timeout` (at least one tick), if the provider wants to hear of it at all.
    pub(super) fn report_period(&self) -> Option<u32> {
        let idle_ticks = self.settings.load().idle_ticks;
        (idle_ticks > 0 && self.provider.reports_activity()).then(|| (idle_ticks / 4).max(1))
    }

    /// This gateway's traffic as the provider sees it: the latest moment its last traffic can
    /// have come (the end of the coarse tick it was seen in; now, while anything is in flight)
    /// on the wall clock, and the idle timeout.
    pub(super) fn activity(&self) -> Activity {
        let now = self.idle.now();
        let seen = if self.in_flight() > 0 {
            now
        } else {
            self.last_seen().min(now)
        };
        let ago = self.idle.tick() * (now - seen).saturating_sub(1);
        let settings = self.settings.load();
        Activity {
            last_seen: SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            idle_timeout: self.idle.tick() * settings.idle_ticks,
        }
    }

    /// Reports this gateway's traffic to the provider in the background, if there was traffic
    /// since the tick of the last report (or during it: one more report after the traffic
    /// ends lets the provider take a baseline after it) and the last report is at least
    /// [`report_period`](Self::report_period) old. One report at a time.
    pub(super) fn report_activity(&self, now: u32) {
        let Some(period) = self.report_period() else {
            return;
        };
        let seen = if self.in_flight() > 0 {
            now
        } else {
            self.last_seen()
        };
        let at = self.reported_at.load(Ordering::Relaxed);
        if at != NEVER && (seen < at || now < at.saturating_add(period)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(this) = self.this.upgrade() else {
            return;
        };
        if self.reporting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.reported_at.store(now, Ordering::Relaxed);
        let activity = self.activity();
        runtime.spawn(async move {
            if let Err(error) = this.provider.activity(activity).await {
                tracing::warn!(backend = %this.backend(), %error, "could not report this gateway's traffic");
            }
            this.reporting.store(false, Ordering::Release);
        });
    }

    /// Asks the provider whether the backend may sleep now (after
    /// [`try_begin_stop`](Self::try_begin_stop)). A postponement cancels the stop (the backend
    /// keeps serving) and says when to ask again; a provider that cannot tell does not hold the
    /// backend (the stop itself will fail if the manager is unreachable).
    pub(super) async fn vetoed(&self) -> Option<Duration> {
        match self.provider.may_sleep(self.activity()).await {
            Ok(SleepVerdict::Now) => None,
            Ok(SleepVerdict::Postpone { retry_in, reason }) => {
                tracing::info!(backend = %self.backend(), %reason, ?retry_in, "not put to sleep yet: still in use");
                self.cancel_stop();
                Some(retry_in)
            }
            Err(error) => {
                tracing::warn!(backend = %self.backend(), %error, "could not ask whether the backend is still in use; putting it to sleep");
                None
            }
        }
    }
}
