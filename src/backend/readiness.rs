//! Readiness probes: is the backend answering at the exact address the gateway will proxy to?
//!
//! The probe runs from the gateway itself, right after the provider reports the start, and is
//! repeated until it succeeds or the wake's deadline passes. Two kinds of failure are told apart:
//!
//! - *nothing listens yet* (connection refused): costs microseconds to learn, so it is retried
//!   every [`REFUSED_INTERVAL`] — the moment the backend starts listening is seen within a few
//!   milliseconds, which is what a held request waits for;
//! - *something answered badly or slowly* (unhealthy status, timeout, reset): retried with a
//!   backoff from 5 ms doubling to 250 ms, so a struggling backend is not hammered.
//!
//! Success is reported to the watcher at once, which pushes it to every waiter.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::HealthCheck;

/// Retry interval while nothing listens on the backend's port.
pub const REFUSED_INTERVAL: Duration = Duration::from_millis(5);
/// First retry interval after a bad answer; doubles up to [`MAX_INTERVAL`].
pub const FIRST_INTERVAL: Duration = Duration::from_millis(5);
/// Longest pause between probes.
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);
/// One probe attempt may take this long (connect plus answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why one probe attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing listens at the address (yet).
    #[error("connection refused by {0}")]
    Refused(SocketAddr),
    /// The connection failed otherwise.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The backend did not answer within [`ATTEMPT_TIMEOUT`].
    #[error("{0} did not answer within {ATTEMPT_TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// The HTTP exchange failed.
    #[error("HTTP probe of {addr}{path} failed: {message}")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// Which path.
        path: String,
        /// hyper's explanation.
        message: String,
    },
    /// The backend answered with a status outside the healthy set.
    #[error("HTTP probe of {addr}{path} answered {status}, not a healthy status")]
    Unhealthy {
        /// Where.
        addr: SocketAddr,
        /// Which path.
        path: String,
        /// What it answered.
        status: u16,
    },
}

impl ProbeError {
    /// Whether the failure was "nothing listens", retried at the fast interval.
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

/// One probe attempt against `addr`.
pub async fn probe_once(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(addr, check)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(addr)),
    }
}

async fn attempt(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::ConnectionRefused {
            ProbeError::Refused(addr)
        } else {
            ProbeError::Connect { addr, source }
        }
    })?;
    let (path, statuses) = match check {
        // Docker's own check decides (see the wake); a connection is all asked of the address.
        HealthCheck::Tcp | HealthCheck::Docker => return Ok(()),
        HealthCheck::Http { path, statuses } => (path, statuses),
    };
    let http_error = |e: hyper::Error| ProbeError::Http {
        addr,
        path: path.clone(),
        message: e.to_string(),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path.as_str())
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "idlewatcher-probe")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http {
            addr,
            path: path.clone(),
            message: e.to_string(),
        })?;
    let result = sender.send_request(request).await;
    driver.abort();
    let status = result.map_err(http_error)?.status().as_u16();
    if statuses
        .iter()
        .any(|&(low, high)| (low..=high).contains(&status))
    {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy {
            addr,
            path: path.clone(),
            status,
        })
    }
}

/// The pause before the next attempt, given the last failure and the previous pause.
pub fn next_interval(previous: Duration, failure: &ProbeError) -> Duration {
    if failure.is_refused() {
        REFUSED_INTERVAL
    } else {
        (previous * 2).clamp(FIRST_INTERVAL, MAX_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn http(path: &str) -> HealthCheck {
        HealthCheck::Http {
            path: path.into(),
            statuses: vec![(200, 499)],
        }
    }

    async fn one_shot_server(status_line: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let answer = format!("{status_line}\r\ncontent-length: 0\r\n\r\n");
                let _ = sock.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn refused_is_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = probe_once(addr, &HealthCheck::Tcp).await.unwrap_err();
        assert!(err.is_refused(), "{err}");
        assert_eq!(next_interval(MAX_INTERVAL, &err), REFUSED_INTERVAL);
    }

    #[tokio::test]
    async fn http_status_decides() {
        let ok = one_shot_server("HTTP/1.1 404 Not Found").await;
        probe_once(ok, &http("/")).await.unwrap();
        let bad = one_shot_server("HTTP/1.1 503 Service Unavailable").await;
        let err = probe_once(bad, &http("/health")).await.unwrap_err();
        assert!(
            matches!(err, ProbeError::Unhealthy { status: 503, .. }),
            "{err}"
        );
        assert_eq!(next_interval(FIRST_INTERVAL, &err), FIRST_INTERVAL * 2);
        assert_eq!(next_interval(MAX_INTERVAL, &err), MAX_INTERVAL);
    }

    #[tokio::test]
    async fn tcp_probe_needs_only_accept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        probe_once(addr, &HealthCheck::Tcp).await.unwrap();
    }
}
