//! The gate: what happens to a request before it may go upstream, in `request_filter`.
//!
//! In this order (the request path of `ARCHITECTURE.md`):
//!
//! 1. Route by Host (lock-free, no allocation); unknown → 404 problem+json.
//! 2. Internal endpoints under the path prefix (`status`, `events`, `loading.js`, `style.css`):
//!    answered here, ready or not, and they never wake anything.
//! 3. Backend ready → mark activity, keep an in-flight guard in the context, let it through.
//!    This is the hot path: one atomic load for the state, one counter for the guard.
//! 4. Not ready, and the path is not the route's `start_endpoint` → 403, nothing woken.
//!    `/favicon.ico` → 204, nothing woken.
//! 5. A browser navigation → the wake starts in the background, the loading page answers at once
//!    (503, `Retry-After`, `Cache-Control: no-store`).
//! 6. Anything else is held: wake, wait until ready or the route's `wake_timeout`, then let the
//!    very same request through (its body has not been read, so it streams upstream intact).
//!    Failure, timeout or too many waiters → 503 + `Retry-After` + problem+json.
//!    Most held requests never reach this point as Pingora sessions: the
//!    [early hold](crate::http::early_hold) holds them before Pingora reads them, far more cheaply, and
//!    hands them over ready (or failed), so the gate only lets them through (or answers).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde::Serialize;

use pingora::upstreams::peer::HttpPeer;
use tokio::sync::watch;

use crate::backend::events::WakeEventKind;
use crate::backend::release::ReleaseTicket;
use crate::backend::{InFlight, WakeFailure, Watcher};
use crate::config::ClientLimits;
use crate::http::body::BodyRate;
use crate::http::clients::{Clients, EventStreamRefusal};
use crate::http::handover::{self, Handover};
use crate::http::{classify, deadline, page, respond, retry, sse};
use crate::idle::IdleClock;
use crate::routes::{LiveRoutes, Route};
use crate::wait::{self, departure, Admission, HoldOutcome};

/// `Retry-After` for the loading page and for overflowing waiters, in seconds.
const RETRY_AFTER_SECS: u64 = 2;
/// Connecting to a backend that answered its readiness probe should be quick; a SYN lost to a
/// full listen backlog is retried by the kernel after 1 s, so allow a few of those.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One connection attempt to a backend that was already ready (not just woken): it answers at
/// once, or it is gone (stopped behind our back, its address no longer routed).
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The retries of one request to an already-ready backend, counted from its first failed
/// attempt: a backend that vanished is answered 502 within about [`READY_CONNECT_TIMEOUT`] and
/// this, not after every retry's timeout.
const READY_RETRY_BUDGET: Duration = Duration::from_secs(1);
/// The shortest connection attempt within the budget.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// What the gate remembers about one request. Keep it in the gateway's per-request context
/// (`ProxyHttp::CTX`): it holds the in-flight guard that keeps the backend awake until the
/// request — or its upgraded connection, or its streamed response — ends.
#[derive(Default)]
pub struct GateContext {
    /// The route the request matched, kept to its end (a newer route table does not change it).
    route: Option<Arc<Route>>,
    in_flight: Option<InFlight>,
    slow_start: bool,
    retries: u32,
    fresh_connection: bool,
    unacknowledged: Option<RawFd>,
    /// What only a request through a wake or a failing upstream needs, boxed when first needed:
    /// Pingora copies the context with its per-request future, so its size counts on the warm
    /// path.
    recovery: Option<Box<Recovery>>,
    body: BodyRate,
}

/// The part of a [`GateContext`] that only a request through a wake or a failing upstream needs.
#[derive(Default)]
struct Recovery {
    /// Its place in the slow-start window, given back when the upstream answers.
    release: Option<ReleaseTicket>,
    /// When the first connection attempt failed (the retry budget of a ready backend counts
    /// from it).
    failing_since: Option<Instant>,
}

impl GateContext {
    /// The request waited through a wake and enters the backend in the slow start.
    fn admit(&mut self, admission: Admission) {
        self.in_flight = Some(admission.in_flight);
        self.recovery().release = Some(admission.release);
        self.slow_start = true;
    }

    /// The recovery part, made when first needed.
    fn recovery(&mut self) -> &mut Recovery {
        self.recovery.get_or_insert_with(Box::default)
    }

    /// The route the request matched, once the gate ran.
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.route.as_ref()
    }

    /// Whether the request entered a backend that just woke through the slow-start window (it
    /// was held during the wake, or came during the warm-up after it); it then gets the retry
    /// policy of [`should_retry`](Self::should_retry).
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// Call it from `ProxyHttp::connected_to_upstream`. On a fresh connection carrying a request
    /// without a body, the request must be acknowledged by the backend's kernel within
    /// [`UNACKNOWLEDGED_TIMEOUT`](retry::UNACKNOWLEDGED_TIMEOUT) (`TCP_USER_TIMEOUT`): a server whose accept queue overflowed
    /// silently drops connections the gateway believes open, and without this they would hang
    /// for minutes. Only bodiless requests: a body may legitimately wait on a slow reader. The
    /// limit is lifted again when the response arrives (the connection may be reused for an
    /// upload later).
    pub fn connected_to_upstream(&mut self, session: &mut Session, reused: bool, fd: RawFd) {
        self.fresh_connection = !reused;
        self.unacknowledged = None;
        if !reused && session.as_downstream_mut().is_body_empty() {
            retry::set_user_timeout(fd, retry::UNACKNOWLEDGED_TIMEOUT);
            self.unacknowledged = Some(fd);
        }
    }

    /// Tells the gate the upstream answered (call it from `ProxyHttp::upstream_response_filter`):
    /// a request in the slow start gives its place back and widens the window (see
    /// [`release`](crate::backend::release)).
    pub fn upstream_responded(&mut self) {
        if let Some(fd) = self.unacknowledged.take() {
            // The connection is alive (its response just arrived): `fd` is still ours.
            retry::set_user_timeout(fd, Duration::ZERO);
        }
        if let Some(ticket) = self.recovery.as_mut().and_then(|r| r.release.as_mut()) {
            ticket.responded();
        }
    }

    /// Decides whether a failed upstream attempt is retried (call it from `ProxyHttp`'s
    /// `fail_to_connect` and `error_while_proxy`; returns whether it set the error retryable).
    ///
    /// A backend that just woke receives every held request at once, and small servers drop
    /// or reset connections beyond their listen backlog. Idempotent requests whose body is
    /// fully replayable and for which nothing was answered yet are therefore retried a few
    /// times, with a jittered backoff (see [`retry_delay`](Self::retry_delay)), when they were
    /// in the slow start, or when their fresh connection was dropped before any answer (never
    /// acknowledged — see [`connected_to_upstream`](Self::connected_to_upstream) — reset or
    /// closed), as HTTP clients do for idempotent requests. Other failures keep Pingora's own
    /// policy (the caller applies it when this returns false).
    pub fn should_retry(&mut self, session: &Session, error: &mut pingora::Error) -> bool {
        let request = session.req_header();
        let dropped = self.fresh_connection && retry::connection_dropped(error);
        let eligible = (self.slow_start || dropped)
            && self.retries < retry::MAX_RETRIES
            && request.method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        if eligible {
            self.retries += 1;
            error.set_retry(true);
        }
        eligible
    }

    /// Decides whether a failed connection attempt is retried (call it from `ProxyHttp`'s
    /// `fail_to_connect`). Nothing was sent yet, so any request may try again: a few times,
    /// with the same jittered backoff. Returns whether it set the error retryable.
    ///
    /// Every failure asks the backend's provider for its status ([`Watcher::recheck`]), so a
    /// backend stopped behind our back, its event lost, is noticed by this request rather than
    /// never; once it is known not to be ready, nothing is retried. A backend that was ready
    /// before this request (not in the slow start) should accept at once: its retries share
    /// [`READY_RETRY_BUDGET`].
    pub fn should_retry_connect(&mut self, error: &mut pingora::Error) -> bool {
        let mut eligible = self.retries < retry::MAX_RETRIES;
        if let Some(route) = &self.route {
            route.watcher.recheck();
            // Found stopped meanwhile: no use trying again.
            eligible &= route.watcher.is_ready();
        }
        if !self.slow_start {
            let since = *self
                .recovery()
                .failing_since
                .get_or_insert_with(Instant::now);
            eligible &= since.elapsed() + MIN_CONNECT_TIMEOUT < READY_RETRY_BUDGET;
        }
        if eligible {
            self.retries += 1;
            error.set_retry(true);
        }
        eligible
    }

    /// How long to wait before the next attempt (zero for the first attempt): 10 ms doubling
    /// per retry, with jitter so retried requests do not arrive together again.
    pub fn retry_delay(&self) -> Duration {
        retry::retry_delay(self.retries)
    }

    /// Counts a chunk of the request body (call it from `ProxyHttp::request_body_filter`):
    /// `Err` (408) if the body comes slower than `min_body_rate` (see [`crate::http::body`]).
    pub fn body_received(&mut self, len: usize, limits: &ClientLimits) -> Result<()> {
        self.body.received(len, limits)
    }

    /// The connection timeout of the next attempt: generous in the slow start (a backend that
    /// just woke may lose SYNs to a full backlog), short for a backend already ready, within
    /// what is left of its [`READY_RETRY_BUDGET`].
    fn connect_timeout(&self) -> Duration {
        if self.slow_start {
            return UPSTREAM_CONNECT_TIMEOUT;
        }
        match self.recovery.as_ref().and_then(|r| r.failing_since) {
            None => READY_CONNECT_TIMEOUT,
            Some(since) => READY_RETRY_BUDGET
                .saturating_sub(since.elapsed())
                .clamp(MIN_CONNECT_TIMEOUT, READY_CONNECT_TIMEOUT),
        }
    }
}

/// The host `request` is routed by: HTTP/2's `:authority` or an absolute-form target's, else
/// `Host` (Pingora rejects an HTTP/1 absolute-form target whose authority differs from `Host`).
///
/// The first `Host` value is found by walking the headers, as `HeaderMap::get` would return it:
/// clients send `Host` first, so the walk is a comparison or two where `get` hashes the name
/// (≈ 130 instructions per request, callgrind).
#[inline]
fn host_of(request: &RequestHeader) -> Option<&[u8]> {
    let header = request
        .headers
        .iter()
        .find(|(name, _)| *name == http::header::HOST)
        .map(|(_, value)| value.as_bytes());
    classify::routing_host(&request.uri, header)
}

/// Waits for a place in the backend's slow-start window (the in-flight guard is already in
/// `ctx`, so the backend cannot be put to sleep meanwhile).
async fn join_slow_start(
    ctx: &mut GateContext,
    watcher: &Watcher,
    deadline: Instant,
) -> std::result::Result<(), WakeFailure> {
    ctx.slow_start = true;
    match wait::enter_window(watcher, deadline).await {
        Ok(ticket) => {
            ctx.recovery().release = Some(ticket);
            Ok(())
        }
        Err(failure) => {
            ctx.in_flight = None;
            Err(failure)
        }
    }
}

/// What the gate does with a request whose backend is not ready (module docs, steps 4–6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asleep<'a> {
    /// `/favicon.ico`: 204, nothing woken.
    Favicon,
    /// Not the route's `start_endpoint` (given): 403, nothing woken.
    Forbidden(&'a str),
    /// A `User-Agent` the route ignores (a monitor, a crawler): 503, nothing woken.
    IgnoredAgent,
    /// A browser navigation: the wake starts, the loading page answers.
    LoadingPage,
    /// Held until ready, then let through.
    Hold,
}

/// Answers a request whose backend could not be woken (`what` happened to it: "woken",
/// "reached"): 503, `Retry-After`, problem+json; the failure's text only if the route shows
/// details.
async fn wake_failed(
    session: &mut Session,
    route: &Route,
    failure: &WakeFailure,
    what: &str,
) -> Result<()> {
    route.count_rejected(failure.reason(), 1);
    let detail = if route.policy.show_details {
        format!("{} could not be {what}: {failure}", route.name)
    } else {
        format!(
            "{} could not be {what}: {}",
            route.name,
            failure.public_message()
        )
    };
    let retry = Some(failure.retry_after_secs());
    respond::problem(session, 503, Some(&route.name), &detail, retry).await
}

/// What to do with a Host no route claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownHost {
    /// Answer 404 problem+json (the bundled gateway).
    #[default]
    NotFound,
    /// Let it through untouched (a gateway that has other, always-on routes of its own).
    PassThrough,
}

/// The internal endpoints under the path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Internal {
    Script,
    Style,
    Events,
    Status,
}

impl Internal {
    fn parse(rest: &str) -> Option<Self> {
        match rest {
            "loading.js" => Some(Self::Script),
            "style.css" => Some(Self::Style),
            "events" => Some(Self::Events),
            "status" => Some(Self::Status),
            _ => None,
        }
    }
}

/// Decides, per request, whether it passes, waits, or is answered here. See the module docs.
pub struct IdleGate {
    routes: Arc<LiveRoutes>,
    prefix: Box<str>,
    clock: Arc<IdleClock>,
    unknown_host: UnknownHost,
    clients: Arc<Clients>,
}

impl IdleGate {
    /// A gate over `routes`, with internal endpoints under `prefix` (starts and ends with `/`).
    pub fn new(
        routes: Arc<LiveRoutes>,
        prefix: &str,
        clock: Arc<IdleClock>,
        unknown_host: UnknownHost,
    ) -> Self {
        Self {
            routes,
            prefix: prefix.into(),
            clock,
            unknown_host,
            clients: Arc::new(Clients::default()),
        }
    }

    /// The same gate with the client deadlines and caps `limits` (the defaults otherwise).
    pub fn with_client_limits(mut self, limits: ClientLimits) -> Self {
        self.clients = Arc::new(Clients::new(limits));
        self
    }

    /// The client deadlines and caps, with their counters (shared with the early hold).
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The live route table.
    pub fn routes(&self) -> &Arc<LiveRoutes> {
        &self.routes
    }

    /// The idle clock (its coarse tick also times the head deadlines of kept-alive connections).
    pub fn clock(&self) -> &Arc<IdleClock> {
        &self.clock
    }

    /// Turns true when the gateway shuts down: long waits and streams end on it.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.clock.shutdown_signal()
    }

    /// Runs the gate. `Ok(true)`: an answer was written, the request is done. `Ok(false)`: let
    /// it through (its route is in `ctx`, see [`IdleGate::upstream`]).
    ///
    /// Only a ready route's request stays in this function; every other path is a boxed future
    /// of its own, so that the future of this one — boxed by `ProxyHttp`'s `async_trait` for
    /// every request — stays small (a large box costs the allocator a slower path).
    pub async fn check(&self, session: &mut Session, ctx: &mut GateContext) -> Result<bool> {
        // Pingora has the whole head: the head deadline no longer applies.
        deadline::head_read();
        let Some(route) = self.route_of(session.req_header()) else {
            return Box::pin(self.no_route(session)).await;
        };
        if let Some(endpoint) = self.internal(session.req_header().uri.path()) {
            let served = Box::pin(self.serve_internal(session, &route, endpoint)).await;
            ctx.route = Some(route);
            return served.map(|()| true);
        }
        if let Some(guard) = route.watcher.enter() {
            ctx.in_flight = Some(guard);
            let warming_up = route.watcher.is_warming_up();
            ctx.route = Some(route);
            if warming_up {
                return Box::pin(self.warming_up(session, ctx)).await;
            }
            return Ok(false);
        }
        let answered = Box::pin(self.not_ready(session, ctx, &route)).await;
        ctx.route = Some(route);
        answered
    }

    /// The route `request` is for, by its host ([`host_of`]).
    #[inline]
    fn route_of(&self, request: &RequestHeader) -> Option<Arc<Route>> {
        self.routes.load().by_host_bytes(host_of(request)?).cloned()
    }

    /// A request no route serves: passed through or answered 404 (see [`UnknownHost`]), or 503
    /// if it was held early on a route a reload removed meanwhile.
    #[inline(never)]
    async fn no_route(&self, session: &mut Session) -> Result<bool> {
        if let Some((removed, failure)) = handover::take_removed() {
            wake_failed(session, &removed, &failure, "woken").await?;
            return Ok(true);
        }
        if self.unknown_host == UnknownHost::PassThrough {
            return Ok(false);
        }
        let detail = match host_of(session.req_header()) {
            Some(host) => format!("no route serves host {:?}", String::from_utf8_lossy(host)),
            None => "the request names no host".to_string(),
        };
        respond::problem(session, 404, None, &detail, None).await?;
        Ok(true)
    }

    /// A request for a backend that just woke: it joins the held ones in the slow start (the
    /// backend may not take a burst of new connections yet).
    #[inline(never)]
    async fn warming_up(&self, session: &mut Session, ctx: &mut GateContext) -> Result<bool> {
        let Some(route) = ctx.route.clone() else {
            return Ok(false);
        };
        if let Some(Handover::Admitted(admission)) = handover::take(&route) {
            // Held before Pingora read it: its place in the window is already taken.
            ctx.admit(admission);
            return Ok(false);
        }
        let deadline = Instant::now() + route.watcher.settings().wake_timeout;
        match join_slow_start(ctx, &route.watcher, deadline).await {
            Ok(()) => Ok(false),
            Err(failure) => {
                wake_failed(session, &route, &failure, "reached").await?;
                Ok(true)
            }
        }
    }

    /// The upstream address for a request the gate let through.
    #[inline]
    pub fn upstream(&self, ctx: &GateContext) -> Option<SocketAddr> {
        ctx.route.as_ref()?.upstream.address()
    }

    /// The upstream peer for a request the gate let through (address resolved by the last
    /// wake), for `ProxyHttp::upstream_peer`.
    pub fn upstream_peer(&self, ctx: &GateContext) -> Result<Box<HttpPeer>> {
        let address = self.upstream(ctx).ok_or_else(|| {
            pingora::Error::explain(
                pingora::ErrorType::ConnectNoRoute,
                "idlewatcher: the request has no ready upstream",
            )
        })?;
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(ctx.connect_timeout());
        Ok(Box::new(peer))
    }

    /// What a request for `route`, whose backend is not ready, gets (steps 4–6 of the module
    /// docs). The early hold asks the same question before Pingora parsed the request.
    pub fn when_asleep<'a>(&self, route: &'a Route, request: &Parts) -> Asleep<'a> {
        let path = request.uri.path();
        if path == "/favicon.ico" {
            return Asleep::Favicon;
        }
        if let Some(endpoint) = &route.start_endpoint {
            if path != endpoint {
                return Asleep::Forbidden(endpoint);
            }
        }
        if !route.policy.ignore_user_agents.is_empty() {
            let agent = request.headers.get(http::header::USER_AGENT);
            if agent.is_some_and(|agent| route.policy.ignores(agent.as_bytes())) {
                return Asleep::IgnoredAgent;
            }
        }
        if !route.no_loading_page && page::is_browser_navigation(request) {
            return Asleep::LoadingPage;
        }
        Asleep::Hold
    }

    /// Whether `path` is one of the internal endpoints (answered by the gate, never woken).
    pub fn is_internal(&self, path: &str) -> bool {
        self.internal(path).is_some()
    }

    /// Whether `path` is the event stream endpoint (`{prefix}events`).
    pub fn is_event_stream(&self, path: &str) -> bool {
        matches!(self.internal(path), Some(Internal::Events))
    }

    /// The internal endpoint `path` names, if any.
    fn internal(&self, path: &str) -> Option<Internal> {
        path.strip_prefix(&*self.prefix).and_then(Internal::parse)
    }

    async fn not_ready(
        &self,
        session: &mut Session,
        ctx: &mut GateContext,
        route: &Arc<Route>,
    ) -> Result<bool> {
        match self.when_asleep(route, session.req_header()) {
            Asleep::Favicon => {
                respond::send(session, 204, &[("cache-control", "no-store")], Bytes::new()).await?;
            }
            Asleep::Forbidden(endpoint) => {
                route.count_rejected("forbidden_path", 1);
                let detail = format!("{} is asleep and only {endpoint} may wake it", route.name);
                respond::problem(session, 403, Some(&route.name), &detail, None).await?;
            }
            Asleep::IgnoredAgent => {
                route.count_rejected("ignored_user_agent", 1);
                let detail = format!(
                    "{} is asleep, and requests from this client do not wake it",
                    route.name
                );
                let retry = Some(RETRY_AFTER_SECS);
                respond::problem(session, 503, Some(&route.name), &detail, retry).await?;
            }
            Asleep::LoadingPage => {
                // Starts the wake in the background; a refusal (backoff) shows in the page's
                // events.
                let _ = route.watcher.wake();
                let body = page::render(&route.name, &self.prefix, RETRY_AFTER_SECS);
                let retry = RETRY_AFTER_SECS.to_string();
                respond::send(
                    session,
                    503,
                    &[
                        ("content-type", "text/html; charset=utf-8"),
                        ("cache-control", "no-store"),
                        ("retry-after", &retry),
                        ("content-security-policy", page::CONTENT_SECURITY_POLICY),
                        ("x-content-type-options", "nosniff"),
                    ],
                    Bytes::from(body),
                )
                .await?;
            }
            Asleep::Hold => match handover::take(route) {
                // Held before Pingora read it, and the wake failed meanwhile: do not hold again.
                Some(Handover::Failed(failure)) => {
                    wake_failed(session, route, &failure, "woken").await?
                }
                _ => return self.hold(session, ctx, route).await,
            },
        }
        Ok(true)
    }

    /// Holds the request until the backend is ready, then lets it through unchanged.
    async fn hold(
        &self,
        session: &mut Session,
        ctx: &mut GateContext,
        route: &Route,
    ) -> Result<bool> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let Some(_place) = self.clients.held.take(client) else {
            let detail = format!(
                "{} is waking up and this client already has {} requests held; retry shortly",
                route.name, self.clients.limits.max_held_per_ip
            );
            let retry = Some(RETRY_AFTER_SECS);
            respond::problem(session, 503, Some(&route.name), &detail, retry).await?;
            return Ok(true);
        };
        // An HTTP/1 connection is watched for its client leaving whatever it carries (its
        // bytes stay unread); an HTTP/2 stream without a body for its reset. The place among
        // the waiters is then released at once (the wake itself goes on).
        let fd = match session.as_downstream().stream() {
            Some(stream) if !session.as_downstream().is_http2() => Some(stream.id()),
            _ => None,
        };
        let watch_client = fd.is_some() || session.as_downstream_mut().is_body_empty();
        let downstream = session.as_downstream_mut();
        let client_left = async {
            if let Some(fd) = fd {
                // The socket stays open while this request lives.
                departure::client_left(fd).await;
                return pingora::Error::explain(
                    pingora::ErrorType::ConnectionClosed,
                    "the client left while its request was held",
                );
            }
            if watch_client {
                // An error means the client is gone; anything else: stop watching.
                if let Err(error) = downstream.read_body_or_idle(true).await {
                    return error;
                }
            }
            std::future::pending().await
        };
        let shutdown = self.clock.shutdown_signal();
        match wait::hold_until_admitted(route, shutdown, client_left).await {
            HoldOutcome::Full => {
                route.count_rejected("too_many_waiters", 1);
                let detail = format!(
                    "{} is waking up and already holds {} requests; retry shortly",
                    route.name, route.max_waiters
                );
                let retry = Some(RETRY_AFTER_SECS);
                respond::problem(session, 503, Some(&route.name), &detail, retry).await?;
                Ok(true)
            }
            HoldOutcome::Admitted(admission) => {
                ctx.admit(admission);
                Ok(false)
            }
            HoldOutcome::Failed(failure) => {
                wake_failed(session, route, &failure, "woken").await?;
                Ok(true)
            }
            // Nobody to answer.
            HoldOutcome::ClientLeft(error) => Err(error),
        }
    }

    async fn serve_internal(
        &self,
        session: &mut Session,
        route: &Route,
        endpoint: Internal,
    ) -> Result<()> {
        match endpoint {
            Internal::Script => {
                respond::send(
                    session,
                    200,
                    &[
                        ("content-type", "text/javascript; charset=utf-8"),
                        ("cache-control", "no-cache"),
                    ],
                    Bytes::from_static(page::SCRIPT.as_bytes()),
                )
                .await
            }
            Internal::Style => {
                respond::send(
                    session,
                    200,
                    &[
                        ("content-type", "text/css; charset=utf-8"),
                        ("cache-control", "no-cache"),
                    ],
                    Bytes::from_static(page::STYLE.as_bytes()),
                )
                .await
            }
            Internal::Events => {
                let client = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip());
                let clients = &self.clients;
                let retry = Some(RETRY_AFTER_SECS);
                let _places = match clients.take_event_stream(client, &route.name) {
                    Ok(places) => places,
                    Err(EventStreamRefusal::Client) => {
                        let detail = format!(
                            "this client already follows {} event streams",
                            clients.limits.max_event_streams_per_ip
                        );
                        return respond::problem(session, 429, Some(&route.name), &detail, retry)
                            .await;
                    }
                    Err(EventStreamRefusal::Route) => {
                        let detail = format!(
                            "{} already has {} event stream subscribers",
                            route.name, clients.limits.max_event_streams_per_route
                        );
                        return respond::problem(session, 503, Some(&route.name), &detail, retry)
                            .await;
                    }
                };
                sse::stream(session, route, self.clock.shutdown_signal()).await
            }
            Internal::Status => {
                let body = self.status_json(route);
                respond::send(
                    session,
                    200,
                    &[
                        ("content-type", "application/json"),
                        ("cache-control", "no-store"),
                    ],
                    Bytes::from(body),
                )
                .await
            }
        }
    }

    fn status_json(&self, route: &Route) -> Vec<u8> {
        #[derive(Serialize)]
        struct StatusBody<'a> {
            route: &'a str,
            state: &'static str,
            since: String,
            sleep_in_seconds: Option<u64>,
            error: Option<String>,
            held_by: Vec<String>,
            dependencies: Vec<DependencyBody<'a>>,
        }
        #[derive(Serialize)]
        struct DependencyBody<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            backend: Option<&'a str>,
            state: &'static str,
            held_by: Vec<String>,
        }
        let watcher = &route.watcher;
        let details = route.policy.show_details;
        let (state, since, error) = watcher.snapshot();
        let sleep_in_seconds = watcher.sleeps_in().map(|left| left.as_secs());
        serde_json::to_vec(&StatusBody {
            route: &route.name,
            state: state.as_str(),
            since: humantime::format_rfc3339_seconds(since).to_string(),
            sleep_in_seconds,
            error: error.map(|error| match details {
                true => error.to_string(),
                false => WakeEventKind::Error.public_message().to_string(),
            }),
            held_by: watcher.held_by(),
            dependencies: watcher
                .dependencies()
                .iter()
                .map(|(dependency, _)| DependencyBody {
                    backend: details.then(|| dependency.backend()),
                    state: dependency.state().as_str(),
                    held_by: dependency.held_by(),
                })
                .collect(),
        })
        .unwrap_or_default()
    }
}
