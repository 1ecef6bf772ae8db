//! The head deadline of HTTP/1 requests that Pingora reads: a connection whose request head is
//! not complete in time is closed, however slowly its bytes trickle in (Pingora's own read
//! timeouts apply per read, so one byte every few seconds would keep a connection forever).
//!
//! The [early hold](crate::http::early_hold) runs each HTTP/1 session inside
//! [`within_head_deadline`]; the gate calls [`head_read`] first thing, which is when Pingora
//! has the whole head. Both run in the connection's task, so a task-local links them.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

tokio::task_local! {
    /// Notified when the current session's request head was read.
    static HEAD_READ: Arc<Notify>;
}

/// Runs `session` (one Pingora HTTP/1 session) and drops it — closing its connection — if its
/// request head is not read by `deadline`. `None` when the deadline passed.
pub async fn within_head_deadline<F: Future>(deadline: Instant, session: F) -> Option<F::Output> {
    let read = Arc::new(Notify::new());
    let watch = Arc::clone(&read);
    HEAD_READ
        .scope(read, async move {
            tokio::pin!(session);
            tokio::select! {
                biased;
                output = &mut session => Some(output),
                () = expire(deadline, &watch) => None,
            }
        })
        .await
}

/// Completes at `deadline` unless the head was read before (then never).
async fn expire(deadline: Instant, read: &Notify) {
    if tokio::time::timeout_at(deadline, read.notified())
        .await
        .is_ok()
    {
        std::future::pending::<()>().await;
    }
}

/// The current session's request head was read (called by the gate; a no-op outside an
/// early hold).
#[inline]
pub fn head_read() {
    let _ = HEAD_READ.try_with(|read| read.notify_one());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_session_whose_head_is_read_outlives_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let done = within_head_deadline(deadline, async {
            head_read();
            tokio::time::sleep(Duration::from_millis(60)).await;
            7
        })
        .await;
        assert_eq!(done, Some(7));
    }

    #[tokio::test]
    async fn a_session_without_a_head_is_dropped_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let done = within_head_deadline(deadline, std::future::pending::<()>()).await;
        assert_eq!(done, None);
    }
}
