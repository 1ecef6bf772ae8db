//! The HTTP front: what a request gets while its backend sleeps, wakes or serves.
//!
//! | file | concern |
//! |---|---|
//! | [`gate`] | the decision per request in `request_filter` (route lookup, the hot path) |
//! | [`early_hold`] | holding requests for sleeping routes before Pingora reads them; client deadlines |
//! | `early_events` | event streams served below Pingora's session, by the early hold |
//! | [`body`] | request bodies that come too slowly (408) |
//! | [`classify`] | a connection's first bytes: h2c preface, request head, what Pingora refuses |
//! | [`clients`] | per-client deadlines and caps (connections, held requests, event streams) |
//! | [`deadline`] | the head deadline of HTTP/1 sessions Pingora reads |
//! | `handover` | the early hold's verdict, handed to the gate through the connection's task |
//! | [`page`], [`sse`], [`respond`] | the loading page, the event stream, framed answers |
//! | [`retry`] | fail-fast and retries into a backend that just woke |
//! | [`rewound`] | bytes read early put back in front of any stream (TLS included) |
//! | [`proxy`] | the bundled `ProxyHttp` the `idlewatcher` binary runs |
//! | [`tls`] | HTTPS: certificates by SNI (re-readable), the TLS listeners |
//!
//! Waiting through a wake itself is not HTTP's: it is [`crate::wait`], shared with every front,
//! and so is noticing that a held client left ([`crate::wait::departure`]).

pub mod body;
pub mod classify;
pub mod clients;
pub mod deadline;
mod early_events;
pub mod early_hold;
pub mod gate;
mod handover;
pub mod page;
pub mod proxy;
pub mod respond;
pub mod retry;
pub mod rewound;
pub mod sse;
pub mod tls;

pub use early_hold::EarlyHold;
pub use gate::{Asleep, GateContext, IdleGate, UnknownHost};
pub use proxy::IdleProxy;
