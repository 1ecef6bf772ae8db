//! Throw-away containers of the test image ([`super::image`]): uniquely named, labelled
//! [`TEST_LABEL`]`=1`, removed when dropped (also when the test panics), plus a sweeper for what
//! crashed runs left behind.
//!
//! ```ignore
//! mod common;
//! use common::container::TestContainer;
//! use common::engine::EventCounter;
//!
//! let web = TestContainer::http("proxy").await;  // created, not started
//! let events = EventCounter::new(&web.name);     // counts from now on
//! web.start().await;
//! web.wait_http(Duration::from_secs(5)).await;
//! assert!(events.wait_for("start", Duration::from_secs(5)).await);
//! // `web` is removed (forcibly) when dropped, even if the test panics.
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

use super::engine::{docker, try_docker, CliResult};
use super::image::{ensure_test_image, HTTP_PORT};

/// Label on every container these fixtures create; the sweeper removes old ones by it.
pub const TEST_LABEL: &str = "idlewatcher-test";

/// `docker stop -t` used by [`TestContainer::stop`]: test containers that handle SIGTERM stop at
/// once; those that do not are killed after this rather than docker's 10 s.
pub const DEFAULT_STOP_SECS: u32 = 2;

/// Containers older than this carrying [`TEST_LABEL`] are a crashed run's leftovers.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Names and the sweeper
// ---------------------------------------------------------------------------------------------

/// A container name no other test (in this process or another) uses:
/// `iwt-PREFIX-PID-COUNTER-RANDOM`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(nanos);
        h.write_u64(n);
        h.finish() & 0xff_ffff
    };
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("iwt-{prefix}-{}-{n}-{random:06x}", std::process::id())
}

/// Removes containers labelled [`TEST_LABEL`] created more than [`STALE_AFTER`] ago (what a
/// killed test run left behind). Does the work once per process; later calls return at once.
pub async fn remove_stale_test_containers() {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(sweep).await;
}

async fn sweep() {
    let label = format!("label={TEST_LABEL}=1");
    let Ok(ids) = try_docker(&["ps", "-aq", "--no-trunc", "--filter", &label]).await else {
        return;
    };
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return;
    }
    let mut args = vec!["inspect", "--format", "{{.Id}} {{.Created}}"];
    args.extend(ids.iter().copied());
    // A container may vanish between ps and inspect: then leave the sweep to the next run.
    let Ok(listing) = try_docker(&args).await else {
        return;
    };
    let now = SystemTime::now();
    let stale: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let (id, created) = line.split_once(' ')?;
            let created = humantime::parse_rfc3339_weak(created.trim()).ok()?;
            (now.duration_since(created).ok()? > STALE_AFTER).then_some(id)
        })
        .collect();
    if !stale.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(stale.iter().copied());
        let _ = try_docker(&args).await;
        eprintln!("removed {} stale test container(s)", stale.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Test containers
// ---------------------------------------------------------------------------------------------

/// How to create a [`TestContainer`]; start from [`TestContainer::builder`].
#[derive(Debug, Clone)]
pub struct ContainerBuilder {
    prefix: String,
    cmd: Option<Vec<String>>,
    args: Vec<String>,
}

impl ContainerBuilder {
    /// The command (replaces the image's `/bin/serve`), e.g. `["sh", "-c", "sleep 3600"]`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }

    /// An environment variable (`PORT=8080` moves the web server).
    pub fn env(self, key: &str, value: &str) -> Self {
        self.arg("--env").arg(&format!("{key}={value}"))
    }

    /// A label.
    pub fn label(self, key: &str, value: &str) -> Self {
        self.arg("--label").arg(&format!("{key}={value}"))
    }

    /// `--network`: `none`, `host`, `container:NAME` or a network's name.
    pub fn network(self, network: &str) -> Self {
        self.arg("--network").arg(network)
    }

    /// `--stop-signal`.
    pub fn stop_signal(self, signal: &str) -> Self {
        self.arg("--stop-signal").arg(signal)
    }

    /// `--stop-timeout` (seconds).
    pub fn stop_timeout(self, secs: u32) -> Self {
        self.arg("--stop-timeout").arg(&secs.to_string())
    }

    /// A Docker HEALTHCHECK (`--health-cmd`, checked every `interval`).
    pub fn health_cmd(self, cmd: &str, interval: Duration) -> Self {
        let interval = format!("{}ms", interval.as_millis().max(1));
        self.arg("--health-cmd")
            .arg(cmd)
            .arg("--health-interval")
            .arg(&interval)
    }

    /// `--restart` policy, e.g. `always`.
    pub fn restart(self, policy: &str) -> Self {
        self.arg("--restart").arg(policy)
    }

    /// Any other `docker create` option, verbatim.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// `docker create` arguments for `name` (the image included).
    fn create_args(&self, name: &str, image: &str) -> Vec<String> {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut args: Vec<String> = vec![
            "create".into(),
            "--name".into(),
            name.into(),
            "--label".into(),
            format!("{TEST_LABEL}=1"),
            "--label".into(),
            format!("{TEST_LABEL}.created={created}"),
        ];
        args.extend(self.args.iter().cloned());
        args.push(image.into());
        if let Some(cmd) = &self.cmd {
            args.extend(cmd.iter().cloned());
        }
        args
    }

    /// Creates the container (not started).
    pub async fn create(self) -> TestContainer {
        remove_stale_test_containers().await;
        let image = ensure_test_image().await;
        let name = unique_name(&self.prefix);
        let args = self.create_args(&name, image);
        let id = docker(&as_strs(&args)).await;
        TestContainer {
            name,
            id: Mutex::new(id),
            builder: self,
        }
    }
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A container of the test image with a unique name, labelled [`TEST_LABEL`]; created but not
/// started. Dropping it removes it forcibly (also when the test panics), whatever state it is in.
#[derive(Debug)]
pub struct TestContainer {
    /// The unique name (`iwt-PREFIX-…`): what the gateway and the providers are configured with.
    pub name: String,
    /// The current container's full id (changes on [`recreate`](Self::recreate)).
    id: Mutex<String>,
    builder: ContainerBuilder,
}

impl TestContainer {
    /// A builder for a container whose name starts with `iwt-PREFIX-`.
    pub fn builder(prefix: &str) -> ContainerBuilder {
        ContainerBuilder {
            prefix: prefix.to_string(),
            cmd: None,
            args: Vec::new(),
        }
    }

    /// A web backend: busybox `httpd -f -p 80 -h /www` (through `/bin/serve`, which exits at once
    /// on SIGTERM). Serves [`INDEX_BODY`](super::image::INDEX_BODY) at `/` and the CGIs.
    pub async fn http(prefix: &str) -> Self {
        Self::builder(prefix).create().await
    }

    /// A container running `cmd`, e.g. `&["sh", "-c", "sleep 3600"]`.
    pub async fn with_cmd(prefix: &str, cmd: &[&str]) -> Self {
        Self::builder(prefix).cmd(cmd).create().await
    }

    /// A process that never listens and ignores SIGTERM: `sleep` as PID 1 (the kernel drops
    /// signals without a handler sent to a namespace's init), so a stop waits the full timeout
    /// and ends with SIGKILL (exit code 137).
    pub async fn ignoring_sigterm(prefix: &str) -> Self {
        Self::with_cmd(prefix, &["sleep", "3600"]).await
    }

    /// A process that never listens and exits with `exit_code` on `signal` (e.g. `"INT"`,
    /// `"TERM"`, `"USR1"`) and ignores every other catchable signal (it is PID 1). Prints `ready`
    /// once the handler is installed: wait for it with [`wait_for_log`](Self::wait_for_log) before
    /// signalling.
    pub async fn exiting_on(prefix: &str, signal: &str, exit_code: u8) -> Self {
        Self::with_cmd(prefix, &["sh", "-c", &trap_script(signal, exit_code)]).await
    }

    /// The current container's full id.
    pub fn id(&self) -> String {
        self.id.lock().expect("id lock").clone()
    }

    /// `docker start`.
    pub async fn start(&self) {
        docker(&["start", &self.name]).await;
    }

    /// `docker stop -t 2` (see [`DEFAULT_STOP_SECS`]).
    pub async fn stop(&self) {
        self.stop_with_timeout(DEFAULT_STOP_SECS).await;
    }

    /// `docker stop -t SECS`.
    pub async fn stop_with_timeout(&self, secs: u32) {
        docker(&["stop", "-t", &secs.to_string(), &self.name]).await;
    }

    /// `docker kill -s SIGNAL`.
    pub async fn kill(&self, signal: &str) {
        docker(&["kill", "-s", signal, &self.name]).await;
    }

    /// `docker pause`.
    pub async fn pause(&self) {
        docker(&["pause", &self.name]).await;
    }

    /// `docker unpause`.
    pub async fn unpause(&self) {
        docker(&["unpause", &self.name]).await;
    }

    /// `docker rm -f -v` now (dropping it later is harmless). Does not fail if already gone.
    pub async fn remove(&self) {
        let _ = try_docker(&["rm", "-f", "-v", &self.name]).await;
    }

    /// Removes the container and creates a new one with the same name and settings (a new id),
    /// not started: what `docker compose up` does when a service changes.
    pub async fn recreate(&self) {
        self.remove().await;
        let args = self
            .builder
            .create_args(&self.name, ensure_test_image().await);
        let id = docker(&as_strs(&args)).await;
        *self.id.lock().expect("id lock") = id;
    }

    /// `.State.Status`: `created`, `running`, `paused`, `restarting`, `exited`, `dead`… or
    /// `missing` when the container does not exist.
    pub async fn status(&self) -> String {
        parse_status(try_docker(&["inspect", "--format", "{{.State.Status}}", &self.name]).await)
    }

    /// `.State.ExitCode` of the last run.
    pub async fn exit_code(&self) -> i64 {
        let out = docker(&["inspect", "--format", "{{.State.ExitCode}}", &self.name]).await;
        out.parse()
            .unwrap_or_else(|e| panic!("exit code {out:?}: {e}"))
    }

    /// The container's IP address (IPv4 first; `bridge` first, then by network name), if it
    /// has one (it has none while stopped, or when it is gone).
    pub async fn try_ip(&self) -> Option<IpAddr> {
        let out = try_docker(&[
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            &self.name,
        ])
        .await;
        out.ok().as_deref().and_then(pick_ip)
    }

    /// The container's IP address; panics when it has none (not running, `--network none`).
    pub async fn ip(&self) -> IpAddr {
        self.try_ip()
            .await
            .unwrap_or_else(|| panic!("container {} has no IP address", self.name))
    }

    /// Waits until the engine's status of the container is `wanted` (`running`, `exited`…),
    /// polling every 50 ms; returns when it was seen. Panics after `timeout`.
    pub async fn wait_status(&self, wanted: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if status == wanted {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{} is {status}, not {wanted}, after {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://IP:80` (no trailing slash).
    pub async fn base_url(&self) -> String {
        url_for(self.ip().await, HTTP_PORT)
    }

    /// The container's output so far (stdout and stderr).
    pub async fn logs(&self) -> String {
        let output = tokio::process::Command::new("docker")
            .args(["logs", &self.name])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Waits until the logs contain `text`; panics after `timeout`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().await.contains(text) {
            assert!(
                Instant::now() < deadline,
                "container {} did not log {text:?} within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the container accepts TCP connections on [`HTTP_PORT`]; panics after
    /// `timeout`. Returns the address.
    pub async fn wait_http(&self, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ip) = self.try_ip().await {
                let addr = SocketAddr::new(ip, HTTP_PORT);
                let connect = tokio::net::TcpStream::connect(addr);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                    return addr;
                }
            }
            assert!(
                Instant::now() < deadline,
                "container {} did not accept connections within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `docker exec NAME ARGS…`; stdout.
    pub async fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all).await
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        // By name, so a recreated container goes too. Errors are moot (already gone). Blocking:
        // a destructor cannot await, and the removal must happen even when the test panics.
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn trap_script(signal: &str, exit_code: u8) -> String {
    let signal = signal.trim_start_matches("SIG");
    format!("trap 'exit {exit_code}' {signal}; echo ready; sleep 3600 & wait")
}

fn parse_status(result: CliResult) -> String {
    match result {
        Ok(status) => status,
        Err(e) if e.contains("No such") => "missing".to_string(),
        Err(e) => panic!("{e}"),
    }
}

/// `http://ip:port`, with brackets for IPv6.
pub fn url_for(ip: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(ip, port))
}

/// The address in `{{json .NetworkSettings.Networks}}`, chosen like the provider does.
fn pick_ip(networks_json: &str) -> Option<IpAddr> {
    let networks: HashMap<String, serde_json::Value> = serde_json::from_str(networks_json).ok()?;
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort_by_key(|n| (n.as_str() != "bridge", n.as_str()));
    let field = |name: &String, key: &str| -> Option<IpAddr> {
        networks[name].get(key)?.as_str()?.parse().ok()
    };
    names
        .iter()
        .find_map(|n| field(n, "IPAddress"))
        .or_else(|| names.iter().find_map(|n| field(n, "GlobalIPv6Address")))
}
