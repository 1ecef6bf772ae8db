//! Noticing that a held client left, whatever its connection carries, without reading it.
//!
//! A held request's bytes must stay unread (they go upstream intact once the backend is
//! ready), so a read cannot tell a body byte from the client's end. Instead the socket is
//! watched for the peer's FIN or RST (`EPOLLRDHUP`/`EPOLLHUP`) through a duplicate descriptor
//! registered with the runtime: data arriving only wakes the watch, which looks again.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Completes when the peer of the socket `fd` closed or reset its side. `Err` if the socket
/// cannot be watched (then nothing is known; callers keep waiting without a watch).
///
/// `fd` must be an open socket for the duration of this call (it is duplicated at once; the
/// duplicate is owned, watched and closed here).
pub async fn peer_closed(fd: RawFd) -> io::Result<()> {
    if fd < 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: the caller keeps `fd` open while this runs; it is only borrowed to be
    // duplicated, right here.
    let duplicate = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    // SAFETY: `duplicate` is an `OwnedFd`, moved into the `AsyncFd`: it stays open and names
    // the same file description until the `AsyncFd` drops it.
    let watched = unsafe { AsyncFd::register_with_interest(duplicate, Interest::READABLE) }
        .map_err(io::Error::from)?;
    loop {
        let mut guard = watched.readable().await?;
        let ready = guard.ready();
        if ready.is_read_closed() || ready.is_error() {
            return Ok(());
        }
        // Only data arrived: it stays in the socket for the backend; wait for the next event.
        guard.clear_ready();
    }
}

/// [`peer_closed`] as a "client left" future for [`crate::wait::hold_until_admitted`]: pending
/// forever when the socket cannot be watched.
pub async fn client_left(fd: RawFd) {
    if peer_closed(fd).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_peer_that_sent_data_then_closed_is_noticed_and_its_data_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        let fd = server.as_raw_fd();
        let watch = tokio::spawn(async move { peer_closed(fd).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!watch.is_finished(), "data alone is not a departure");
        client.write_all(b"more").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!watch.is_finished(), "more data is not a departure either");
        drop(client);
        assert!(tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .unwrap()
            .unwrap());
        let mut kept = [0u8; 64];
        server.readable().await.unwrap();
        let n = server.try_read(&mut kept).unwrap();
        assert_eq!(
            &kept[..n],
            b"POST / HTTP/1.1\r\nmore",
            "nothing was consumed"
        );
    }
}
