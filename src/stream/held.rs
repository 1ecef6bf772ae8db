//! Watching a held TCP connection for its client leaving, without reading a byte of it.
//!
//! While the backend wakes, a client's first bytes must stay in the kernel so that they reach
//! the backend intact. So the connection is never read here: it is watched
//! ([`departure::Watch`], no descriptor of its own), and on each event one byte is *peeked*
//! (`MSG_PEEK`). Nothing waiting and the read side closed: the client left. Bytes waiting and the
//! read side closed: the client sent its request and half-closed; it still wants the answer, so
//! it is held on.

use std::future::pending;
use std::io;
use std::os::fd::RawFd;

use crate::wait::departure::Watch;

/// Completes when the client of the TCP connection `fd` is gone (end of stream with nothing
/// sent, or a reset); stays pending otherwise. `fd` must stay open while this runs (the
/// connection it belongs to outlives the hold).
pub(crate) async fn client_left(fd: RawFd) {
    let Ok(watch) = Watch::new(fd) else {
        return pending().await;
    };
    loop {
        let read_closed = watch.next().await.read_closed();
        loop {
            match peek(fd) {
                Ok(0) => return,
                Ok(_) if read_closed => return pending().await,
                Ok(_) => break,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}

/// Peeks at most one byte without waiting: how many are waiting (0 = end of stream).
fn peek(fd: RawFd) -> io::Result<usize> {
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is a valid buffer of the length given; MSG_PEEK leaves the data queued.
    let read = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            byte.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(read).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::departure::test_sockets::pair;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_sent_stay_unread_and_a_close_is_seen() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"first bytes").await.unwrap();
        let watch = client_left(server.as_raw_fd());
        tokio::pin!(watch);
        // Data waiting and the client still there: no verdict.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut watch)
                .await
                .is_err(),
            "a client that sent bytes has not left"
        );
        // The bytes are all still there for whoever reads after the hold.
        let mut read = [0u8; 11];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"first bytes");
        // Nothing waiting any more, then the client closes: gone.
        drop(client);
        watch.await;
    }

    #[tokio::test]
    async fn a_client_that_sends_then_half_closes_is_still_held() {
        let (mut client, server) = pair().await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let watch = client_left(server.as_raw_fd());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), watch)
                .await
                .is_err(),
            "it waits for its answer"
        );
    }

    #[tokio::test]
    async fn a_silent_client_that_closes_has_left() {
        let (client, server) = pair().await;
        let watch = tokio::spawn(async move {
            client_left(server.as_raw_fd()).await;
            server
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(client);
        watch.await.unwrap();
    }
}
