//! What an operator may do to a route's backend: wake it now (and wait until it is ready), or
//! put it to sleep now (after the requests in flight, or despite them when forced).

use std::time::{Duration, Instant};

use crate::backend::{State, WakeFailure};
use crate::providers::ProviderError;
use crate::routes::Route;

/// How long a manual sleep waits for requests in flight (or a wake in progress) to end.
pub(super) const SLEEP_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting manual sleep looks again (the operator's request, not the request path).
const SLEEP_POLL: Duration = Duration::from_millis(50);

/// Why an operator's action did not happen.
#[derive(Debug, thiserror::Error)]
pub(super) enum ActionError {
    /// The wake failed or timed out.
    #[error("{0}")]
    Wake(#[from] WakeFailure),
    /// Requests in flight (or awake dependents) kept the backend busy for all of
    /// [`SLEEP_WAIT`].
    #[error(
        "{in_flight} request(s) still in flight after {}s{}; add ?force=true to stop it anyway",
        SLEEP_WAIT.as_secs(),
        held_by_text(held_by)
    )]
    Busy {
        /// Requests and connections using it.
        in_flight: u32,
        /// The dependents holding it awake.
        held_by: Vec<String>,
    },
    /// A wake was still going on after [`SLEEP_WAIT`].
    #[error("still waking after {}s; try again once it is ready", SLEEP_WAIT.as_secs())]
    StillWaking,
    /// The provider failed to stop it.
    #[error("could not be put to sleep: {0}")]
    Sleep(#[from] ProviderError),
}

fn held_by_text(held_by: &[String]) -> String {
    if held_by.is_empty() {
        String::new()
    } else {
        format!(", held awake by {}", held_by.join(", "))
    }
}

/// Wakes `route`'s backend (one start, shared with any wake already running) and waits until it
/// is ready or its `wake_timeout` passes.
pub(super) async fn wake(route: &Route) -> Result<(), ActionError> {
    let watcher = &route.watcher;
    let deadline = Instant::now() + watcher.settings().wake_timeout;
    let generation = watcher.wake()?;
    watcher.wait_ready(generation, deadline).await?;
    Ok(())
}

/// Puts `route`'s backend to sleep with its configured method. Waits up to [`SLEEP_WAIT`] for
/// requests in flight, dependents and a running wake; with `force`, requests in flight and
/// dependents do not hold it.
pub(super) async fn sleep(route: &Route, force: bool) -> Result<(), ActionError> {
    let watcher = &route.watcher;
    let deadline = Instant::now() + SLEEP_WAIT;
    loop {
        match watcher.state() {
            State::Napping => return Ok(()),
            State::Ready | State::Error => {
                let began = match force {
                    true => watcher.begin_forced_stop(),
                    false => watcher.try_begin_stop(),
                };
                if began {
                    watcher.put_to_sleep().await?;
                    return Ok(());
                }
            }
            State::Starting | State::Stopping => {}
        }
        if Instant::now() >= deadline {
            return Err(match watcher.state() {
                State::Starting => ActionError::StillWaking,
                _ => ActionError::Busy {
                    in_flight: watcher.in_flight(),
                    held_by: watcher.held_by(),
                },
            });
        }
        tokio::time::sleep(SLEEP_POLL).await;
    }
}
