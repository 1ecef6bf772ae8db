//! The config module's unit tests: whole documents through [`parse`], checking every key, every
//! default and every error (its route, key, message and position).
//!
//! Kept in one file, beside the facade they exercise, because most tests feed a whole document
//! through [`parse`] rather than one submodule.

use std::path::Path;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use strsim::osa_distance as edit_distance;

use super::fields::closest;
use super::route::default_health;
use super::server::pingora_keys;
use super::*;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("expected errors, but this config is valid:\n{text}"),
        Err(ConfigErrors(errors)) => {
            assert!(!errors.is_empty(), "ConfigErrors must never be empty");
            errors
        }
    }
}

fn valid(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}\n---\n{text}"))
}

/// Asserts one of `errors` has exactly this route and key and a message containing `needle`.
#[track_caller]
fn has(errors: &[ConfigError], route: Option<&str>, key: &str, needle: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.route.as_deref() == route && e.key == key && e.message.contains(needle)),
        "no error with route {route:?}, key {key:?}, message containing {needle:?}; got:\n{}",
        ConfigErrors(errors.to_vec())
    );
}

/// `idlewatcher:` with these routes (a YAML list written flush-left).
fn routes(list: &str) -> String {
    let mut text = String::from("idlewatcher:\n  routes:\n");
    for line in list.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A valid route named `name`, plus extra route keys (flush-left `key: value` lines).
fn route(name: &str, extra: &str) -> String {
    let mut text = format!(
            "- name: {name}\n  hosts: [{name}.localhost]\n  docker: {{ container: {name} }}\n  port: 80\n"
        );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn one(extra: &str) -> String {
    routes(&route("a", extra))
}

fn server(config: &Config) -> ServerConf {
    ServerConf::from_yaml(&config.server_yaml).expect("server_yaml is valid for Pingora")
}

const FULL: &str = r#"
version: 1
threads: 2
grace_period_seconds: 3
idlewatcher:
  listen: ["0.0.0.0:8080", "[::1]:9090"]
  path_prefix: /_iw
  docker: { host: "tcp://127.0.0.1:2375" }
  proxmox:
    url: "https://pve.lan:8006/"
    token_id: "root@pam!idlewatcher"
    token_secret: "not-a-real-secret"
    fingerprint: "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89"
    poll: 5s
  tick: 500ms
  max_concurrent_stops: 4
  defaults:
    idle_timeout: 5m
    wake_timeout: 3m
    stop_method: pause
    stop_signal: TERM
    stop_timeout: 30s
    max_waiters: 50
    retry_backoff: 2s
    health: { path: /healthz, statuses: "200-299,301" }
    no_loading_page: true
  routes:
    - name: db
      hosts: [DB.Localhost]
      proxmox: { node: pve, vmid: 101 }
      upstream: "10.0.0.5:5432"
      health: { tcp: true }
      stop_method: stop
    - name: whoami
      hosts: ["whoami.localhost", "Who.localhost"]
      docker: { container: whoami }
      port: 80
      start_endpoint: /
      no_loading_page: false
      depends_on: ["db:service_healthy"]
      health: { path: /, statuses: [204, "300-302"] }
      idle_timeout: 1h30m
      wake_timeout: 90
      stop_method: kill
      stop_signal: sigkill
      stop_timeout: "15"
      max_waiters: 7
      retry_backoff: 250ms
"#;

#[test]
fn full_config_resolves_every_key() {
    let config = valid(FULL);
    let g = &config.gateway;
    assert_eq!(g.listen, ["0.0.0.0:8080", "[::1]:9090"]);
    assert_eq!(g.path_prefix, "/_iw/");
    assert_eq!(g.docker.host.as_deref(), Some("tcp://127.0.0.1:2375"));
    assert_eq!(g.tick, Duration::from_millis(500));
    assert_eq!(g.max_concurrent_stops, 4);
    let proxmox = g.proxmox.as_ref().expect("the proxmox section");
    assert_eq!(proxmox.url, "https://pve.lan:8006");
    assert_eq!(proxmox.token_id, "root@pam!idlewatcher");
    assert_eq!(
        proxmox.token_secret,
        TokenSecret::Inline("not-a-real-secret".into())
    );
    let mut pin = [0u8; 32];
    for chunk in pin.chunks_mut(8) {
        chunk.copy_from_slice(&[0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89]);
    }
    assert_eq!(proxmox.trust, PveTrust::Fingerprint(pin));
    assert_eq!(proxmox.poll, Duration::from_secs(5));
    assert!(!format!("{proxmox:?}").contains("not-a-real-secret"));
    let db = RouteConfig {
        name: "db".into(),
        hosts: vec!["db.localhost".into()],
        backend: BackendConfig::Proxmox {
            node: "pve".into(),
            vmid: 101,
        },
        port: None,
        upstream: Some("10.0.0.5:5432".into()),
        start_endpoint: None,
        no_loading_page: true,
        show_details: false,
        ignore_user_agents: vec![],
        depends_on: vec![],
        health: HealthCheck::Tcp,
        health_set: true,
        idle_timeout: Duration::from_secs(300),
        wake_timeout: Duration::from_secs(180),
        stop_method: StopMethod::Stop,
        stop_signal: Some("SIGTERM".into()),
        stop_timeout: Duration::from_secs(30),
        max_waiters: 50,
        retry_backoff: Duration::from_secs(2),
        streams: Vec::new(),
        stream_settings: StreamSettings::default(),
        written: Written::default(),
    };
    let whoami = RouteConfig {
        name: "whoami".into(),
        hosts: vec!["whoami.localhost".into(), "who.localhost".into()],
        backend: BackendConfig::Docker {
            container: "whoami".into(),
            engine: DockerEngine {
                host: Some("tcp://127.0.0.1:2375".into()),
                cert_path: None,
            },
        },
        port: Some(80),
        upstream: None,
        start_endpoint: Some("/".into()),
        no_loading_page: false,
        show_details: false,
        ignore_user_agents: vec![],
        depends_on: vec![Dependency {
            route: "db".into(),
            condition: DependencyCondition::Healthy,
        }],
        health: HealthCheck::Http {
            path: "/".into(),
            statuses: vec![(204, 204), (300, 302)],
        },
        health_set: true,
        idle_timeout: Duration::from_secs(5400),
        wake_timeout: Duration::from_secs(90),
        stop_method: StopMethod::Kill,
        stop_signal: Some("SIGKILL".into()),
        stop_timeout: Duration::from_secs(15),
        max_waiters: 7,
        retry_backoff: Duration::from_millis(250),
        streams: Vec::new(),
        stream_settings: StreamSettings::default(),
        written: Written::default(),
    };
    assert_eq!(g.routes, vec![db, whoami]);

    let s = server(&config);
    assert_eq!(s.version, 1);
    assert_eq!(s.threads, 2, "user value kept");
    assert_eq!(s.grace_period_seconds, Some(3), "user value kept");
    assert_eq!(s.graceful_shutdown_timeout_seconds, Some(3), "our default");
    assert_eq!(s.upstream_keepalive_pool_size, 1024, "our default");
    assert!(!config.server_yaml.contains("idlewatcher"));
}

#[test]
fn empty_section_gets_every_default_and_no_routes() {
    let config = valid("idlewatcher: {}\n");
    let g = &config.gateway;
    assert_eq!(g.listen, ["0.0.0.0:8080"]);
    assert_eq!(g.path_prefix, "/.idlewatcher/");
    assert_eq!(g.docker, DockerEngine::default());
    assert_eq!(g.tick, Duration::from_secs(1));
    assert_eq!(g.max_concurrent_stops, 8);
    assert!(g.routes.is_empty());
    let s = server(&config);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(s.threads, cores);
    assert_eq!(s.grace_period_seconds, Some(1));
    assert_eq!(s.graceful_shutdown_timeout_seconds, Some(3));
    assert_eq!(s.upstream_keepalive_pool_size, 1024);
    // Explicit nulls and an empty list mean the same as nothing.
    assert!(valid("idlewatcher:\n  routes: []\n  docker:\n")
        .gateway
        .routes
        .is_empty());
}

#[test]
fn route_defaults_are_built_in_when_nothing_is_set() {
    let config = valid(&one(""));
    let r = &config.gateway.routes[0];
    assert_eq!(r.idle_timeout, Duration::from_secs(15 * 60));
    assert_eq!(r.wake_timeout, Duration::from_secs(60));
    assert_eq!(r.stop_method, StopMethod::Stop);
    assert_eq!(r.stop_signal, None);
    assert_eq!(r.stop_timeout, Duration::from_secs(10));
    assert_eq!(r.max_waiters, 10_000);
    assert_eq!(r.retry_backoff, Duration::from_secs(1));
    assert_eq!(
        r.health,
        HealthCheck::Http {
            path: "/".into(),
            statuses: vec![(200, 499)]
        }
    );
    assert!(!r.no_loading_page);
    assert_eq!(r.start_endpoint, None);
    assert!(r.depends_on.is_empty());
}

#[test]
fn defaults_are_inherited_and_overridden_per_route() {
    let text = r#"
idlewatcher:
  defaults:
    idle_timeout: 5m
    stop_method: pause
    health: { tcp: true }
    max_waiters: 3
  routes:
    - name: a
      hosts: a.localhost
      docker: { container: a }
      port: 80
    - name: b
      hosts: b.localhost
      docker: { container: b }
      port: 80
      idle_timeout: 1h
      stop_method: stop
      health: { path: /up }
"#;
    let config = valid(text);
    let (a, b) = (&config.gateway.routes[0], &config.gateway.routes[1]);
    assert_eq!(a.idle_timeout, Duration::from_secs(300));
    assert_eq!(a.stop_method, StopMethod::Pause);
    assert_eq!(a.health, HealthCheck::Tcp);
    assert_eq!(a.max_waiters, 3);
    assert_eq!(a.wake_timeout, Duration::from_secs(60), "built-in default");
    assert_eq!(b.idle_timeout, Duration::from_secs(3600));
    assert_eq!(b.stop_method, StopMethod::Stop);
    assert_eq!(
        b.health,
        HealthCheck::Http {
            path: "/up".into(),
            statuses: vec![(200, 499)]
        },
        "a route's health replaces the default's as a whole"
    );
    assert_eq!(b.max_waiters, 3, "still inherited");
}

#[test]
fn durations_accept_units_and_bare_seconds() {
    for (text, expected) in [
        ("500ms", Duration::from_millis(500)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("1h30m", Duration::from_secs(5400)),
        ("45", Duration::from_secs(45)),
        ("\"45\"", Duration::from_secs(45)),
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
    ] {
        let config = valid(&one(&format!("idle_timeout: {text}")));
        assert_eq!(config.gateway.routes[0].idle_timeout, expected, "{text}");
    }
}

#[test]
fn bad_durations_name_route_and_key() {
    let e = errors(&routes(&route("whoami", "idle_timeout: 5x")));
    assert_eq!(
        e[0].to_string(),
        r#"line 7, column 21: route "whoami": key "idle_timeout": invalid duration "5x" (expected e.g. 500ms, 30s, 5m, 1h)"#
    );
    for bad in ["-1", "1.5", "soon", "5 parsecs", "[1]"] {
        let e = errors(&one(&format!("wake_timeout: {bad}")));
        has(&e, Some("a"), "wake_timeout", "duration");
    }
    let e = errors("idlewatcher:\n  defaults:\n    idle_timeout: 5x\n");
    has(
        &e,
        None,
        "idlewatcher.defaults.idle_timeout",
        r#"invalid duration "5x""#,
    );
}

#[test]
fn timeouts_must_be_positive_except_idle() {
    let e = errors(&one(
        "wake_timeout: 0\nstop_timeout: 0s\nretry_backoff: 0ms\nmax_waiters: 0",
    ));
    has(&e, Some("a"), "wake_timeout", "must be greater than 0");
    has(&e, Some("a"), "stop_timeout", "must be greater than 0");
    has(&e, Some("a"), "retry_backoff", "must be greater than 0");
    has(&e, Some("a"), "max_waiters", "expected an integer >= 1");
    assert_eq!(e.len(), 4, "{}", ConfigErrors(e.clone()));
    let e = errors("idlewatcher:\n  defaults:\n    wake_timeout: 0\n");
    has(
        &e,
        None,
        "idlewatcher.defaults.wake_timeout",
        "must be greater than 0",
    );
}

#[test]
fn tick_and_max_concurrent_stops_are_bounded() {
    let e = errors("idlewatcher:\n  tick: 0\n  max_concurrent_stops: 0\n");
    has(&e, None, "idlewatcher.tick", "must be greater than 0");
    has(&e, None, "idlewatcher.max_concurrent_stops", ">= 1");
    let e = errors("idlewatcher:\n  tick: 61s\n");
    has(&e, None, "idlewatcher.tick", "at most 60s");
    assert_eq!(
        valid("idlewatcher:\n  tick: 60s\n").gateway.tick,
        Duration::from_secs(60)
    );
}

#[test]
fn stop_method_and_signal() {
    let r = &valid(&one("stop_method: KILL\nstop_signal: 9"))
        .gateway
        .routes[0];
    assert_eq!(r.stop_method, StopMethod::Kill);
    assert_eq!(r.stop_signal.as_deref(), Some("9"));
    for (text, expected) in [
        ("SIGTERM", "SIGTERM"),
        ("TERM", "SIGTERM"),
        ("sigterm", "SIGTERM"),
        ("usr1", "SIGUSR1"),
        ("SigWinch", "SIGWINCH"),
        ("\"15\"", "15"),
        ("64", "64"),
    ] {
        let config = valid(&one(&format!("stop_signal: {text}")));
        assert_eq!(
            config.gateway.routes[0].stop_signal.as_deref(),
            Some(expected)
        );
    }
    let e = errors(&one("stop_method: halt"));
    has(
        &e,
        Some("a"),
        "stop_method",
        r#"invalid stop method "halt""#,
    );
    for bad in ["SIGFOO", "0", "65", "SIG", "[TERM]", "true"] {
        let e = errors(&one(&format!("stop_signal: {bad}")));
        has(&e, Some("a"), "stop_signal", "invalid signal");
    }
    let e = errors("idlewatcher:\n  defaults:\n    stop_method: nap\n");
    has(
        &e,
        None,
        "idlewatcher.defaults.stop_method",
        "pause, stop or kill",
    );
}

#[test]
fn health_forms_and_errors() {
    let health = |extra: &str| valid(&one(extra)).gateway.routes[0].health.clone();
    assert_eq!(
        health("health: { statuses: 204 }"),
        HealthCheck::Http {
            path: "/".into(),
            statuses: vec![(204, 204)]
        }
    );
    assert_eq!(
        health("health: { path: /hz, statuses: \"200-299, 301\" }"),
        HealthCheck::Http {
            path: "/hz".into(),
            statuses: vec![(200, 299), (301, 301)]
        }
    );
    assert_eq!(health("health: { tcp: false }"), default_health());
    assert_eq!(health("health: { tcp: true }"), HealthCheck::Tcp);

    let e = errors(&one("health: { tcp: true, path: /x }"));
    has(&e, Some("a"), "health.tcp", "cannot be combined");
    let e = errors(&one("health: { path: healthz, statuses: \"200-abc\" }"));
    has(&e, Some("a"), "health.path", "absolute path");
    has(
        &e,
        Some("a"),
        "health.statuses",
        r#"invalid status code "abc""#,
    );
    for bad in [
        "600",
        "99",
        "\"300-200\"",
        "\"\"",
        "[]",
        "{ a: 1 }",
        "\"200,,300\"",
    ] {
        let e = errors(&one(&format!("health: {{ statuses: {bad} }}")));
        has(&e, Some("a"), "health.statuses", "");
    }
    let e = errors(&one("health: { statuses: \"300-200\" }"));
    has(&e, Some("a"), "health.statuses", "low end above high end");
    let e = errors(&one("health: { tcp: yes please }"));
    has(&e, Some("a"), "health.tcp", "expected true or false");
    let e = errors(&one("health: /healthz"));
    has(&e, Some("a"), "health", "expected a mapping");
}

#[test]
fn listen_forms_and_errors() {
    let listen = |v: &str| {
        valid(&format!("idlewatcher:\n  listen: {v}\n"))
            .gateway
            .listen
    };
    assert_eq!(listen("127.0.0.1:81"), ["127.0.0.1:81"]);
    assert_eq!(
        listen("[\"[::]:80\", 0.0.0.0:80]"),
        ["[::]:80", "0.0.0.0:80"]
    );
    let e = errors("idlewatcher:\n  listen: []\n");
    has(&e, None, "idlewatcher.listen", "at least one address");
    let e = errors("idlewatcher:\n  listen: [localhost:80, 1.2.3.4, \"1.2.3.4:99999\"]\n");
    let listen_errors = e.iter().filter(|e| e.key == "idlewatcher.listen").count();
    assert_eq!(listen_errors, 3, "every bad address reported");
    has(
        &e,
        None,
        "idlewatcher.listen",
        r#"invalid address "localhost:80""#,
    );
    let e = errors("idlewatcher:\n  listen: [\"0.0.0.0:80\", \"0.0.0.0:80\"]\n");
    has(&e, None, "idlewatcher.listen", "listed twice");
    let e = errors("idlewatcher:\n  listen: { a: 1 }\n");
    has(&e, None, "idlewatcher.listen", "expected a list");
}

#[test]
fn path_prefix_is_normalised_and_checked() {
    let prefix = |v: &str| {
        valid(&format!("idlewatcher:\n  path_prefix: {v}\n"))
            .gateway
            .path_prefix
    };
    assert_eq!(prefix("/_iw"), "/_iw/");
    assert_eq!(prefix("/a-b.c_d~$/x/"), "/a-b.c_d~$/x/");
    for (bad, needle) in [
        ("_iw/", "must start with"),
        ("\"/a b/\"", "invalid character ' '"),
        ("/a?b", "invalid character '?'"),
        ("/", "shadow every path"),
        ("42", "expected a string"),
    ] {
        let e = errors(&format!("idlewatcher:\n  path_prefix: {bad}\n"));
        has(&e, None, "idlewatcher.path_prefix", needle);
    }
}

#[test]
fn docker_routes_run_on_their_own_engine_or_the_gateways() {
    let config = valid(
        "idlewatcher:\n  docker: { host: \"tcp://nas:2376\" }\n  routes:\n    - { name: a, hosts: [a.test], port: 80, docker: { container: web }, idle_timeout: 1m }\n    - { name: b, hosts: [b.test], port: 80, docker: { container: web, host: \"unix:///run/podman/podman.sock\" }, idle_timeout: 2m }\n",
    );
    let engines: Vec<_> = config
        .gateway
        .routes
        .iter()
        .map(|route| match &route.backend {
            BackendConfig::Docker { engine, .. } => engine.host.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        engines,
        [
            Some("tcp://nas:2376".to_string()),
            Some("unix:///run/podman/podman.sock".to_string())
        ],
        "the same name on two engines is two backends (so their idle_timeouts may differ)"
    );
    // The same engine written out is the same backend: the keys must agree.
    let e = errors(
        "idlewatcher:\n  docker: { host: \"tcp://nas:2376\" }\n  routes:\n    - { name: a, hosts: [a.test], port: 80, docker: { container: web }, idle_timeout: 1m }\n    - { name: b, hosts: [b.test], port: 80, docker: { container: web, host: \"tcp://nas:2376\" }, idle_timeout: 2m }\n",
    );
    has(&e, Some("b"), "idle_timeout", "");
}

#[test]
fn docker_tls_is_for_tcp_engines_and_its_files_must_exist() {
    let e = errors(
        "idlewatcher:\n  docker: { host: \"unix:///x.sock\", tls: { cert_path: /nonexistent-certs } }\n",
    );
    has(
        &e,
        None,
        "idlewatcher.docker.tls.cert_path",
        "/nonexistent-certs",
    );
    let e = errors("idlewatcher:\n  docker: { tls: {} }\n");
    has(
        &e,
        None,
        "idlewatcher.docker.tls.cert_path",
        "required key is missing",
    );
}

#[test]
fn docker_host_schemes() {
    for ok in [
        "unix:///var/run/docker.sock",
        "tcp://1.2.3.4:2375",
        "http://h:2375",
        "https://h:2376",
    ] {
        let config = valid(&format!("idlewatcher:\n  docker: {{ host: \"{ok}\" }}\n"));
        assert_eq!(config.gateway.docker.host.as_deref(), Some(ok));
    }
    for bad in ["ftp://h", "/var/run/docker.sock", "unix://", "\"\""] {
        let e = errors(&format!("idlewatcher:\n  docker: {{ host: {bad} }}\n"));
        has(&e, None, "idlewatcher.docker.host", "");
    }
}

#[test]
fn yaml_syntax_error_reports_its_line() {
    let text =
        "idlewatcher:\n  listen: [\"0.0.0.0:8080\"]\n  routes:\n    - name: a\n   bad indent: x\n";
    let e = errors(text);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, Some(5), "{}", e[0]);
    assert_eq!(e[0].key, "");
    assert!(
        e[0].to_string()
            .starts_with("line 5, column 4: invalid YAML: "),
        "{}",
        e[0]
    );
    let e = errors("idlewatcher:\n  tick: 1s\n  tick: 2s\n");
    assert!(
        e[0].line.is_some() && e[0].message.contains("duplicate"),
        "{}",
        e[0]
    );
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let text = r#"
threds: 2
routes: []
idlewatcher:
  listne: ["0.0.0.0:8080"]
  idle_timeout: 5m
  docker: { hots: "unix:///x" }
  defaults:
    idle_timout: 5m
    hosts: [x]
  routes:
    - name: a
      hosts: [a.localhost]
      docker: { containr: a }
      port: 80
      idle_timout: 5m
      health: { statuse: "200" }
    - name: b
      hosts: [b.localhost]
      proxmox: { node: pve, vmid: 101, pool: x }
      port: 80
"#;
    let e = errors(text);
    has(
        &e,
        None,
        "threds",
        r#"unknown key "threds" (did you mean "threads"?)"#,
    );
    has(&e, None, "routes", "it belongs under idlewatcher:");
    has(
        &e,
        None,
        "idlewatcher.listne",
        r#"(did you mean "listen"?)"#,
    );
    has(
        &e,
        None,
        "idlewatcher.idle_timeout",
        "set it under defaults: or in a route",
    );
    has(
        &e,
        None,
        "idlewatcher.docker.hots",
        r#"(did you mean "host"?)"#,
    );
    has(
        &e,
        None,
        "idlewatcher.defaults.idle_timout",
        r#"(did you mean "idle_timeout"?)"#,
    );
    has(
        &e,
        None,
        "idlewatcher.defaults.hosts",
        "only a route may set it",
    );
    has(
        &e,
        Some("a"),
        "idle_timout",
        r#"unknown key "idle_timout" (did you mean "idle_timeout"?)"#,
    );
    has(
        &e,
        Some("a"),
        "health.statuse",
        r#"(did you mean "statuses"?)"#,
    );
    has(
        &e,
        Some("a"),
        "docker.containr",
        r#"(did you mean "container"?)"#,
    );
    has(&e, Some("a"), "docker.container", "required key is missing");
    has(&e, Some("b"), "proxmox.pool", r#"unknown key "pool""#);
    let e = errors("routez: 1\nidlewatcher: {}\n");
    has(
        &e,
        None,
        "routez",
        r#"(did you mean "routes"? it belongs under idlewatcher:)"#,
    );
    let e = errors("1: 2\nidlewatcher: {}\nzzzzzzzz: 1\n");
    has(&e, None, "1", "keys must be strings");
    has(&e, None, "zzzzzzzz", r#"unknown key "zzzzzzzz""#);
}

#[test]
fn idlewatcher_section_is_required_and_shaped() {
    has(
        &errors("threads: 2\n"),
        None,
        "idlewatcher",
        "required key is missing",
    );
    has(&errors(""), None, "idlewatcher", "required key is missing");
    has(
        &errors("idlewatcher:\n"),
        None,
        "idlewatcher",
        "required key is missing",
    );
    let e = errors("idlewatcher: [1]\n");
    has(&e, None, "idlewatcher", "expected a mapping");
    assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
    has(&errors("- 1\n"), None, "", "must be a mapping");
    has(
        &errors("idlewatcher:\n  routes: { a: 1 }\n"),
        None,
        "idlewatcher.routes",
        "expected a list of routes",
    );
    has(
        &errors(&routes("- just a string")),
        Some("routes[0]"),
        "",
        "expected a mapping",
    );
    has(
        &errors("idlewatcher:\n  defaults: 5m\n"),
        None,
        "idlewatcher.defaults",
        "expected a mapping",
    );
}

#[test]
fn server_keys_are_checked_by_pingora() {
    let e = errors("threads: many\ndaemon: 3\nidlewatcher: {}\n");
    has(&e, None, "threads", "expected usize");
    has(&e, None, "daemon", "expected a boolean");
    has(
        &errors("threads: 0\nidlewatcher: {}\n"),
        None,
        "threads",
        "at least 1",
    );
    let e = errors("max_blocking_threads: 0\nidlewatcher: {}\n");
    has(
        &e,
        None,
        "(server)",
        "max_blocking_threads must be greater than zero",
    );
    let config =
        valid("pid_file: /run/iw.pid\nthreads: 3\ngrace_period_seconds:\nidlewatcher: {}\n");
    let s = server(&config);
    assert_eq!(s.pid_file, "/run/iw.pid");
    assert_eq!(s.threads, 3);
    assert_eq!(s.grace_period_seconds, Some(1), "null means not set");
    assert!(pingora_keys().contains(&"upgrade_sock".to_string()));
    assert!(!pingora_keys().contains(&"idlewatcher".to_string()));
}

#[test]
fn names_are_required_and_unique() {
    let text = routes(&format!(
        "{}{}{}",
        route("a", ""),
        route("a", ""),
        route("b", "")
    ));
    let e = errors(&text);
    has(
        &e,
        Some("routes[1]"),
        "name",
        r#"duplicate route name "a" (already used by routes[0])"#,
    );
    // The duplicate's other errors are labelled by index too.
    has(
        &e,
        Some("routes[1]"),
        "hosts",
        r#"host "a.localhost" is already used by route "a""#,
    );

    let e = errors(&routes("- hosts: [x.localhost]\n  docker: { container: x }\n  port: 80\n- name: \"\"\n  hosts: [y.localhost]\n  docker: { container: y }\n  port: 80\n- name: 7\n  hosts: [z.localhost]\n  docker: { container: z }\n  port: 80\n"));
    has(&e, Some("routes[0]"), "name", "required key is missing");
    has(&e, Some("routes[1]"), "name", "must not be empty");
    has(&e, Some("routes[2]"), "name", "expected a string, got 7");
}

#[test]
fn hosts_are_lowercased_unique_and_plain() {
    let r = &valid(&routes(
        "- name: a\n  hosts: A.LocalHost\n  docker: { container: a }\n  port: 80\n",
    ))
    .gateway
    .routes[0];
    assert_eq!(r.hosts, ["a.localhost"]);
    let r = &valid(&routes("- name: a\n  hosts: [\"[::1]\", 10.0.0.1, my_host-1.lan]\n  docker: { container: a }\n  port: 80\n")).gateway.routes[0];
    assert_eq!(r.hosts, ["[::1]", "10.0.0.1", "my_host-1.lan"]);

    let text = routes(
            "- name: a\n  hosts: [Shared.localhost, x.localhost, X.LOCALHOST]\n  docker: { container: a }\n  port: 80\n\
             - name: b\n  hosts: [shared.LOCALHOST]\n  docker: { container: b }\n  port: 80\n",
        );
    let e = errors(&text);
    has(
        &e,
        Some("b"),
        "hosts",
        r#"host "shared.localhost" is already used by route "a""#,
    );
    has(
        &e,
        Some("a"),
        "hosts",
        r#"host "x.localhost" is listed twice"#,
    );

    let bad_hosts = r#"[ "a.localhost:8080", "http://a.localhost", "a.localhost/app", "a b", "", "::1", "[::1]:80", "*.x" ]"#;
    let e = errors(&routes(&format!(
        "- name: a\n  hosts: {bad_hosts}\n  docker: {{ container: a }}\n  port: 80\n"
    )));
    for needle in [
        "remove the port",
        "remove the scheme",
        "remove the path",
        "whitespace",
        "empty",
        "in brackets",
        "invalid character '*'",
    ] {
        has(&e, Some("a"), "hosts", needle);
    }
    assert_eq!(e.iter().filter(|e| e.key == "hosts").count(), 8);

    let e = errors(&routes("- name: a\n  hosts: []\n  docker: { container: a }\n  port: 80\n- name: b\n  docker: { container: b }\n  port: 80\n"));
    has(&e, Some("a"), "hosts", "at least one host");
    assert!(
        !e.iter().any(|e| e.route.as_deref() == Some("b")),
        "no hosts: a dependency-only backend, valid: {e:?}"
    );
}

#[test]
fn a_dependency_only_route_needs_no_hosts_nor_port() {
    let config = valid(&routes(
        "- name: app\n  hosts: [app.localhost]\n  docker: { container: app }\n  port: 80\n  depends_on: [db]\n- name: db\n  docker: { container: db }\n  health: { docker: true }\n- name: cache\n  docker: { container: cache }\n",
    ));
    let db = &config.gateway.routes[1];
    assert!(db.hosts.is_empty());
    assert_eq!((db.port, db.upstream.as_deref()), (None, None));
    assert_eq!(db.health, HealthCheck::Docker);
    assert!(db.health_set);
    assert!(!config.gateway.routes[2].health_set, "health not written");
    assert!(config.gateway.routes[0].hosts.len() == 1);
}

#[test]
fn docker_health_combined_with_a_probe_is_an_error() {
    let e = errors(&routes(
        "- name: a\n  hosts: [a.localhost]\n  docker: { container: a }\n  port: 80\n  health: { docker: true, tcp: true }\n",
    ));
    has(&e, Some("a"), "health.docker", "cannot be combined");
}

#[test]
fn exactly_one_backend() {
    let e = errors(&routes("- name: a\n  hosts: [a.localhost]\n  port: 80\n"));
    has(
        &e,
        Some("a"),
        "docker",
        "required key is missing: set docker",
    );
    let e = errors(&routes("- name: a\n  hosts: [a.localhost]\n  docker: { container: a }\n  proxmox: { node: pve, vmid: 101 }\n  port: 80\n"));
    has(&e, Some("a"), "proxmox", "both set");
    assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));

    let e = errors(&routes("- name: a\n  hosts: [a.localhost]\n  docker: { container: \"\" }\n  port: 80\n- name: b\n  hosts: [b.localhost]\n  proxmox: { vmid: 99 }\n  port: 80\n- name: c\n  hosts: [c.localhost]\n  proxmox: { node: pve, vmid: 1000000000 }\n  port: 80\n- name: d\n  hosts: [d.localhost]\n  docker: whoami\n  port: 80\n"));
    has(&e, Some("a"), "docker.container", "must not be empty");
    has(&e, Some("b"), "proxmox.node", "required key is missing");
    has(&e, Some("b"), "proxmox.vmid", "100..=999999999");
    has(&e, Some("c"), "proxmox.vmid", "100..=999999999");
    has(&e, Some("d"), "docker", "expected a mapping");
}

#[test]
fn exactly_one_of_port_and_upstream() {
    let e = errors(&routes(
        "- name: a\n  hosts: [a.localhost]\n  docker: { container: a }\n",
    ));
    has(&e, Some("a"), "port", "required key is missing: set port");
    let e = errors(&one("upstream: \"127.0.0.1:81\""));
    has(&e, Some("a"), "upstream", "both set");
    for bad in ["0", "65536", "http", "-1"] {
        has(
            &errors(&routes(&format!(
                "- name: a\n  hosts: [a.localhost]\n  docker: {{ container: a }}\n  port: {bad}\n"
            ))),
            Some("a"),
            "port",
            "1..=65535",
        );
    }
    for bad in [
        "localhost",
        "\"h:0\"",
        "\"h:http\"",
        "\":80\"",
        "\"http://h:80\"",
        "\"::1:80\"",
    ] {
        has(&errors(&routes(&format!("- name: a\n  hosts: [a.localhost]\n  docker: {{ container: a }}\n  upstream: {bad}\n"))), Some("a"), "upstream", "invalid upstream");
    }
    let r = &valid(&routes("- name: a\n  hosts: [a.localhost]\n  docker: { container: a }\n  upstream: \"[::1]:8081\"\n")).gateway.routes[0];
    assert_eq!((r.port, r.upstream.as_deref()), (None, Some("[::1]:8081")));
}

#[test]
fn start_endpoint_must_be_absolute() {
    let e = errors(&one("start_endpoint: api/wake"));
    has(&e, Some("a"), "start_endpoint", "absolute path");
    let r = &valid(&one("start_endpoint: /api/wake")).gateway.routes[0];
    assert_eq!(r.start_endpoint.as_deref(), Some("/api/wake"));
}

#[test]
fn depends_on_names_existing_routes_without_cycles() {
    let text = routes(&[route("db", ""), route("app", "depends_on: db")].concat());
    let deps = &valid(&text).gateway.routes[1].depends_on;
    assert_eq!(
        deps,
        &[Dependency {
            route: "db".into(),
            condition: DependencyCondition::Started
        }]
    );

    let e = errors(&routes(
        &[
            route("app", "depends_on: [dbb, app, \"x:service_ready\"]"),
            route("db", ""),
        ]
        .concat(),
    ));
    has(
        &e,
        Some("app"),
        "depends_on",
        r#"unknown route "dbb" (did you mean "db"?)"#,
    );
    has(
        &e,
        Some("app"),
        "depends_on",
        "a route cannot depend on itself",
    );
    has(
        &e,
        Some("app"),
        "depends_on",
        r#"invalid condition "service_ready""#,
    );

    let e = errors(&routes(
        &[
            route("a", "depends_on: [\"b:service_healthy\"]"),
            route("b", "depends_on: [c]"),
            route("c", "depends_on: [a]"),
            route("d", "depends_on: [e]"),
            route("e", "depends_on: [d, a]"),
        ]
        .concat(),
    ));
    has(
        &e,
        Some("a"),
        "depends_on",
        "dependency cycle: a -> b -> c -> a",
    );
    has(&e, Some("d"), "depends_on", "dependency cycle: d -> e -> d");
    assert_eq!(e.len(), 2, "{}", ConfigErrors(e.clone()));

    let e = errors(&one("depends_on: [\"\", \":service_started\"]"));
    has(&e, Some("a"), "depends_on", "does not name a route");
}

#[test]
fn routes_sharing_a_backend_must_agree_on_backend_keys() {
    let shared = |a_extra: &str, b_extra: &str| {
        routes(&format!(
            "{}{}",
            route("a", a_extra),
            route("b", b_extra).replace("container: b", "container: a")
        ))
    };
    let config = valid(&shared("", "no_loading_page: true"));
    assert_eq!(config.gateway.routes.len(), 2);
    let e = errors(&shared(
        "idle_timeout: 5m\nstop_signal: TERM",
        "idle_timeout: 10m",
    ));
    has(
        &e,
        Some("b"),
        "idle_timeout",
        r#"routes "a" and "b" share docker container "a" but set different idle_timeout: 5m vs 10m"#,
    );
    has(&e, Some("b"), "stop_signal", "SIGTERM vs (none)");
    assert_eq!(e.len(), 2, "{}", ConfigErrors(e.clone()));
    for key in [
        "wake_timeout: 9s",
        "stop_method: kill",
        "stop_timeout: 9s",
        "retry_backoff: 9s",
    ] {
        let e = errors(&shared("", key));
        let name = key.split(':').next().unwrap_or_default();
        has(&e, Some("b"), name, "share docker container");
    }
    let e = errors(&routes(
        &[
            route("a", ""),
            route("b", "depends_on: [c]").replace("container: b", "container: a"),
            route("c", ""),
        ]
        .concat(),
    ));
    has(&e, Some("b"), "depends_on", "[] vs [c:service_started]");

    let text = routes(
        &[
            route("a", "").replace(
                "docker: { container: a }",
                "proxmox: { node: pve, vmid: 101 }",
            ),
            route("b", "wake_timeout: 1s").replace(
                "docker: { container: b }",
                "proxmox: { node: pve, vmid: 101 }",
            ),
        ]
        .concat(),
    );
    has(
        &errors(&text),
        Some("b"),
        "wake_timeout",
        "proxmox guest 101 on node \"pve\"",
    );
}

#[test]
fn every_error_in_one_pass() {
    let text = r#"
threads: lots
idlewatcher:
  listen: nowhere
  tick: 0
  routes:
    - name: a
      hosts: ["a.localhost:80"]
      port: 80
      idle_timeout: 5x
      stop_method: halt
    - name: b
      hosts: [b.localhost]
      docker: { container: b }
      proxmox: { node: pve, vmid: 5 }
      depends_on: [nope]
      start_endpoint: relative
      colour: blue
"#;
    let e = errors(text);
    has(&e, None, "threads", "");
    has(&e, None, "idlewatcher.listen", "invalid address");
    has(&e, None, "idlewatcher.tick", "greater than 0");
    has(&e, Some("a"), "hosts", "remove the port");
    has(&e, Some("a"), "docker", "required key is missing");
    has(&e, Some("a"), "idle_timeout", "invalid duration");
    has(&e, Some("a"), "stop_method", "invalid stop method");
    has(&e, Some("b"), "proxmox", "both set");
    has(&e, Some("b"), "proxmox.vmid", "100..=");
    has(&e, Some("b"), "depends_on", "unknown route \"nope\"");
    has(&e, Some("b"), "start_endpoint", "absolute path");
    has(&e, Some("b"), "port", "required key is missing");
    has(&e, Some("b"), "colour", "unknown key");
    assert_eq!(e.len(), 13, "{}", ConfigErrors(e.clone()));
    let shown = ConfigErrors(e).to_string();
    assert_eq!(shown.lines().count(), 13, "one error per line:\n{shown}");
}

#[test]
fn yaml_merge_keys_work_for_shared_route_settings() {
    let text = r#"
idlewatcher:
  routes:
    - &base
      name: a
      hosts: [a.localhost]
      docker: { container: a }
      port: 80
      idle_timeout: 2m
    - <<: *base
      name: b
      hosts: [b.localhost]
"#;
    let config = valid(text);
    assert_eq!(
        config.gateway.routes[1].idle_timeout,
        Duration::from_secs(120)
    );
    assert_eq!(
        config.gateway.routes[1].backend,
        config.gateway.routes[0].backend
    );
}

#[test]
fn display_shapes() {
    let route_err = ConfigError::new(Some("whoami"), "idle_timeout", "bad");
    assert_eq!(
        route_err.to_string(),
        r#"route "whoami": key "idle_timeout": bad"#
    );
    let top = ConfigError::new(None, "idlewatcher.listen", "bad");
    assert_eq!(top.to_string(), r#"key "idlewatcher.listen": bad"#);
    let line = ConfigError {
        line: Some(7),
        ..ConfigError::new(None, "", "bad")
    };
    assert_eq!(line.to_string(), "line 7: bad");
    assert_eq!(
        ConfigErrors(vec![top, line]).to_string(),
        "key \"idlewatcher.listen\": bad\nline 7: bad"
    );
}

#[test]
fn load_reads_the_file_or_names_it() {
    let missing = Path::new("/nonexistent/idlewatcher.yaml");
    let e = load(missing).expect_err("missing file").0;
    assert_eq!(e.len(), 1);
    assert!(
        e[0].message.contains("/nonexistent/idlewatcher.yaml"),
        "{}",
        e[0]
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("iw.yaml");
    std::fs::write(&path, FULL).expect("write");
    assert_eq!(load(&path).expect("valid").gateway.routes.len(), 2);
}

#[test]
fn suggestions_only_for_close_keys() {
    assert_eq!(edit_distance("idle_timout", "idle_timeout"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("listne", "listen"), 1);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(closest("pord", ["port", "hosts"].into_iter()), Some("port"));
    assert_eq!(closest("colour", ["port", "hosts"].into_iter()), None);
}

// ---------------------------------------------------------------------------------------------
// Positions: every error says where it is
// ---------------------------------------------------------------------------------------------

/// The error with this route and key (there must be exactly one).
#[track_caller]
fn the(errors: &[ConfigError], route: Option<&str>, key: &str) -> ConfigError {
    let found: Vec<&ConfigError> = errors
        .iter()
        .filter(|e| e.route.as_deref() == route && e.key == key)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one error with route {route:?} and key {key:?}; got:\n{}",
        ConfigErrors(errors.to_vec())
    );
    found[0].clone()
}

/// Asserts `error` is at this line and column.
#[track_caller]
fn at(error: &ConfigError, line: usize, column: usize) {
    assert_eq!(
        (error.line, error.column),
        (Some(line), Some(column)),
        "wrong position for: {error}"
    );
}

#[test]
fn errors_on_three_lines_each_name_their_line() {
    let text = "\
idlewatcher:
  defaults:
    idle_timeout: 5x
  routes:
    - name: a
      hosts: [a.localhost]
      docker: { container: a }
      port: 80
      colour: blue
    - name: b
      hosts: [b.localhost]
      docker: { container: b }
      port: 99999
";
    let e = errors(text);
    assert_eq!(
        ConfigErrors(e).to_string(),
        "line 3, column 19: key \"idlewatcher.defaults.idle_timeout\": invalid duration \"5x\" (expected e.g. 500ms, 30s, 5m, 1h)\n\
         line 9, column 7: route \"a\": key \"colour\": unknown key \"colour\"\n\
         line 13, column 13: route \"b\": key \"port\": expected an integer in 1..=65535, got 99999"
    );
}

#[test]
fn every_error_of_a_file_is_located() {
    let text = r#"
threads: lots
colour: blue
idlewatcher:
  listen: [nowhere, "0.0.0.0:80", "0.0.0.0:80"]
  tick: 0
  defaults:
    hosts: [x]
  routes:
    - name: a
      hosts: ["a.localhost:80", b.localhost]
      port: 80
      idle_timeout: 5x
      depends_on: [c]
    - name: b
      hosts:
        - x.localhost
        - B.localhost
      docker: { container: b }
      proxmox: { node: pve, vmid: 5 }
      depends_on: [nope]
      start_endpoint: relative
      health:
        statuses:
          - 204
          - "300-200"
    - name: c
      hosts: [c.localhost]
      docker: { container: c }
      port: 80
      upstream: "h:1"
      depends_on: [a]
    - just a string
    - name: c
      hosts: [d.localhost]
      docker: { container: d }
      port: 80
"#;
    let e = errors(text);
    for error in &e {
        assert!(
            error.line.is_some() && error.column.is_some(),
            "not located: {error}"
        );
    }
    // The offending value.
    at(&the(&e, None, "threads"), 2, 10);
    at(&the(&e, None, "idlewatcher.tick"), 6, 9);
    at(&the(&e, Some("a"), "idle_timeout"), 13, 21);
    at(&the(&e, Some("b"), "start_endpoint"), 22, 23);
    at(&the(&e, Some("b"), "proxmox.vmid"), 20, 35);
    // The item of a list, not the list.
    let listen: Vec<&ConfigError> = e.iter().filter(|e| e.key == "idlewatcher.listen").collect();
    assert_eq!(listen.len(), 2, "{}", ConfigErrors(e.clone()));
    at(listen[0], 5, 12);
    at(listen[1], 5, 35);
    at(&the(&e, Some("b"), "health.statuses"), 26, 13);
    at(&the(&e, Some("a"), "docker"), 10, 7); // missing: the route's mapping
                                              // The key, for unknown keys and keys that exclude each other.
    at(&the(&e, None, "colour"), 3, 1);
    at(&the(&e, None, "idlewatcher.defaults.hosts"), 8, 5);
    at(&the(&e, Some("b"), "proxmox"), 20, 7);
    at(&the(&e, Some("c"), "upstream"), 31, 7);
    // Cross-route problems: at the value that causes them.
    let hosts: Vec<&ConfigError> = e
        .iter()
        .filter(|e| e.route.as_deref() == Some("b") && e.key == "hosts")
        .collect();
    assert_eq!(hosts.len(), 1, "{}", ConfigErrors(e.clone()));
    at(hosts[0], 18, 11); // B.localhost, already used by a
    let depends: Vec<&ConfigError> = e.iter().filter(|e| e.key == "depends_on").collect();
    assert_eq!(depends.len(), 2, "{}", ConfigErrors(e.clone()));
    has(&e, Some("b"), "depends_on", "unknown route \"nope\"");
    at(&the(&e, Some("b"), "depends_on"), 21, 20);
    has(&e, Some("a"), "depends_on", "dependency cycle: a -> c -> a");
    at(&the(&e, Some("a"), "depends_on"), 14, 20);
    at(&the(&e, Some("routes[3]"), ""), 33, 7);
    at(&the(&e, Some("routes[4]"), "name"), 34, 13);
}

#[test]
fn shared_backend_conflicts_point_at_the_route_setting() {
    let text = routes(
        &[
            route("a", "idle_timeout: 5m"),
            route("b", "idle_timeout: 10m\nstop_method: kill")
                .replace("container: b", "container: a"),
        ]
        .concat(),
    );
    let e = errors(&text);
    // Set by route b: at its value; left to the defaults: at route b.
    at(&the(&e, Some("b"), "idle_timeout"), 12, 21);
    at(&the(&e, Some("b"), "stop_method"), 13, 20);
    let e = errors(&routes(
        &[
            route("a", "stop_method: kill"),
            route("b", "").replace("container: b", "container: a"),
        ]
        .concat(),
    ));
    at(&the(&e, Some("b"), "stop_method"), 8, 7);
}

#[test]
fn errors_without_a_place_show_none() {
    let e = errors("max_blocking_threads: 0\nidlewatcher: {}\n");
    let whole = the(&e, None, "(server)");
    assert_eq!((whole.line, whole.column), (None, None));
    assert!(!whole.to_string().starts_with("line"), "{whole}");
    let missing = load(Path::new("/nonexistent/iw.yaml")).expect_err("missing file");
    assert_eq!(missing.0[0].line, None);
    // An empty file has no place to point at; a file with keys points at its first.
    assert_eq!(the(&errors(""), None, "idlewatcher").line, None);
    at(&the(&errors("\n\nthreads: 2\n"), None, "idlewatcher"), 3, 1);
}

#[test]
fn yaml_level_errors_are_located() {
    let e = errors("idlewatcher:\n  tick: 1s\n  tick: 2s\n");
    assert_eq!(
        e[0].to_string(),
        "line 3, column 3: invalid YAML: duplicate key \"tick\" (first set on line 2)"
    );
    let e = errors("idlewatcher: {}\n---\nthreads: 2\n");
    at(&e[0], 2, 1);
    assert!(
        e[0].message.contains("more than one YAML document"),
        "{}",
        e[0]
    );
    let e = errors("idlewatcher:\n  routes:\n    - <<: 5\n");
    at(&e[0], 3, 11);
    assert!(e[0].message.contains("invalid merge key"), "{}", e[0]);
    let e = errors("idlewatcher: *nowhere\n");
    at(&e[0], 1, 14);
    has(&errors("- 1\n"), None, "", "must be a mapping");
    at(&errors("- 1\n")[0], 1, 1);
}

#[test]
fn merge_keys_take_a_list_and_explicit_keys_win() {
    let text = r#"
idlewatcher:
  defaults: &slow
    idle_timeout: 1h
    wake_timeout: 5m
  routes:
    - &fast
      name: f
      hosts: [f.localhost]
      docker: { container: f }
      port: 80
      idle_timeout: 1m
      stop_method: kill
    - <<: [*fast, *slow]
      name: a
      hosts: [a.localhost]
      docker: { container: a }
      stop_method: pause
"#;
    let config = valid(text);
    let a = &config.gateway.routes[1];
    assert_eq!(a.idle_timeout, Duration::from_secs(60), "first source wins");
    assert_eq!(
        a.wake_timeout,
        Duration::from_secs(300),
        "later source fills in"
    );
    assert_eq!(a.stop_method, StopMethod::Pause, "explicit key wins");
    assert_eq!(a.port, Some(80), "merged from the first source");
}

#[test]
fn server_text_is_json_that_pingora_reads() {
    let config = valid(
        "threads: 2\nclient_bind_to_ipv4: [\"127.0.0.2\"]\nerror_log: /tmp/iw.log\nidlewatcher: {}\n",
    );
    assert!(
        config.server_yaml.trim_start().starts_with('{'),
        "{}",
        config.server_yaml
    );
    let json: serde_json::Value =
        serde_json::from_str(&config.server_yaml).expect("server_yaml is JSON");
    assert_eq!(json["threads"], 2);
    let s = server(&config);
    assert_eq!(s.threads, 2);
    assert_eq!(s.client_bind_to_ipv4, ["127.0.0.2"]);
    assert_eq!(s.error_log.as_deref(), Some("/tmp/iw.log"));
    assert_eq!(s.upstream_keepalive_pool_size, 1024);
}

// ---------------------------------------------------------------------------------------------
// Routes that did not come from the file
// ---------------------------------------------------------------------------------------------

#[test]
fn a_route_built_from_plain_pairs_parses() {
    let labels = [
        ("name", "whoami"),
        ("hosts", "Whoami.localhost"),
        ("docker.container", "whoami"),
        ("port", "8080"),
        ("idle_timeout", "5m"),
        ("health.path", "/healthz"),
        ("health.statuses", "200-299"),
        ("no_loading_page", "true"),
    ];
    let route = parse_route(
        Node::from_pairs(labels),
        "whoami",
        &RouteDefaults::default(),
    )
    .unwrap_or_else(|e| panic!("{}", ConfigErrors(e)));
    assert_eq!(route.name, "whoami");
    assert_eq!(route.hosts, ["whoami.localhost"]);
    assert_eq!(
        route.backend,
        BackendConfig::Docker {
            container: "whoami".into(),
            engine: DockerEngine::default(),
        }
    );
    assert_eq!(route.port, Some(8080));
    assert_eq!(route.idle_timeout, Duration::from_secs(300));
    assert_eq!(
        route.health,
        HealthCheck::Http {
            path: "/healthz".into(),
            statuses: vec![(200, 299)]
        }
    );
    assert!(route.no_loading_page);
    assert_eq!(
        route.wake_timeout,
        Duration::from_secs(60),
        "built-in default"
    );

    // Problems are reported as for the file, labelled, without a position.
    let e = parse_route(
        Node::from_pairs([
            ("name", "w"),
            ("hosts", "w.localhost"),
            ("port", "http"),
            ("colour", "x"),
        ]),
        "container w",
        &RouteDefaults::default(),
    )
    .expect_err("invalid route");
    has(&e, Some("container w"), "port", "1..=65535");
    has(&e, Some("container w"), "docker", "required key is missing");
    has(&e, Some("container w"), "colour", "unknown key");
    assert_eq!(e.len(), 3, "{}", ConfigErrors(e.clone()));
    assert!(e.iter().all(|e| e.line.is_none() && e.column.is_none()));
    assert_eq!(
        the(&e, Some("container w"), "port").to_string(),
        r#"route "container w": key "port": expected an integer in 1..=65535, got "http""#
    );
}

/// A `proxmox:` section with `keys` (each `key: value`, one per line) and one Proxmox route.
fn proxmox(keys: &str, route_extra: &str) -> String {
    let mut text = String::from("idlewatcher:\n  proxmox:\n");
    for line in keys.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("    ");
        text.push_str(line.trim());
        text.push('\n');
    }
    text.push_str("  routes:\n    - name: ct\n      hosts: [ct.localhost]\n      proxmox: { node: pve1, vmid: 101 }\n      port: 80\n");
    for line in route_extra.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("      ");
        text.push_str(line.trim());
        text.push('\n');
    }
    text
}

const PVE_OK: &str =
    "url: https://pve.lan:8006\ntoken_id: root@pam!iw\ntoken_secret: s3cret\ninsecure: true\n";

#[test]
fn a_proxmox_section_resolves_with_defaults() {
    let config = valid(&proxmox(PVE_OK, ""));
    let p = config.gateway.proxmox.expect("section");
    assert_eq!(p.trust, PveTrust::Insecure);
    assert_eq!(p.poll, Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pve.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let text = proxmox(
        &PVE_OK.replace(
            "token_secret: s3cret",
            &format!("token_secret_file: \"{}\"", secret.display()),
        ),
        "",
    );
    let p = valid(&text).gateway.proxmox.expect("section");
    assert_eq!(p.token_secret, TokenSecret::File(secret));
}

#[test]
fn every_proxmox_section_error_names_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "url: http://pve.lan:8006\ntoken_id: a@pam!b\ntoken_secret: x\ninsecure: true",
            "idlewatcher.proxmox.url",
            "must be an https:// URL",
        ),
        (
            "url: https://pve.lan:8006/api2/json\ntoken_id: a@pam!b\ntoken_secret: x\ninsecure: true",
            "idlewatcher.proxmox.url",
            "just https://host[:port]",
        ),
        (
            "url: https://pve.lan\ntoken_id: root@pam\ntoken_secret: x\ninsecure: true",
            "idlewatcher.proxmox.token_id",
            "user@realm!name",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ninsecure: true",
            "idlewatcher.proxmox.token_secret",
            "set token_secret or token_secret_file",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x\ntoken_secret_file: /x\ninsecure: true",
            "idlewatcher.proxmox.token_secret_file",
            "both set",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret_file: /nonexistent/pve.secret\ninsecure: true",
            "idlewatcher.proxmox.token_secret_file",
            "cannot read \"/nonexistent/pve.secret\"",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x",
            "idlewatcher.proxmox.ca_file",
            "set ca_file",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x\ninsecure: true\nfingerprint: ab",
            "idlewatcher.proxmox.insecure",
            "fingerprint and insecure are both set; set exactly one of ca_file, fingerprint, insecure",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x\nfingerprint: ab:cd",
            "idlewatcher.proxmox.fingerprint",
            "64 hex digits",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x\ninsecure: false",
            "idlewatcher.proxmox.insecure",
            "no way to trust",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x\nca_file: /nonexistent/ca.pem",
            "idlewatcher.proxmox.ca_file",
            "cannot read",
        ),
        (
            "token_id: a@pam!b\ntoken_secret: x\ninsecure: true",
            "idlewatcher.proxmox.url",
            "required key is missing",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x\ninsecure: true\npoll: 0s",
            "idlewatcher.proxmox.poll",
            "greater than 0",
        ),
        (
            "url: https://pve.lan\ntoken_id: a@pam!b\ntoken_secret: x\ninsecure: true\nrealm: pam",
            "idlewatcher.proxmox.realm",
            "unknown key",
        ),
    ];
    for (keys, key, message) in cases {
        let e = errors(&proxmox(keys, ""));
        has(&e, None, key, message);
        assert!(
            e.iter().all(|e| e.line.is_some()),
            "{}",
            ConfigErrors(e.clone())
        );
    }
}

#[test]
fn proxmox_routes_need_the_section_and_cannot_pause() {
    let text = proxmox(PVE_OK, "").replace(
        "  proxmox:\n    url: https://pve.lan:8006\n    token_id: root@pam!iw\n    token_secret: s3cret\n    insecure: true\n",
        "",
    );
    assert!(!text.contains("token_id"), "{text}");
    let e = errors(&text);
    has(&e, Some("ct"), "proxmox", "no idlewatcher.proxmox section");
    at(&the(&e, Some("ct"), "proxmox"), 5, 16);

    let e = errors(&proxmox(PVE_OK, "stop_method: pause"));
    has(
        &e,
        Some("ct"),
        "stop_method",
        "LXC suspend is an experimental CRIU checkpoint",
    );
    assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
}

#[test]
fn admin_listener_needs_a_token_off_loopback_and_its_own_address() {
    let token = std::env::temp_dir().join(format!("iw-admin-token-{}", std::process::id()));
    std::fs::write(&token, "secret\n").unwrap();
    let config = valid("idlewatcher:\n  admin: { listen: \"127.0.0.1:9090\" }\n");
    let admin = config.gateway.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:9090");
    assert_eq!(admin.token_file, None);
    assert_eq!(valid("idlewatcher: {}\n").gateway.admin, None);

    let e = errors("idlewatcher:\n  admin:\n    listen: \"0.0.0.0:9090\"\n");
    has(&e, None, "idlewatcher.admin.listen", "token_file");
    assert_eq!(e[0].line, Some(3));
    let with_token = format!(
        "idlewatcher:\n  admin: {{ listen: \"0.0.0.0:9090\", token_file: \"{}\" }}\n",
        token.display()
    );
    assert_eq!(
        valid(&with_token).gateway.admin.unwrap().token_file,
        Some(token.clone())
    );
    let e = errors(
        "idlewatcher:\n  listen: [\"127.0.0.1:8080\"]\n  admin: { listen: \"127.0.0.1:8080\" }\n",
    );
    has(
        &e,
        None,
        "idlewatcher.admin.listen",
        "public listen address",
    );
    let e = errors(
        "idlewatcher:\n  admin: { listen: \"127.0.0.1:9090\", token_file: /no/such/token }\n",
    );
    has(&e, None, "idlewatcher.admin.token_file", "cannot read");
    let e = errors("idlewatcher:\n  admin: { token_file: /x }\n");
    has(&e, None, "idlewatcher.admin.listen", "required");
    std::fs::remove_file(token).unwrap();
}

#[test]
fn show_details_and_ignored_user_agents_are_inherited_and_lowercased() {
    let text = "idlewatcher:\n  defaults:\n    show_details: true\n    ignore_user_agents: [Uptime-Kuma, \"  GoogleBot \"]\n  routes:\n"
        .to_string()
        + "    - { name: a, hosts: [a.test], docker: { container: a }, port: 80 }\n"
        + "    - { name: b, hosts: [b.test], docker: { container: b }, port: 80, show_details: false, ignore_user_agents: [] }\n";
    let config = valid(&text);
    let (a, b) = (&config.gateway.routes[0], &config.gateway.routes[1]);
    assert!(a.show_details);
    assert_eq!(a.ignore_user_agents, vec!["uptime-kuma", "googlebot"]);
    assert!(!b.show_details);
    assert!(b.ignore_user_agents.is_empty());
    let plain = valid(&one(""));
    assert!(!plain.gateway.routes[0].show_details);
    let e = errors(&one("ignore_user_agents: [\"\"]"));
    has(&e, Some("a"), "ignore_user_agents", "must not be empty");
    let e = errors(&one("show_details: yes"));
    has(&e, Some("a"), "show_details", "");
}

#[test]
fn streams_parse_with_their_defaults_and_are_listed_for_the_start_up_checks() {
    let text = "idlewatcher:\n  defaults:\n    udp_buffer_datagrams: 64\n  routes:\n    - name: db\n      docker: { container: db }\n      streams:\n        - { listen: \"0.0.0.0:5432\", port: 5432 }\n        - { listen: \"0.0.0.0:5353\", upstream: \"10.0.0.2:53\", protocol: udp }\n        - { listen: \"0.0.0.0:5432\", port: 5432, protocol: udp }\n      ready_after: 2s\n      udp_session_idle: 30s\n";
    let config = parse(text).unwrap_or_else(|e| panic!("{e}"));
    let db = &config.gateway.routes[0];
    assert!(db.hosts.is_empty(), "streams only, no hosts");
    assert_eq!(db.streams.len(), 3);
    assert_eq!(
        db.streams[0].protocol,
        StreamProtocol::Tcp,
        "tcp by default"
    );
    assert_eq!(db.streams[0].port, Some(5432));
    assert_eq!(db.streams[1].upstream.as_deref(), Some("10.0.0.2:53"));
    assert_eq!(
        db.stream_settings,
        StreamSettings {
            ready_after: Some(Duration::from_secs(2)),
            udp_session_idle: Duration::from_secs(30),
            udp_buffer_datagrams: 64,
            udp_buffer_bytes: 1024 * 1024,
        }
    );
    let listed: Vec<String> = config
        .gateway
        .stream_listen_addresses()
        .into_iter()
        .map(|(protocol, addr)| format!("{} {addr}", protocol.as_str()))
        .collect();
    assert_eq!(
        listed,
        ["tcp 0.0.0.0:5432", "udp 0.0.0.0:5353", "udp 0.0.0.0:5432"],
        "TCP and UDP may share an address"
    );
}

#[test]
fn a_udp_stream_is_ready_by_a_probe_a_health_check_or_ready_after() {
    let route = |extra: &str| {
        format!(
            "idlewatcher:\n  routes:\n    - name: dns\n      docker: {{ container: dns }}\n      streams: [{{ listen: \"127.0.0.1:5353\", port: 53, protocol: udp }}]\n{extra}"
        )
    };
    for ok in [
        "      ready_after: 1s\n",
        "      health: { docker: true }\n",
        "      port: 8080\n      health: { tcp: true }\n",
        "      hosts: [dns.test]\n      port: 80\n",
    ] {
        parse(&route(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let errors = errors(&route(""));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "ready_after");
    assert_eq!(errors[0].line, Some(5));
}

#[test]
fn a_tcp_stream_may_not_take_the_admin_listen_address() {
    let text = "idlewatcher:\n  admin: { listen: \"127.0.0.1:9090\" }\n  routes:\n    - name: a\n      docker: { container: a }\n      streams: [{ listen: \"0.0.0.0:9090\", port: 80 }]\n";
    let e = errors(text);
    has(
        &e,
        Some("a"),
        "streams.listen",
        "the admin listen address (idlewatcher.admin.listen)",
    );
}

#[test]
fn host_names_beyond_dns_limits_are_errors_with_their_line() {
    let long_label = "a".repeat(64);
    let long_name = format!("{}.test", vec!["b".repeat(50); 5].join("."));
    let ok_label = "c".repeat(63);
    let e = errors(&routes(&format!(
        "- name: a\n  hosts:\n    - {long_label}.test\n    - {long_name}\n    - {ok_label}.test\n  docker: {{ container: a }}\n  port: 80\n"
    )));
    has(&e, Some("a"), "hosts", "is 64 characters long, at most 63");
    has(&e, Some("a"), "hosts", "259 characters long, at most 253");
    assert_eq!(e.iter().filter(|e| e.key == "hosts").count(), 2, "{e:?}");
    assert!(e.iter().all(|e| e.line.is_some()), "{e:?}");
}

#[test]
fn the_clients_section_has_nginx_like_defaults_and_checked_keys() {
    let config = valid(&routes(&route("a", "")));
    assert_eq!(config.gateway.clients, ClientLimits::default());
    assert_eq!(
        config.gateway.clients.header_timeout,
        Duration::from_secs(30)
    );

    let config = valid(
        "idlewatcher:\n  clients:\n    header_timeout: 2s\n    keepalive_timeout: 5s\n    body_timeout: 500ms\n    min_body_rate: 0\n    h2_idle_timeout: 1m\n    max_connections_per_ip: 100\n    max_held_per_ip: 10\n    max_event_streams_per_ip: 2\n    max_event_streams_per_route: 3\n",
    );
    let clients = &config.gateway.clients;
    assert_eq!(clients.header_timeout, Duration::from_secs(2));
    assert_eq!(clients.keepalive_timeout, Duration::from_secs(5));
    assert_eq!(clients.body_timeout, Duration::from_millis(500));
    assert_eq!(clients.min_body_rate, 0);
    assert_eq!(clients.h2_idle_timeout, Duration::from_secs(60));
    assert_eq!(clients.max_connections_per_ip, 100);
    assert_eq!(clients.max_held_per_ip, 10);
    assert_eq!(clients.max_event_streams_per_ip, 2);
    assert_eq!(clients.max_event_streams_per_route, 3);

    let e = errors(
        "idlewatcher:\n  clients:\n    header_timeout: 0s\n    keepalive_timeout: 200ms\n    max_held_per_ip: -1\n    max_event_streams_per_ip: 0\n    head_timeout: 3s\n",
    );
    has(
        &e,
        None,
        "idlewatcher.clients.header_timeout",
        "greater than 0",
    );
    has(
        &e,
        None,
        "idlewatcher.clients.keepalive_timeout",
        "at least 1s",
    );
    has(
        &e,
        None,
        "idlewatcher.clients.max_held_per_ip",
        "expected an integer",
    );
    has(
        &e,
        None,
        "idlewatcher.clients.max_event_streams_per_ip",
        "expected an integer",
    );
    has(
        &e,
        None,
        "idlewatcher.clients.head_timeout",
        "header_timeout",
    );
    assert!(e.iter().all(|e| e.line.is_some()), "{e:?}");
}

/// A self-signed certificate for `name` and its key, written as `name.pem` and `name.key` in
/// `dir`: (cert, key) paths.
fn write_certificate(dir: &Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[test]
fn tls_is_off_by_default_and_parsed_with_its_certificates() {
    assert_eq!(valid("idlewatcher:\n  routes: []\n").gateway.tls, None);
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = write_certificate(dir.path(), "a.test");
    let (b_cert, b_key) = write_certificate(dir.path(), "b.test");
    let text = format!(
        "idlewatcher:\n  tls:\n    listen: [\"0.0.0.0:8443\", \"[::1]:8444\"]\n    certificates:\n      - {{ cert: {a_cert}, key: {a_key} }}\n      - {{ cert: {b_cert}, key: {b_key} }}\n  routes: []\n"
    );
    let tls = valid(&text).gateway.tls.unwrap();
    assert_eq!(tls.listen, ["0.0.0.0:8443", "[::1]:8444"]);
    assert_eq!(
        tls.certificates,
        [
            CertificateFiles {
                cert: a_cert.into(),
                key: a_key.into()
            },
            CertificateFiles {
                cert: b_cert.into(),
                key: b_key.into()
            },
        ]
    );
}

#[test]
fn tls_shapes_and_clashes_are_errors_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(dir.path(), "a.test");
    let e = errors("idlewatcher:\n  tls:\n    listen: []\n    certificates: []\n");
    has(&e, None, "idlewatcher.tls.listen", "at least one address");
    has(&e, None, "idlewatcher.tls.certificates", "at least one");
    let e = errors("idlewatcher:\n  tls:\n    listen: 0.0.0.0:8443\n    certificates: x\n");
    has(&e, None, "idlewatcher.tls.certificates", "expected a list");
    let e = errors(
        "idlewatcher:\n  tls:\n    listen: [\"0.0.0.0:8443\", \"127.0.0.1:8443\"]\n    certificates: [x]\n",
    );
    has(
        &e,
        None,
        "idlewatcher.tls.listen",
        "clashes with \"0.0.0.0:8443\"",
    );
    has(
        &e,
        None,
        "idlewatcher.tls.certificates[0]",
        "expected a mapping",
    );
    let e = errors("idlewatcher:\n  tls:\n    listen: [\"0.0.0.0:8443\"]\n    certificates:\n      - { cert: /nonexistent.pem }\n");
    has(
        &e,
        None,
        "idlewatcher.tls.certificates[0].cert",
        "cannot read \"/nonexistent.pem\"",
    );
    has(
        &e,
        None,
        "idlewatcher.tls.certificates[0].key",
        "required key is missing",
    );
    // A TCP stream may not take an HTTPS address.
    let text = format!(
        "idlewatcher:\n  tls:\n    listen: [\"0.0.0.0:8443\"]\n    certificates:\n      - {{ cert: {cert}, key: {key} }}\n  routes:\n    - name: db\n      docker: {{ container: db }}\n      streams:\n        - {{ listen: \"127.0.0.1:8443\", port: 5432 }}\n"
    );
    let e = errors(&text);
    has(
        &e,
        Some("db"),
        "streams.listen",
        "the HTTPS listen address (idlewatcher.tls.listen)",
    );
    let tls_error = e
        .iter()
        .find(|e| e.key == "streams.listen")
        .unwrap()
        .clone();
    assert_eq!(tls_error.line, Some(10));
}

#[test]
fn a_swarm_route_names_its_service_and_replicas() {
    let config = valid(&routes(
        "- name: a\n  hosts: [a.localhost]\n  swarm: { service: app }\n  port: 80\n\
         - name: b\n  hosts: [b.localhost]\n  swarm: { service: web, replicas: 3 }\n  port: 80\n",
    ));
    let backends: Vec<&BackendConfig> = config.gateway.routes.iter().map(|r| &r.backend).collect();
    assert_eq!(
        backends,
        vec![
            &BackendConfig::Swarm {
                service: "app".into(),
                replicas: 1
            },
            &BackendConfig::Swarm {
                service: "web".into(),
                replicas: 3
            },
        ]
    );
    let e = errors(&routes(
        "- name: a\n  hosts: [a.localhost]\n  docker: { container: a }\n  swarm: { service: a }\n  port: 80\n\
         - name: b\n  hosts: [b.localhost]\n  swarm: { service: b, replicas: 0, mode: global }\n  port: 80\n\
         - name: c\n  hosts: [c.localhost]\n  swarm: { replicas: 2 }\n  port: 80\n",
    ));
    has(&e, Some("a"), "swarm", "docker and swarm are both set");
    has(&e, Some("b"), "swarm.replicas", "1..=10000");
    has(&e, Some("b"), "swarm.mode", "unknown key");
    has(&e, Some("c"), "swarm.service", "required key is missing");
}

#[test]
fn instance_and_traffic_veto_are_gateway_keys() {
    let config =
        valid("idlewatcher:\n  instance: gw-1.site_a\n  docker: { traffic_veto: 65536 }\n");
    assert_eq!(config.gateway.instance, "gw-1.site_a");
    assert_eq!(config.gateway.docker_traffic_veto, 65536);
    let defaults = valid("idlewatcher: {}\n");
    assert!(
        !defaults.gateway.instance.is_empty(),
        "the host name by default"
    );
    assert_eq!(
        defaults.gateway.docker_traffic_veto, 0,
        "no veto by default"
    );
    let e = errors("idlewatcher:\n  instance: \"a b\"\n  docker: { traffic_veto: -1 }\n");
    has(
        &e,
        None,
        "idlewatcher.instance",
        "not a usable instance name",
    );
    has(
        &e,
        None,
        "idlewatcher.docker.traffic_veto",
        "an integer >= 0",
    );
}
