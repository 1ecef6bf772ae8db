//! Noticing that a held client left, without reading its bytes and without a descriptor of its
//! own.
//!
//! A held request's bytes must stay unread (they go upstream intact once the backend is ready),
//! so a read cannot tell a body byte from the client's end. The socket is watched for the peer's
//! FIN or RST instead (`EPOLLRDHUP`/`EPOLLHUP`). The runtime's poller already has the socket (its
//! stream is registered there) and one poller takes a descriptor once, so a watch through the
//! runtime needs a duplicate descriptor: two per held connection, and a herd of 10,000 held
//! requests then meets a 20,000-descriptor limit. So every watched socket goes into one poller of
//! the watch's own (an epoll set: the same socket may be in several), shared by the whole process
//! and waited on by one thread: a watch costs a registration and a small slot, no descriptor.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use parking_lot::Mutex;

/// What happened on a watched socket since the watch last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen(u8);

const EVENT: u8 = 1;
const READ_CLOSED: u8 = 2;
const ERROR: u8 = 4;

impl Seen {
    /// The peer closed its sending side (FIN) or the connection is gone (HUP, RST).
    pub fn read_closed(self) -> bool {
        self.0 & READ_CLOSED != 0
    }

    /// The socket reported an error (a reset, most often).
    pub fn error(self) -> bool {
        self.0 & ERROR != 0
    }
}

/// One watched socket's mailbox: the poller's thread sets what it saw and wakes the task.
#[derive(Default)]
struct Slot {
    seen: AtomicU8,
    waker: AtomicWaker,
}

type Slots = Mutex<HashMap<usize, Arc<Slot>>>;

/// The process's poller of watched sockets, and the slots its thread reports to.
struct Poller {
    registry: mio::Registry,
    slots: Arc<Slots>,
    /// Tokens are never reused: an event for a watch already dropped finds no slot.
    next_token: AtomicUsize,
}

/// The poller, started on first use. `None` if it could not start (logged once): watches then
/// fail and callers wait without one, as they would on a socket that cannot be watched.
fn poller() -> Option<&'static Poller> {
    static POLLER: OnceLock<Option<Poller>> = OnceLock::new();
    POLLER
        .get_or_init(|| match Poller::start() {
            Ok(poller) => Some(poller),
            Err(error) => {
                tracing::error!(%error, "cannot watch held clients for leaving: held requests of clients that left stay held until their wake ends");
                None
            }
        })
        .as_ref()
}

impl Poller {
    fn start() -> io::Result<Poller> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let slots = Arc::new(Slots::default());
        let reported = Arc::clone(&slots);
        std::thread::Builder::new()
            .name("idlewatcher-departures".into())
            .spawn(move || report(poll, &reported))?;
        Ok(Poller {
            registry,
            slots,
            next_token: AtomicUsize::new(0),
        })
    }
}

/// The poller's thread: waits for events and hands each to its watch.
fn report(mut poll: mio::Poll, slots: &Slots) {
    let mut events = Events::with_capacity(256);
    loop {
        if let Err(error) = poll.poll(&mut events, None) {
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(%error, "the watch of held clients stopped: clients that leave are no longer noticed");
            return;
        }
        let slots = slots.lock();
        for event in events.iter() {
            let Some(slot) = slots.get(&event.token().0) else {
                continue; // Its watch was dropped meanwhile.
            };
            let mut seen = EVENT;
            if event.is_read_closed() {
                seen |= READ_CLOSED;
            }
            if event.is_error() {
                seen |= ERROR;
            }
            slot.seen.fetch_or(seen, Ordering::Release);
            slot.waker.wake();
        }
    }
}

/// A socket being watched for its peer leaving. Events are edges: each change (data arriving,
/// the peer's FIN, a reset) is reported once; a socket already closed by its peer is reported at
/// once.
///
/// The socket must stay open while its `Watch` lives (dropping the watch takes the socket out
/// of the poller; a descriptor number closed and reused meanwhile would be another socket).
pub struct Watch {
    fd: RawFd,
    token: usize,
    slot: Arc<Slot>,
}

impl Watch {
    /// Starts watching the socket `fd`. `Err` if it cannot be watched.
    pub fn new(fd: RawFd) -> io::Result<Watch> {
        if fd < 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let poller = poller().ok_or_else(|| io::Error::other("no watch of held clients"))?;
        let token = poller.next_token.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        // The slot first: an event that comes as soon as the socket is registered finds it.
        poller.slots.lock().insert(token, Arc::clone(&slot));
        let registered =
            poller
                .registry
                .register(&mut SourceFd(&fd), Token(token), Interest::READABLE);
        if let Err(error) = registered {
            poller.slots.lock().remove(&token);
            return Err(error);
        }
        Ok(Watch { fd, token, slot })
    }

    /// Waits for the socket's next event(s) since the last call, and says what they were.
    pub async fn next(&self) -> Seen {
        poll_fn(|cx| {
            self.slot.waker.register(cx.waker());
            match self.slot.seen.swap(0, Ordering::Acquire) {
                0 => Poll::Pending,
                seen => Poll::Ready(Seen(seen)),
            }
        })
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(poller) = poller() {
            // Fails only if the socket is already closed, which took it out of the poller too.
            let _ = poller.registry.deregister(&mut SourceFd(&self.fd));
            poller.slots.lock().remove(&self.token);
        }
    }
}

/// Completes when the peer of the socket `fd` closed or reset its side, whatever data it sent
/// before (the data stays in the socket). `Err` if the socket cannot be watched (then nothing is
/// known; callers keep waiting without a watch). `fd` must stay open while this runs.
pub async fn peer_closed(fd: RawFd) -> io::Result<()> {
    let watch = Watch::new(fd)?;
    loop {
        let seen = watch.next().await;
        if seen.read_closed() || seen.error() {
            return Ok(());
        }
        // Only data arrived: it stays in the socket for the backend; wait for the next event.
    }
}

/// [`peer_closed`] as a "client left" future for [`crate::wait::hold_until_admitted`]: pending
/// forever when the socket cannot be watched.
pub async fn client_left(fd: RawFd) {
    if peer_closed(fd).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Loopback sockets for the tests of whatever watches a client (here and the stream fronts).
#[cfg(test)]
pub(crate) mod test_sockets {
    use tokio::net::{TcpListener, TcpStream};

    /// A connected (client, server) pair on loopback.
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }
}

#[cfg(test)]
mod tests {
    use super::test_sockets::pair;
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_peer_that_sent_data_then_closed_is_noticed_and_its_data_kept() {
        let (mut client, server) = pair().await;
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

    #[tokio::test]
    async fn a_peer_gone_before_the_watch_began_is_seen_at_once() {
        let (client, server) = pair().await;
        drop(client);
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::time::timeout(Duration::from_secs(5), peer_closed(server.as_raw_fd()))
            .await
            .expect("seen without a further event")
            .unwrap();
    }

    #[tokio::test]
    async fn a_dropped_watch_gives_its_socket_back() {
        let (_client, server) = pair().await;
        let first = Watch::new(server.as_raw_fd()).unwrap();
        // One poller takes a socket once: a second watch of it fails while the first lives.
        assert!(Watch::new(server.as_raw_fd()).is_err());
        drop(first);
        let again = Watch::new(server.as_raw_fd()).expect("deregistered by the drop");
        drop(again);
    }
}
