//! The TCP front: one Pingora service per listen address, one connection per task.
//!
//! Ready backend: [`Watcher::enter`](crate::backend::Watcher::enter), connect, splice. Sleeping
//! backend: the accepted connection is held *unread* (its bytes wait in the kernel) through
//! [`hold_until_admitted`], which wakes the backend; then connect and splice. The in-flight guard
//! is held for the whole splice, so the backend is never put to sleep under an open connection.
//! A failed or timed-out wake, a refused connect, too many held connections or shutdown close the
//! client cleanly (FIN, after discarding what it sent, so no reset).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::held::client_left;
use super::splice::splice;
use super::StreamRoute;
use crate::backend::release::ReleaseTicket;
use crate::wait::{hold_until_admitted, HoldOutcome};

/// Longest wait for the backend to accept a connection once it is ready.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One TCP stream's front.
pub struct TcpFront {
    stream: StreamRoute,
}

impl TcpFront {
    /// The listening service for `stream` (a TCP stream).
    pub fn service(stream: StreamRoute) -> Service<TcpFront> {
        let listen = stream.listen.to_string();
        let mut service = Service::new(format!("tcp {listen}"), TcpFront { stream });
        service.add_tcp(&listen);
        service
    }

    /// Waits until the backend is ready for this connection, without reading it: the in-flight
    /// guard and, when it was held, its place in the slow-start window. `None`: close it.
    async fn admit(
        &self,
        client: &Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<(crate::backend::InFlight, Option<ReleaseTicket>)> {
        let route = &self.stream.route;
        if let Some(in_flight) = route.watcher.enter() {
            return Some((in_flight, None));
        }
        let listen = self.stream.listen;
        tracing::info!(route = %route.name, %listen, "connection held: waking the backend");
        let left = async {
            match raw_fd(client) {
                Some(fd) => client_left(fd).await,
                None => std::future::pending().await,
            }
        };
        match hold_until_admitted(route, shutdown.clone(), left).await {
            HoldOutcome::Admitted(admission) => {
                tracing::debug!(route = %route.name, %listen, "held connection released");
                Some((admission.in_flight, Some(admission.release)))
            }
            HoldOutcome::Full => {
                route.count_rejected("too_many_waiters", 1);
                tracing::warn!(
                    route = %route.name, %listen, max_waiters = route.max_waiters,
                    "too many connections held: closing this one"
                );
                None
            }
            HoldOutcome::Failed(failure) => {
                route.count_rejected(failure.reason(), 1);
                tracing::info!(route = %route.name, %listen, %failure, "closing a held connection");
                None
            }
            HoldOutcome::ClientLeft(()) => {
                tracing::debug!(route = %route.name, %listen, "a held client left");
                None
            }
        }
    }
}

#[async_trait]
impl ServerApp for TcpFront {
    async fn process_new(
        self: &Arc<Self>,
        mut client: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let route = &self.stream.route;
        let listen = self.stream.listen;
        let Some((in_flight, release)) = self.admit(&client, shutdown).await else {
            close_cleanly(&mut client).await;
            return None;
        };
        let connected = match self.stream.upstream.address() {
            Some(address) => tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
                .and_then(|connected| connected)
                .map_err(|error| (address.to_string(), error)),
            None => Err((
                "(no address)".to_string(),
                std::io::Error::from(std::io::ErrorKind::AddrNotAvailable),
            )),
        };
        let mut upstream = match connected {
            Ok(upstream) => upstream,
            Err((address, error)) => {
                tracing::warn!(
                    route = %route.name, %listen, upstream = %address, %error,
                    "cannot connect to the backend: closing the client"
                );
                close_cleanly(&mut client).await;
                return None;
            }
        };
        let _ = upstream.set_nodelay(true);
        if let Some(mut release) = release {
            release.responded();
        }
        match splice(&mut client, &mut upstream, &route.watcher).await {
            Ok((sent, received)) => {
                tracing::debug!(route = %route.name, %listen, sent, received, "connection closed")
            }
            Err(error) => {
                tracing::debug!(route = %route.name, %listen, %error, "connection ended")
            }
        }
        drop(in_flight);
        None
    }
}

/// The socket under Pingora's stream (a plain TCP connection here), to watch it while held.
fn raw_fd(client: &Stream) -> Option<RawFd> {
    client
        .as_any()
        .downcast_ref::<pingora::protocols::l4::stream::Stream>()
        .map(AsRawFd::as_raw_fd)
}

/// Ends a connection with a FIN rather than a reset: what the client sent and nobody will read
/// is discarded first (closing a socket with unread bytes sends a reset).
async fn close_cleanly(client: &mut Stream) {
    let _ = client.shutdown().await;
    let mut discard = [0u8; 4096];
    while let Some(Ok(1..)) = client.read(&mut discard).now_or_never() {}
}
