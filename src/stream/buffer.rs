//! The datagrams a UDP stream keeps while its backend wakes: bounded in count and in bytes,
//! replayed in arrival order (so in order per client), overflow dropped and counted.

use std::collections::VecDeque;
use std::net::SocketAddr;

/// Kept datagrams with their clients, oldest first.
pub type Kept = VecDeque<(SocketAddr, Box<[u8]>)>;

/// A bounded FIFO of `(client, datagram)`.
pub struct DatagramBuffer {
    queue: Kept,
    bytes: usize,
    max_datagrams: usize,
    max_bytes: usize,
    dropped: u64,
}

impl DatagramBuffer {
    /// An empty buffer keeping at most `max_datagrams` datagrams and `max_bytes` bytes.
    pub fn new(max_datagrams: usize, max_bytes: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            max_datagrams,
            max_bytes,
            dropped: 0,
        }
    }

    /// Keeps `datagram` from `client`, or drops and counts it when either bound would be
    /// exceeded. Returns whether it was kept.
    pub fn push(&mut self, client: SocketAddr, datagram: &[u8]) -> bool {
        if self.queue.len() >= self.max_datagrams || self.bytes + datagram.len() > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        self.bytes += datagram.len();
        self.queue.push_back((client, datagram.into()));
        true
    }

    /// Takes every kept datagram, oldest first, and the count of those dropped since the last
    /// take; the buffer is empty afterwards.
    pub fn take(&mut self) -> (Kept, u64) {
        self.bytes = 0;
        (
            std::mem::take(&mut self.queue),
            std::mem::take(&mut self.dropped),
        )
    }

    /// How many datagrams are kept.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many were dropped since the last take.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn datagrams_come_back_in_arrival_order() {
        let mut buffer = DatagramBuffer::new(10, 1000);
        for (i, port) in [1, 2, 1, 3, 2].into_iter().enumerate() {
            assert!(buffer.push(client(port), &[i as u8]));
        }
        let (kept, dropped) = buffer.take();
        let order: Vec<(u16, u8)> = kept.iter().map(|(c, d)| (c.port(), d[0])).collect();
        assert_eq!(order, [(1, 0), (2, 1), (1, 2), (3, 3), (2, 4)]);
        assert_eq!(dropped, 0);
        assert!(buffer.is_empty());
    }

    #[test]
    fn beyond_either_bound_datagrams_are_dropped_and_counted() {
        let mut by_count = DatagramBuffer::new(2, 1000);
        assert!(by_count.push(client(1), b"a"));
        assert!(by_count.push(client(1), b"b"));
        assert!(!by_count.push(client(1), b"c"));
        assert_eq!((by_count.len(), by_count.dropped()), (2, 1));

        let mut by_bytes = DatagramBuffer::new(100, 10);
        assert!(by_bytes.push(client(1), &[0; 6]));
        assert!(!by_bytes.push(client(1), &[0; 5]), "6 + 5 > 10");
        assert!(
            by_bytes.push(client(1), &[0; 4]),
            "a smaller one still fits"
        );
        let (kept, dropped) = by_bytes.take();
        assert_eq!((kept.len(), dropped), (2, 1));
        // Taken: the bounds are free again and the count starts over.
        assert!(by_bytes.push(client(1), &[0; 10]));
        assert_eq!(by_bytes.dropped(), 0);
    }
}
