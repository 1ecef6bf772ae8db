//! Wake events: what a backend's wake went through, kept for late subscribers and pushed live.
//!
//! Each [`Watcher`](crate::backend::Watcher) owns one [`EventLog`]: a small ring of the current
//! wake's events plus a [`Notify`] told of every new one. A subscriber remembers the last id it
//! sent and, whenever it is told, copies every newer event out of the ring. (No `watch` channel:
//! its shared state would cost every napping backend some 350 bytes for nothing.)
//! One mechanism therefore serves the history, the live feed and `Last-Event-ID` resumption, and:
//!
//! - a slow subscriber never blocks the watcher or anybody else (it only ever holds the ring's
//!   mutex long enough to clone a few `Arc`s);
//! - a subscriber that fell behind skips intermediate events it lost to the ring's bound, but
//!   never the outcome: `ready` or `error` is the newest event, and the newest is always kept.
//!
//! Ids increase for the whole life of the process (they are not reset when the history is
//! cleared), so an id from an earlier wake still means "everything after that".

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// How many events of one wake are kept. A wake has about six; the rest is headroom.
const HISTORY_CAPACITY: usize = 64;

/// What happened, as the `type` field of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeEventKind {
    /// A wake began.
    Starting,
    /// A dependency is being woken first.
    WakingDep,
    /// A dependency is up.
    DepReady,
    /// The provider reports the backend started (or unpaused).
    ContainerWoke,
    /// Probing the backend until it answers.
    WaitingReady,
    /// The backend answers: requests flow.
    Ready,
    /// The wake failed; `error` says why.
    Error,
    /// The backend was put to sleep (or stopped outside idlewatcher).
    Napping,
}

/// One event. The route name is added when it is written out, so one backend's log serves
/// every route that fronts it.
#[derive(Debug, Clone)]
pub struct WakeEvent {
    /// Position in the log; increasing for the life of the process.
    pub id: u64,
    /// What happened.
    pub kind: WakeEventKind,
    /// A sentence for humans.
    pub message: String,
    /// When it happened.
    pub timestamp: SystemTime,
    /// The failure reason, for `error` events.
    pub error: Option<String>,
    /// The event's SSE frame, encoded once for every subscriber of the route that asked first
    /// (a backend usually has one route): 10,000 open loading pages share one encoding.
    frame: OnceLock<EncodedFrame>,
}

/// An SSE frame as encoded for one route and one privacy setting.
#[derive(Debug, Clone)]
struct EncodedFrame {
    route: Box<str>,
    details: bool,
    bytes: Bytes,
}

#[derive(Serialize)]
struct WireEvent<'a> {
    #[serde(rename = "type")]
    kind: WakeEventKind,
    route: &'a str,
    message: &'a str,
    timestamp: String,
    error: Option<&'a str>,
}

impl WakeEventKind {
    /// What a visitor is told of this phase when the route does not show details: no backend
    /// name, address or engine error text.
    pub fn public_message(self) -> &'static str {
        match self {
            Self::Starting => "Starting",
            Self::WakingDep => "Starting a service it depends on",
            Self::DepReady => "A service it depends on is up",
            Self::ContainerWoke => "Started",
            Self::WaitingReady => "Waiting for the service to answer",
            Self::Ready => "Ready",
            Self::Error => "The service could not be started",
            Self::Napping => "Asleep",
        }
    }
}

impl WakeEvent {
    /// The event as the JSON object the README documents (Internal endpoints), for the `data:`
    /// line of the SSE stream. Without `details`, the message is the phase's generic one and an
    /// error only says that the wake failed (the logs and the admin API keep the rest). serde_json
    /// escapes every string, so hostile names and error texts stay text.
    pub fn to_json(&self, route: &str, details: bool) -> String {
        let (message, error) = if details {
            (self.message.as_str(), self.error.as_deref())
        } else {
            let hidden = self
                .error
                .as_ref()
                .map(|_| WakeEventKind::Error.public_message());
            (self.kind.public_message(), hidden)
        };
        let wire = WireEvent {
            kind: self.kind,
            route,
            message,
            timestamp: humantime::format_rfc3339_millis(self.timestamp).to_string(),
            error,
        };
        // Serializing a struct of strings cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The event as a Server-Sent Events frame (`id:` and `data:` lines) for `route`: encoded
    /// once and shared (a cheap clone) for the route that asked first, encoded anew for another.
    pub fn sse_frame(&self, route: &str, details: bool) -> Bytes {
        let encode = || {
            Bytes::from(format!(
                "id: {}\ndata: {}\n\n",
                self.id,
                self.to_json(route, details)
            ))
        };
        let cached = self.frame.get_or_init(|| EncodedFrame {
            route: route.into(),
            details,
            bytes: encode(),
        });
        if &*cached.route == route && cached.details == details {
            cached.bytes.clone()
        } else {
            encode()
        }
    }
}

struct Ring {
    events: VecDeque<Arc<WakeEvent>>,
    next_id: u64,
}

/// A backend's wake events: bounded history plus live notification.
pub struct EventLog {
    ring: Mutex<Ring>,
    pushed: Notify,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    /// An empty log; the first event gets id 1 (0 means "nothing seen yet").
    pub fn new() -> Self {
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                next_id: 1,
            }),
            pushed: Notify::new(),
        }
    }

    /// Appends an event and wakes every subscriber. Returns its id.
    pub fn push(&self, kind: WakeEventKind, message: String, error: Option<String>) -> u64 {
        let id = {
            let mut ring = self.ring.lock();
            let id = ring.next_id;
            ring.next_id += 1;
            if ring.events.len() == HISTORY_CAPACITY {
                ring.events.pop_front();
            }
            ring.events.push_back(Arc::new(WakeEvent {
                id,
                kind,
                message,
                timestamp: SystemTime::now(),
                error,
                frame: OnceLock::new(),
            }));
            id
        };
        self.pushed.notify_waiters();
        id
    }

    /// Forgets the history (a new wake starts, or the backend naps). Ids keep increasing.
    pub fn clear(&self) {
        self.ring.lock().events.clear();
    }

    /// Appends to `out` every kept event with an id greater than `after`, oldest first.
    pub fn since(&self, after: u64, out: &mut Vec<Arc<WakeEvent>>) {
        let ring = self.ring.lock();
        // Ids in the ring are consecutive, so the first newer one is found by arithmetic.
        let skip = match ring.events.front() {
            Some(first) if after >= first.id => (after - first.id + 1) as usize,
            _ => 0,
        };
        out.extend(ring.events.iter().skip(skip).cloned());
    }

    /// Completes when an event is pushed after it was enabled: pin it and call
    /// [`Notified::enable`] *before* reading with [`since`](Self::since), so an event pushed in
    /// between is not missed.
    pub fn pushed(&self) -> Notified<'_> {
        self.pushed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(log: &EventLog, after: u64) -> Vec<u64> {
        let mut out = Vec::new();
        log.since(after, &mut out);
        out.iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_frame_is_encoded_once_for_its_route_and_anew_for_another() {
        let log = EventLog::new();
        log.push(
            WakeEventKind::Error,
            "db failed".into(),
            Some("boom".into()),
        );
        let mut events = Vec::new();
        log.since(0, &mut events);
        let event = &events[0];
        let first = event.sse_frame("app", false);
        let again = event.sse_frame("app", false);
        assert_eq!(first.as_ptr(), again.as_ptr(), "shared, not encoded again");
        let text = std::str::from_utf8(&first).unwrap();
        assert!(
            text.starts_with(&format!("id: {}\ndata: {{", event.id)),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"), "{text}");
        assert!(!text.contains("boom"), "details hidden: {text}");
        let detailed = event.sse_frame("app", true);
        assert!(std::str::from_utf8(&detailed).unwrap().contains("boom"));
        let other = event.sse_frame("other", false);
        assert!(std::str::from_utf8(&other)
            .unwrap()
            .contains("\"route\":\"other\""));
    }

    #[test]
    fn since_returns_newer_events_in_order() {
        let log = EventLog::new();
        for _ in 0..5 {
            log.push(WakeEventKind::Starting, "x".into(), None);
        }
        assert_eq!(ids(&log, 0), vec![1, 2, 3, 4, 5]);
        assert_eq!(ids(&log, 3), vec![4, 5]);
        assert_eq!(ids(&log, 5), Vec::<u64>::new());
        assert_eq!(ids(&log, 99), Vec::<u64>::new());
    }

    #[test]
    fn clear_keeps_ids_increasing() {
        let log = EventLog::new();
        log.push(WakeEventKind::Starting, "a".into(), None);
        log.push(WakeEventKind::Ready, "b".into(), None);
        log.clear();
        assert!(ids(&log, 0).is_empty());
        log.push(WakeEventKind::Napping, "c".into(), None);
        assert_eq!(ids(&log, 0), vec![3]);
        // A subscriber that saw id 1 of the previous wake gets only the newer event.
        assert_eq!(ids(&log, 1), vec![3]);
    }

    #[test]
    fn bounded_ring_keeps_the_outcome() {
        let log = EventLog::new();
        for _ in 0..(HISTORY_CAPACITY * 3) {
            log.push(WakeEventKind::WaitingReady, "probe".into(), None);
        }
        log.push(WakeEventKind::Ready, "ready".into(), None);
        let mut out = Vec::new();
        log.since(0, &mut out);
        assert_eq!(out.len(), HISTORY_CAPACITY);
        assert_eq!(out.last().map(|e| e.kind), Some(WakeEventKind::Ready));
    }

    #[test]
    fn json_escapes_hostile_text() {
        let log = EventLog::new();
        log.push(
            WakeEventKind::Error,
            "failed".into(),
            Some("</title><script>alert(\"x\")</script>".into()),
        );
        let mut out = Vec::new();
        log.since(0, &mut out);
        let json = out[0].to_json("<b>route</b>", true);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["route"], "<b>route</b>");
        assert_eq!(value["error"], "</title><script>alert(\"x\")</script>");
        assert!(value["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn without_details_an_event_names_no_backend_and_no_error_text() {
        let log = EventLog::new();
        log.push(
            WakeEventKind::WaitingReady,
            "Waiting for docker container \"secret-app\" to answer on 172.17.0.9:80".into(),
            None,
        );
        log.push(
            WakeEventKind::Error,
            "Could not wake docker container \"secret-app\"".into(),
            Some("connection refused by 172.17.0.9:80".into()),
        );
        let mut out = Vec::new();
        log.since(0, &mut out);
        for event in &out {
            let json = event.to_json("app", false);
            assert!(
                !json.contains("secret-app") && !json.contains("172.17"),
                "{json}"
            );
            assert!(event.to_json("app", true).contains("secret-app"));
        }
        let error: serde_json::Value = serde_json::from_str(&out[1].to_json("app", false)).unwrap();
        assert_eq!(error["message"], "The service could not be started");
        assert_eq!(error["error"], "The service could not be started");
    }
}
