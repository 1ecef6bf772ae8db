//! UDP client sessions: client address → its session, each with a "last seen" that both the
//! receiving loop and the session's reply task update, and an idle expiry swept periodically.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When a session last carried a datagram either way (milliseconds since its table's start).
pub struct LastSeen {
    base: Instant,
    millis: AtomicU64,
}

impl LastSeen {
    /// Records traffic now.
    pub fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.millis.store(now, Ordering::Relaxed);
    }

    fn at(&self) -> Instant {
        self.base + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// The sessions of one UDP stream, each `T` dropped when it expires.
pub struct SessionTable<T> {
    base: Instant,
    idle: Duration,
    sessions: HashMap<SocketAddr, (T, Arc<LastSeen>)>,
}

impl<T> SessionTable<T> {
    /// An empty table whose sessions expire after `idle` without traffic.
    pub fn new(idle: Duration) -> Self {
        Self {
            base: Instant::now(),
            idle,
            sessions: HashMap::new(),
        }
    }

    /// `client`'s session, marked as seen now.
    pub fn get(&self, client: &SocketAddr) -> Option<&T> {
        let (session, seen) = self.sessions.get(client)?;
        seen.touch();
        Some(session)
    }

    /// A fresh "last seen" (now) for a session about to be opened, for its reply task.
    pub fn last_seen(&self) -> Arc<LastSeen> {
        let seen = Arc::new(LastSeen {
            base: self.base,
            millis: AtomicU64::new(0),
        });
        seen.touch();
        seen
    }

    /// Adds `client`'s session with its "last seen" (from [`last_seen`](Self::last_seen)).
    pub fn insert(&mut self, client: SocketAddr, session: T, seen: Arc<LastSeen>) {
        self.sessions.insert(client, (session, seen));
    }

    /// Drops the sessions idle for longer than the table's idle time at `now`; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<SocketAddr> {
        let idle = self.idle;
        let mut expired = Vec::new();
        self.sessions.retain(|client, (_, seen)| {
            let keep = now.saturating_duration_since(seen.at()) <= idle;
            if !keep {
                expired.push(*client);
            }
            keep
        });
        expired
    }

    /// Drops every session.
    pub fn clear(&mut self) {
        self.sessions.clear();
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// How often to sweep: a quarter of the idle time, between 100 ms and 5 s.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn sessions_expire_after_their_idle_time_unless_seen() {
        let mut table = SessionTable::new(Duration::from_secs(60));
        let start = Instant::now();
        let quiet = table.last_seen();
        table.insert(client(1), "quiet", quiet);
        let busy = table.last_seen();
        table.insert(client(2), "busy", Arc::clone(&busy));
        assert!(table.expire(start + Duration::from_secs(30)).is_empty());
        // The reply task saw traffic for the busy one, later than the quiet one's.
        std::thread::sleep(Duration::from_millis(20));
        busy.touch();
        let later = start + Duration::from_secs(60) + Duration::from_millis(10);
        assert_eq!(table.expire(later), vec![client(1)]);
        assert_eq!(table.get(&client(2)), Some(&"busy"));
        assert!(table.get(&client(1)).is_none());
        assert_eq!(table.len(), 1);
    }
}
