//! Copying a connection both ways once the backend is ready, with activity marked per read.
//!
//! `tokio::io::copy_bidirectional` does the half-close right: when one side ends its stream, the
//! other side's write half is shut down (a FIN passed on) and the opposite direction keeps
//! flowing until it ends too. Each successful read marks the backend's activity, which is a
//! load and, at most once per idle-clock tick, a store.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::backend::Watcher;

/// Per direction: large enough for bulk transfers, small enough for thousands of connections.
const BUFFER: usize = 16 * 1024;

/// Copies `client` ↔ `upstream` until both directions ended; returns the bytes sent each way
/// (client to backend, backend to client).
pub(crate) async fn splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    watcher: &Watcher,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut client = Marked {
        inner: client,
        watcher,
    };
    let mut upstream = Marked {
        inner: upstream,
        watcher,
    };
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER).await
}

/// A stream whose reads mark the backend's activity.
struct Marked<'a, S: ?Sized> {
    inner: &'a mut S,
    watcher: &'a Watcher,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Marked<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watcher.mark_activity();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Marked<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
