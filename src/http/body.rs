//! Request bodies that come too slowly: 408 rather than a backend kept awake and an upstream
//! connection kept busy by a trickle.
//!
//! Two deadlines, nginx-like: the pause between two reads of a body is bounded by
//! `body_timeout` (Pingora's per-read timeout, set on every HTTP/1 session by the early hold),
//! and once a body has been read for `body_timeout`, its average rate must stay at least
//! `min_body_rate` ([`BodyRate`], checked on every chunk from `request_body_filter`). Either
//! failure is answered 408 ([`failure_status`]).

use std::time::Instant;

use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::ClientLimits;

/// How fast a request body has been arriving.
#[derive(Debug, Default)]
pub struct BodyRate {
    started: Option<Instant>,
    read: u64,
}

impl BodyRate {
    /// Counts `len` more bytes of the body; `Err` (408) if, `body_timeout` or more after the
    /// body began, it averaged less than `min_body_rate` bytes per second.
    pub fn received(&mut self, len: usize, limits: &ClientLimits) -> Result<()> {
        if len == 0 && self.started.is_none() {
            // No body yet (a bodiless request ends with one empty call): no clock to start.
            return Ok(());
        }
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        self.read = self.read.saturating_add(len as u64);
        if limits.min_body_rate == 0 {
            return Ok(());
        }
        let elapsed = now.duration_since(started);
        if elapsed < limits.body_timeout {
            return Ok(());
        }
        let floor = (limits.min_body_rate as f64 * elapsed.as_secs_f64()) as u64;
        if self.read < floor {
            return Error::e_explain(
                ErrorType::HTTPStatus(408),
                format!(
                    "request body too slow: {} bytes in {:.0?}, at least {} bytes/s required",
                    self.read, elapsed, limits.min_body_rate
                ),
            );
        }
        Ok(())
    }
}

/// The status a failed request is answered with: Pingora's own choice (`ProxyHttp::fail_to_proxy`),
/// except that a client whose body stalled past the read timeout gets 408, not 400. 0: the
/// client is gone, nothing to answer.
pub fn failure_status(error: &Error) -> u16 {
    match (error.etype(), error.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (_, ErrorSource::Upstream) => 502,
        (ErrorType::ReadTimedout, ErrorSource::Downstream) => 408,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_trickle_is_refused_once_the_grace_has_passed() {
        let limits = ClientLimits {
            body_timeout: Duration::ZERO,
            min_body_rate: 1_000_000_000,
            ..ClientLimits::default()
        };
        let mut rate = BodyRate::default();
        assert!(
            rate.received(1, &limits).is_ok(),
            "the first chunk starts the clock"
        );
        std::thread::sleep(Duration::from_millis(5));
        let error = rate.received(1, &limits).unwrap_err();
        assert_eq!(failure_status(&error), 408);
    }

    #[test]
    fn a_rate_of_zero_never_refuses_and_the_grace_applies() {
        let mut rate = BodyRate::default();
        let off = ClientLimits {
            min_body_rate: 0,
            body_timeout: Duration::ZERO,
            ..ClientLimits::default()
        };
        assert!(rate.received(1, &off).is_ok());
        assert!(rate.received(1, &off).is_ok());
        let mut rate = BodyRate::default();
        let defaults = ClientLimits::default();
        assert!(rate.received(1, &defaults).is_ok());
        assert!(rate.received(1, &defaults).is_ok(), "within body_timeout");
    }

    #[test]
    fn a_stalled_body_is_408_and_an_upstream_failure_502() {
        let stalled = Error::explain(ErrorType::ReadTimedout, "reading body").into_down();
        assert_eq!(failure_status(&stalled), 408);
        let upstream = Error::explain(ErrorType::ConnectRefused, "refused").into_up();
        assert_eq!(failure_status(&upstream), 502);
        let gone = Error::explain(ErrorType::ConnectionClosed, "gone").into_down();
        assert_eq!(failure_status(&gone), 0);
    }
}
