//! One route: its keys, its defaults, and how a mapping becomes a [`RouteConfig`].
//!
//! Why apart from the file's layout: a route is not only read from `idlewatcher.routes`; it will
//! also be built from a container's Docker labels. [`parse_route`] therefore takes any [`Node`]
//! mapping (from the file, or from [`Node::from_pairs`] without positions) and reports every
//! problem with it. What involves several routes (unique names and hosts, dependencies, shared
//! backends) is in `checks`.

use std::time::Duration;

use super::error::ConfigError;
use super::fields::Fields;
use super::model::{
    BackendConfig, Dependency, DockerEngine, HealthCheck, RouteConfig, RouteDefaults, StopMethod,
    StreamConfig, StreamProtocol, StreamSettings, Written,
};
use super::values::{
    abs_path, boolean, condition_name, count, dependency, docker_cert_path, docker_host, duration,
    host, integer, non_empty, positive_duration, statuses, stop_method, stop_method_name,
    stop_signal, stream_listen, stream_protocol, upstream, user_agent_part,
};
use super::yaml::{Node, Position, Value};

/// Keys a route inherits from `defaults`.
pub(crate) const INHERIT_KEYS: &[&str] = &[
    "idle_timeout",
    "wake_timeout",
    "stop_method",
    "stop_signal",
    "stop_timeout",
    "max_waiters",
    "retry_backoff",
    "health",
    "no_loading_page",
    "show_details",
    "ignore_user_agents",
    "udp_session_idle",
    "udp_buffer_datagrams",
    "udp_buffer_bytes",
];
/// Keys only a route may set.
pub(crate) const ROUTE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "docker",
    "proxmox",
    "swarm",
    "port",
    "upstream",
    "start_endpoint",
    "depends_on",
    "streams",
    "ready_after",
];
/// Keys of one item of `streams`.
const STREAM_KEYS: &[&str] = &["listen", "protocol", "port", "upstream"];
/// Keys of a route's `docker:` section.
const DOCKER_ROUTE_KEYS: &[&str] = &["container", "host", "tls"];
/// The route keys that name a backend, one per provider family.
const BACKEND_KEYS: &[&str] = &["docker", "proxmox", "swarm"];
/// Keys of a route's `swarm:` section.
const SWARM_KEYS: &[&str] = &["service", "replicas"];
/// Replicas a Swarm wake asks for when `replicas` is not set.
const DEFAULT_REPLICAS: u64 = 1;
/// The most replicas a route may ask for (a typo guard, far above any real use).
const MAX_REPLICAS: u64 = 10_000;
/// Keys of a `docker:` section's `tls:`.
const DOCKER_TLS_KEYS: &[&str] = &["cert_path"];
const HEALTH_KEYS: &[&str] = &["path", "statuses", "tcp", "docker"];

const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_WAITERS: usize = 10_000;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
const DEFAULT_STATUSES: (u16, u16) = (200, 499);
const VMID_RANGE: (u64, u64) = (100, 999_999_999);

impl RouteDefaults {
    /// Takes the inheritable keys out of `f` (the `defaults` section, or a route).
    pub(crate) fn parse(f: &mut Fields) -> RouteDefaults {
        RouteDefaults {
            idle_timeout: f.get("idle_timeout", duration),
            wake_timeout: f.get("wake_timeout", positive_duration),
            stop_method: f.get("stop_method", stop_method),
            stop_signal: f.get("stop_signal", stop_signal),
            stop_timeout: f.get("stop_timeout", positive_duration),
            max_waiters: f.get("max_waiters", count(1)),
            retry_backoff: f.get("retry_backoff", positive_duration),
            health: health(f),
            no_loading_page: f.get("no_loading_page", boolean),
            show_details: f.get("show_details", boolean),
            ignore_user_agents: f
                .list("ignore_user_agents", user_agent_part, None)
                .map(|parts| parts.into_iter().map(|(part, _)| part).collect()),
            udp_session_idle: f.get("udp_session_idle", positive_duration),
            udp_buffer_datagrams: f.get("udp_buffer_datagrams", count(1)),
            udp_buffer_bytes: f.get("udp_buffer_bytes", count(1)),
        }
    }

    /// This route's settings over `defaults`, over the built-in defaults.
    fn resolve(self, defaults: &RouteDefaults) -> Settings {
        Settings {
            idle_timeout: self
                .idle_timeout
                .or(defaults.idle_timeout)
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            wake_timeout: self
                .wake_timeout
                .or(defaults.wake_timeout)
                .unwrap_or(DEFAULT_WAKE_TIMEOUT),
            stop_method: self
                .stop_method
                .or(defaults.stop_method)
                .unwrap_or(StopMethod::Stop),
            stop_signal: self.stop_signal.or_else(|| defaults.stop_signal.clone()),
            stop_timeout: self
                .stop_timeout
                .or(defaults.stop_timeout)
                .unwrap_or(DEFAULT_STOP_TIMEOUT),
            max_waiters: self
                .max_waiters
                .or(defaults.max_waiters)
                .unwrap_or(DEFAULT_MAX_WAITERS),
            retry_backoff: self
                .retry_backoff
                .or(defaults.retry_backoff)
                .unwrap_or(DEFAULT_RETRY_BACKOFF),
            health_set: self.health.is_some() || defaults.health.is_some(),
            health: self
                .health
                .or_else(|| defaults.health.clone())
                .unwrap_or_else(default_health),
            no_loading_page: self
                .no_loading_page
                .or(defaults.no_loading_page)
                .unwrap_or(false),
            show_details: self.show_details.or(defaults.show_details).unwrap_or(false),
            ignore_user_agents: self
                .ignore_user_agents
                .or_else(|| defaults.ignore_user_agents.clone())
                .unwrap_or_default(),
            streams: {
                let built_in = StreamSettings::default();
                StreamSettings {
                    ready_after: None,
                    udp_session_idle: self
                        .udp_session_idle
                        .or(defaults.udp_session_idle)
                        .unwrap_or(built_in.udp_session_idle),
                    udp_buffer_datagrams: self
                        .udp_buffer_datagrams
                        .or(defaults.udp_buffer_datagrams)
                        .unwrap_or(built_in.udp_buffer_datagrams),
                    udp_buffer_bytes: self
                        .udp_buffer_bytes
                        .or(defaults.udp_buffer_bytes)
                        .unwrap_or(built_in.udp_buffer_bytes),
                }
            },
        }
    }
}

/// A route's inheritable settings, resolved.
struct Settings {
    idle_timeout: Duration,
    wake_timeout: Duration,
    stop_method: StopMethod,
    stop_signal: Option<String>,
    stop_timeout: Duration,
    max_waiters: usize,
    retry_backoff: Duration,
    health: HealthCheck,
    health_set: bool,
    no_loading_page: bool,
    show_details: bool,
    ignore_user_agents: Vec<String>,
    /// `ready_after` is the route's own, set after resolving.
    streams: StreamSettings,
}

/// The probe a route gets when nothing says otherwise: `GET /`, any status below 500.
pub(crate) fn default_health() -> HealthCheck {
    HealthCheck::Http {
        path: "/".to_string(),
        statuses: vec![DEFAULT_STATUSES],
    }
}

fn health(f: &mut Fields) -> Option<HealthCheck> {
    let mut h = f.sub("health", HEALTH_KEYS)?;
    let has_http_keys = h.has("path") || h.has("statuses");
    let tcp_at = h.value_position("tcp");
    let tcp = h.get("tcp", boolean);
    let docker_at = h.value_position("docker");
    let docker = h.get("docker", boolean);
    let path = h.get("path", abs_path);
    let statuses = h.get("statuses", statuses);
    let check = if docker == Some(true) {
        if has_http_keys || tcp == Some(true) {
            let at = docker_at.unwrap_or_else(|| h.position());
            h.error_at(
                "docker",
                at,
                "docker: true cannot be combined with tcp, path or statuses (the container's HEALTHCHECK decides readiness; the gateway does not probe)",
            );
        }
        HealthCheck::Docker
    } else if tcp == Some(true) {
        if has_http_keys {
            let at = tcp_at.unwrap_or_else(|| h.position());
            h.error_at(
                "tcp",
                at,
                "tcp: true cannot be combined with path or statuses (a TCP probe has neither)",
            );
        }
        HealthCheck::Tcp
    } else {
        HealthCheck::Http {
            path: path.unwrap_or_else(|| "/".to_string()),
            statuses: statuses.unwrap_or_else(|| vec![DEFAULT_STATUSES]),
        }
    };
    f.absorb(h);
    Some(check)
}

/// Parses one route from a mapping — from the file or built by other code, e.g. with
/// [`Node::from_pairs`] from Docker labels — over `defaults`. `label` names the route in errors
/// (its name, or `routes[3]`). Checks that involve other routes (unique names and hosts,
/// `depends_on` targets and cycles, shared backends) are not made here: they need the whole set.
pub fn parse_route(
    node: Node,
    label: &str,
    defaults: &RouteDefaults,
) -> Result<RouteConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let route = draft_route(node, label.to_string(), None, defaults, &mut errors)
        .and_then(RouteDraft::build);
    match route {
        Some(route) if errors.is_empty() => Ok(route),
        _ if errors.is_empty() => Err(vec![ConfigError::new(
            Some(label),
            "",
            "internal error: incomplete route",
        )]),
        _ => Err(errors),
    }
}

/// The route's usable name, if it has one (read before the route is parsed, to label errors).
pub(crate) fn peek_name(node: &Node) -> Option<&str> {
    node.get("name")
        .and_then(Node::as_str)
        .filter(|name| !name.trim().is_empty())
}

/// A route as far as it could be parsed; cross-route checks run on these even when some routes
/// have errors, so that one bad route does not hide problems in the others. Values keep where
/// they were written, so that cross-route problems are located too.
pub(crate) struct RouteDraft {
    /// How errors name the route: its name, or `routes[i]`.
    pub label: String,
    pub name: Option<String>,
    pub hosts: Vec<(String, Position)>,
    pub backend: Option<BackendConfig>,
    target: Option<(Option<u16>, Option<String>)>,
    start_endpoint: Option<String>,
    pub depends_on: Vec<(Dependency, Position)>,
    /// The streams, each with where its `listen` was written.
    pub streams: Vec<(StreamConfig, Position)>,
    settings: Settings,
    /// Where the route's mapping starts.
    at: Position,
    /// The route's own keys, with where each value was written.
    written: Vec<(String, Position)>,
}

/// Reads one route into a draft, adding its problems to `errors`; `None` when it is not even a
/// mapping. `duplicate_of`: the index of an earlier route with the same name.
pub(crate) fn draft_route(
    node: Node,
    label: String,
    duplicate_of: Option<usize>,
    defaults: &RouteDefaults,
    errors: &mut Vec<ConfigError>,
) -> Option<RouteDraft> {
    let mut known = ROUTE_KEYS.to_vec();
    known.extend_from_slice(INHERIT_KEYS);
    let mut f = match Fields::new(node, Some(label.clone()), "", &known) {
        Ok(f) => f,
        Err(err) => {
            errors.push(err);
            return None;
        }
    };
    let name_at = f.value_position("name");
    let name = f.required("name", non_empty);
    if let (Some(name), Some(first), Some(at)) = (&name, duplicate_of, name_at) {
        f.error_at(
            "name",
            at,
            format!("duplicate route name \"{name}\" (already used by routes[{first}])"),
        );
    }
    let draft = route_fields(&mut f, label, name, defaults);
    errors.extend(f.finish());
    Some(draft)
}

fn route_fields(
    f: &mut Fields,
    label: String,
    name: Option<String>,
    defaults: &RouteDefaults,
) -> RouteDraft {
    // No hosts (and no streams): a dependency-only backend, woken only by its dependents.
    let hosts = if f.has("hosts") {
        f.list("hosts", host, Some("must list at least one host name"))
    } else {
        None
    };

    let backend = backend(f);
    // A dependency-only backend needs no port: with none, it is ready once started (or once
    // its own health check passes), nothing is probed.
    let target = port_or_upstream(f, hosts.is_none());
    let start_endpoint = f.get("start_endpoint", abs_path);
    let depends_on = f.list("depends_on", dependency, None).unwrap_or_default();
    let streams = streams(f, &label);
    let ready_after = f.get("ready_after", positive_duration);
    let mut settings = RouteDefaults::parse(f).resolve(defaults);
    settings.streams.ready_after = ready_after;
    check_udp_readiness(f, hosts.is_some(), target.as_ref(), &streams, &settings);
    RouteDraft {
        label,
        name,
        hosts: hosts.unwrap_or_default(),
        backend,
        target,
        start_endpoint,
        depends_on,
        streams,
        settings,
        at: f.position(),
        written: f.taken().to_vec(),
    }
}

/// Exactly one of `port` (the backend's port) and `upstream` (a fixed `host:port`); neither is
/// allowed only when `optional` (`Some((None, None))`). `None` when something is wrong (recorded).
fn port_or_upstream(f: &mut Fields, optional: bool) -> Option<(Option<u16>, Option<String>)> {
    match (f.has("port"), f.has("upstream")) {
        (false, false) if optional => Some((None, None)),
        (false, false) => {
            f.raw("upstream");
            f.missing_because(
                "port",
                "required key is missing: set port (the backend's port) or upstream (host:port)",
            );
            None
        }
        (true, true) => {
            let at = f.key_position("upstream");
            f.error_at(
                "upstream",
                at,
                "port and upstream are both set; use one of them",
            );
            f.raw("port");
            f.raw("upstream");
            None
        }
        _ => {
            let port = f.get("port", integer(1, 65535)).map(|p| p as u16);
            let upstream = f.get("upstream", upstream);
            (port.is_some() || upstream.is_some()).then_some((port, upstream))
        }
    }
}

/// The `streams` list: each item a mapping with `listen`, `protocol` (default tcp), and exactly
/// one of `port` and `upstream`. Every problem is reported; the good items are returned with
/// where their `listen` was written.
fn streams(f: &mut Fields, label: &str) -> Vec<(StreamConfig, Position)> {
    let Some(value) = f.raw("streams") else {
        return Vec::new();
    };
    let at = value.position();
    let items = match value.value {
        Value::Sequence(items) => items,
        other => {
            f.error_at(
                "streams",
                at,
                format!("expected a list of streams, got {}", other.describe()),
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        f.error_at(
            "streams",
            at,
            "must list at least one stream (or leave streams out)",
        );
    }
    let mut streams = Vec::with_capacity(items.len());
    for item in items {
        let mut s = match Fields::new(item, Some(label.to_string()), "streams", STREAM_KEYS) {
            Ok(s) => s,
            Err(error) => {
                f.push(error);
                continue;
            }
        };
        let listen_at = s.value_position("listen").unwrap_or_else(|| s.position());
        let listen = s.required("listen", stream_listen);
        let protocol = s
            .get("protocol", stream_protocol)
            .unwrap_or(StreamProtocol::Tcp);
        let target = port_or_upstream(&mut s, false);
        f.absorb(s);
        if let (Some(listen), Some((port, upstream))) = (listen, target) {
            let stream = StreamConfig {
                listen,
                protocol,
                port,
                upstream,
            };
            streams.push((stream, listen_at));
        }
    }
    streams
}

/// UDP cannot be probed: a route with a UDP stream needs something else that says its backend
/// is ready — a probe (its hosts, a TCP stream, or `port` with `health`), the container's own
/// health check (`health: { docker: true }`), or `ready_after`.
fn check_udp_readiness(
    f: &mut Fields,
    has_hosts: bool,
    target: Option<&(Option<u16>, Option<String>)>,
    streams: &[(StreamConfig, Position)],
    settings: &Settings,
) {
    let Some((_, udp_at)) = streams
        .iter()
        .find(|(stream, _)| stream.protocol == StreamProtocol::Udp)
    else {
        return;
    };
    let has_tcp = streams
        .iter()
        .any(|(stream, _)| stream.protocol == StreamProtocol::Tcp);
    let probed_port = settings.health_set
        && target.is_some_and(|(port, upstream)| port.is_some() || upstream.is_some());
    if has_hosts
        || has_tcp
        || probed_port
        || settings.health == HealthCheck::Docker
        || settings.streams.ready_after.is_some()
    {
        return;
    }
    f.error_at(
        "ready_after",
        *udp_at,
        "a UDP stream cannot be probed: set ready_after (e.g. 2s after the backend runs), \
         health: { docker: true } (its HEALTHCHECK decides), or give the route a probe \
         (hosts, a tcp stream, or port with health)",
    );
}

/// Exactly one of `docker: { container }`, `proxmox: { node, vmid }` and
/// `swarm: { service, replicas }`.
fn backend(f: &mut Fields) -> Option<BackendConfig> {
    let set: Vec<&str> = BACKEND_KEYS
        .iter()
        .copied()
        .filter(|key| f.has(key))
        .collect();
    if let [first, second, ..] = set[..] {
        let at = f.key_position(second);
        f.error_at(
            second,
            at,
            format!("{first} and {second} are both set; a route has exactly one backend"),
        );
    } else if set.is_empty() {
        f.missing_because(
            "docker",
            "required key is missing: set docker: { container: NAME }, proxmox: { node: NAME, vmid: ID } \
             or swarm: { service: NAME }",
        );
    }
    let docker = f.sub("docker", DOCKER_ROUTE_KEYS).and_then(|mut d| {
        let container = d.required("container", non_empty);
        let engine = docker_engine(&mut d);
        f.absorb(d);
        container.map(|container| BackendConfig::Docker { container, engine })
    });
    let proxmox = f.sub("proxmox", &["node", "vmid"]).and_then(|mut p| {
        let node = p.required("node", non_empty);
        let vmid = p.required("vmid", integer(VMID_RANGE.0, VMID_RANGE.1));
        f.absorb(p);
        Some(BackendConfig::Proxmox {
            node: node?,
            vmid: u32::try_from(vmid?).ok()?,
        })
    });
    let swarm = f.sub("swarm", SWARM_KEYS).and_then(|mut s| {
        let service = s.required("service", non_empty);
        let replicas = s
            .get("replicas", integer(1, MAX_REPLICAS))
            .unwrap_or(DEFAULT_REPLICAS);
        f.absorb(s);
        Some(BackendConfig::Swarm {
            service: service?,
            replicas,
        })
    });
    match (docker, proxmox, swarm) {
        (Some(b), None, None) | (None, Some(b), None) | (None, None, Some(b)) => Some(b),
        _ => None,
    }
}

/// The engine part of a `docker:` section (the gateway's or a route's): `host` and
/// `tls: { cert_path }`. TLS only makes sense to a TCP engine, so it is refused beside a
/// `unix://` or `http://` host.
pub(crate) fn docker_engine(d: &mut Fields) -> DockerEngine {
    let host = d.get("host", docker_host);
    let tls_at = d.key_position("tls");
    let cert_path = d.sub("tls", DOCKER_TLS_KEYS).and_then(|mut t| {
        let path = t.required("cert_path", docker_cert_path);
        d.absorb(t);
        path
    });
    if let (Some(host), Some(_)) = (&host, &cert_path) {
        if host.starts_with("unix://") || host.starts_with("http://") {
            d.error_at(
                "tls",
                tls_at,
                format!(
                    "TLS applies to tcp:// and https:// engines; \"{host}\" is reached without it"
                ),
            );
        }
    }
    DockerEngine { host, cert_path }
}

impl RouteDraft {
    /// The finished route, if nothing needed is missing.
    pub(crate) fn build(self) -> Option<RouteConfig> {
        let (port, upstream) = self.target?;
        let s = self.settings;
        Some(RouteConfig {
            name: self.name?,
            hosts: self.hosts.into_iter().map(|(host, _)| host).collect(),
            backend: self.backend?,
            port,
            upstream,
            start_endpoint: self.start_endpoint,
            no_loading_page: s.no_loading_page,
            show_details: s.show_details,
            ignore_user_agents: s.ignore_user_agents,
            depends_on: self.depends_on.into_iter().map(|(dep, _)| dep).collect(),
            health: s.health,
            health_set: s.health_set,
            idle_timeout: s.idle_timeout,
            wake_timeout: s.wake_timeout,
            stop_method: s.stop_method,
            stop_signal: s.stop_signal,
            stop_timeout: s.stop_timeout,
            max_waiters: s.max_waiters,
            retry_backoff: s.retry_backoff,
            streams: self.streams.into_iter().map(|(stream, _)| stream).collect(),
            stream_settings: s.streams,
            written: Written {
                at: self.at,
                keys: self.written,
            },
        })
    }

    /// Where the route sets `key`, or else where the route starts (the key's value came from
    /// `defaults` or the built-in defaults, and the route is where to override it).
    pub(crate) fn position_of(&self, key: &str) -> Position {
        self.written
            .iter()
            .find(|(k, _)| k == key)
            .map_or(self.at, |(_, at)| *at)
    }

    /// The keys that belong to the backend, not the route, with a comparable rendering: routes
    /// sharing a backend must agree on all of them.
    pub(crate) fn backend_keys(&self) -> [(&'static str, String); 7] {
        let s = &self.settings;
        let mut deps: Vec<String> = self
            .depends_on
            .iter()
            .map(|(d, _)| format!("{}:{}", d.route, condition_name(d.condition)))
            .collect();
        deps.sort();
        deps.dedup();
        [
            ("idle_timeout", fmt_duration(s.idle_timeout)),
            ("wake_timeout", fmt_duration(s.wake_timeout)),
            ("stop_method", stop_method_name(s.stop_method).to_string()),
            (
                "stop_signal",
                s.stop_signal
                    .clone()
                    .unwrap_or_else(|| "(none)".to_string()),
            ),
            ("stop_timeout", fmt_duration(s.stop_timeout)),
            ("retry_backoff", fmt_duration(s.retry_backoff)),
            ("depends_on", format!("[{}]", deps.join(", "))),
        ]
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
