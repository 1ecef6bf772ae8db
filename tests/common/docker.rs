//! Docker fixtures for tests against the real engine: a tiny test image, throw-away containers
//! that clean up after themselves, an engine event counter and a sweeper for crashed runs.
//!
//! Everything goes through the `docker` CLI (it honours `DOCKER_HOST` like the gateway does), so
//! the fixtures work the same from plain `#[test]`s and from `#[tokio::test]`s. Every call that
//! can take long has an `_async` twin (on `tokio::process`, never blocking the runtime); the sync
//! ones are fine in async tests for quick calls (tens of milliseconds), but prefer the `_async`
//! twins while something in the same runtime must keep running (an event stream, a proxy).
//!
//! Failures panic with the CLI's own message: these are test fixtures, a failed fixture is a
//! failed test.
//!
//! ```ignore
//! mod common;
//! use common::docker::{EventCounter, TestContainer};
//!
//! let web = TestContainer::http("proxy");      // created, not started
//! let events = EventCounter::new(&web.name);    // counts from now on
//! web.start();
//! web.wait_http(Duration::from_secs(5));
//! assert!(events.wait_for("start", Duration::from_secs(5)));
//! // `web` is removed (forcibly) when dropped, even if the test panics.
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Label on every container these fixtures create; the sweeper removes old ones by it.
pub const TEST_LABEL: &str = "idlewatcher-test";

/// The body of `/` (`/www/index.html`) served by [`TestContainer::http`] containers.
pub const INDEX_BODY: &str = "idlewatcher test backend: hello\n";

/// The port the test image's web server listens on (`PORT` in the environment changes it).
pub const HTTP_PORT: u16 = 80;

/// Where the static busybox comes from (Debian's `busybox-static`); override with the
/// `IDLEWATCHER_TEST_BUSYBOX` environment variable.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// Repository of the test image; the tag is a hash of its content.
pub const TEST_IMAGE_REPO: &str = "idlewatcher-test";

/// `docker stop -t` used by [`TestContainer::stop`]: test containers that handle SIGTERM stop at
/// once; those that do not are killed after this rather than docker's 10 s.
pub const DEFAULT_STOP_SECS: u32 = 2;

/// Containers older than this carrying [`TEST_LABEL`] are a crashed run's leftovers.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// The docker CLI
// ---------------------------------------------------------------------------------------------

/// The result of one docker CLI call: stdout (trimmed) on success, stderr on failure.
pub type CliResult = Result<String, String>;

fn cli_output(args: &[&str], output: std::io::Result<std::process::Output>) -> CliResult {
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

/// Runs `docker ARGS…`, blocking; stdout or the error.
pub fn try_docker(args: &[&str]) -> CliResult {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output();
    cli_output(args, output)
}

/// Runs `docker ARGS…` on `tokio::process`; stdout or the error.
pub async fn try_docker_async(args: &[&str]) -> CliResult {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await;
    cli_output(args, output)
}

/// Runs `docker ARGS…`, blocking; panics on failure. Returns stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `docker ARGS…` without blocking the runtime; panics on failure. Returns stdout, trimmed.
pub async fn docker_async(args: &[&str]) -> String {
    try_docker_async(args)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// The test image
// ---------------------------------------------------------------------------------------------

/// Busybox applets linked into the image's `/bin`.
const APPLETS: &[&str] = &[
    "sh", "httpd", "sleep", "cat", "head", "md5sum", "wc", "nc", "echo", "env", "kill", "printf",
    "rm", "ls", "ps", "true", "false", "wget", "date", "tee", "touch", "mkdir", "grep", "test",
];

/// `/bin/serve`, the image's default command: busybox httpd in the foreground, exiting at once on
/// SIGTERM/SIGINT (a bare httpd as PID 1 would ignore SIGTERM: stop would take the full timeout).
const SERVE_SCRIPT: &str = r#"#!/bin/sh
# idlewatcher test backend: busybox httpd on $PORT (default 80), document root /www.
trap 'exit 0' TERM INT
httpd -f -p "${PORT:-80}" -h /www &
# An upgrade (WebSocket-like) echo server on $UPGRADE_PORT (default 81), see /bin/upgrade-session.
nc -ll -p "${UPGRADE_PORT:-81}" -e /bin/upgrade-session &
wait
"#;

/// `/bin/upgrade-session`: one upgraded connection. Reads the request head, answers
/// `101 Switching Protocols`, then echoes every byte back until the client closes.
const UPGRADE_SESSION: &str = r#"#!/bin/sh
while read -r line; do
    case "$line" in ""|"$(printf '\r')") break ;; esac
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
exec cat
"#;

/// `/www/cgi-bin/stream`: a slow streamed response, one line every 0.5 s for 5 s.
const STREAM_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
i=0
while [ "$i" -lt 10 ]; do
    echo "line $i"
    sleep 0.5
    i=$((i + 1))
done
"#;

/// `/www/cgi-bin/sum`: reads exactly $CONTENT_LENGTH bytes of the request body and answers
/// `<md5> <length>`, so a test can check that a large body arrived intact.
const SUM_CGI: &str = r#"#!/bin/sh
len="${CONTENT_LENGTH:-0}"
f="/tmp/body.$$"
head -c "$len" > "$f"
sum="$(md5sum < "$f")"
n="$(wc -c < "$f")"
rm -f "$f"
printf 'Content-Type: text/plain\r\n\r\n%s %s\n' "${sum%% *}" "$n"
"#;

const DOCKERFILE: &str = r#"FROM scratch
COPY rootfs/ /
EXPOSE 80
CMD ["/bin/serve"]
"#;

/// Files of the image besides busybox: (path in the image, content, mode).
fn image_files() -> Vec<(&'static str, &'static str, u32)> {
    vec![
        ("bin/serve", SERVE_SCRIPT, 0o755),
        ("www/index.html", INDEX_BODY, 0o644),
        ("www/cgi-bin/sum", SUM_CGI, 0o755),
        ("www/cgi-bin/stream", STREAM_CGI, 0o755),
        ("bin/upgrade-session", UPGRADE_SESSION, 0o755),
    ]
}

/// FNV-1a, 64 bits: a stable content hash for the image tag (std's hasher may change).
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

/// Whether an ELF executable is statically linked (has no `PT_INTERP` program header).
fn is_static_elf(bin: &[u8]) -> Result<bool, String> {
    if bin.len() < 64 || &bin[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    let class64 = bin[4] == 2;
    let little = bin[5] == 1;
    let rd = |off: usize, len: usize| -> Result<u64, String> {
        let b = bin.get(off..off + len).ok_or("truncated ELF header")?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if little { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let (phoff, phentsize, phnum) = if class64 {
        (rd(0x20, 8)?, rd(0x36, 2)?, rd(0x38, 2)?)
    } else {
        (rd(0x1c, 4)?, rd(0x2a, 2)?, rd(0x2c, 2)?)
    };
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|e| e.to_string())?;
        if rd(at, 4)? == 3 {
            return Ok(false); // PT_INTERP: needs a dynamic loader
        }
    }
    Ok(true)
}

fn read_busybox() -> (String, Vec<u8>) {
    let path = std::env::var("IDLEWATCHER_TEST_BUSYBOX").unwrap_or_else(|_| BUSYBOX_PATH.into());
    let advice = "the Docker tests need Debian's statically linked busybox: \
                  `apt-get install busybox-static` (or point IDLEWATCHER_TEST_BUSYBOX at one)";
    let bin = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}; {advice}"));
    match is_static_elf(&bin) {
        Ok(true) => (path, bin),
        Ok(false) => panic!("{path} is dynamically linked; {advice}"),
        Err(e) => panic!("{path}: {e}; {advice}"),
    }
}

/// Builds the test image (once per process) and returns its tag.
///
/// `FROM scratch` + the static busybox, applet links (`sh`, `httpd`, `sleep`, `cat`, `head`,
/// `md5sum`, `wc`, `nc`, `echo`, `env`, `kill`…), `/www/index.html` ([`INDEX_BODY`]), the CGI
/// `/www/cgi-bin/sum` and the default command `/bin/serve` (httpd on port 80). The tag is a hash
/// of all that, so concurrent builds by several test processes produce the same image and are
/// harmless, and an existing image is reused across runs.
pub fn ensure_test_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(build_test_image)
}

/// [`ensure_test_image`] off the async runtime's threads.
pub async fn ensure_test_image_async() -> &'static str {
    tokio::task::spawn_blocking(ensure_test_image)
        .await
        .unwrap_or_else(|e| panic!("building the test image panicked: {e}"))
}

fn build_test_image() -> String {
    let (busybox_path, busybox) = read_busybox();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    fnv1a(&mut hash, &busybox);
    fnv1a(&mut hash, DOCKERFILE.as_bytes());
    for (path, content, mode) in image_files() {
        fnv1a(&mut hash, path.as_bytes());
        fnv1a(&mut hash, content.as_bytes());
        fnv1a(&mut hash, &mode.to_le_bytes());
    }
    for applet in APPLETS {
        fnv1a(&mut hash, applet.as_bytes());
    }
    let tag = format!("{TEST_IMAGE_REPO}:{hash:016x}");
    if try_docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
        return tag;
    }

    let dir = tempfile::tempdir().expect("temporary build directory");
    let root = dir.path().join("rootfs");
    let write = |rel: &str, content: &[u8], mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    write("bin/busybox", &busybox, 0o755);
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .unwrap_or_else(|e| panic!("symlink {applet}: {e}"));
    }
    for (path, content, mode) in image_files() {
        write(path, content.as_bytes(), mode);
    }
    std::fs::create_dir_all(root.join("tmp")).expect("mkdir tmp");
    std::fs::write(dir.path().join("Dockerfile"), DOCKERFILE).expect("write Dockerfile");

    let context = dir.path().to_str().expect("utf-8 temp path");
    let build = |legacy: bool| {
        let mut cmd = Command::new("docker");
        cmd.args(["build", "-q", "-t", &tag, context])
            .stdin(Stdio::null());
        if legacy {
            // The classic builder needs no buildx plugin and no registry for `FROM scratch`.
            cmd.env("DOCKER_BUILDKIT", "0");
        }
        cli_output(&["build", "-t", &tag, context], cmd.output())
    };
    let has_buildx = try_docker(&["buildx", "version"]).is_ok();
    let result = build(!has_buildx).or_else(|first| build(has_buildx).map_err(|_| first));
    if let Err(e) = result {
        panic!("building the test image from {busybox_path} failed: {e}");
    }
    tag
}

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
pub fn remove_stale_test_containers() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let label = format!("label={TEST_LABEL}=1");
        let Ok(ids) = try_docker(&["ps", "-aq", "--no-trunc", "--filter", &label]) else {
            return;
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["inspect", "--format", "{{.Id}} {{.Created}}"];
        args.extend(ids.iter().copied());
        // A container may vanish between ps and inspect: use whatever was printed.
        let listing = match try_docker(&args) {
            Ok(out) => out,
            Err(_) => return,
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
            let _ = try_docker(&args);
            eprintln!("removed {} stale test container(s)", stale.len());
        }
    });
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
    pub fn create(self) -> TestContainer {
        remove_stale_test_containers();
        let image = ensure_test_image();
        let name = unique_name(&self.prefix);
        let args = self.create_args(&name, image);
        let id = docker(&as_strs(&args));
        TestContainer {
            name,
            id: Mutex::new(id),
            builder: self,
        }
    }

    /// [`create`](Self::create) without blocking the runtime.
    pub async fn create_async(self) -> TestContainer {
        tokio::task::spawn_blocking(remove_stale_test_containers)
            .await
            .expect("sweeper");
        let image = ensure_test_image_async().await;
        let name = unique_name(&self.prefix);
        let args = self.create_args(&name, image);
        let id = docker_async(&as_strs(&args)).await;
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
    /// on SIGTERM). Serves [`INDEX_BODY`] at `/` and the CGI `/cgi-bin/sum`.
    pub fn http(prefix: &str) -> Self {
        Self::builder(prefix).create()
    }

    /// [`http`](Self::http) without blocking the runtime.
    pub async fn http_async(prefix: &str) -> Self {
        Self::builder(prefix).create_async().await
    }

    /// A container running `cmd`, e.g. `&["sh", "-c", "sleep 3600"]`.
    pub fn with_cmd(prefix: &str, cmd: &[&str]) -> Self {
        Self::builder(prefix).cmd(cmd).create()
    }

    /// [`with_cmd`](Self::with_cmd) without blocking the runtime.
    pub async fn with_cmd_async(prefix: &str, cmd: &[&str]) -> Self {
        Self::builder(prefix).cmd(cmd).create_async().await
    }

    /// A process that never listens and ignores SIGTERM: `sleep` as PID 1 (the kernel drops
    /// signals without a handler sent to a namespace's init), so a stop waits the full timeout
    /// and ends with SIGKILL (exit code 137).
    pub fn ignoring_sigterm(prefix: &str) -> Self {
        Self::with_cmd(prefix, &["sleep", "3600"])
    }

    /// A process that never listens and exits with `exit_code` on `signal` (e.g. `"INT"`,
    /// `"TERM"`, `"USR1"`) and ignores every other catchable signal (it is PID 1). Prints `ready`
    /// once the handler is installed: wait for it with [`wait_for_log`](Self::wait_for_log) before
    /// signalling.
    pub fn exiting_on(prefix: &str, signal: &str, exit_code: u8) -> Self {
        Self::with_cmd(prefix, &["sh", "-c", &trap_script(signal, exit_code)])
    }

    /// [`exiting_on`](Self::exiting_on) without blocking the runtime.
    pub async fn exiting_on_async(prefix: &str, signal: &str, exit_code: u8) -> Self {
        Self::with_cmd_async(prefix, &["sh", "-c", &trap_script(signal, exit_code)]).await
    }

    /// The current container's full id.
    pub fn id(&self) -> String {
        self.id.lock().expect("id lock").clone()
    }

    /// `docker start`.
    pub fn start(&self) {
        docker(&["start", &self.name]);
    }

    /// `docker start`, async.
    pub async fn start_async(&self) {
        docker_async(&["start", &self.name]).await;
    }

    /// `docker stop -t 2` (see [`DEFAULT_STOP_SECS`]).
    pub fn stop(&self) {
        self.stop_with_timeout(DEFAULT_STOP_SECS);
    }

    /// `docker stop -t 2`, async.
    pub async fn stop_async(&self) {
        let t = DEFAULT_STOP_SECS.to_string();
        docker_async(&["stop", "-t", &t, &self.name]).await;
    }

    /// `docker stop -t SECS`.
    pub fn stop_with_timeout(&self, secs: u32) {
        docker(&["stop", "-t", &secs.to_string(), &self.name]);
    }

    /// `docker kill -s SIGNAL`.
    pub fn kill(&self, signal: &str) {
        docker(&["kill", "-s", signal, &self.name]);
    }

    /// `docker pause`.
    pub fn pause(&self) {
        docker(&["pause", &self.name]);
    }

    /// `docker pause`, async.
    pub async fn pause_async(&self) {
        docker_async(&["pause", &self.name]).await;
    }

    /// `docker unpause`.
    pub fn unpause(&self) {
        docker(&["unpause", &self.name]);
    }

    /// `docker unpause`, async.
    pub async fn unpause_async(&self) {
        docker_async(&["unpause", &self.name]).await;
    }

    /// `docker rm -f -v` now (dropping it later is harmless). Does not fail if already gone.
    pub fn remove(&self) {
        let _ = try_docker(&["rm", "-f", "-v", &self.name]);
    }

    /// [`remove`](Self::remove), async.
    pub async fn remove_async(&self) {
        let _ = try_docker_async(&["rm", "-f", "-v", &self.name]).await;
    }

    /// Removes the container and creates a new one with the same name and settings (a new id),
    /// not started: what `docker compose up` does when a service changes.
    pub fn recreate(&self) {
        self.remove();
        let args = self.builder.create_args(&self.name, ensure_test_image());
        *self.id.lock().expect("id lock") = docker(&as_strs(&args));
    }

    /// [`recreate`](Self::recreate), async.
    pub async fn recreate_async(&self) {
        self.remove_async().await;
        let args = self
            .builder
            .create_args(&self.name, ensure_test_image_async().await);
        let id = docker_async(&as_strs(&args)).await;
        *self.id.lock().expect("id lock") = id;
    }

    /// `.State.Status`: `created`, `running`, `paused`, `restarting`, `exited`, `dead`… or
    /// `missing` when the container does not exist.
    pub fn status(&self) -> String {
        parse_status(try_docker(&[
            "inspect",
            "--format",
            "{{.State.Status}}",
            &self.name,
        ]))
    }

    /// [`status`](Self::status), async.
    pub async fn status_async(&self) -> String {
        parse_status(
            try_docker_async(&["inspect", "--format", "{{.State.Status}}", &self.name]).await,
        )
    }

    /// `.State.ExitCode` of the last run.
    pub fn exit_code(&self) -> i64 {
        let out = docker(&["inspect", "--format", "{{.State.ExitCode}}", &self.name]);
        out.parse()
            .unwrap_or_else(|e| panic!("exit code {out:?}: {e}"))
    }

    /// The container's IP address (IPv4 first; `bridge` first, then by network name), if it
    /// has one (it has none while stopped).
    pub fn try_ip(&self) -> Option<IpAddr> {
        let out = docker(&[
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            &self.name,
        ]);
        pick_ip(&out)
    }

    /// The container's IP address; panics when it has none (not running, `--network none`).
    pub fn ip(&self) -> IpAddr {
        self.try_ip()
            .unwrap_or_else(|| panic!("container {} has no IP address", self.name))
    }

    /// [`ip`](Self::ip), async.
    pub async fn ip_async(&self) -> IpAddr {
        let out = docker_async(&[
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            &self.name,
        ])
        .await;
        pick_ip(&out).unwrap_or_else(|| panic!("container {} has no IP address", self.name))
    }

    /// `http://IP:80` (no trailing slash).
    pub fn base_url(&self) -> String {
        url_for(self.ip(), HTTP_PORT)
    }

    /// The container's output so far (stdout and stderr).
    pub fn logs(&self) -> String {
        let output = Command::new("docker")
            .args(["logs", &self.name])
            .stdin(Stdio::null())
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Waits until the logs contain `text`; panics after `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(text) {
            assert!(
                Instant::now() < deadline,
                "container {} did not log {text:?} within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`wait_for_log`](Self::wait_for_log), async.
    pub async fn wait_for_log_async(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = try_docker_async(&["logs", &self.name]).await;
            if logs.is_ok_and(|l| l.contains(text)) {
                return;
            }
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
    pub fn wait_http(&self, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ip) = self.try_ip() {
                let addr = SocketAddr::new(ip, HTTP_PORT);
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return addr;
                }
            }
            assert!(
                Instant::now() < deadline,
                "container {} did not accept connections within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`wait_http`](Self::wait_http), async.
    pub async fn wait_http_async(&self, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        loop {
            let out = try_docker_async(&[
                "inspect",
                "--format",
                "{{json .NetworkSettings.Networks}}",
                &self.name,
            ])
            .await;
            if let Some(ip) = out.ok().as_deref().and_then(pick_ip) {
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
    pub fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        // By name, so a recreated container goes too. Errors are moot (already gone).
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
    changed: Condvar,
    notify: tokio::sync::Notify,
}

/// Counts the engine's events for one container *name* (so it follows the container through
/// removal and recreation), from the moment it is created: create it before the test acts.
///
/// Runs `docker events --since NOW` in the background: events the engine records after `new`
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
                "type=container",
                "--filter",
                &format!("container={name}"),
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
                    sink.changed.notify_all();
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
    pub fn wait_for(&self, action: &str, timeout: Duration) -> bool {
        self.wait_for_count(action, 1, timeout)
    }

    /// Waits until at least `n` `action` events arrived; `false` on timeout.
    pub fn wait_for_count(&self, action: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.recorded.events.lock().expect("events lock");
        loop {
            if events.iter().filter(|e| e.action == action).count() >= n {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            events = self
                .recorded
                .changed
                .wait_timeout(events, left)
                .expect("events lock")
                .0;
        }
    }

    /// [`wait_for`](Self::wait_for), async.
    pub async fn wait_for_async(&self, action: &str, timeout: Duration) -> bool {
        self.wait_for_count_async(action, 1, timeout).await
    }

    /// [`wait_for_count`](Self::wait_for_count), async.
    pub async fn wait_for_count_async(&self, action: &str, n: usize, timeout: Duration) -> bool {
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
enum EngineAddr {
    Unix(std::path::PathBuf),
    Tcp(String),
}

fn engine_addr() -> EngineAddr {
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
    up: std::sync::atomic::AtomicBool,
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
            up: std::sync::atomic::AtomicBool::new(true),
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
