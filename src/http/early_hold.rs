//! The early hold: holding HTTP requests until their backend is ready — before Pingora reads them, where it can.
//!
//! A request held inside `request_filter` (the [gate](crate::http::gate)) is a live Pingora session:
//! the connection's task, two boxed futures of ≈ 9 and ≈ 4 kB, the 4 KiB head buffer, the
//! parsed header — ≈ 25 kB, so 10,000 held requests cost ≈ 250 MB. [`EarlyHold`] wraps the
//! HTTP application (a [`ServerApp`]) to hold them for a fraction of that (≈ 5 kB each, most of
//! it Pingora's per-connection state before the first byte; BENCHMARKS.md):
//!
//! 1. On a new cleartext connection it reads the request head (as Pingora would, up to 4 KiB)
//!    and parses it with `httparse`.
//! 2. If the gate would hold this request — its route is asleep, it is not an internal
//!    endpoint, not a browser navigation, not refused by `start_endpoint` — the bare connection
//!    waits in a small task of its own (≈ 1 kB: the bytes read and the wait), and the connection
//!    task Pingora spawned ends. Of Pingora, only the L4 stream remains.
//! 3. Once the backend is ready and the request has its place in the slow-start window
//!    ([`release`](crate::backend::release)), the bytes are put back into the stream (`rewind`) and the
//!    connection goes to the wrapped application as if just accepted: Pingora parses the same
//!    head, the body is still unread and streams upstream intact. The gate finds the
//!    admission (in-flight guard and window place, handed over in a task-local) and lets the
//!    request through. A wake that fails or times out is handed over the same way, and the gate
//!    answers its 503 at once.
//!
//! Everything else — TLS, h2c, a head larger than 4 KiB, a ready route, a later
//! request on a kept-alive connection — goes to the wrapped application at once, bytes put
//! back, and the gate holds it in `request_filter` if it must (`hold_until_admitted` serves
//! both). The early hold changes what a held request costs, never what it is answered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use crate::http::gate::{Asleep, IdleGate};
use crate::http::handover::{self, Handover};
use crate::routes::Route;
use crate::wait::{hold_until_admitted, HoldOutcome};

/// The largest request head held early, in bytes (Pingora's own first head buffer); larger
/// heads go to Pingora and, if they must wait, wait in `request_filter`.
const FIRST_READ: usize = 4096;
/// Headers parsed in a request head (more: the connection goes to Pingora, which takes more).
const MAX_HEADERS: usize = 64;
/// How long an admission waits for the gate to claim it. The gate claims it within
/// microseconds, while the route warms up; past this, a request that took another path (its
/// warm-up ended meanwhile) no longer keeps a window place or the backend awake.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(1);

/// Holds connections whose first request is for a sleeping route before the wrapped HTTP
/// application (`HttpProxy`) builds a session for them. See the module docs; wrap the proxy
/// whose `request_filter` calls [`IdleWatcher::gate`](crate::IdleWatcher::gate):
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
    /// Nothing but the head was read and no body follows: a read can watch for the client
    /// leaving without taking anything from the request.
    watch_client: bool,
}

/// What the first bytes of a connection call for.
enum Head {
    /// A request the gate would hold.
    Hold(ToHold),
    /// Anything else: the wrapped application takes the connection at once.
    Pass,
    /// Not a whole request head yet.
    Incomplete,
}

/// A connection whose first request is to be held: its stream and the bytes read from it.
struct HeldConnection {
    stream: Box<TcpStream>,
    head: Vec<u8>,
    to_hold: ToHold,
}

impl<A> EarlyHold<A> {
    /// What to do with a connection whose first bytes are `bytes`.
    fn classify(&self, bytes: &[u8]) -> Head {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(bytes) {
            Ok(httparse::Status::Complete(head_len)) => self
                .would_hold(&request, head_len == bytes.len())
                .map_or(Head::Pass, Head::Hold),
            Ok(httparse::Status::Partial) => Head::Incomplete,
            Err(_) => Head::Pass,
        }
    }

    /// Whether the gate would hold `request`; `alone`: nothing follows its head yet.
    fn would_hold(&self, request: &httparse::Request<'_, '_>, alone: bool) -> Option<ToHold> {
        let target = request.path?;
        let host = request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case("host"))
            .map(|header| header.value);
        let uri: http::Uri = target.parse().ok()?;
        let gate = &self.gate;
        let routes = gate.routes().load();
        let route = routes.by_host_bytes(uri.host().map(str::as_bytes).or(host)?)?;
        if route.watcher.is_ready() || gate.is_internal(uri.path()) {
            return None;
        }
        let mut parts = http::Request::builder()
            .method(request.method?)
            .uri(uri)
            .body(())
            .ok()?
            .into_parts()
            .0;
        let mut bodiless = true;
        for header in request.headers.iter() {
            let name = http::HeaderName::from_bytes(header.name.as_bytes()).ok()?;
            let value = http::HeaderValue::from_bytes(header.value).ok()?;
            if name == http::header::TRANSFER_ENCODING
                || (name == http::header::CONTENT_LENGTH && value != "0")
            {
                bodiless = false;
            }
            parts.headers.append(name, value);
        }
        if !matches!(gate.when_asleep(route, &parts), Asleep::Hold) {
            return None;
        }
        Some(ToHold {
            route: Arc::clone(route),
            watch_client: bodiless && alone,
        })
    }

    /// Reads the first request of a new connection. `Ok`: the connection is to be held;
    /// `Err`: it goes on at once (bytes put back), or `Err(None)` if the client left.
    async fn first_request(&self, stream: Stream) -> Result<HeldConnection, Option<Stream>> {
        if !stream.as_any().is::<TcpStream>() {
            return Err(Some(stream));
        }
        let Ok(mut stream) = stream.into_any().downcast::<TcpStream>() else {
            return Err(None); // Unreachable: the type was checked above.
        };
        // The first byte alone, so that no buffer is held while a client says nothing yet.
        let mut first = [0u8; 1];
        if !matches!(stream.read(&mut first).await, Ok(1)) {
            return Err(None);
        }
        let mut head = Vec::with_capacity(FIRST_READ);
        head.push(first[0]);
        // The rest of the head (a head split across segments takes several reads).
        loop {
            if !matches!(stream.read_buf(&mut head).await, Ok(1..)) {
                return Err(None);
            }
            match self.classify(&head) {
                Head::Incomplete if head.len() < FIRST_READ => continue,
                Head::Hold(to_hold) => {
                    head.shrink_to_fit();
                    return Ok(HeldConnection {
                        stream,
                        head,
                        to_hold,
                    });
                }
                Head::Incomplete | Head::Pass => {
                    stream.rewind(&head);
                    return Err(Some(stream));
                }
            }
        }
    }

    /// Holds a connection until its request is admitted or the hold fails. `None` if the
    /// client left; otherwise the connection with its bytes put back, and the verdict for the
    /// gate (none if too many requests are held already: the gate answers that).
    async fn hold(&self, connection: HeldConnection) -> Option<(Stream, Option<Handover>)> {
        let HeldConnection {
            mut stream,
            mut head,
            to_hold,
        } = connection;
        let client_left = async {
            if to_hold.watch_client {
                let mut byte = [0u8; 1];
                match stream.read(&mut byte).await {
                    // More from the client: keep it, stop watching.
                    Ok(1) => head.push(byte[0]),
                    // End of stream or error: gone.
                    _ => return,
                }
            }
            std::future::pending().await
        };
        let shutdown = self.gate.shutdown_signal();
        let handover = match hold_until_admitted(&to_hold.route, shutdown, client_left).await {
            // Too many held: the gate answers that.
            HoldOutcome::Full => None,
            HoldOutcome::Admitted(admission) => Some(Handover::Admitted(admission)),
            HoldOutcome::Failed(failure) => Some(Handover::Failed(failure)),
            HoldOutcome::ClientLeft(()) => return None,
        };
        stream.rewind(&head);
        Some((stream, handover))
    }
}

impl<A: ServerApp + Send + Sync + 'static> EarlyHold<A> {
    /// The task of a held connection: hold, then serve it as the wrapped application would
    /// have, with the verdict in the task-local the gate reads.
    async fn hold_then_serve(self: Arc<Self>, connection: HeldConnection, shutdown: ShutdownWatch) {
        let route = Arc::clone(&connection.to_hold.route);
        let Some((stream, handover)) = self.hold(connection).await else {
            return;
        };
        let served = async {
            let mut reused = self.app.process_new(stream, &shutdown).await;
            while let Some(stream) = reused {
                reused = self.app.process_new(stream, &shutdown).await;
            }
        };
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
impl<A: ServerApp + Send + Sync + 'static> ServerApp for EarlyHold<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        match self.first_request(stream).await {
            Err(stream) => self.app.process_new(stream?, shutdown).await,
            Ok(held) => {
                // A task of its own, a fraction of the size of the connection task Pingora
                // spawned, which ends here.
                tokio::spawn(Arc::clone(self).hold_then_serve(held, shutdown.clone()));
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
