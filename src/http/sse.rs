//! `{prefix}events`: a route's wake events as Server-Sent Events.
//!
//! History first, then live, from the backend's [`EventLog`](crate::backend::events::EventLog); `retry:`
//! once, `id:` on every event (resume with `Last-Event-ID` or `?last_event_id=`), a `: keepalive`
//! comment every 15 s. The stream ends when the client leaves (noticed while idle, not only on the
//! next write), when the gateway shuts down, or [`LINGER`] after it carried a `ready` or an
//! `error` event (the page has what it waited for; it reconnects if it must). A client that
//! stops reading only ever blocks its own task, and only until the write timeout. Subscribers
//! are capped per client and per route by the gate (`clients:` in the configuration).

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
/// The reconnection delay suggested to browsers.
const RETRY_MILLIS: u32 = 1000;
/// A subscriber that accepts nothing for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The id after which the client wants events: the `Last-Event-ID` header wins over the
/// `last_event_id` query parameter (the browser's own reconnects send a newer header).
pub fn resume_point(session: &Session) -> u64 {
    let request = session.req_header();
    let header = request
        .headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    header
        .or_else(|| {
            request.uri.query().and_then(|query| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("last_event_id="))
                    .and_then(|value| value.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Streams `route`'s events until the client leaves or `shutdown` turns true.
pub async fn stream(
    session: &mut Session,
    route: &Route,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut last_id = resume_point(session);
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
    session
        .write_response_body(
            Some(Bytes::from(format!("retry: {RETRY_MILLIS}\n\n"))),
            false,
        )
        .await?;

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
        if !pending.is_empty() {
            let mut chunk = String::new();
            let last = pending.last().map(|event| event.kind);
            ends_at = matches!(last, Some(WakeEventKind::Ready | WakeEventKind::Error))
                .then(|| tokio::time::Instant::now() + LINGER);
            for event in pending.drain(..) {
                chunk.push_str(&format!(
                    "id: {}\ndata: {}\n\n",
                    event.id,
                    event.to_json(&route.name, route.policy.show_details)
                ));
                last_id = event.id;
            }
            session
                .write_response_body(Some(Bytes::from(chunk)), false)
                .await?;
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            () = &mut pushed => {}
            _ = shutdown.changed() => break,
            () = sleep_until(ends_at) => break,
            _ = tokio::time::sleep(KEEPALIVE) => {
                session
                    .write_response_body(Some(Bytes::from_static(b": keepalive\n\n")), false)
                    .await?;
            }
            left = session.as_downstream_mut().read_body_or_idle(true), if client_watch => {
                match left {
                    Err(_) => return Ok(()), // The client left: nothing more to write.
                    Ok(_) => client_watch = false, // Unexpected bytes; rely on writes failing.
                }
            }
        }
    }
    session.write_response_body(None, true).await
}

/// Completes at `deadline`; never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
