//! The engine's clock, as far as the event stream needs it.
//!
//! Event times (`timeNano`) and the events endpoint's `since` are on the engine's clock. The
//! event stream drops every event older than the moment its resync began (the resync already
//! says what they did), so it needs that moment on the engine's clock: an engine on another
//! machine may run ahead or behind this one. [`EngineClock::measure`] asks the engine its time
//! (`GET /info`, `SystemTime`) and keeps the offset only when the answer shows the clocks differ
//! beyond what the round trip can explain; otherwise the clocks are taken as one (always the
//! case for a local engine), so no measurement error moves the boundary.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;

/// How an engine's clock relates to this machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct EngineClock {
    /// Engine time minus local time, in nanoseconds; `0` when they agree within measurement.
    offset_nanos: i64,
}

impl EngineClock {
    /// Asks the engine its time. An engine that does not say (or says it in a form not
    /// understood) is taken to share this machine's clock: the filter then works as for a
    /// local engine, and the log says so.
    pub(super) async fn measure(docker: &Docker, shown: &str) -> Self {
        let sent = SystemTime::now();
        let began = Instant::now();
        let answer = docker.info().await;
        let round_trip = began.elapsed();
        let reported = match &answer {
            Ok(info) => info.system_time.as_deref(),
            Err(_) => None,
        };
        let Some(engine_nanos) = reported.and_then(parse_rfc3339_nanos) else {
            tracing::debug!(engine = %shown, ?reported, "the engine's clock is unknown: taken as this machine's");
            return Self::default();
        };
        let clock = Self::from_sample(engine_nanos, unix_nanos(sent), round_trip);
        if clock.offset_nanos != 0 {
            tracing::info!(
                engine = %shown,
                offset_ms = clock.offset_nanos / 1_000_000,
                "the engine's clock differs from this machine's: event times are read on the engine's"
            );
        }
        clock
    }

    /// From one sample: the engine read `engine_nanos` somewhere between `sent_nanos` (local)
    /// and `round_trip` later. When that interval holds the engine's reading, the clocks agree;
    /// otherwise the offset is taken at its lower bound (the boundary then errs earlier, where
    /// the resync covers the difference, never later, where an event would be lost).
    fn from_sample(engine_nanos: i64, sent_nanos: i64, round_trip: Duration) -> Self {
        let round_trip = i64::try_from(round_trip.as_nanos()).unwrap_or(i64::MAX);
        let received_nanos = sent_nanos.saturating_add(round_trip);
        let offset_nanos = if (sent_nanos..=received_nanos).contains(&engine_nanos) {
            0
        } else {
            engine_nanos.saturating_sub(received_nanos)
        };
        Self { offset_nanos }
    }

    /// Now, on the engine's clock, in nanoseconds since the Unix epoch (as `timeNano`).
    pub(super) fn now_nanos(&self) -> i64 {
        unix_nanos(SystemTime::now()).saturating_add(self.offset_nanos)
    }

    /// `since` for the events endpoint: `margin` before now on the engine's clock, as
    /// `seconds.nanoseconds`.
    pub(super) fn since(&self, margin: Duration) -> String {
        let margin = i64::try_from(margin.as_nanos()).unwrap_or(i64::MAX);
        since_text(self.now_nanos().saturating_sub(margin))
    }
}

/// `at` in nanoseconds since the Unix epoch.
fn unix_nanos(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
    })
}

/// Nanoseconds since the epoch as the events endpoint's `seconds.nanoseconds`.
fn since_text(nanos: i64) -> String {
    let nanos = nanos.max(0);
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// An RFC 3339 time as Docker and Podman write it (`2026-12-03T12:14:03.123456789Z` or with the
/// engine's zone, `…+01:00`), in nanoseconds since the Unix epoch.
fn parse_rfc3339_nanos(text: &str) -> Option<i64> {
    let text = text.trim();
    let (local, zone_seconds) = if let Some(utc) = text.strip_suffix('Z') {
        (utc, 0)
    } else {
        let split = text.len().checked_sub(6)?;
        let (local, zone) = (text.get(..split)?, text.get(split..)?);
        let sign = match zone.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (hours, minutes) = zone.get(1..)?.split_once(':')?;
        let hours: i64 = hours.parse().ok()?;
        let minutes: i64 = minutes.parse().ok()?;
        (local, sign * (hours * 3600 + minutes * 60))
    };
    let as_if_utc = humantime::parse_rfc3339_weak(local).ok()?;
    unix_nanos(as_if_utc).checked_sub(zone_seconds.checked_mul(1_000_000_000)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    #[test]
    fn reads_docker_and_podman_times_in_any_zone() {
        let utc = parse_rfc3339_nanos("2026-12-03T12:14:03.123456789Z").unwrap();
        assert_eq!(utc % SECOND, 123_456_789);
        assert_eq!(
            parse_rfc3339_nanos("2026-12-03T13:14:03.123456789+01:00"),
            Some(utc)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-12-03T07:44:03.123456789-04:30"),
            Some(utc)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-12-03T12:14:03Z"),
            Some(utc - 123_456_789)
        );
        for bad in [
            "",
            "yesterday",
            "2026-12-03T12:14:03",
            "2026-12-03T12:14:03+0100",
        ] {
            assert_eq!(parse_rfc3339_nanos(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn clocks_that_agree_within_the_round_trip_are_one() {
        let sent = 1_000 * SECOND;
        let round_trip = Duration::from_millis(40);
        for engine in [sent, sent + 20_000_000, sent + 40_000_000] {
            assert_eq!(
                EngineClock::from_sample(engine, sent, round_trip),
                EngineClock::default()
            );
        }
    }

    #[test]
    fn a_skewed_engine_is_read_at_the_earlier_bound() {
        let sent = 1_000 * SECOND;
        let round_trip = Duration::from_millis(40);
        // Ahead by 5 s: between 4.96 s and 5 s; the lower bound is kept.
        let ahead = EngineClock::from_sample(sent + 5 * SECOND, sent, round_trip);
        assert_eq!(ahead.offset_nanos, 5 * SECOND - 40_000_000);
        // Behind by 3 s: between -3.04 s and -3 s.
        let behind = EngineClock::from_sample(sent - 3 * SECOND, sent, round_trip);
        assert_eq!(behind.offset_nanos, -3 * SECOND - 40_000_000);
    }

    #[test]
    fn since_is_seconds_dot_nanoseconds_on_the_engine_clock() {
        assert_eq!(since_text(999 * SECOND + 5), "999.000000005");
        assert_eq!(since_text(-1), "0.000000000");
        let clock = EngineClock {
            offset_nanos: 10 * SECOND,
        };
        let local = unix_nanos(SystemTime::now());
        let (secs, _) = clock
            .since(Duration::from_secs(1))
            .split_once('.')
            .map(|(s, n)| (s.parse::<i64>().unwrap(), n.to_string()))
            .unwrap();
        assert!((secs - (local / SECOND + 9)).abs() <= 1, "{secs}");
    }
}
