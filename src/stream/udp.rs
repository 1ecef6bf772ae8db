//! The UDP front: one background service per listen address, bound at start-up.
//!
//! One loop owns the stream's state (no lock): it receives every datagram on the listen socket
//! and sends it on the client's *session*, a socket connected to the backend whose reply task
//! sends the answers back from the listen socket. While the backend is not ready, datagrams go
//! into a bounded [`DatagramBuffer`] and one [`hold_until_admitted`] runs for the stream (a
//! single waiter place, whatever the number of clients); once admitted, the buffer is replayed
//! in arrival order, so in order per client, before anything newer is received. Each session
//! holds the backend's in-flight guard until it expires, so the backend never sleeps under a
//! client that is still talking.

use std::future::{pending, Future};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::ServiceWithDependents;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::buffer::DatagramBuffer;
use super::sessions::{LastSeen, SessionTable};
use super::StreamRoute;
use crate::backend::InFlight;
use crate::wait::{hold_until_admitted, HoldOutcome};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// One UDP stream's front, its socket bound at start-up.
pub struct UdpFront {
    stream: StreamRoute,
    socket: Mutex<Option<std::net::UdpSocket>>,
}

impl UdpFront {
    /// Binds the stream's listen address now, so that a taken address stops the gateway at
    /// start-up rather than failing later in a background task.
    pub fn bind(stream: StreamRoute) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(stream.listen)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            stream,
            socket: Mutex::new(Some(socket)),
        })
    }

    /// The background service running this front.
    pub fn service(self) -> Box<dyn ServiceWithDependents> {
        let name = format!("udp {}", self.stream.listen);
        Box::new(background_service(&name, self))
    }
}

#[async_trait]
impl BackgroundService for UdpFront {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(socket) = self.socket.lock().take() else {
            return;
        };
        match UdpSocket::from_std(socket) {
            Ok(socket) => {
                Relay::new(&self.stream, Arc::new(socket))
                    .run(shutdown)
                    .await
            }
            Err(error) => tracing::error!(listen = %self.stream.listen, %error, "udp front"),
        }
    }
}

/// A client's session: its socket connected to the backend, the task sending the backend's
/// answers back, and the guard keeping the backend awake.
struct Session {
    upstream: Arc<UdpSocket>,
    replies: JoinHandle<()>,
    _in_flight: InFlight,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// The pending wake of a stream: its hold, run by the receiving loop.
type Hold = Pin<Box<dyn Future<Output = HoldOutcome<()>> + Send>>;

/// The state of one UDP stream, owned by its receiving loop.
struct Relay<'a> {
    stream: &'a StreamRoute,
    socket: Arc<UdpSocket>,
    sessions: SessionTable<Session>,
    buffer: DatagramBuffer,
}

impl<'a> Relay<'a> {
    fn new(stream: &'a StreamRoute, socket: Arc<UdpSocket>) -> Self {
        let settings = &stream.settings;
        Self {
            stream,
            socket,
            sessions: SessionTable::new(settings.udp_session_idle),
            buffer: DatagramBuffer::new(settings.udp_buffer_datagrams, settings.udp_buffer_bytes),
        }
    }

    async fn run(mut self, mut shutdown: ShutdownWatch) {
        let mut received = vec![0u8; MAX_DATAGRAM];
        let mut hold: Option<Hold> = None;
        let mut sweep = tokio::time::interval(self.sessions.sweep_interval());
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let waiting = async {
                match hold.as_mut() {
                    Some(hold) => hold.await,
                    None => pending().await,
                }
            };
            tokio::select! {
                outcome = waiting => {
                    hold = None;
                    self.replay(outcome).await;
                }
                got = self.socket.recv_from(&mut received) => match got {
                    Ok((length, client)) => {
                        if self.forward(client, &received[..length]).await && hold.is_none() {
                            hold = Some(self.wake(&shutdown));
                        }
                    }
                    Err(error) => tracing::debug!(listen = %self.stream.listen, %error, "udp receive"),
                },
                _ = sweep.tick() => self.expire(),
                _ = shutdown.changed() => {}
            }
        }
        let (lost, dropped) = self.buffer.take();
        if !lost.is_empty() || dropped > 0 {
            tracing::info!(
                route = %self.stream.route.name, listen = %self.stream.listen,
                dropped = lost.len() as u64 + dropped, "shutting down: buffered datagrams dropped"
            );
        }
    }

    /// Sends `datagram` from `client` on to the backend if it is ready, else buffers it.
    /// Returns whether the backend needs waking (it is not ready).
    async fn forward(&mut self, client: SocketAddr, datagram: &[u8]) -> bool {
        let watcher = &self.stream.route.watcher;
        if !self.buffer.is_empty() || !watcher.is_ready() {
            // Waking (or asleep, or stopped by hand under open sessions): keep it for the
            // replay, after what is already kept.
            self.sessions.clear();
            self.keep(client, datagram);
            return true;
        }
        if let Some(session) = self.sessions.get(&client) {
            watcher.mark_activity();
            send(&session.upstream, datagram).await;
            return false;
        }
        match watcher.enter() {
            Some(in_flight) => {
                self.open_and_send(client, datagram, in_flight).await;
                false
            }
            None => {
                self.keep(client, datagram);
                true
            }
        }
    }

    fn keep(&mut self, client: SocketAddr, datagram: &[u8]) {
        if !self.buffer.push(client, datagram) && self.buffer.dropped() == 1 {
            tracing::warn!(
                route = %self.stream.route.name, listen = %self.stream.listen,
                max_datagrams = self.stream.settings.udp_buffer_datagrams,
                max_bytes = self.stream.settings.udp_buffer_bytes,
                "udp buffer full: dropping datagrams until the backend is ready"
            );
        }
    }

    /// Starts waiting for the backend (and waking it).
    fn wake(&self, shutdown: &ShutdownWatch) -> Hold {
        tracing::info!(
            route = %self.stream.route.name, listen = %self.stream.listen,
            "datagrams held: waking the backend"
        );
        let route = Arc::clone(&self.stream.route);
        let shutdown = shutdown.clone();
        Box::pin(async move { hold_until_admitted(&route, shutdown, pending::<()>()).await })
    }

    /// The wake ended: replay the buffer in order, or drop it.
    async fn replay(&mut self, outcome: HoldOutcome<()>) {
        let route = &self.stream.route;
        let listen = self.stream.listen;
        let (kept, dropped) = self.buffer.take();
        let admission = match outcome {
            HoldOutcome::Admitted(admission) => admission,
            HoldOutcome::Failed(failure) => {
                route.count_rejected(failure.reason(), kept.len() as u64 + dropped);
                tracing::info!(
                    route = %route.name, %listen, %failure, dropped = kept.len() as u64 + dropped,
                    "wake failed: buffered datagrams dropped"
                );
                return;
            }
            HoldOutcome::Full | HoldOutcome::ClientLeft(()) => {
                route.count_rejected("too_many_waiters", kept.len() as u64 + dropped);
                tracing::warn!(
                    route = %route.name, %listen, dropped = kept.len() as u64 + dropped,
                    "too many waiters: buffered datagrams dropped"
                );
                return;
            }
        };
        let replayed = kept.len();
        for (client, datagram) in kept {
            if let Some(session) = self.sessions.get(&client) {
                send(&session.upstream, &datagram).await;
                continue;
            }
            match route.watcher.enter() {
                Some(in_flight) => self.open_and_send(client, &datagram, in_flight).await,
                None => break, // Asleep again already: what is left is lost.
            }
        }
        drop(admission);
        if dropped > 0 {
            route.count_rejected("udp_buffer_full", dropped);
        }
        tracing::info!(
            route = %route.name, %listen, replayed, dropped, sessions = self.sessions.len(),
            "backend ready: buffered datagrams replayed"
        );
    }

    /// Opens `client`'s session (a socket connected to the backend, and its reply task) and
    /// sends it its first datagram.
    async fn open_and_send(&mut self, client: SocketAddr, datagram: &[u8], in_flight: InFlight) {
        let route = &self.stream.route;
        let Some(address) = self.stream.upstream.address() else {
            tracing::warn!(route = %route.name, "no backend address: datagram dropped");
            return;
        };
        let upstream = match connect(address).await {
            Ok(upstream) => Arc::new(upstream),
            Err(error) => {
                tracing::warn!(route = %route.name, upstream = %address, %error, "udp session");
                return;
            }
        };
        let seen = self.sessions.last_seen();
        let replies = tokio::spawn(replies(
            Arc::clone(&upstream),
            Arc::clone(&self.socket),
            client,
            Arc::clone(&seen),
            Arc::clone(&route.watcher),
        ));
        tracing::debug!(route = %route.name, %client, "udp session opened");
        send(&upstream, datagram).await;
        let session = Session {
            upstream,
            replies,
            _in_flight: in_flight,
        };
        self.sessions.insert(client, session, seen);
    }

    fn expire(&mut self) {
        for client in self.sessions.expire(Instant::now()) {
            tracing::debug!(route = %self.stream.route.name, %client, "udp session expired");
        }
    }
}

/// A socket of the backend's family, connected to it (so only its answers are received).
async fn connect(address: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if address.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(address).await?;
    Ok(socket)
}

/// Sends one datagram to the backend; a failure (nothing listens: ICMP unreachable) loses it,
/// as UDP would.
async fn send(upstream: &UdpSocket, datagram: &[u8]) {
    if let Err(error) = upstream.send(datagram).await {
        tracing::debug!(%error, "udp send to the backend");
    }
}

/// A session's reply task: the backend's answers go back to `client` from the listen socket.
async fn replies(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    seen: Arc<LastSeen>,
    watcher: Arc<crate::backend::Watcher>,
) {
    let mut answer = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut answer).await {
            Ok(length) => {
                seen.touch();
                watcher.mark_activity();
                if let Err(error) = listen.send_to(&answer[..length], client).await {
                    tracing::debug!(%client, %error, "udp send to the client");
                }
            }
            // An earlier datagram found nothing listening (ICMP): later ones may.
            Err(error) => tracing::debug!(%client, %error, "udp receive from the backend"),
        }
    }
}
