//! `{prefix}events`: a route's wake events as Server-Sent Events.
//!
//! History first, then live, from the backend's [`EventLog`](crate::backend::events::EventLog); `retry:`
//! once, `id:` on every event (resume with `Last-Event-ID` or `?last_event_id=`), a `: keepalive`
//! comment every 15 s. The stream ends when the client leaves (noticed while idle, not only on the
//! next write), when the gateway shuts down, or [`LINGER`] after it carried a `ready` or an
//! `error` event (the page has what it waited for; it reconnects if it must). A client that
//! stops reading only ever blocks its own task, and only until the write timeout. Subscribers
//! are capped per client and per route by the gate (`clients:` in the configuration).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use tokio::sync::watch;

use crate::backend::events::WakeEventKind;
use crate::routes::Route;

/// Pause between keepalive comments (proxies and browsers drop silent streams).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a stream stays open after a `ready` or `error` event.
pub const LINGER: Duration = Duration::from_secs(5);
/// A subscriber that accepts nothing for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The id after which the client wants events: the `Last-Event-ID` header wins over the
/// `last_event_id` query parameter (the browser's own reconnects send a newer header).
pub fn resume_point(session: &Session) -> u64 {
    let request = session.req_header();
    resume_point_of(&request.headers, &request.uri)
}

/// [`resume_point`] of a request's headers and target (the early path has no session).
pub fn resume_point_of(headers: &http::HeaderMap, uri: &http::Uri) -> u64 {
    let header = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    header
        .or_else(|| {
            uri.query().and_then(|query| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("last_event_id="))
                    .and_then(|value| value.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Where an event stream's frames go and how its client's leaving shows: a Pingora session
/// (the gate), or a bare connection served below Pingora's session (the early hold, for a
/// fraction of the memory). [`serve`] is the same for both.
pub trait EventSink: Send {
    /// Writes whole frames; an error ends the stream.
    fn send(&mut self, frames: Bytes) -> impl Future<Output = Result<()>> + Send;
    /// Completes when the client left (`Left::Gone`) or sent bytes a subscriber never sends
    /// (`Left::Unexpected`: no longer watched; a later write fails if it left).
    fn client_left(&mut self) -> impl Future<Output = Left> + Send;
    /// Ends the stream cleanly.
    fn finish(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// What [`EventSink::client_left`] saw.
pub enum Left {
    /// The client closed or reset its side.
    Gone,
    /// The client sent something.
    Unexpected,
}

/// The gate's event stream, on a Pingora session whose header is already written.
struct SessionSink<'a>(&'a mut Session);

impl EventSink for SessionSink<'_> {
    async fn send(&mut self, frames: Bytes) -> Result<()> {
        self.0.write_response_body(Some(frames), false).await
    }

    async fn client_left(&mut self) -> Left {
        match self.0.as_downstream_mut().read_body_or_idle(true).await {
            Err(_) => Left::Gone,
            Ok(_) => Left::Unexpected,
        }
    }

    async fn finish(&mut self) -> Result<()> {
        self.0.write_response_body(None, true).await
    }
}

/// The `retry:` line every stream starts with.
pub const RETRY_LINE: &[u8] = b"retry: 1000\n\n";

/// Streams `route`'s events on a Pingora session until the client leaves or `shutdown` turns
/// true.
pub async fn stream(
    session: &mut Session,
    route: &Route,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let last_id = resume_point(session);
    let mut header = ResponseHeader::build(200, Some(5))?;
    header.insert_header("content-type", "text/event-stream")?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("x-accel-buffering", "no")?;
    if !session.as_downstream().is_http2() {
        header.insert_header("transfer-encoding", "chunked")?;
    }
    session
        .as_downstream_mut()
        .set_write_timeout(Some(WRITE_TIMEOUT));
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let mut sink = SessionSink(session);
    sink.send(Bytes::from_static(RETRY_LINE)).await?;
    serve(&mut sink, route, last_id, shutdown).await
}

/// The stream after its `retry:` line: history after `last_id`, then live events, keepalives,
/// until the client leaves, `shutdown` turns true or [`LINGER`] after a final event.
pub async fn serve(
    sink: &mut impl EventSink,
    route: &Route,
    mut last_id: u64,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let log = route.watcher.events();
    let mut pending = Vec::new();
    let mut client_watch = true;
    // Set once the stream carried a final event (`ready`, `error`), cleared by any later one.
    let mut ends_at: Option<tokio::time::Instant> = None;
    loop {
        // Listening before reading: an event pushed in between is not missed.
        let pushed = log.pushed();
        tokio::pin!(pushed);
        pushed.as_mut().enable();
        log.since(last_id, &mut pending);
        if let Some(newest) = pending.last() {
            last_id = newest.id;
            ends_at = matches!(newest.kind, WakeEventKind::Ready | WakeEventKind::Error)
                .then(|| tokio::time::Instant::now() + LINGER);
            let details = route.policy.show_details;
            // One event (the live case): its shared frame as it is; several: one write.
            let frames = match pending.as_slice() {
                [event] => event.sse_frame(&route.name, details),
                events => {
                    let mut chunk = Vec::new();
                    for event in events {
                        chunk.extend_from_slice(&event.sse_frame(&route.name, details));
                    }
                    Bytes::from(chunk)
                }
            };
            pending.clear();
            sink.send(frames).await?;
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            () = &mut pushed => {}
            _ = shutdown.changed() => break,
            () = sleep_until(ends_at) => break,
            _ = tokio::time::sleep(KEEPALIVE) => {
                sink.send(Bytes::from_static(b": keepalive\n\n")).await?;
            }
            left = sink.client_left(), if client_watch => match left {
                Left::Gone => return Ok(()), // Nothing more to write.
                Left::Unexpected => client_watch = false, // Rely on writes failing.
            }
        }
    }
    sink.finish().await
}
/// Completes at `deadline`; never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
