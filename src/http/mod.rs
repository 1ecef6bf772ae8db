//! The HTTP front: what a request gets while its backend sleeps, wakes or serves.
//!
//! | file | concern |
//! |---|---|
//! | [`gate`] | the decision per request in `request_filter` (route lookup, the hot path) |
//! | [`early_hold`] | holding requests for sleeping routes before Pingora reads them |
//! | `handover` | the early hold's verdict, handed to the gate through the connection's task |
//! | [`page`], [`sse`], [`respond`] | the loading page, the event stream, framed answers |
//! | [`retry`] | fail-fast and retries into a backend that just woke |
//! | [`proxy`] | the bundled `ProxyHttp` the `idlewatcher` binary runs |
//!
//! Waiting through a wake itself is not HTTP's: it is [`crate::wait`], shared with every front.

pub mod early_hold;
pub mod gate;
mod handover;
pub mod page;
pub mod proxy;
pub mod respond;
pub mod retry;
pub mod sse;

pub use early_hold::EarlyHold;
pub use gate::{Asleep, GateContext, IdleGate, UnknownHost};
pub use proxy::IdleProxy;
