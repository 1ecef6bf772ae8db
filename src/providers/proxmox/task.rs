//! Following a PVE task: every power call answers with a UPID at once and does the work in a
//! worker; the outcome is only known from `/nodes/{node}/tasks/{upid}/status` once it stopped.
//!
//! `OK` and `WARNINGS: N` are success (a peer treats warnings as failure, so a container that
//! started with a harmless warning looked broken); anything else is the task's error text.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::client::{encode, PveClient, PveError};

/// First pause between two status reads; doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(50);
/// Longest pause between two status reads.
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// How a task ended, or why following it failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task ran and failed: PVE's exit status (the error text).
    #[error("{0}")]
    Failed(String),
    /// The task did not stop within the limit.
    #[error("task {upid} still running after {limit:?}")]
    TimedOut {
        /// The task.
        upid: String,
        /// How long it was followed.
        limit: Duration,
    },
    /// The task's id is not a UPID.
    #[error("not a task id (UPID): {0:?}")]
    BadUpid(String),
    /// Reading the task's status failed.
    #[error(transparent)]
    Api(#[from] PveError),
}

/// `/tasks/{upid}/status`'s `data`.
#[derive(Debug, Deserialize)]
struct TaskStatus {
    status: String,
    #[serde(default)]
    exitstatus: Option<String>,
}

/// The node a UPID runs on: `UPID:{node}:{pid}:{pstart}:{starttime}:{type}:{id}:{user}:`.
pub fn upid_node(upid: &str) -> Option<&str> {
    let mut parts = upid.split(':');
    (parts.next()? == "UPID").then_some(())?;
    let node = parts.next()?;
    (!node.is_empty() && parts.count() >= 6).then_some(node)
}

/// Whether a stopped task's exit status means success (`OK`, `WARNINGS: N`).
pub(super) fn succeeded(exitstatus: &str) -> bool {
    exitstatus == "OK" || exitstatus.starts_with("WARNINGS:")
}

/// Follows `upid` until it stops (backing off from 50 ms), for at most `limit`. `Ok(Some(n))`
/// carries the warnings' text when the task ended with warnings.
pub async fn follow(
    client: &PveClient,
    upid: &str,
    limit: Duration,
) -> Result<Option<String>, TaskError> {
    let node = upid_node(upid).ok_or_else(|| TaskError::BadUpid(upid.to_string()))?;
    let path = format!("/nodes/{}/tasks/{}/status", encode(node), encode(upid));
    let started = Instant::now();
    let mut interval = FIRST_INTERVAL;
    loop {
        let status: TaskStatus = client.get(&path).await?;
        if status.status == "stopped" {
            let exit = status.exitstatus.unwrap_or_default();
            return if exit == "OK" {
                Ok(None)
            } else if succeeded(&exit) {
                Ok(Some(exit))
            } else if exit.is_empty() {
                Err(TaskError::Failed(
                    "the task stopped without an exit status".into(),
                ))
            } else {
                Err(TaskError::Failed(exit))
            };
        }
        if started.elapsed() >= limit {
            return Err(TaskError::TimedOut {
                upid: upid.to_string(),
                limit,
            });
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_comes_from_the_upid() {
        assert_eq!(
            upid_node("UPID:pve2:0000A1B2:0012C3D4:65F0A1B2:vzstart:101:root@pam!iw:"),
            Some("pve2")
        );
        assert_eq!(upid_node("UPID::1:2:3:vzstart:101:root@pam:"), None);
        assert_eq!(upid_node("nonsense"), None);
    }

    #[test]
    fn warnings_are_success_and_errors_are_not() {
        assert!(succeeded("OK"));
        assert!(succeeded("WARNINGS: 1"));
        assert!(!succeeded("startup for container '101' failed"));
        assert!(!succeeded("unexpected status"));
    }
}
