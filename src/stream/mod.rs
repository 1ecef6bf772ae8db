//! Raw stream fronts: TCP connections and UDP datagrams that wake a route's backend, for what
//! is not HTTP (databases, game servers, DNS, MQTT…).
//!
//! Both fronts follow the HTTP gate's rules: a ready backend is entered with
//! [`Watcher::enter`](crate::backend::Watcher::enter) (one atomic load, no lock), whose in-flight
//! guard is held by every open splice and every UDP session, so the backend is never put to
//! sleep under them; a sleeping one is woken and waited for with
//! [`wait::hold_until_admitted`](crate::wait::hold_until_admitted), with the front's own "client
//! left" watch. Nothing the client sent is read before the backend is ready: a TCP client's bytes
//! wait in the kernel, a UDP client's datagrams in a bounded buffer replayed in order.
//!
//! | file | concern |
//! |---|---|
//! | `tcp.rs` | the TCP front: a Pingora `ServerApp` per listen address |
//! | `held.rs` | watching a held TCP connection for its client leaving, without reading it |
//! | `splice.rs` | copying both ways, half-close included, marking activity |
//! | `udp.rs` | the UDP front: a background service per listen address |
//! | `buffer.rs` | the bounded datagram buffer of a waking UDP stream |
//! | `sessions.rs` | UDP client sessions and their idle expiry |

mod buffer;
mod held;
mod sessions;
mod splice;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

pub use buffer::{DatagramBuffer, Kept};
pub use sessions::{LastSeen, SessionTable};
pub use tcp::TcpFront;
pub use udp::UdpFront;

use crate::backend::Upstream;
use crate::config::{StreamProtocol, StreamSettings};
use crate::routes::Route;

/// One stream of a route, assembled: what its front needs.
pub struct StreamRoute {
    /// The route (its backend's watcher, its waiter places, its name for logs).
    pub route: Arc<Route>,
    /// Where the stream's traffic goes once the backend is up (resolved by every wake).
    pub upstream: Arc<Upstream>,
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// TCP or UDP.
    pub protocol: StreamProtocol,
    /// The route's stream settings (UDP sessions and buffer).
    pub settings: StreamSettings,
}
