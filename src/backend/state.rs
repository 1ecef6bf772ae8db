//! A backend's lifecycle state: one byte the request path reads with a single atomic load, and
//! the fuller [`Status`] that waiters watch.

use std::sync::Arc;

use crate::backend::WakeError;

/// A backend's lifecycle state, stored as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Asleep (stopped or paused); the next request wakes it.
    Napping = 0,
    /// A wake is in flight.
    Starting = 1,
    /// Answering: requests pass straight through.
    Ready = 2,
    /// Being put to sleep; requests are held until it can be woken again.
    Stopping = 3,
    /// The last wake failed, or the backend is gone.
    Error = 4,
}

impl State {
    /// Every state, in order (for metrics that show each one).
    pub const ALL: [State; 5] = [
        State::Napping,
        State::Starting,
        State::Ready,
        State::Stopping,
        State::Error,
    ];

    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Napping,
            1 => Self::Starting,
            2 => Self::Ready,
            3 => Self::Stopping,
            _ => Self::Error,
        }
    }

    /// The lowercase name used in the `status` endpoint and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Napping => "napping",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
            Self::Error => "error",
        }
    }
}

/// A snapshot of the state with what waiters need to interpret it.
#[derive(Debug, Clone)]
pub struct Status {
    /// The state.
    pub state: State,
    /// Which wake this state belongs to (increments at each wake).
    pub generation: u64,
    /// The current wake already has the backend running (for `service_started` dependents).
    pub backend_up: bool,
    /// Why the last wake failed, in state `Error`.
    pub error: Option<Arc<WakeError>>,
}
