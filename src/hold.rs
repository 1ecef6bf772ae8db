//! Holding requests until their backend is ready — before Pingora reads them, where it can.
//!
//! A request held inside `request_filter` (the [gate](crate::gate)) is a live Pingora session:
//! the connection's task, two boxed futures of ≈ 9 and ≈ 4 kB, the 4 KiB head buffer, the
//! parsed header — ≈ 25 kB, so 10,000 held requests cost ≈ 250 MB. [`EarlyHold`] wraps the
//! HTTP application (a [`ServerApp`]) to hold them for a fraction of that:
//!
//! 1. On a new cleartext connection it reads what the client sent (one read, as Pingora would)
//!    and parses the request head with `httparse`.
//! 2. If the gate would hold this request — its route is asleep, it is not an internal
//!    endpoint, not a browser navigation, not refused by `start_endpoint` — the bare connection
//!    waits: the socket, the bytes read, the wait. Nothing of Pingora exists for it yet.
//! 3. Once the backend is ready and the request has its place in the slow-start window
//!    ([`release`](crate::release)), the bytes are put back into the stream (`rewind`) and the
//!    connection goes to the wrapped application as if just accepted: Pingora parses the same
//!    head, the body is still unread and streams upstream intact. The gate finds the
//!    [`Admission`] (in-flight guard and window place, handed over in a task-local) and lets the
//!    request through. A wake that fails or times out is handed over the same way, and the gate
//!    answers its 503 at once.
//!
//! Everything else — TLS, h2c, a head not complete in the first read, a ready route, a later
//! request on a kept-alive connection — goes to the wrapped application at once, bytes put
//! back, and the gate holds it in `request_filter` if it must ([`hold_until_admitted`] serves
//! both). The early hold changes what a held request costs, never what it is answered.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::gate::Asleep;
use crate::release::ReleaseTicket;
use crate::routes::{Route, RouteId};
use crate::watcher::{InFlight, WakeFailure, Watcher};
use crate::IdleWatcher;

/// The first read of a new connection, in bytes: Pingora's own first head buffer.
const FIRST_READ: usize = 4096;
/// Headers parsed in a request head (more: the connection goes to Pingora, which takes more).
const MAX_HEADERS: usize = 64;
/// How long an admission waits for the gate to claim it. The gate claims it within
/// microseconds, while the route warms up; past this, a request that took another path (its
/// warm-up ended meanwhile) no longer keeps a window place or the backend awake.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(1);

/// How a hold ended.
pub(crate) enum HoldOutcome<E> {
    /// Ready, with the request's place in the slow-start window.
    Admitted(Admission),
    /// The wake failed, timed out, or the gateway is shutting down.
    Failed(WakeFailure),
    /// The client left (what its watch returned).
    ClientLeft(E),
}

/// A request that waited through a wake and may now enter the backend.
pub(crate) struct Admission {
    /// Keeps the backend awake until the request ends.
    pub in_flight: InFlight,
    /// Its place in the slow-start window.
    pub release: ReleaseTicket,
}

/// Wakes the backend and waits until it is ready and the request has its place in the
/// slow-start window, until `deadline`, or until `shutdown`. A backend that falls asleep again
/// meanwhile is woken again. `client_left` completes when the client is gone (it may stay
/// pending forever); the wait then ends at once, without an answer.
pub(crate) async fn hold_until_admitted<E>(
    watcher: &Arc<Watcher>,
    deadline: Instant,
    mut shutdown: watch::Receiver<bool>,
    client_left: impl Future<Output = E>,
) -> HoldOutcome<E> {
    tokio::pin!(client_left);
    loop {
        let wait = async {
            let generation = watcher.wake()?;
            watcher.wait_ready(generation, deadline).await
        };
        tokio::pin!(wait);
        let result = loop {
            if *shutdown.borrow_and_update() {
                break Err(WakeFailure::ShuttingDown);
            }
            tokio::select! {
                result = &mut wait => break result,
                gone = &mut client_left => return HoldOutcome::ClientLeft(gone),
                _ = shutdown.changed() => {}
            }
        };
        if let Err(failure) = result {
            return HoldOutcome::Failed(failure);
        }
        if let Some(in_flight) = watcher.enter() {
            return match enter_window(watcher, deadline).await {
                Ok(release) => HoldOutcome::Admitted(Admission { in_flight, release }),
                Err(failure) => HoldOutcome::Failed(failure),
            };
        }
        // Ready, then at once asleep again: wake once more within the deadline.
        if Instant::now() >= deadline {
            return HoldOutcome::Failed(watcher.timed_out());
        }
    }
}

/// Waits for a place in the backend's slow-start window, until `deadline`.
pub(crate) async fn enter_window(
    watcher: &Watcher,
    deadline: Instant,
) -> Result<ReleaseTicket, WakeFailure> {
    let window = watcher.release_window();
    tokio::time::timeout_at(deadline.into(), window.enter())
        .await
        .map_err(|_| watcher.timed_out())
}

/// What an early hold hands to the gate, through the connection's task.
pub(crate) enum Handover {
    /// The request may enter the backend.
    Admitted(Admission),
    /// The wake failed: answer 503 at once, do not hold again.
    Failed(WakeFailure),
}

tokio::task_local! {
    static HANDOVER: Cell<Option<(RouteId, Handover)>>;
}

/// The early hold's verdict for the request the gate is looking at, if it was held early for
/// `route`. Taken once: later requests on the same connection find nothing.
pub(crate) fn take_handover(route: RouteId) -> Option<Handover> {
    let taken = HANDOVER.try_with(Cell::take).ok().flatten();
    match taken {
        Some((held_for, handover)) if held_for == route => Some(handover),
        _ => None,
    }
}

/// Holds connections whose first request is for a sleeping route before the wrapped HTTP
/// application (`HttpProxy`) builds a session for them. See the module docs; wrap the proxy
/// whose `request_filter` calls [`IdleWatcher::gate`]:
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn demo<P: pingora::proxy::ProxyHttp + Send + Sync + 'static>(
/// #     idle: Arc<idlewatcher::IdleWatcher>, conf: &Arc<pingora::server::configuration::ServerConf>, my_proxy: P)
/// # where P::CTX: Send + Sync {
/// use idlewatcher::hold::EarlyHold;
/// let proxy = pingora::proxy::http_proxy(conf, my_proxy);
/// let service = pingora::services::listening::Service::new(
///     "gateway".to_string(),
///     EarlyHold::new(idle, proxy),
/// );
/// # }
/// ```
pub struct EarlyHold<A> {
    idle: Arc<IdleWatcher>,
    app: Arc<A>,
}

impl<A> EarlyHold<A> {
    /// `app` behind an early hold for `idle`'s routes.
    pub fn new(idle: Arc<IdleWatcher>, app: A) -> Self {
        Self {
            idle,
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
struct ToHold<'a> {
    id: RouteId,
    route: &'a Arc<Route>,
    /// Nothing but the head was read and no body follows: a read can watch for the client
    /// leaving without taking anything from the request.
    watch_client: bool,
}

impl<A> EarlyHold<A> {
    /// Whether the gate would hold the request at the start of `bytes` (a complete head).
    fn classify(&self, bytes: &[u8]) -> Option<ToHold<'_>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(head_len) = request.parse(bytes).ok()? else {
            return None;
        };
        let target = request.path?;
        let host = request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case("host"))
            .and_then(|header| std::str::from_utf8(header.value).ok());
        let uri: http::Uri = target.parse().ok()?;
        let gate = self.idle.idle_gate();
        let (id, route) = gate.routes().by_host(host.or(uri.host())?)?;
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
            id,
            route,
            watch_client: bodiless && head_len == bytes.len(),
        })
    }

    /// Reads the first request of a new connection and holds it if its route is asleep.
    /// Returns the connection (bytes put back) with the hold's verdict, or `None` if the client
    /// left.
    async fn first_request(&self, stream: Stream) -> Option<(Stream, Option<(RouteId, Handover)>)> {
        if !stream.as_any().is::<TcpStream>() {
            return Some((stream, None));
        }
        let Ok(mut stream) = stream.into_any().downcast::<TcpStream>() else {
            return None; // Unreachable: the type was checked above.
        };
        let mut head = Vec::with_capacity(FIRST_READ);
        if stream.read_buf(&mut head).await.ok()? == 0 {
            return None;
        }
        let verdict = match self.classify(&head) {
            None => None,
            Some(to_hold) => {
                head.shrink_to_fit();
                self.hold(to_hold, &mut stream, &mut head).await?
            }
        };
        stream.rewind(&head);
        Some((stream, verdict))
    }

    /// Holds a connection until its request is admitted or the hold fails; `None` if the
    /// client left.
    async fn hold(
        &self,
        to_hold: ToHold<'_>,
        stream: &mut TcpStream,
        head: &mut Vec<u8>,
    ) -> Option<Option<(RouteId, Handover)>> {
        let ToHold {
            id,
            route,
            watch_client,
        } = to_hold;
        // Too many held: the gate answers that.
        let Some(_held) = route.hold() else {
            return Some(None);
        };
        let watcher = &route.watcher;
        let deadline = Instant::now() + watcher.settings().wake_timeout;
        let client_left = async {
            if watch_client {
                let mut byte = [0u8; 1];
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]), // More from the client: keep it, stop watching.
                    _ => return,                 // End of stream or error: gone.
                }
            }
            std::future::pending().await
        };
        let shutdown = self.idle.clock().shutdown_signal();
        let handover = match hold_until_admitted(watcher, deadline, shutdown, client_left).await {
            HoldOutcome::Admitted(admission) => Handover::Admitted(admission),
            HoldOutcome::Failed(failure) => Handover::Failed(failure),
            HoldOutcome::ClientLeft(()) => return None,
        };
        Some(Some((id, handover)))
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for EarlyHold<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (stream, handover) = self.first_request(stream).await?;
        let Some(handover) = handover else {
            return self.app.process_new(stream, shutdown).await;
        };
        let served = self.app.process_new(stream, shutdown);
        HANDOVER
            .scope(Cell::new(Some(handover)), async {
                tokio::pin!(served);
                tokio::select! {
                    biased;
                    result = &mut served => result,
                    () = tokio::time::sleep(UNCLAIMED_AFTER) => {
                        drop(HANDOVER.with(Cell::take));
                        served.await
                    }
                }
            })
            .await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
