//! Assembly: a validated configuration → the running parts, at start-up and on every reload.
//!
//! | file | concern |
//! |---|---|
//! | [`build`] | configuration → watchers, upstreams, routes, timers; keeps what a reload did not change |
//! | [`reload`] | a reload (SIGHUP, `POST /api/reload`): validate the whole file, diff, apply with one store |

pub mod build;
pub mod reload;

pub use build::{check, StartError};
pub use reload::{ReloadError, Reloader};
