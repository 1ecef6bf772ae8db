//! The runtime configuration: what the rest of the gateway reads once the file is validated.
//!
//! Kept apart from parsing so that code which only *uses* a configuration (the watcher, the route
//! table, an embedder building one by hand) depends on plain data, and so that a change to how the
//! file is read never touches what it means.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::certs::CertificateFiles;
use crate::config::yaml::Position;

/// The whole validated configuration: what [`load`](super::load) hands the gateway, so that
/// nothing downstream re-reads or re-checks the file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pingora's own server keys (everything at the top level except `idlewatcher`), with our
    /// defaults added, as text ready for `pingora::server::configuration::ServerConf::from_yaml`
    /// (written as JSON, which is YAML). Text rather than a `ServerConf` because Pingora merges its
    /// command-line options into the value it parses itself.
    pub server_yaml: String,
    /// Our part.
    pub gateway: GatewayConfig,
}

/// The `idlewatcher:` section, resolved: everything the gateway itself needs (Pingora's part is
/// in [`Config::server_yaml`]).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Addresses the gateway listens on (`listen`), default `["0.0.0.0:8080"]`.
    pub listen: Vec<String>,
    /// The HTTPS listeners and their certificates (`tls:`); `None` = no HTTPS.
    pub tls: Option<TlsConfig>,
    /// Prefix of the internal endpoints (`path_prefix`), default `/.idlewatcher/`. Always starts
    /// and ends with `/`.
    pub path_prefix: String,
    /// The admin listener (`admin:`): metrics and the operator's API; `None` = off.
    pub admin: Option<AdminConfig>,
    /// The default Docker engine (`docker: { host, tls }`), for routes that name none; an empty
    /// one means `DOCKER_HOST` (with `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`), else the local socket.
    pub docker: DockerEngine,
    /// Whether containers of the default engine labelled `idlewatcher.enable=true` become routes
    /// (`docker: { labels: true }`), default false.
    pub docker_labels: bool,
    /// The `defaults:` section, for routes not read from the file (Docker labels).
    pub defaults: RouteDefaults,
    /// The Proxmox VE cluster (`proxmox:`), if routes use Proxmox guests.
    pub proxmox: Option<ProxmoxConfig>,
    /// This gateway's name among several in front of the same backends (`instance`), default
    /// the host name: the key of its activity lease on Swarm services.
    pub instance: String,
    /// Network bytes (received plus sent) a Docker container may have exchanged since this
    /// gateway last saw traffic for it before its stop is postponed (`docker: { traffic_veto }`):
    /// another gateway on the same engine is using it. 0 (the default) = no veto.
    pub docker_traffic_veto: u64,
    /// Resolution of the idle clock (`tick`), default 1 s.
    pub tick: Duration,
    /// How many backends may be stopping at once (`max_concurrent_stops`), default 8.
    pub max_concurrent_stops: usize,
    /// Deadlines and per-client caps for HTTP clients (`clients:`).
    pub clients: ClientLimits,
    /// The routes, in file order, with `defaults` applied.
    pub routes: Vec<RouteConfig>,
}

/// The `tls:` section: HTTPS listeners (HTTP/2 and HTTP/1.1 by ALPN) and the certificates they
/// choose from by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Addresses of the HTTPS listeners (`listen`), at least one, none shared with another
    /// listener.
    pub listen: Vec<String>,
    /// Certificate and key pairs (`certificates`), at least one; each checked when the file
    /// is validated. The first is served to clients naming no host, or one no certificate
    /// covers.
    pub certificates: Vec<CertificateFiles>,
}

/// The `admin:` section: where the operator's API and the metrics listen, and who may use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin listener (`listen`), never one of the public ones.
    pub listen: String,
    /// A file holding the bearer token `/api/*` requires (`token_file`); `None` = no token
    /// (allowed on loopback only).
    pub token_file: Option<PathBuf>,
}

impl GatewayConfig {
    /// Every address a route's stream listens on, with its protocol, in file order: what must be
    /// free at start-up besides `listen`.
    pub fn stream_listen_addresses(&self) -> Vec<(StreamProtocol, SocketAddr)> {
        self.routes
            .iter()
            .flat_map(|route| &route.streams)
            .map(|stream| (stream.protocol, stream.listen))
            .collect()
    }
}

/// The `clients:` section: what a single HTTP client may cost the gateway. nginx-like defaults
/// (`client_header_timeout`, `keepalive_timeout`, `client_body_timeout`): a client that sends
/// nothing, half a head or a trickle never keeps a socket, a waiter place or a backend forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// `header_timeout`, default 30 s: the whole request head must arrive within it, counted
    /// from the connection's first moment (the early hold and h2c detection included), or from
    /// the first byte of a later request on a kept-alive connection.
    pub header_timeout: Duration,
    /// `keepalive_timeout`, default 60 s: how long an idle HTTP/1 connection waits for its next
    /// request.
    pub keepalive_timeout: Duration,
    /// `body_timeout`, default 60 s: the longest pause between two reads of a request body
    /// (then 408).
    pub body_timeout: Duration,
    /// `min_body_rate`, bytes per second, default 1024 (0: off): once a body has been read for
    /// `body_timeout`, its average rate must stay at least this (then 408), so a trickled upload
    /// does not keep a backend awake.
    pub min_body_rate: u64,
    /// `h2_idle_timeout`, default 180 s: an HTTP/2 connection without streams for this long is
    /// closed.
    pub h2_idle_timeout: Duration,
    /// `max_connections_per_ip`, default 0 (no cap): open connections one client address may
    /// have; more are closed at once.
    pub max_connections_per_ip: usize,
    /// `max_held_per_ip`, default 0 (no cap): requests one client address may have held through
    /// wakes at once; more get 503.
    pub max_held_per_ip: usize,
    /// `max_event_streams_per_ip`, default 1024: open `{prefix}events` streams per client
    /// address (then 429).
    pub max_event_streams_per_ip: usize,
    /// `max_event_streams_per_route`, default 4096: open `{prefix}events` streams per route
    /// (then 503).
    pub max_event_streams_per_route: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            min_body_rate: 1024,
            h2_idle_timeout: Duration::from_secs(180),
            max_connections_per_ip: 0,
            max_held_per_ip: 0,
            max_event_streams_per_ip: 1024,
            max_event_streams_per_route: 4096,
        }
    }
}

/// The `proxmox:` section: how to reach and trust one PVE cluster. Its `Debug` never shows the
/// token secret, so the configuration can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxmoxConfig {
    /// Base URL of the API (`url`), `https://host:8006`, without a trailing `/`.
    pub url: String,
    /// API token id (`token_id`), `user@realm!name`.
    pub token_id: String,
    /// Where the token's secret is (`token_secret` or `token_secret_file`).
    pub token_secret: TokenSecret,
    /// How the API's certificate is checked (`ca_file`, `fingerprint` or `insecure`).
    pub trust: PveTrust,
    /// Interval of the one bulk status poll for the whole cluster (`poll`), default 2 s.
    pub poll: Duration,
}

impl fmt::Debug for ProxmoxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxmoxConfig")
            .field("url", &self.url)
            .field("token_id", &self.token_id)
            .field("token_secret", &self.token_secret)
            .field("trust", &self.trust)
            .field("poll", &self.poll)
            .finish()
    }
}

/// The API token's secret: written in the file, or kept in a file of its own (read at start-up,
/// so the configuration can be shared without it).
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSecret {
    /// `token_secret`: the secret itself.
    Inline(String),
    /// `token_secret_file`: a file holding the secret (surrounding whitespace ignored).
    File(PathBuf),
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSecret::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSecret::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// How the PVE API's TLS certificate is trusted: PVE ships a self-signed CA, so the system roots
/// rarely apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PveTrust {
    /// `ca_file`: PEM certificates to verify the chain and host name against.
    CaFile(PathBuf),
    /// `fingerprint`: the SHA-256 of the leaf certificate (DER), as the PVE GUI shows it.
    Fingerprint([u8; 32]),
    /// `insecure: true`: no check at all (logged as a warning).
    Insecure,
}

/// One route, fully resolved (defaults applied), so that nothing downstream looks a default up.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Unique name (`name`).
    pub name: String,
    /// Host names, lowercased, without port (`hosts`).
    pub hosts: Vec<String>,
    /// The backend (`docker:` or `proxmox:`).
    pub backend: BackendConfig,
    /// Backend port (`port`): upstream = backend address : port.
    pub port: Option<u16>,
    /// Fixed upstream `host:port` instead of the backend's own address (`upstream`).
    pub upstream: Option<String>,
    /// Only this path may wake the backend (`start_endpoint`).
    pub start_endpoint: Option<String>,
    /// Never show the loading page; hold every request instead (`no_loading_page`).
    pub no_loading_page: bool,
    /// Whether the public page, events and status may name the backend, its addresses and the
    /// provider's error texts (`show_details`, default false: visitors see the phase only).
    pub show_details: bool,
    /// Lowercased substrings of `User-Agent`s that never wake the backend
    /// (`ignore_user_agents`): uptime monitors and crawlers get 503 while it sleeps.
    pub ignore_user_agents: Vec<String>,
    /// Routes whose backends must be up first (`depends_on`).
    pub depends_on: Vec<Dependency>,
    /// How readiness is probed (`health`).
    pub health: HealthCheck,
    /// Whether `health` was written (on the route or in `defaults`): if not, a backend with its
    /// own health check (a Docker `HEALTHCHECK`) must also pass it before it is ready.
    pub health_set: bool,
    /// Idle time before the backend is put to sleep; zero = never (`idle_timeout`).
    pub idle_timeout: Duration,
    /// Deadline for a wake, from the first request to ready (`wake_timeout`).
    pub wake_timeout: Duration,
    /// How the backend is put to sleep (`stop_method`).
    pub stop_method: StopMethod,
    /// Signal for `stop`/`kill` (`stop_signal`), e.g. `SIGTERM`; `None` = the backend's default.
    pub stop_signal: Option<String>,
    /// Grace period of `stop` before a forced kill (`stop_timeout`).
    pub stop_timeout: Duration,
    /// Most requests held at once while waking; more get 503 at once (`max_waiters`).
    pub max_waiters: usize,
    /// First pause before a failed wake may be retried; doubles per failure (`retry_backoff`).
    pub retry_backoff: Duration,
    /// Raw TCP and UDP fronts of the same backend (`streams`).
    pub streams: Vec<StreamConfig>,
    /// How the route's streams wait and buffer (`ready_after`, `udp_*`).
    pub stream_settings: StreamSettings,
    /// Where the route and its keys were written, for problems found after parsing (a sleep
    /// method its provider family lacks). Not part of the route's meaning.
    pub written: Written,
}

/// Where a route and its own keys were written. Two routes that differ only in where they were
/// written are equal: the positions locate errors, they do not configure anything.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Where the route's mapping starts.
    pub at: Position,
    /// The route's own keys, with where each value was written.
    pub keys: Vec<(String, Position)>,
}

impl PartialEq for Written {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Written {
    /// Where the route sets `key`, or else where the route starts (the value came from
    /// `defaults` or the built-in defaults, and the route is where to override it).
    pub fn position_of(&self, key: &str) -> Position {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map_or(self.at, |(_, at)| *at)
    }
}

/// One raw stream of a route (`streams:` item): connections or datagrams on `listen` wake the
/// route's backend and are then forwarded to it, unread until it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Where the gateway listens (`listen`).
    pub listen: SocketAddr,
    /// TCP or UDP (`protocol`, default TCP).
    pub protocol: StreamProtocol,
    /// The backend's port (`port`): traffic goes to the backend's address and this port.
    pub port: Option<u16>,
    /// A fixed `host:port` instead (`upstream`).
    pub upstream: Option<String>,
}

/// The transport of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamProtocol {
    /// Connections, spliced both ways once the backend is ready.
    Tcp,
    /// Datagrams, per client session, buffered while the backend wakes.
    Udp,
}

impl StreamProtocol {
    /// `tcp` or `udp`, as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamProtocol::Tcp => "tcp",
            StreamProtocol::Udp => "udp",
        }
    }
}

/// How a route's streams wait for the backend and what a UDP stream keeps meanwhile. UDP cannot
/// be probed, so a UDP-only backend needs another rule to know it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// Ready this long after the backend runs (and passes its own health check, if it has one)
    /// (`ready_after`); required for a UDP stream when nothing else tells readiness.
    pub ready_after: Option<Duration>,
    /// A UDP client's session (its upstream socket) ends after this long without a datagram
    /// either way (`udp_session_idle`), default 60 s.
    pub udp_session_idle: Duration,
    /// Most datagrams kept while the backend wakes, per stream (`udp_buffer_datagrams`),
    /// default 1,024; more are dropped and counted.
    pub udp_buffer_datagrams: usize,
    /// Most bytes kept while the backend wakes, per stream (`udp_buffer_bytes`), default 1 MiB.
    pub udp_buffer_bytes: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            ready_after: None,
            udp_session_idle: Duration::from_secs(60),
            udp_buffer_datagrams: 1024,
            udp_buffer_bytes: 1024 * 1024,
        }
    }
}

/// Which backend a route fronts: it decides which provider starts and stops it, and routes naming
/// the same backend share one watcher.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendConfig {
    /// A Docker container, by name or id, on one engine: the same name on two engines is two
    /// backends.
    Docker {
        /// Name or id.
        container: String,
        /// The engine it runs on (the route's own `host`/`tls`, else the gateway's).
        engine: DockerEngine,
    },
    /// A Proxmox LXC guest.
    Proxmox {
        /// Node name.
        node: String,
        /// Guest id.
        vmid: u32,
    },
    /// A Docker Swarm service on the gateway's engine (a swarm manager), scaled between 0 and
    /// `replicas`.
    Swarm {
        /// The service's name (or id).
        service: String,
        /// How many replicas a wake asks for (`replicas`, default 1).
        replicas: u64,
    },
}

/// A Docker (or Podman-compatible) engine: where it listens and the client TLS material it
/// wants. Routes on equal engines share one connection and one event stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DockerEngine {
    /// `unix:///path`, `tcp://host:port`, `http://host:port` or `https://host:port` (`host`);
    /// `None` = `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// The directory holding Docker's `ca.pem`, `cert.pem` and `key.pem` (`tls.cert_path`):
    /// the engine is reached over TLS, trusting only that CA and showing that client certificate.
    pub cert_path: Option<PathBuf>,
}

/// A dependency from `depends_on`, e.g. `db:service_healthy`: woken first, so a backend never
/// starts before what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The route whose backend must be up.
    pub route: String,
    /// What "up" means.
    pub condition: DependencyCondition,
}

/// When a dependency counts as up (Compose's conditions, so users need not learn new ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyCondition {
    /// Its backend was started (`service_started`, the default).
    Started,
    /// Its backend passed its readiness probe (`service_healthy`).
    Healthy,
}

/// Readiness probe: a started backend is not yet a serving one, and held requests are released
/// only once it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// HTTP GET `path`; ready when the status is in `statuses` (default `200-499`).
    Http {
        /// Absolute path, e.g. `/healthz`.
        path: String,
        /// Inclusive status ranges counting as ready.
        statuses: Vec<(u16, u16)>,
    },
    /// Ready as soon as a TCP connection is accepted.
    Tcp,
    /// Ready when the backend's own health check (Docker's `HEALTHCHECK`) says `healthy`;
    /// failed when it says `unhealthy` (`docker: true`). The gateway does not probe.
    Docker,
}

/// How an idle backend is put to sleep: a trade between memory freed and time to wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopMethod {
    /// Freeze in memory; fastest wake.
    Pause,
    /// Graceful stop with `stop_signal`, then kill after `stop_timeout`.
    Stop,
    /// Send `stop_signal` (default SIGKILL) and do not wait.
    Kill,
}

/// The route settings set under `idlewatcher.defaults` (each `None` when not set there), which a
/// route uses for whatever it does not set itself; what neither sets gets the built-in default.
/// [`RouteDefaults::default`] sets nothing, so only the built-in defaults apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteDefaults {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) wake_timeout: Option<Duration>,
    pub(crate) stop_method: Option<StopMethod>,
    pub(crate) stop_signal: Option<String>,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) max_waiters: Option<usize>,
    pub(crate) retry_backoff: Option<Duration>,
    pub(crate) health: Option<HealthCheck>,
    pub(crate) no_loading_page: Option<bool>,
    pub(crate) show_details: Option<bool>,
    pub(crate) ignore_user_agents: Option<Vec<String>>,
    pub(crate) udp_session_idle: Option<Duration>,
    pub(crate) udp_buffer_datagrams: Option<usize>,
    pub(crate) udp_buffer_bytes: Option<usize>,
}
