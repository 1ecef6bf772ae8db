//! The Docker engine as the tests reach it: the `docker` CLI, the engine's event stream
//! ([`EventCounter`]) and a severable TCP path to the engine ([`EngineProxy`]).
//!
//! Everything goes through the `docker` CLI (it honours `DOCKER_HOST` like the gateway does), on
//! `tokio::process`: the helpers are `async` and never block the test's runtime. Failures panic
//! with the CLI's own message: these are test fixtures, a failed fixture is a failed test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// The docker CLI
// ---------------------------------------------------------------------------------------------

/// The result of one docker CLI call: stdout (trimmed) on success, stderr on failure.
pub type CliResult = Result<String, String>;

/// Turns the output of `docker ARGS…` into a [`CliResult`].
pub fn cli_output(args: &[&str], output: std::io::Result<std::process::Output>) -> CliResult {
    let output = output.map_err(|e| {
        format!(
            "cannot run `docker {}`: {e} (is the docker CLI installed?)",
            args.join(" ")
        )
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `docker ARGS…`; stdout or the error.
pub async fn try_docker(args: &[&str]) -> CliResult {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await;
    cli_output(args, output)
}

/// Runs `docker ARGS…`; panics on failure. Returns stdout, trimmed.
pub async fn docker(args: &[&str]) -> String {
    try_docker(args).await.unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// Engine events
// ---------------------------------------------------------------------------------------------

/// One engine event about the counted container.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    /// `create`, `start`, `kill`, `die`, `stop`, `pause`, `unpause`, `destroy`, `health_status: healthy`…
    pub action: String,
    /// The container's id.
    pub id: String,
    /// The engine's timestamp, nanoseconds since the epoch.
    pub time_nano: i64,
    /// `Actor.Attributes` (`name`, `image`, `exitCode`, `signal`…).
    pub attributes: HashMap<String, String>,
}

#[derive(Default)]
struct Recorded {
    events: Mutex<Vec<EngineEvent>>,
    notify: tokio::sync::Notify,
}

/// Counts the engine's events for one container *name* (so it follows the container through
/// removal and recreation), from the moment it is created: create it before the test acts.
///
/// Runs `docker events --since NOW` in the background (its reader is a plain thread, so events
/// are counted whatever the test's runtime is doing): events the engine records after `new`
/// returns are counted even if the subscription reaches the engine a little later.
pub struct EventCounter {
    /// The container name counted.
    pub name: String,
    recorded: Arc<Recorded>,
    child: Child,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EventCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCounter")
            .field("name", &self.name)
            .field("actions", &self.actions())
            .finish()
    }
}

impl EventCounter {
    /// Starts counting the events of the container named `name`.
    pub fn new(name: &str) -> Self {
        Self::of("container", name)
    }

    /// Starts counting the events of the object of type `kind` (`container`, `service`) named
    /// `name`.
    pub fn of(kind: &str, name: &str) -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
        let mut child = Command::new("docker")
            .args([
                "events",
                "--since",
                &since,
                "--filter",
                &format!("type={kind}"),
                "--filter",
                &format!("{kind}={name}"),
                "--format",
                "{{json .}}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Inherited: silent unless `docker events` itself fails, which the test should show.
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `docker events`: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let recorded = Arc::new(Recorded::default());
        let sink = recorded.clone();
        let wanted = name.to_string();
        let reader = std::thread::Builder::new()
            .name(format!("events-{name}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Some(event) = parse_event(&line, &wanted) else {
                        continue;
                    };
                    sink.events.lock().expect("events lock").push(event);
                    sink.notify.notify_waiters();
                }
            })
            .expect("spawn the event reader");
        Self {
            name: name.to_string(),
            recorded,
            child,
            reader: Some(reader),
        }
    }

    /// How many `action` events arrived so far (`"start"`, `"die"`, `"pause"`…).
    pub fn count(&self, action: &str) -> usize {
        self.events().iter().filter(|e| e.action == action).count()
    }

    /// Every action so far, in order.
    pub fn actions(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.action).collect()
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<EngineEvent> {
        self.recorded.events.lock().expect("events lock").clone()
    }

    /// Waits until at least one `action` event arrived; `false` on timeout.
    pub async fn wait_for(&self, action: &str, timeout: Duration) -> bool {
        self.wait_for_count(action, 1, timeout).await
    }

    /// Waits until at least `n` `action` events arrived; `false` on timeout.
    pub async fn wait_for_count(&self, action: &str, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.recorded.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count(action) >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count(action) >= n;
            }
        }
    }
}

impl Drop for EventCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn parse_event(line: &str, wanted: &str) -> Option<EngineEvent> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let actor = v.get("Actor")?;
    let attributes: HashMap<String, String> = actor
        .get("Attributes")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    // The engine's `container=` filter also matches name prefixes: keep exact matches only.
    if attributes.get("name").map(String::as_str) != Some(wanted) {
        return None;
    }
    Some(EngineEvent {
        action: v.get("Action")?.as_str()?.to_string(),
        id: actor.get("ID")?.as_str()?.to_string(),
        time_nano: v.get("timeNano").and_then(|t| t.as_i64()).unwrap_or(0),
        attributes,
    })
}

// ---------------------------------------------------------------------------------------------
// A severable path to the engine
// ---------------------------------------------------------------------------------------------

/// Where the engine listens, as the CLI would reach it.
pub enum EngineAddr {
    /// A unix socket.
    Unix(std::path::PathBuf),
    /// `host:port`.
    Tcp(String),
}

/// Where the engine listens: `DOCKER_HOST`, else the default socket.
pub fn engine_addr() -> EngineAddr {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("tcp://") || h.starts_with("http://") => EngineAddr::Tcp(
            h.trim_start_matches("tcp://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
        ),
        Ok(h) if h.starts_with("unix://") => {
            EngineAddr::Unix(h.trim_start_matches("unix://").into())
        }
        _ => EngineAddr::Unix("/var/run/docker.sock".into()),
    }
}

struct ProxyState {
    up: AtomicBool,
    generation: tokio::sync::watch::Sender<u64>,
    forwarded: AtomicU64,
}

/// A TCP front (`tcp://127.0.0.1:PORT`) for the engine that a test can cut, to exercise a
/// client's reconnection: [`sever`](Self::sever) drops every open connection (an event stream
/// sees its end), [`set_up(false)`](Self::set_up) closes new connections at once (an engine that
/// is down). Runs on the test's tokio runtime; stops when dropped.
pub struct EngineProxy {
    /// `tcp://127.0.0.1:PORT`: give it to `idlewatcher::providers::docker::connect`.
    pub host: String,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

impl EngineProxy {
    /// Listens on an ephemeral local port, forwarding to the engine (`DOCKER_HOST` or the
    /// default socket).
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the engine proxy");
        let host = format!("tcp://{}", listener.local_addr().expect("local addr"));
        let state = Arc::new(ProxyState {
            up: AtomicBool::new(true),
            generation: tokio::sync::watch::channel(0).0,
            forwarded: AtomicU64::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !shared.up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                shared.forwarded.fetch_add(1, Ordering::SeqCst);
                let mut severed = shared.generation.subscribe();
                tokio::spawn(async move {
                    let forward = async {
                        match engine_addr() {
                            EngineAddr::Unix(path) => {
                                let mut up = tokio::net::UnixStream::connect(path).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut up).await
                            }
                            EngineAddr::Tcp(addr) => {
                                let mut up = tokio::net::TcpStream::connect(addr).await?;
                                tokio::io::copy_bidirectional(&mut client, &mut up).await
                            }
                        }
                    };
                    tokio::select! {
                        _ = forward => {}
                        _ = severed.changed() => {}
                    }
                });
            }
        });
        Self {
            host,
            state,
            accept,
        }
    }

    /// Drops every connection open right now.
    pub fn sever(&self) {
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// `false`: new connections are closed at once (and open ones are severed); `true`: forward
    /// again.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
        if !up {
            self.sever();
        }
    }

    /// How many connections were forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}
