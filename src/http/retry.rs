//! Fail-fast and retries for requests entering a backend that just woke (the slow start itself
//! is protocol-independent: [`crate::backend::release`]):
//!
//! - **fail-fast**: a bodiless request on a fresh upstream connection must be acknowledged by
//!   the backend's kernel within [`UNACKNOWLEDGED_TIMEOUT`] (`TCP_USER_TIMEOUT`): a server whose
//!   accept queue overflowed silently drops connections the gateway believes open;
//! - **retries** ([`MAX_RETRIES`], jittered backoff): a failed connection attempt, and an
//!   idempotent request whose fresh connection was dropped before any answer (or any idempotent
//!   request in the slow start), are tried again.

use std::os::fd::RawFd;
use std::time::Duration;

/// How long the request on a fresh upstream connection may stay unacknowledged by the
/// backend's kernel (see [`GateContext::connected_to_upstream`](crate::http::GateContext::connected_to_upstream)).
pub const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(1);

/// Sets `TCP_USER_TIMEOUT` on a connected socket (zero restores the system default).
pub(crate) fn set_user_timeout(fd: RawFd, timeout: Duration) {
    let millis = timeout.as_millis().min(u32::MAX as u128) as libc::c_uint;
    // SAFETY: setsockopt reads `size_of::<c_uint>()` bytes from a live local; `fd` is the
    // socket Pingora just handed to a hook, alive for the duration of the call.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&millis as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(fd, error = %std::io::Error::last_os_error(), "TCP_USER_TIMEOUT not set");
    }
}

/// Whether the upstream failure is the connection being dropped: closed, reset, or timing out
/// (data never acknowledged, or connect).
pub(crate) fn connection_dropped(error: &pingora::Error) -> bool {
    use pingora::ErrorType;
    if matches!(
        error.etype(),
        ErrorType::ConnectionClosed | ErrorType::ConnectTimedout | ErrorType::ConnectRefused
    ) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.root_cause());
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return io.raw_os_error() == Some(libc::ETIMEDOUT)
                || matches!(
                    io.kind(),
                    TimedOut | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                );
        }
        cause = current.source();
    }
    false
}

/// At most this many extra attempts for a request (see `GateContext::should_retry`).
pub const MAX_RETRIES: u32 = 6;

/// A cheap, good-enough random number below `bound` (for jitter only).
fn fastrand_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(bound);
    hasher.finish() % bound.max(1)
}

/// The pause before retry number `retries` (zero before the first attempt): 10 ms doubling per
/// retry, with jitter so retried requests do not arrive together again.
pub(crate) fn retry_delay(retries: u32) -> Duration {
    if retries == 0 {
        return Duration::ZERO;
    }
    let base = 10u64 << (retries - 1).min(8);
    Duration::from_millis(base + fastrand_below(base))
}
