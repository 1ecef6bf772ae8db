//! The early hold: holding HTTP requests until their backend is ready — before Pingora reads them, where it can.
//!
//! A request held inside `request_filter` (the [gate](crate::http::gate)) is a live Pingora session:
//! the connection's task, two boxed futures of ≈ 9 and ≈ 4 kB, the 4 KiB head buffer, the
//! parsed header — ≈ 25 kB, so 10,000 held requests cost ≈ 250 MB. [`EarlyHold`] wraps the
//! HTTP application (a [`ServerApp`]) to hold them for a fraction of that (≈ 5 kB each, the
//! L4 stream with its write buffer and a small task; BENCHMARKS.md):
//!
//! 1. On a new connection — cleartext, or TLS that chose HTTP/1.1 by ALPN (the listener did
//!    the handshake) — the connection task Pingora spawned (≈ 9 kB: room for a TLS handshake)
//!    ends at once, and a small task of its own reads the request head (as Pingora would, up to 4 KiB) and parses
//!    it with `httparse`.
//! 2. If the gate would hold this request — its route is asleep, it is not an internal
//!    endpoint, not a browser navigation, not refused by `start_endpoint` — the bare connection
//!    waits in that task (≈ 1 kB: the bytes read and the wait); what serving it takes is
//!    allocated once the hold is over. Of Pingora, only the L4 stream remains.
//! 3. Once the backend is ready and the request has its place in the slow-start window
//!    ([`release`](crate::backend::release)), the bytes are put back into the stream (`rewind`;
//!    in front of a TLS stream, [`Rewound`]) and the
//!    connection goes to the wrapped application as if just accepted: Pingora parses the same
//!    head, the body is still unread and streams upstream intact. The gate finds the
//!    admission (in-flight guard and window place, handed over in a task-local) and lets the
//!    request through. A wake that fails or times out is handed over the same way, and the gate
//!    answers its 503 at once.
//!
//! A first request that subscribes to a route's events (`GET {prefix}events`) is served here
//! too, on the bare connection, for the same reason ([`early_events`](super::early_events)).
//!
//! Everything else — HTTP/2 (h2c, or h2 by ALPN: its streams share one connection, so one
//! cannot be held below the session), a head larger than 4 KiB, a ready route, a later
//! request on a kept-alive connection — goes to the wrapped application at once, bytes put
//! back, and the gate holds it in `request_filter` if it must (`hold_until_admitted` serves
//! both). The early hold changes what a held request costs, never what it is answered.
//!
//! Being first to see every connection, it also enforces the client deadlines and caps
//! ([`Clients`](crate::http::clients::Clients)): a connection beyond `max_connections_per_ip` is
//! closed at once; the first head must be whole within `header_timeout` (h2c detection
//! included: a connection is HTTP/1 at the first byte that differs from the HTTP/2 preface);
//! HTTP/1 sessions are run here (keep-alive idle timeout, body read timeout, pipelining on,
//! each later head within its own deadline, see [`deadline`](crate::http::deadline)); a held
//! connection is watched for its client leaving whatever it carries
//! ([`departure`](crate::wait::departure)); requests Pingora would refuse are never held
//! ([`classify`](crate::http::classify)).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::http::classify::{self, Preface};
use crate::http::clients::PerIpPlace;
use crate::http::deadline::HeadDeadline;
use crate::http::early_events::{self, Subscription};
use crate::http::gate::{Asleep, IdleGate};
use crate::http::handover::{self, Handover};
use crate::http::rewound::Rewound;
use crate::http::sse;
use crate::routes::Route;
use crate::wait::departure;
use crate::wait::{hold_until_admitted, HoldOutcome};

/// The largest request head held early, in bytes (Pingora's own first head buffer); larger
/// heads go to Pingora and, if they must wait, wait in `request_filter`.
const FIRST_READ: usize = 4096;
/// How long an admission waits for the gate to claim it. The gate claims it within
/// microseconds, while the route warms up; past this, a request that took another path (its
/// warm-up ended meanwhile) no longer keeps a window place or the backend awake.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(1);

/// Holds connections whose first request is for a sleeping route before the wrapped HTTP
/// application (`HttpProxy`) builds a session for them, and applies the client deadlines to
/// every connection. See the module docs; wrap the proxy whose `request_filter` calls
/// [`IdleWatcher::gate`](crate::IdleWatcher::gate) first thing for every request (the gate
/// running is what ends a session's head deadline):
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn demo<P: pingora::proxy::ProxyHttp + Send + Sync + 'static>(
/// #     idle: Arc<idlewatcher::IdleWatcher>, conf: &Arc<pingora::server::configuration::ServerConf>, my_proxy: P)
/// # where P::CTX: Send + Sync {
/// use idlewatcher::http::EarlyHold;
/// let proxy = pingora::proxy::http_proxy(conf, my_proxy);
/// let service = pingora::services::listening::Service::new(
///     "gateway".to_string(),
///     EarlyHold::new(Arc::clone(idle.idle_gate()), proxy),
/// );
/// # }
/// ```
pub struct EarlyHold<A> {
    gate: Arc<IdleGate>,
    app: Arc<A>,
}

impl<A> EarlyHold<A> {
    /// `app` behind an early hold for the routes of `gate` (from
    /// [`IdleWatcher::idle_gate`](crate::IdleWatcher::idle_gate)).
    pub fn new(gate: Arc<IdleGate>, app: A) -> Self {
        Self {
            gate,
            app: Arc::new(app),
        }
    }

    /// The wrapped application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The wrapped application, to set options before the service starts (`None` once shared).
    pub fn app_mut(&mut self) -> Option<&mut A> {
        Arc::get_mut(&mut self.app)
    }
}

/// A request head the gate would hold.
struct ToHold {
    /// The route it matched, kept for the whole hold (a newer table does not change it).
    route: Arc<Route>,
}

/// A first request that subscribes to a route's events: served here (see `early_events`).
struct ToStream {
    route: Arc<Route>,
    last_id: u64,
}

/// What the early hold does with a first request rather than pass it on.
enum Early {
    /// Hold it.
    Hold(ToHold),
    /// Serve its event stream.
    Events(ToStream),
}

/// What the first bytes of a connection call for.
enum Head {
    /// A request the early hold takes on.
    Early(Early),
    /// Anything else: the wrapped application takes the connection at once.
    Pass,
    /// Not a whole request head yet.
    Incomplete,
}

/// The stream of a held connection, as it came.
enum HeldStream {
    /// Cleartext: the bytes go back into the L4 stream itself.
    Tcp(Box<TcpStream>),
    /// TLS (HTTP/1.1 by ALPN): the bytes were decrypted above the L4 stream, so they go back
    /// in front of it ([`Rewound`]).
    Tls(Stream),
}

impl HeldStream {
    /// The socket underneath, to watch for the client leaving. A Pingora stream's id is its
    /// socket's descriptor (the L4 stream's, which its TLS stream reports as its own).
    fn fd(&self) -> RawFd {
        match self {
            HeldStream::Tcp(stream) => stream.as_raw_fd(),
            HeldStream::Tls(stream) => stream.id(),
        }
    }

    /// The stream, with `head` to be read again first.
    fn put_back(self, head: Vec<u8>) -> Stream {
        match self {
            HeldStream::Tcp(mut stream) => {
                stream.rewind(&head);
                stream
            }
            HeldStream::Tls(stream) => Box::new(Rewound::new(stream, head)),
        }
    }
}

/// A connection whose first request is to be held: its stream and the bytes read from it.
struct HeldConnection {
    stream: HeldStream,
    head: Vec<u8>,
    to_hold: ToHold,
    client: Option<IpAddr>,
}

/// What a new connection turned out to be.
enum First {
    /// Its first request is to be held.
    Hold(HeldConnection),
    /// Its first request subscribes to a route's events (with its head, to put back if a cap
    /// sends it to the gate instead).
    Events(HeldStream, Vec<u8>, ToStream, Option<IpAddr>),
    /// HTTP/1 (cleartext or over TLS), bytes put back: served here.
    Http1(Stream),
    /// Anything else (HTTP/2 by prior knowledge or by ALPN), bytes put back: the wrapped
    /// application's.
    Other(Stream),
    /// The client left, sent nothing usable in time, or the head deadline passed.
    Gone,
}

/// A connection whose first request the early hold takes on: held, or its event stream served.
fn taken_on(stream: HeldStream, mut head: Vec<u8>, early: Early, client: Option<IpAddr>) -> First {
    // Read into a 4 KiB buffer; kept (to be put back) only as long as the head itself.
    head.shrink_to_fit();
    match early {
        Early::Hold(to_hold) => First::Hold(HeldConnection {
            stream,
            head,
            to_hold,
            client,
        }),
        Early::Events(to_stream) => First::Events(stream, head, to_stream, client),
    }
}

/// A first request subscribing to a route's events (see [`EarlyHold::events`]).
struct EarlyEvents<'a, A> {
    hold: &'a EarlyHold<A>,
    stream: HeldStream,
    head: Vec<u8>,
    to_stream: ToStream,
    client: Option<IpAddr>,
}

impl<A: HttpServerApp + Send + Sync + 'static> EarlyEvents<'_, A> {
    /// Serves the stream here (`early_events`) within the caps; over a cap, the connection
    /// goes to the gate, which answers 429 or 503 as for any other. `place` is the connection's
    /// own, held to the end.
    async fn serve(self, place: PerIpPlace, shutdown: &ShutdownWatch, deadline: Instant) {
        let _place = place;
        let EarlyEvents {
            hold,
            stream,
            head,
            to_stream: ToStream { route, last_id },
            client,
        } = self;
        let gate = &hold.gate;
        match gate.clients().take_event_stream(client, &route.name) {
            Ok(places) => {
                // Answered here: the head is not needed any more (nor kept for the stream's life).
                drop(head);
                let subscription = Subscription { route, last_id };
                let shutdown = gate.shutdown_signal();
                match stream {
                    HeldStream::Tcp(stream) => match early_events::bare_socket(stream) {
                        Ok(socket) => {
                            early_events::serve(socket, subscription, places, shutdown).await;
                        }
                        Err(error) => {
                            let route = &subscription.route.name;
                            tracing::debug!(%route, %error, "event stream: no socket");
                        }
                    },
                    HeldStream::Tls(stream) => {
                        early_events::serve(stream, subscription, places, shutdown).await;
                    }
                }
            }
            Err(_) => {
                // Over a cap: the gate answers it. Boxed: an event stream does not carry a
                // session's state for its whole life.
                let stream = stream.put_back(head);
                Box::pin(hold.serve_http1(stream, shutdown, deadline)).await;
            }
        }
    }
}

/// The client's address, if the stream is a TCP connection.
fn client_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|address| address.ip())
}

impl<A: HttpServerApp + Send + Sync + 'static> EarlyHold<A> {
    /// What to do with a connection whose first bytes are `bytes`.
    fn classify(&self, bytes: &[u8]) -> Head {
        match classify::parse_head(bytes) {
            classify::Head::Complete(head) => {
                let raw = &bytes[..head.len];
                if let Some(events) = self.event_stream(&head, raw) {
                    return Head::Early(Early::Events(events));
                }
                self.would_hold(&head, raw)
                    .map_or(Head::Pass, |to_hold| Head::Early(Early::Hold(to_hold)))
            }
            classify::Head::Incomplete => Head::Incomplete,
            classify::Head::Unparsed => Head::Pass,
        }
    }

    /// Whether `request` subscribes to a route's events (`GET {prefix}events` on its host, in
    /// any state: a stream never wakes anything).
    fn event_stream(&self, request: &classify::ParsedHead<'_>, head: &[u8]) -> Option<ToStream> {
        if request.refused.is_some() || request.method != "GET" || request.has_body {
            return None;
        }
        let uri: http::Uri = request.target.parse().ok()?;
        if !self.gate.is_event_stream(uri.path()) {
            return None;
        }
        let routes = self.gate.routes().load();
        let route = routes.by_host_bytes(classify::routing_host(&uri, request.host)?)?;
        let parts = classify::request_parts(request, head)?;
        Some(ToStream {
            route: Arc::clone(route),
            last_id: sse::resume_point_of(&parts.headers, &parts.uri),
        })
    }

    /// Whether the gate would hold `request`. Never a request Pingora refuses: it is answered
    /// at once (400, 405) and wakes nothing.
    fn would_hold(&self, request: &classify::ParsedHead<'_>, head: &[u8]) -> Option<ToHold> {
        if request.refused.is_some() {
            return None;
        }
        let uri: http::Uri = request.target.parse().ok()?;
        let gate = &self.gate;
        let routes = gate.routes().load();
        let route = routes.by_host_bytes(classify::routing_host(&uri, request.host)?)?;
        if route.watcher.is_ready() || gate.is_internal(uri.path()) {
            return None;
        }
        // Only for a sleeping route: what `when_asleep` looks at.
        let parts = classify::request_parts(request, head)?;
        if !matches!(gate.when_asleep(route, &parts), Asleep::Hold) {
            return None;
        }
        Some(ToHold {
            route: Arc::clone(route),
        })
    }

    /// Whether the wrapped application speaks h2c (then the HTTP/2 preface is looked for).
    fn h2c(&self) -> bool {
        self.app.server_options().is_some_and(|options| options.h2c)
    }

    /// Reads a connection's first request head from `stream` (up to [`FIRST_READ`] bytes),
    /// looking for the h2c preface first when `h2c`: the bytes read, and what the early hold does
    /// with the request, if anything. `None` if the client left or sent nothing usable.
    async fn read_head<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        mut h2c: bool,
    ) -> Option<(Vec<u8>, Option<Early>)> {
        // The first byte alone, so that no buffer is held while a client says nothing yet.
        let mut first = [0u8; 1];
        if !matches!(stream.read(&mut first).await, Ok(1)) {
            return None;
        }
        let mut head = Vec::with_capacity(FIRST_READ);
        head.push(first[0]);
        // The rest of the head (a head split across segments takes several reads).
        loop {
            if h2c {
                match classify::h2c_preface(&head) {
                    Preface::Http2 => return Some((head, None)),
                    Preface::Partial => {}
                    Preface::Http1 => h2c = false,
                }
            }
            if !h2c {
                match self.classify(&head) {
                    Head::Incomplete if head.len() < FIRST_READ => {}
                    Head::Early(early) => return Some((head, Some(early))),
                    Head::Incomplete | Head::Pass => return Some((head, None)),
                }
            }
            if !matches!(stream.read_buf(&mut head).await, Ok(1..)) {
                return None;
            }
        }
    }

    /// Reads the first request of a new connection, until `deadline`.
    async fn first_request(&self, stream: Stream, deadline: Instant) -> First {
        if !stream.as_any().is::<TcpStream>() {
            // Not an L4 stream (none of the listeners makes one): the wrapped application's.
            return First::Other(stream);
        }
        let client = client_ip(&stream);
        let Ok(mut stream) = stream.into_any().downcast::<TcpStream>() else {
            return First::Gone; // Unreachable: the type was checked above.
        };
        let read = self.read_head(&mut *stream, self.h2c());
        let Ok(Some((head, early))) = tokio::time::timeout_at(deadline, read).await else {
            return First::Gone;
        };
        match early {
            Some(early) => taken_on(HeldStream::Tcp(stream), head, early, client),
            None => {
                let http2 = classify::h2c_preface(&head) == Preface::Http2 && self.h2c();
                stream.rewind(&head);
                if http2 {
                    First::Other(stream)
                } else {
                    First::Http1(stream)
                }
            }
        }
    }

    /// A new connection, in a task of its own (cleartext, or TLS that chose HTTP/1.1 by ALPN,
    /// the listener having done the handshake): its first request read, then held, its event
    /// stream served, or the connection served (HTTP/1 here, h2c by the wrapped application).
    ///
    /// Not in the task Pingora spawned for the connection: that one is sized for a TLS
    /// handshake (≈ 9 kB) even on a cleartext listener, and with TLS, tokio-rustls reads until
    /// the socket would block, so the task that read last stays registered with the socket
    /// until its next event. What follows the first request is boxed, so that a connection
    /// waiting for its first byte, or held, is only this task's small state.
    async fn serve_connection(
        self: Arc<Self>,
        stream: Stream,
        shutdown: ShutdownWatch,
        place: PerIpPlace,
        deadline: Instant,
    ) {
        let first = if stream.get_ssl_digest().is_some() {
            self.first_tls_request(stream, deadline).await
        } else {
            self.first_request(stream, deadline).await
        };
        match first {
            First::Gone => {}
            First::Hold(held) => self.hold_then_serve(held, shutdown, place).await,
            First::Events(stream, head, to_stream, client) => {
                let events = self.events(stream, head, to_stream, client);
                Box::pin(events.serve(place, &shutdown, deadline)).await;
            }
            First::Http1(stream) => {
                let _place = place;
                Box::pin(self.serve_http1(stream, &shutdown, deadline)).await;
            }
            First::Other(stream) => {
                let _place = place;
                // The wrapped application's own loop over reused connections (as Pingora's).
                let mut next = Some(stream);
                while let Some(stream) = next {
                    next = self.app.process_new(stream, &shutdown).await;
                }
            }
        }
    }

    /// A connection whose first request subscribes to a route's events, ready to be served.
    fn events(
        &self,
        stream: HeldStream,
        head: Vec<u8>,
        to_stream: ToStream,
        client: Option<IpAddr>,
    ) -> EarlyEvents<'_, A> {
        EarlyEvents {
            hold: self,
            stream,
            head,
            to_stream,
            client,
        }
    }

    /// [`first_request`](Self::first_request) on a TLS connection that chose HTTP/1.1.
    async fn first_tls_request(&self, mut stream: Stream, deadline: Instant) -> First {
        let client = client_ip(&stream);
        let read = self.read_head(&mut stream, false);
        let Ok(Some((head, early))) = tokio::time::timeout_at(deadline, read).await else {
            return First::Gone;
        };
        match early {
            Some(early) => taken_on(HeldStream::Tls(stream), head, early, client),
            None => First::Http1(Box::new(Rewound::new(stream, head))),
        }
    }

    /// Holds a connection until its request is admitted or the hold fails. `None` if the
    /// client left; otherwise the connection with its bytes put back, and the verdict for the
    /// gate (none if too many requests are held already: the gate answers that).
    async fn hold(&self, connection: HeldConnection) -> Option<(Stream, Option<Handover>)> {
        let HeldConnection {
            stream,
            head,
            to_hold,
            client,
        } = connection;
        let handover = match self.gate.clients().held.take(client) {
            // Too many held for this client: the gate answers that.
            None => None,
            Some(_place) => {
                // Whatever the connection carries (a body, a next request), its end is noticed
                // without reading it: a client that left frees its place and is never
                // forwarded.
                let client_left = departure::client_left(stream.fd());
                let shutdown = self.gate.shutdown_signal();
                match hold_until_admitted(&to_hold.route, shutdown, client_left).await {
                    // Too many held: the gate answers that.
                    HoldOutcome::Full => None,
                    HoldOutcome::Admitted(admission) => Some(Handover::Admitted(admission)),
                    HoldOutcome::Failed(failure) => Some(Handover::Failed(failure)),
                    HoldOutcome::ClientLeft(()) => return None,
                }
            }
        };
        Some((stream.put_back(head), handover))
    }

    /// Serves an HTTP/1 connection as Pingora would (its own loop, in `HttpServerApp`'s
    /// `process_new`), with the client deadlines: the keep-alive idle timeout, the body read
    /// timeout, each head within its deadline (the first by `first_deadline`), pipelined
    /// requests answered in order.
    async fn serve_http1(&self, stream: Stream, shutdown: &ShutdownWatch, first_deadline: Instant) {
        let limits = &self.gate.clients().limits;
        let later = limits.keepalive_timeout + limits.header_timeout;
        let clock = Arc::clone(self.gate.clock());
        let mut deadline = HeadDeadline::new(first_deadline, later, clock);
        // The stream, and what the previous session left for the next (none for the first).
        let mut next: (Stream, Option<HttpPersistentSettings>) = (stream, None);
        loop {
            // The session is made right where it is handed over (never kept across an await:
            // the connection's future then never holds, nor copies, one of its own).
            let (stream, settings) = next;
            let mut session = ServerSession::new_http1(stream);
            match settings {
                Some(settings) => settings.apply_to_session(&mut session),
                None => self.configure(&mut session, shutdown),
            }
            // Carried settings leave the read timeout out. (A gateway shutting down: the proxy
            // turns keep-alive off once it has the head.)
            session.set_read_timeout(Some(limits.body_timeout));
            // `None`: the head came too late, the session was dropped and its connection closed.
            let served = deadline
                .run(self.app.process_new_http(session, shutdown))
                .await;
            let Some(Some(reused)) = served else {
                return;
            };
            next = reused.consume();
            deadline.begin();
        }
    }

    /// A new HTTP/1 session's settings: what Pingora sets, with our deadlines.
    fn configure(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) {
        let limits = &self.gate.clients().limits;
        if *shutdown.borrow() {
            // Stop the client from reusing a connection of a gateway shutting down soon.
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs().max(1)));
        }
        session.set_keepalive_reuses_remaining(
            self.app
                .server_options()
                .and_then(|options| options.keepalive_request_limit),
        );
        session.set_read_timeout(Some(limits.body_timeout));
        // Pipelined requests are answered in order rather than dropped with the connection.
        session.set_pipelining_enabled(true);
    }

    /// The task of a held connection: hold, then serve it as the wrapped application would
    /// have, with the verdict in the task-local the gate reads.
    async fn hold_then_serve(
        self: Arc<Self>,
        connection: HeldConnection,
        shutdown: ShutdownWatch,
        place: PerIpPlace,
    ) {
        let _place = place;
        let route = Arc::clone(&connection.to_hold.route);
        let Some((stream, handover)) = self.hold(connection).await else {
            return;
        };
        // Boxed: the state of a session (≈ 4 kB of futures) is paid only once the hold is over.
        Box::pin(self.serve_held(stream, handover, route, &shutdown)).await;
    }

    /// A held connection let through (or its wake failed): served as the wrapped application
    /// would, with the verdict (`handover`) in the task-local the gate reads.
    async fn serve_held(
        &self,
        stream: Stream,
        handover: Option<Handover>,
        route: Arc<Route>,
        shutdown: &ShutdownWatch,
    ) {
        // The head is whole already: Pingora parses it at once.
        let deadline = Instant::now() + self.gate.clients().limits.header_timeout;
        let served = self.serve_http1(stream, shutdown, deadline);
        let Some(handover) = handover else {
            return served.await;
        };
        handover::scope(route, handover, async {
            tokio::pin!(served);
            tokio::select! {
                biased;
                () = &mut served => {}
                () = tokio::time::sleep(UNCLAIMED_AFTER) => {
                    handover::forget();
                    served.await;
                }
            }
        })
        .await;
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for EarlyHold<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let deadline = Instant::now() + self.gate.clients().limits.header_timeout;
        // Over the client's connection cap: closed at once, nothing read.
        let place = self.gate.clients().connections.take(client_ip(&stream))?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 over TLS: the wrapped application's, in Pingora's task.
            let _place = place;
            return self.app.process_new(stream, shutdown).await;
        }
        let task = Arc::clone(self).serve_connection(stream, shutdown.clone(), place, deadline);
        tokio::spawn(task);
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}
