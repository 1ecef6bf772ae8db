//! Issue 2 acceptance, point 2: every bad-config case is rejected by `idlewatcher -t -c FILE`
//! (non-zero exit, stderr naming the route and the key), and the gateway itself, run on the same
//! file, exits non-zero without ever opening its listener. No Docker needed: a bad config is
//! rejected before the engine is contacted, and `-t` never contacts it.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{binary, free_port, write_config};

/// One bad config: the file (`@LISTEN@` is replaced by a free loopback address) and what stderr
/// must contain, each needle naming the route (when the key is inside a route) and the key.
struct Case {
    name: &'static str,
    yaml: &'static str,
    expect: &'static [&'static str],
}

/// A valid route `a` followed by whatever the case adds; kept inline in each case so that a
/// failing case shows its whole file.
const CASES: &[Case] = &[
    Case {
        name: "unknown key at the top level",
        yaml: r#"
colour: blue
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &[r#"key "colour": unknown key "colour""#],
    },
    Case {
        name: "unknown key under idlewatcher",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  listne: ["127.0.0.1:1"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &[r#"key "idlewatcher.listne": unknown key "listne""#],
    },
    Case {
        name: "unknown key under defaults",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  defaults:
    idle_timout: 5m
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &[r#"key "idlewatcher.defaults.idle_timout": unknown key "idle_timout""#],
    },
    Case {
        name: "unknown key in a route",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      colour: blue
"#,
        expect: &[r#"route "a": key "colour": unknown key "colour""#],
    },
    Case {
        name: "unknown key in a route's health",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      health: { path: /, statuse: "200" }
"#,
        expect: &[r#"route "a": key "health.statuse": unknown key "statuse""#],
    },
    Case {
        name: "unknown key in a route's docker",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a, image: busybox }
      port: 80
"#,
        expect: &[r#"route "a": key "docker.image": unknown key "image""#],
    },
    Case {
        name: "unknown key in the engine's docker section",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  docker: { hots: "unix:///var/run/docker.sock" }
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &[r#"key "idlewatcher.docker.hots": unknown key "hots""#],
    },
    Case {
        name: "bad duration in a route",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: whoami
      hosts: [a.test]
      docker: { container: a }
      port: 80
      idle_timeout: 5x
"#,
        expect: &[
            r#"route "whoami": key "idle_timeout": invalid duration "5x" (expected e.g. 500ms, 30s, 5m, 1h)"#,
        ],
    },
    Case {
        name: "bad duration under defaults",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  defaults:
    wake_timeout: soon
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &[r#"key "idlewatcher.defaults.wake_timeout": invalid duration "soon""#],
    },
    Case {
        name: "negative duration",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      stop_timeout: -5s
"#,
        expect: &[r#"route "a": key "stop_timeout": invalid duration "-5s""#],
    },
    Case {
        name: "zero timeouts in a route",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      wake_timeout: 0
      stop_timeout: 0s
      retry_backoff: 0ms
"#,
        expect: &[
            r#"route "a": key "wake_timeout": must be greater than 0"#,
            r#"route "a": key "stop_timeout": must be greater than 0"#,
            r#"route "a": key "retry_backoff": must be greater than 0"#,
        ],
    },
    Case {
        name: "zero timeout under defaults",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  defaults:
    wake_timeout: 0s
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &[r#"key "idlewatcher.defaults.wake_timeout": must be greater than 0"#],
    },
    Case {
        name: "duplicate route names",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
    - name: a
      hosts: [b.test]
      docker: { container: b }
      port: 80
"#,
        expect: &[r#"route "routes[1]": key "name": duplicate route name "a""#],
    },
    Case {
        name: "duplicate hosts, compared case-insensitively",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [Shared.Test]
      docker: { container: a }
      port: 80
    - name: b
      hosts: [SHARED.test]
      docker: { container: b }
      port: 80
"#,
        expect: &[r#"route "b": key "hosts": host "shared.test" is already used by route "a""#],
    },
    Case {
        name: "empty hosts",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: []
      docker: { container: a }
      port: 80
"#,
        expect: &[r#"route "a": key "hosts": "#, "at least one host"],
    },
    Case {
        name: "no provider",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      port: 80
"#,
        expect: &[r#"route "a": key "docker": required key is missing"#],
    },
    Case {
        name: "two providers",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      proxmox: { node: pve, vmid: 101 }
      port: 80
"#,
        expect: &[r#"route "a": key "proxmox": "#, "both set"],
    },
    Case {
        name: "bad stop_method",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      stop_method: halt
"#,
        expect: &[r#"route "a": key "stop_method": invalid stop method "halt""#],
    },
    Case {
        name: "bad stop_signal",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      stop_signal: SIGFOO
"#,
        expect: &[r#"route "a": key "stop_signal": invalid signal"#],
    },
    Case {
        name: "start_endpoint not absolute",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      start_endpoint: api/wake
"#,
        expect: &[r#"route "a": key "start_endpoint": "#, "absolute path"],
    },
    Case {
        name: "depends_on naming no route",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: app
      hosts: [app.test]
      docker: { container: app }
      port: 80
      depends_on: ["nope:service_healthy"]
"#,
        expect: &[r#"route "app": key "depends_on": unknown route "nope""#],
    },
    Case {
        name: "dependency cycle",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      depends_on: [b]
    - name: b
      hosts: [b.test]
      docker: { container: b }
      port: 80
      depends_on: [c]
    - name: c
      hosts: [c.test]
      docker: { container: c }
      port: 80
      depends_on: [a]
"#,
        expect: &[
            r#"key "depends_on": dependency cycle: "#,
            "a -> b -> c -> a",
        ],
    },
    Case {
        name: "docker health combined with a probe",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      health: { docker: true, path: /up }
"#,
        expect: &[
            r#"route "a": key "health.docker""#,
            "docker: true cannot be combined with tcp, path or statuses",
        ],
    },
    Case {
        name: "dependency cycle through dependency-only routes",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: app
      hosts: [app.test]
      docker: { container: app }
      port: 80
      depends_on: [db]
    - name: db
      docker: { container: db }
      depends_on: [cache]
    - name: cache
      docker: { container: cache }
      depends_on: [db]
"#,
        expect: &[
            r#"key "depends_on": dependency cycle: "#,
            "db -> cache -> db",
        ],
    },
    Case {
        name: "malformed YAML",
        // Line 6 (the text starts with a newline, so line 1 is empty) is mis-indented.
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
   hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &["line 6, column 4: invalid YAML"],
    },
    Case {
        name: "admin API open to the network without a token",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  admin: { listen: "0.0.0.0:9090" }
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
"#,
        expect: &[
            r#"key "idlewatcher.admin.listen": "0.0.0.0:9090" is reachable from other machines: set token_file"#,
        ],
    },
];

/// The config text of a case, listening on `address`.
fn config_text(yaml: &str, address: SocketAddr) -> String {
    yaml.replace("@LISTEN@", &address.to_string())
}

fn run_check(path: &std::path::Path) -> Output {
    Command::new(binary())
        .args(["-t", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("the idlewatcher binary runs")
}

/// Runs the gateway (no `-t`) on `path`, trying to connect to `address` the whole time it runs.
/// Returns its output; panics (naming `case`) if it ever accepted a connection, or ran for more
/// than ten seconds.
fn run_gateway_expecting_no_listener(
    case: &str,
    path: &std::path::Path,
    address: SocketAddr,
) -> Output {
    let log_dir = tempfile::tempdir().expect("a temporary directory");
    let stderr_path = log_dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = Command::new(binary())
        .arg("-c")
        .arg(path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("the idlewatcher binary starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0u32;
    let status = loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(50)).is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "case {case:?}: the gateway accepted a connection on {address} with a bad config"
            );
        }
        attempts += 1;
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("case {case:?}: the gateway was still running after 10 s on a bad config");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(attempts >= 1);
    let refused = TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err();
    assert!(
        refused,
        "case {case:?}: something accepts connections on {address} after the gateway exited"
    );
    let stderr = std::fs::read(&stderr_path).expect("stderr read");
    let log = String::from_utf8_lossy(&stderr);
    for sign in SERVER_STARTED {
        assert!(
            !log.contains(sign),
            "case {case:?}: the gateway started its server on a bad config ({sign:?} logged):\n{log}"
        );
    }
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// What the gateway logs (at `RUST_LOG=info`) once it gets as far as starting its server; the
/// control in [`a_valid_config_starts_a_listener`] shows these do appear when it does.
const SERVER_STARTED: &[&str] = &["idlewatcher started", "Server starting", "Starting service"];

/// Runs every case through `-t` and through the gateway itself: both must fail, naming every
/// expected route and key (and, with `with_line`, the line and column), and the gateway must never
/// listen. Every failing case is reported, not only the first.
fn reject_every_case(cases: &[Case], with_line: bool) {
    let mut failures = Vec::new();
    for case in cases {
        let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let text = config_text(case.yaml, address);
        let (_dir, path) = write_config(&text);

        let mut judge = |what: &str, output: &Output| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                failures.push(format!(
                    "case {:?}: {what} exited {} on a bad config (want non-zero)\nstderr:\n{stderr}",
                    case.name, output.status
                ));
            }
            for needle in case.expect {
                if !stderr.contains(needle) {
                    failures.push(format!(
                        "case {:?}: {what}: stderr lacks {needle:?}\nstderr:\n{stderr}\nfile:{text}",
                        case.name
                    ));
                }
            }
            if with_line && !(stderr.contains("line ") && stderr.contains(", column ")) {
                failures.push(format!(
                    "case {:?}: {what}: no line given\nstderr:\n{stderr}",
                    case.name
                ));
            }
        };
        judge("`-t`", &run_check(&path));
        judge(
            "the gateway",
            &run_gateway_expecting_no_listener(case.name, &path, address),
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_bad_config_is_rejected_naming_route_and_key_and_never_listens() {
    reject_every_case(CASES, false);
}

#[test]
fn one_file_with_several_errors_reports_every_one() {
    let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let text = config_text(
        r#"
colour: blue
idlewatcher:
  listen: ["@LISTEN@"]
  defaults:
    wake_timeout: 0
  routes:
    - name: a
      hosts: [a.test]
      port: 80
      idle_timeout: 5x
      stop_method: halt
    - name: b
      hosts: [A.TEST]
      docker: { container: b }
      proxmox: { node: pve, vmid: 101 }
      port: 80
      start_endpoint: relative
      depends_on: [nope]
      stop_signal: SIGFOO
      health: { tcp: true, colour: red }
"#,
        address,
    );
    let (_dir, path) = write_config(&text);
    let expected = [
        r#"key "colour": unknown key"#,
        r#"key "idlewatcher.defaults.wake_timeout": must be greater than 0"#,
        r#"route "a": key "docker": required key is missing"#,
        r#"route "a": key "idle_timeout": invalid duration "5x""#,
        r#"route "a": key "stop_method": invalid stop method "halt""#,
        r#"route "b": key "hosts": host "a.test" is already used by route "a""#,
        r#"route "b": key "proxmox": "#,
        r#"route "b": key "start_endpoint": "#,
        r#"route "b": key "depends_on": unknown route "nope""#,
        r#"route "b": key "stop_signal": invalid signal"#,
        r#"route "b": key "health.colour": unknown key"#,
    ];
    for output in [
        run_check(&path),
        run_gateway_expecting_no_listener("several errors", &path, address),
    ] {
        assert!(!output.status.success(), "exit status {}", output.status);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|needle| !stderr.contains(needle))
            .collect();
        assert!(
            missing.is_empty(),
            "errors not reported: {missing:#?}\nstderr:\n{stderr}"
        );
        // One error per line: every expected error is on a line of its own.
        let error_lines = stderr
            .lines()
            .filter(|line| line.contains("key \""))
            .count();
        assert_eq!(
            error_lines,
            expected.len(),
            "one line per error, no more, no less:\n{stderr}"
        );
    }
}

/// Errors on three different lines (a bad duration in `defaults`, an unknown key in one route, a
/// bad port in another): `-t` lists all three, each with its own line and column.
#[test]
fn errors_on_three_lines_are_each_reported_with_their_line() {
    let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let text = config_text(
        r#"idlewatcher:
  listen: ["@LISTEN@"]
  defaults:
    idle_timeout: 5x
  routes:
    - name: a
      hosts: [a.test]
      docker: { container: a }
      port: 80
      colour: blue
    - name: b
      hosts: [b.test]
      docker: { container: b }
      port: 99999
"#,
        address,
    );
    let (_dir, path) = write_config(&text);
    let output = run_check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exit status {}\n{stderr}",
        output.status
    );
    let expected = [
        r#"line 4, column 19: key "idlewatcher.defaults.idle_timeout": invalid duration "5x""#,
        r#"line 10, column 7: route "a": key "colour": unknown key "colour""#,
        r#"line 14, column 13: route "b": key "port": expected an integer in 1..=65535, got 99999"#,
    ];
    for needle in expected {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
    let error_lines = stderr.lines().filter(|l| l.contains("key \"")).count();
    assert_eq!(
        error_lines, 3,
        "exactly the three errors, one per line:\n{stderr}"
    );
}

#[test]
fn a_valid_config_passes_the_check() {
    let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let text = config_text(
        r#"
version: 1
threads: 2
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 3
idlewatcher:
  listen: ["@LISTEN@"]
  path_prefix: "/.idlewatcher/"
  docker: { host: "unix:///var/run/docker.sock" }
  defaults:
    idle_timeout: 5m
    wake_timeout: 3m
    stop_method: stop
    stop_signal: SIGTERM
    stop_timeout: 30s
    max_waiters: 100
    retry_backoff: 1s
  routes:
    - name: db
      hosts: ["db.test"]
      docker: { container: db }
      port: 5432
      health: { tcp: true }
    - name: whoami
      hosts: ["whoami.test", "Who.Test"]
      docker: { container: whoami }
      port: 80
      start_endpoint: /
      no_loading_page: false
      depends_on: ["db:service_healthy"]
      health: { path: /, statuses: "200-499" }
      idle_timeout: 0
    - name: cache
      docker: { container: cache }
      health: { docker: true }
      idle_timeout: 0
"#,
        address,
    );
    let (_dir, path) = write_config(&text);
    let output = run_check(&path);
    assert!(
        output.status.success(),
        "exit status {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // `-t` only validates: nothing listens.
    assert!(TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err());
}

#[test]
fn the_shipped_configs_pass_the_check() {
    let file = "conf/idlewatcher.yaml";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    assert!(path.exists(), "{file} is missing");
    let output = run_check(&path);
    assert!(
        output.status.success(),
        "{file}: exit status {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The control for the "never listens" checks above: on a valid config the same binary, run the
/// same way, does listen on the port and does log that its server started.
#[test]
fn a_valid_config_starts_a_listener() {
    let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // No routes: no Docker engine needed.
    let text = config_text(
        "version: 1\nthreads: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n\
         idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes: []\n",
        address,
    );
    let (dir, path) = write_config(&text);
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(binary())
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("the idlewatcher binary starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let listened = loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(50)).is_ok() {
            break true;
        }
        if child.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > exit_deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(listened, "the gateway never listened on {address}:\n{log}");
    for sign in SERVER_STARTED {
        assert!(log.contains(sign), "{sign:?} not logged:\n{log}");
    }
}

/// Issue 10: every configuration error the Proxmox provider adds, rejected by `-t` and by the
/// gateway (which never listens, and never contacts the API).
const PROXMOX_CASES: &[Case] = &[
    Case {
        name: "proxmox url over plain http",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "http://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, insecure: true }
"#,
        expect: &[
            r#"key "idlewatcher.proxmox.url": "http://pve.lan:8006" must be an https:// URL"#,
        ],
    },
    Case {
        name: "proxmox token id without a token name",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam", token_secret: x, insecure: true }
"#,
        expect: &[
            r#"key "idlewatcher.proxmox.token_id": "root@pam" is not an API token id: expected user@realm!name"#,
        ],
    },
    Case {
        name: "proxmox without a secret",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", insecure: true }
"#,
        expect: &[
            r#"key "idlewatcher.proxmox.token_secret": required key is missing: set token_secret or token_secret_file"#,
        ],
    },
    Case {
        name: "proxmox with both secrets",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, token_secret_file: /etc/hostname, insecure: true }
"#,
        expect: &[
            r#"key "idlewatcher.proxmox.token_secret_file": token_secret and token_secret_file are both set"#,
        ],
    },
    Case {
        name: "proxmox secret file missing",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret_file: /nonexistent/pve.secret, insecure: true }
"#,
        expect: &[
            r#"key "idlewatcher.proxmox.token_secret_file": cannot read "/nonexistent/pve.secret""#,
        ],
    },
    Case {
        name: "proxmox without a trust option",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x }
"#,
        expect: &[r#"key "idlewatcher.proxmox.ca_file": required key is missing: set ca_file"#],
    },
    Case {
        name: "proxmox with two trust options",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, ca_file: /etc/hostname, insecure: true }
"#,
        expect: &[
            r#"key "idlewatcher.proxmox.insecure": ca_file and insecure are both set; set exactly one of ca_file, fingerprint, insecure"#,
        ],
    },
    Case {
        name: "proxmox fingerprint too short",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, fingerprint: "AB:CD" }
"#,
        expect: &[r#"key "idlewatcher.proxmox.fingerprint": "AB:CD" is not a SHA-256 fingerprint"#],
    },
    Case {
        name: "proxmox insecure false",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, insecure: false }
"#,
        expect: &[
            r#"key "idlewatcher.proxmox.insecure": insecure: false leaves no way to trust the API"#,
        ],
    },
    Case {
        name: "proxmox CA file missing",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, ca_file: /nonexistent/ca.pem }
"#,
        expect: &[r#"key "idlewatcher.proxmox.ca_file": cannot read "/nonexistent/ca.pem""#],
    },
    Case {
        name: "proxmox poll of zero",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, insecure: true, poll: 0s }
"#,
        expect: &[r#"key "idlewatcher.proxmox.poll""#],
    },
    Case {
        name: "proxmox route without a proxmox section",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: ct
      hosts: [ct.test]
      proxmox: { node: pve1, vmid: 101 }
      port: 80
"#,
        expect: &[
            r#"route "ct": key "proxmox": names a Proxmox guest, but there is no idlewatcher.proxmox section"#,
        ],
    },
    Case {
        name: "proxmox route paused",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, insecure: true }
  routes:
    - name: ct
      hosts: [ct.test]
      proxmox: { node: pve1, vmid: 101 }
      port: 80
      stop_method: pause
"#,
        expect: &[
            r#"route "ct": key "stop_method": proxmox guests cannot be paused: LXC suspend is an experimental CRIU checkpoint"#,
        ],
    },
    Case {
        name: "proxmox vmid out of range",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox: { url: "https://pve.lan:8006", token_id: "root@pam!iw", token_secret: x, insecure: true }
  routes:
    - name: ct
      hosts: [ct.test]
      proxmox: { node: pve1, vmid: 99 }
      port: 80
"#,
        expect: &[r#"route "ct": key "proxmox.vmid": expected an integer in 100..=999999999"#],
    },
];

/// Bad `streams:` (issue 11): each error names the route, the key and the line.
const STREAM_CASES: &[Case] = &[
    Case {
        name: "stream listen address used twice",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      docker: { container: a }
      streams: [{ listen: "127.0.0.1:5432", port: 5432 }]
    - name: b
      docker: { container: b }
      streams:
        - { listen: "0.0.0.0:5432", port: 5432 }
"#,
        expect: &[
            r#"line 11, column 21: route "b": key "streams.listen": tcp address 0.0.0.0:5432 clashes with 127.0.0.1:5432, already used by route "a""#,
        ],
    },
    Case {
        name: "stream listen address of the HTTP listener",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      docker: { container: a }
      streams: [{ listen: "@LISTEN@", port: 80 }]
"#,
        expect: &[
            r#"line 7, column 27: route "a": key "streams.listen": tcp address "#,
            "the HTTP listen address (idlewatcher.listen)",
        ],
    },
    Case {
        name: "stream ports out of range",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: a
      docker: { container: a }
      streams:
        - { listen: "127.0.0.1:0", port: 70000 }
"#,
        expect: &[
            r#"line 8, column 21: route "a": key "streams.listen": invalid address "127.0.0.1:0": the port must be in 1..=65535"#,
            r#"line 8, column 42: route "a": key "streams.port": expected an integer in 1..=65535"#,
        ],
    },
    Case {
        name: "udp stream without a readiness rule",
        yaml: r#"
idlewatcher:
  listen: ["@LISTEN@"]
  routes:
    - name: dns
      docker: { container: dns }
      streams:
        - { listen: "127.0.0.1:5353", port: 53, protocol: udp }
"#,
        expect: &[
            r#"line 8, column 21: route "dns": key "ready_after": a UDP stream cannot be probed: set ready_after"#,
        ],
    },
];

#[test]
fn every_bad_stream_config_is_rejected_naming_route_key_and_line() {
    reject_every_case(STREAM_CASES, true);
}

#[test]
fn every_bad_proxmox_config_is_rejected_naming_its_key_and_never_listens() {
    reject_every_case(PROXMOX_CASES, true);
}

#[test]
fn a_valid_proxmox_config_passes_the_check_without_showing_the_secret() {
    let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let text = config_text(
        r#"
idlewatcher:
  listen: ["@LISTEN@"]
  proxmox:
    url: "https://pve.lan:8006"
    token_id: "root@pam!iw"
    token_secret: "very-secret-value"
    fingerprint: "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"
    poll: 5s
  routes:
    - name: ct
      hosts: [ct.test]
      proxmox: { node: pve1, vmid: 101 }
      port: 80
      stop_method: kill
"#,
        address,
    );
    let (_dir, path) = write_config(&text);
    let output = run_check(&path);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{all}");
    assert!(!all.contains("very-secret-value"), "{all}");
}
