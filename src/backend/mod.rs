//! Backend state: one [`Watcher`] per backend (a provider target), shared by every route that
//! fronts it. It owns the lifecycle (`napping | starting | ready | stopping | error`), the
//! singleflight wake, the sleep, the readiness probes, the slow start of released requests and
//! the wake's event history.
//!
//! | file | concern |
//! |---|---|
//! | `watcher.rs` | the state byte, the request-path entry ([`Watcher::enter`]), singleflight, waiting |
//! | `wake.rs` | the wake: dependencies, provider start, addresses, probes |
//! | `sleep.rs` | putting the backend to sleep; the idle clock's view ([`Sleeper`](crate::idle::Sleeper)) |
//! | `outside.rs` | changes made outside idlewatcher ([`BackendObserver`](crate::providers::BackendObserver)) |
//! | `recheck.rs` | a status re-check when a "ready" backend stops answering (lost events) |
//! | `shared.rs` | a backend shared with other gateways: this gateway's traffic reported to its provider, which may postpone a sleep |
//! | [`state`], [`upstream`], [`error`] | the state and status, where requests go, why a wake failed |
//! | [`readiness`], [`release`], [`events`] | probes, slow start, wake events |

pub mod error;
pub mod events;
mod outside;
pub mod readiness;
mod recheck;
pub mod release;
mod shared;
mod sleep;
pub mod state;
pub mod upstream;
mod wake;
mod watcher;

pub use error::{ExitClue, WakeError, WakeFailure};
pub use state::{State, Status};
pub use upstream::{Upstream, UpstreamTarget};
pub use watcher::{BackendSettings, Dependencies, InFlight, Watcher, WARM_UP};
