//! Event streams served below Pingora's session, by the early hold.
//!
//! A loading page follows its route's wake over `{prefix}events`; a thousand open tabs are a
//! thousand long-lived streams. Served through the gate, each is a whole Pingora session (its
//! connection task, the proxy's boxed futures, buffers: ≈ 28 KiB). When the early hold sees a
//! HTTP/1 connection (cleartext, or TLS that chose HTTP/1.1) whose first request is `GET {prefix}events` on a route's host,
//! it serves the stream itself on the bare connection instead: a small task with the stream, its
//! two cap places and [`sse::serve`](crate::http::sse::serve), the same loop the gate runs. The
//! answer is the same (status, headers, frames), delimited by the connection's close
//! (`Connection: close`: a stream is the connection's last answer). A subscriber over a cap
//! goes to Pingora, and the gate answers 429 or 503 as for any other.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::clients::EventStreamPlaces;
use crate::http::sse::{self, EventSink, Left, RETRY_LINE, WRITE_TIMEOUT};
use crate::routes::Route;

/// The answer's head: what the gate's stream sends, delimited by the close.
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-store\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n";

/// What a connection's first request subscribed to: `route`'s events after `last_id`.
pub(crate) struct Subscription {
    /// The route whose events it follows (kept even if a newer table drops it).
    pub route: Arc<Route>,
    /// `Last-Event-ID` (or `?last_event_id=`).
    pub last_id: u64,
}

/// Serves the stream on `stream` until the client leaves, the gateway shuts down or the stream
/// ends. `stream` is the bare connection, the request's bytes read and not put back (it is
/// answered here): a cleartext socket ([`bare_socket`]) or Pingora's TLS stream.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    subscription: Subscription,
    places: EventStreamPlaces,
    shutdown: watch::Receiver<bool>,
) {
    let _places = places;
    let Subscription { route, last_id } = subscription;
    let mut sink = BareSink(stream);
    let mut first = Vec::with_capacity(RESPONSE_HEAD.len() + RETRY_LINE.len());
    first.extend_from_slice(RESPONSE_HEAD);
    first.extend_from_slice(RETRY_LINE);
    if sink.send(Bytes::from(first)).await.is_err() {
        return;
    }
    if let Err(error) = sse::serve(&mut sink, &route, last_id, shutdown).await {
        tracing::debug!(route = %route.name, %error, "event stream ended");
    }
}

/// The socket of a cleartext connection without Pingora's L4 stream around it, for a
/// connection answered here for a long time (an event stream): the L4 stream's write buffer
/// (1,460 B, allocated at accept), its digests and its box are given back, ≈ 2 kB per
/// subscriber. Nothing is lost: the listener reads unbuffered, the head was consumed, nothing
/// was written yet. The descriptor is duplicated, then the L4 stream dropped (deregistered and
/// its descriptor closed), so a subscriber still costs one descriptor.
pub(crate) fn bare_socket(stream: Box<L4Stream>) -> io::Result<TcpStream> {
    // SAFETY: `dup` of a descriptor the L4 stream owns and keeps open until the call returns.
    let duplicate = unsafe { libc::dup(stream.as_raw_fd()) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` just returned this descriptor, owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(duplicate) };
    drop(stream);
    let socket = std::net::TcpStream::from(owned);
    socket.set_nonblocking(true)?;
    TcpStream::from_std(socket)
}

/// An event stream's frames written straight to the connection.
struct BareSink<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> EventSink for BareSink<S> {
    async fn send(&mut self, frames: Bytes) -> Result<()> {
        let write = async {
            self.0.write_all(&frames).await?;
            self.0.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::because(
                ErrorType::WriteError,
                "writing an event stream",
                error,
            )),
            Err(_) => Error::e_explain(
                ErrorType::WriteTimedout,
                "the subscriber accepted nothing for the write timeout",
            ),
        }
    }

    async fn client_left(&mut self) -> Left {
        let mut byte = [0u8; 1];
        match self.0.read(&mut byte).await {
            Ok(0) | Err(_) => Left::Gone,
            Ok(_) => Left::Unexpected,
        }
    }

    async fn finish(&mut self) -> Result<()> {
        // The close delimits the answer; a client already gone changes nothing.
        let _ = self.0.shutdown().await;
        Ok(())
    }
}
