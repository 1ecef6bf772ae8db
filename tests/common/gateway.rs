//! A real `idlewatcher` gateway process for integration tests: the binary built by cargo for
//! this test run (or `IDLEWATCHER_BIN`, see [`binary`]), on a free loopback port, with a config
//! written by the test.
//!
//! ```ignore
//! let gateway = Gateway::start(&format!("
//! idlewatcher:
//!   listen: [\"@LISTEN@\"]
//!   routes:
//!     - name: app
//!       hosts: [app.test]
//!       docker: {{ container: {name} }}
//!       port: 80
//! ")).await;
//! let body = gateway.client().get(gateway.url("app.test", "/")).send().await?;
//! ```
//!
//! `@LISTEN@` is replaced by the chosen `127.0.0.1:PORT`, `@TLS_LISTEN@` (HTTPS listeners) by
//! another one (then [`Gateway::https_url`] and [`Gateway::https_client_builder`]). Pingora's server keys are added when the
//! text has none (`threads: 2`, short shutdown periods). The process gets SIGTERM when the
//! fixture drops; its log is printed if the test failed.
//!
//! Like the other fixtures, it is `async` (it never blocks the test's runtime), except what has
//! to happen in `Drop`.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::http::SseStream;

/// The gateway binary: the one cargo built for this test run, unless `IDLEWATCHER_BIN` names
/// another. `make bench`'s `held` stage runs a release-built test against the shipped build's
/// binary (`target/dist/idlewatcher`), which cargo does not build for tests.
pub fn binary() -> PathBuf {
    std::env::var_os("IDLEWATCHER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_idlewatcher")),
        PathBuf::from,
    )
}

/// Server keys prepended to a test config that sets none.
const SERVER_KEYS: &str = "version: 1\nthreads: 2\ngrace_period_seconds: 0\n\
                           graceful_shutdown_timeout_seconds: 1\n";

/// A free loopback port (bound, read, released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Writes `text` to a fresh file in a temporary directory that lives as long as the returned
/// guard.
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("idlewatcher.yaml");
    std::fs::write(&path, text).expect("config written");
    (dir, path)
}

/// A config with one route `NAME.test` in front of the Docker container `container` on port 80,
/// listening on `@LISTEN@`; `extra` adds route keys (each line indented by six spaces).
pub fn one_route(name: &str, container: &str, extra: &str) -> String {
    format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes:\n    - name: {name}\n      hosts: [\"{name}.test\"]\n      docker: {{ container: {container} }}\n      port: 80\n{extra}"
    )
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
    /// Where it listens for HTTPS, when the config has `@TLS_LISTEN@`.
    pub tls_address: Option<SocketAddr>,
    dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl Gateway {
    /// Starts the gateway on `config` (see the module docs) and waits until it accepts
    /// connections. Panics with the gateway's log if it exits or never listens.
    pub async fn start(config: &str) -> Self {
        Self::start_with_env(config, &[]).await
    }

    /// Like [`start`](Self::start), with extra environment variables (e.g. `RUST_LOG`).
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut text = config.replace("@LISTEN@", &address.to_string());
        let tls_address: Option<SocketAddr> = text
            .contains("@TLS_LISTEN@")
            .then(|| ([127, 0, 0, 1], free_port()).into());
        if let Some(tls_address) = tls_address {
            text = text.replace("@TLS_LISTEN@", &tls_address.to_string());
        }
        if !text.contains("\nversion:") && !text.starts_with("version:") {
            text = format!("{SERVER_KEYS}{text}");
        }
        let (dir, config_path) = write_config(&text);
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(binary());
        command
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info,idlewatcher=debug")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the idlewatcher binary starts");
        let mut gateway = Self {
            child,
            address,
            tls_address,
            dir,
            log_path,
        };
        gateway.wait_listening(Duration::from_secs(20)).await;
        gateway
    }

    async fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the gateway exited ({status}) before listening:\n{}",
                    self.logs()
                );
            }
            let connect = tokio::net::TcpStream::connect(self.address);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), connect).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the gateway never listened on {}:\n{}",
                    self.address,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://HOST:PORT/path` for a route host, to use with [`client`](Self::client).
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.address.port())
    }

    /// An HTTP client that reaches every host name at this gateway (no DNS involved).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("a reqwest client")
    }

    /// A client builder already pointed at this gateway, to add options to.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let address = self.address;
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(FixedResolver(address)))
            .pool_max_idle_per_host(4096)
    }

    /// `https://HOST:PORT/path` on the HTTPS listener, to use with
    /// [`https_client_builder`](Self::https_client_builder).
    pub fn https_url(&self, host: &str, path: &str) -> String {
        let address = self.tls_address.expect("a config with @TLS_LISTEN@");
        format!("https://{host}:{}{path}", address.port())
    }

    /// A client builder that reaches every host name at this gateway's HTTPS listener (no DNS
    /// involved); the test adds how the certificate is trusted.
    pub fn https_client_builder(&self) -> reqwest::ClientBuilder {
        let address = self.tls_address.expect("a config with @TLS_LISTEN@");
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(FixedResolver(address)))
    }

    /// The route's `status` endpoint as JSON.
    pub async fn status(&self, host: &str) -> serde_json::Value {
        self.client()
            .get(self.url(host, "/.idlewatcher/status"))
            .send()
            .await
            .expect("status answered")
            .json()
            .await
            .expect("status is JSON")
    }

    /// Polls the route's status until its `state` is `state`, or panics after `timeout`.
    pub async fn wait_state(&self, host: &str, state: &str, timeout: Duration) {
        let reached = super::eventually(timeout, Duration::from_millis(25), || async move {
            let status = self.status(host).await;
            if status["state"] == state {
                Ok(())
            } else {
                Err(status)
            }
        })
        .await;
        if let Err(status) = reached {
            panic!(
                "route {host} never reached state {state}: last status {status}\n{}",
                self.logs()
            );
        }
    }

    /// The route's event history (the `data:` objects of `/.idlewatcher/events`), read until an
    /// event of type `until` arrives or `window` passes.
    pub async fn event_history(
        &self,
        host: &str,
        until: &str,
        window: Duration,
    ) -> Vec<serde_json::Value> {
        let mut response = self
            .client()
            .get(self.url(host, "/.idlewatcher/events"))
            .send()
            .await
            .expect("events answered");
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + window;
        let marker = format!("\"type\":\"{until}\"");
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(&marker) {
                break;
            }
        }
        text.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str(data).ok())
            .collect()
    }

    /// The `type`s of the route's event history, read until an event of type `until` arrives or
    /// `window` passes.
    pub async fn event_kinds(&self, host: &str, until: &str, window: Duration) -> Vec<String> {
        self.event_history(host, until, window)
            .await
            .iter()
            .filter_map(|event| event["type"].as_str().map(str::to_string))
            .collect()
    }

    /// The timestamp of the first event of `kind` in the route's event history (read for at
    /// most half a second).
    pub async fn event_time(&self, host: &str, kind: &str) -> Option<SystemTime> {
        let history = self
            .event_history(host, kind, Duration::from_millis(500))
            .await;
        let event = history.iter().find(|event| event["type"] == kind)?;
        humantime::parse_rfc3339(event["timestamp"].as_str()?).ok()
    }

    /// Opens the route's event stream (`/.idlewatcher/events`), resuming after
    /// `last_event_id` if given; asserts it is answered 200 as `text/event-stream`.
    pub async fn subscribe(&self, host: &str, last_event_id: Option<u64>) -> SseStream {
        self.subscribe_with(&self.client(), host, last_event_id)
            .await
    }

    /// [`subscribe`](Self::subscribe) with a client of the test's choosing.
    pub async fn subscribe_with(
        &self,
        client: &reqwest::Client,
        host: &str,
        last_event_id: Option<u64>,
    ) -> SseStream {
        let mut request = client.get(self.url(host, "/.idlewatcher/events"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("events answered");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "content type"
        );
        SseStream::new(response)
    }

    /// Whether the gateway holds an established connection from the local port `client_port`
    /// (its server side, as `ss` lists it).
    pub async fn holds_connection_from(&self, client_port: u16) -> bool {
        let output = tokio::process::Command::new("ss")
            .args(["-tnH", "state", "established"])
            .output()
            .await
            .expect("ss runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let local = format!("127.0.0.1:{}", self.address.port());
        let peer = format!("127.0.0.1:{client_port}");
        text.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 4 && fields[2] == local && fields[3] == peer
        })
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the gateway logged so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Replaces the config file with `config` (`@LISTEN@` and the server keys as in
    /// [`start`](Self::start)), whole at once (written aside, then renamed): a reload never
    /// reads half a file.
    pub fn rewrite_config(&self, config: &str) {
        let mut text = config.replace("@LISTEN@", &self.address.to_string());
        if let Some(tls) = self.tls_address {
            text = text.replace("@TLS_LISTEN@", &tls.to_string());
        }
        if !text.contains("\nversion:") && !text.starts_with("version:") {
            text = format!("{SERVER_KEYS}{text}");
        }
        let aside = self.dir.path().join("idlewatcher.yaml.new");
        std::fs::write(&aside, text).expect("config written");
        std::fs::rename(&aside, self.dir.path().join("idlewatcher.yaml")).expect("config renamed");
    }

    /// `count` GETs of `host`'s `/`, all sent at once (each its own task, started now); their
    /// statuses (0 for a request that got no answer), in order, once all are answered.
    pub async fn burst(&self, host: &str, count: usize) -> tokio::task::JoinHandle<Vec<u16>> {
        let client = self.client();
        let url = self.url(host, "/");
        let requests: Vec<_> = (0..count)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    match client.get(url).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    }
                })
            })
            .collect();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for request in requests {
                statuses.push(request.await.unwrap());
            }
            statuses
        })
    }

    /// Sends `signal` (`HUP`, `QUIT`…) to the gateway process.
    pub async fn signal(&self, signal: &str) {
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits until the log contains `text`; `false` after `timeout`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(text) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The temporary directory holding the config and the log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Sends SIGTERM and waits for the exit; returns how long it took (`None`: still running
    /// after `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        if let Ok(Some(_)) = self.child.try_wait() {
            return Some(Duration::ZERO); // Already gone.
        }
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .await;
        while started.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// [`terminate`](Self::terminate) for `Drop`, which cannot await.
    fn terminate_blocking(&mut self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        if let Ok(Some(_)) = self.child.try_wait() {
            return Some(Duration::ZERO);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        while started.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- gateway log ----\n{}\n---- end of gateway log ----",
                self.logs()
            );
        }
        if self.terminate_blocking(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resolves every name to the gateway's address.
struct FixedResolver(SocketAddr);

impl reqwest::dns::Resolve for FixedResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let address = self.0;
        Box::pin(async move {
            let addresses: reqwest::dns::Addrs = Box::new(std::iter::once(address));
            Ok(addresses)
        })
    }
}
