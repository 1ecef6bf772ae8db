//! The configuration file: one YAML document, Pingora's server keys at the top level and ours
//! under `idlewatcher:`. Parsing validates everything at once and reports *every* problem, each
//! naming the route and the key, so a user fixes a config in one pass.
//!
//! How: the text is parsed to a [`serde_yaml::Value`] (a syntax error is the only early exit,
//! reported with its line), then every mapping is walked key by key with a small `Fields`
//! helper that takes known keys out, records every problem, and reports whatever is left as an
//! unknown key (with a "did you mean" for likely typos). Cross-route checks (unique names and
//! hosts, dependencies and their cycles, routes sharing a backend) run on whatever could be
//! parsed, so one broken route does not hide problems in the others.
//!
//! Error keys: inside a route they are relative to the route (`health.statuses`); elsewhere they
//! are full dotted paths (`idlewatcher.listen`, `idlewatcher.defaults.idle_timeout`, `threads`).
//! A route is labelled by its `name`, or `routes[i]` when the name is missing or duplicated.
//! Pingora's keys are not listed here: they are derived from `ServerConf` itself.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde_yaml::{Mapping, Value};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pingora's own server keys (everything at the top level except `idlewatcher`), as YAML text
    /// ready for `pingora::server::configuration::ServerConf::from_yaml`.
    pub server_yaml: String,
    /// Our part.
    pub gateway: GatewayConfig,
}

/// The `idlewatcher:` section.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Addresses the gateway listens on (`listen`), default `["0.0.0.0:8080"]`.
    pub listen: Vec<String>,
    /// Prefix of the internal endpoints (`path_prefix`), default `/.idlewatcher/`. Always starts
    /// and ends with `/`.
    pub path_prefix: String,
    /// How to reach the Docker engine (`docker.host`); `None` = `DOCKER_HOST`, else the platform
    /// default.
    pub docker_host: Option<String>,
    /// Resolution of the idle clock (`tick`), default 1 s.
    pub tick: Duration,
    /// How many backends may be stopping at once (`max_concurrent_stops`), default 8.
    pub max_concurrent_stops: usize,
    /// The routes, in file order, with `defaults` applied.
    pub routes: Vec<RouteConfig>,
}

/// One route, fully resolved (defaults applied).
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
    /// Routes whose backends must be up first (`depends_on`).
    pub depends_on: Vec<Dependency>,
    /// How readiness is probed (`health`).
    pub health: HealthCheck,
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
}

/// Which backend a route fronts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendConfig {
    /// A Docker container, by name or id.
    Docker {
        /// Name or id.
        container: String,
    },
    /// A Proxmox LXC guest.
    Proxmox {
        /// Node name.
        node: String,
        /// Guest id.
        vmid: u32,
    },
}

/// A dependency from `depends_on`, e.g. `db:service_healthy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The route whose backend must be up.
    pub route: String,
    /// What "up" means.
    pub condition: DependencyCondition,
}

/// When a dependency counts as up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyCondition {
    /// Its backend was started (`service_started`, the default).
    Started,
    /// Its backend passed its readiness probe (`service_healthy`).
    Healthy,
}

/// Readiness probe.
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
}

/// How an idle backend is put to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMethod {
    /// Freeze in memory; fastest wake.
    Pause,
    /// Graceful stop with `stop_signal`, then kill after `stop_timeout`.
    Stop,
    /// Send `stop_signal` (default SIGKILL) and do not wait.
    Kill,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem found in the config file, precise enough that a user can fix it without guessing:
/// which route (if any), which key, what is wrong, and for YAML syntax errors the line.
///
/// Displayed as `route "whoami": key "idle_timeout": invalid duration "5x" (...)`, `key
/// "idlewatcher.listen": ...` outside routes, or `line 7: ...` for syntax errors. `key` is empty
/// when the problem is not about one key (unreadable file, YAML syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The route, by its `name`, or `routes[3]` (0-based) when it has no usable or unique name.
    pub route: Option<String>,
    /// Dotted key: relative to the route inside a route (`health.statuses`), else from the top of
    /// the file (`idlewatcher.listen`, `idlewatcher.defaults.idle_timeout`, `threads`). `(server)`
    /// for problems Pingora finds in its own keys taken together.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
    /// 1-based line, known only for YAML syntax errors.
    pub line: Option<usize>,
}

impl ConfigError {
    fn new(route: Option<&str>, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            route: route.map(str::to_string),
            key: key.to_string(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(route) = &self.route {
            write!(f, "route \"{route}\": ")?;
        }
        if !self.key.is_empty() {
            write!(f, "key \"{}\": ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one pass over the file, so the user fixes them all at once instead of
/// one per run. Never empty. Displays one error per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", one_per_line(.0))]
pub struct ConfigErrors(
    /// Roughly top-down in the file; callers should not rely on the order.
    pub Vec<ConfigError>,
);

fn one_per_line(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    fn one(key: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError::new(None, key, message)])
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Reads and validates the config file at `path`; an unreadable file is one error naming it.
/// This is what the gateway and `idlewatcher -t` call.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigErrors::one(
            "",
            format!("cannot read config file \"{}\": {err}", path.display()),
        )
    })?;
    parse(&text)
}

/// Validates a whole config document and resolves it (defaults applied), or returns every problem
/// found, each naming its route and key. Kept separate from [`load`] so tests and embedders can
/// validate text they already hold.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut value: Value = serde_yaml::from_str(text).map_err(syntax_error)?;
    value
        .apply_merge()
        .map_err(|err| ConfigErrors::one("", format!("invalid merge key (<<): {err}")))?;
    let root = match value {
        Value::Mapping(map) => map,
        Value::Null => Mapping::new(),
        other => {
            return Err(ConfigErrors::one(
                "",
                format!(
                    "the file must be a mapping of keys, got {}",
                    describe(&other)
                ),
            ))
        }
    };

    let server_keys = pingora_keys();
    let mut known: Vec<&str> = server_keys.iter().map(String::as_str).collect();
    known.push("idlewatcher");
    let mut top = Fields::of_mapping(root, None, "", &known).hint(
        &[GATEWAY_KEYS, INHERIT_KEYS, ROUTE_KEYS],
        "it belongs under idlewatcher:",
    );

    let server_yaml = server_part(&mut top, &server_keys);

    let gateway = match top.sub("idlewatcher", GATEWAY_KEYS) {
        Some(section) => parse_gateway(section, &mut top),
        None => {
            if !top.errors.iter().any(|e| e.key == "idlewatcher") {
                top.error("idlewatcher", "required key is missing");
            }
            None
        }
    };
    let errors = top.finish();
    match gateway {
        Some(gateway) if errors.is_empty() => Ok(Config {
            server_yaml,
            gateway,
        }),
        _ if errors.is_empty() => Err(ConfigErrors::one("", "internal error: incomplete config")),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Takes Pingora's keys out of the top-level mapping, in the user's order, checks each on its own
/// (so errors name the key), adds our defaults, and has Pingora validate the result.
fn server_part(top: &mut Fields, server_keys: &[String]) -> String {
    let mut server = Mapping::new();
    let mut server_ok = true;
    for key in top.string_keys() {
        if !server_keys.contains(&key) {
            continue;
        }
        let Some(value) = top.raw(&key) else { continue };
        let mut single = Mapping::new();
        single.insert(Value::from(key.as_str()), value.clone());
        if let Err(err) = serde_yaml::from_value::<ServerConf>(Value::Mapping(single)) {
            top.error(&key, err.to_string());
            server_ok = false;
        }
        server.insert(Value::from(key), value);
    }
    if server.get("threads").and_then(Value::as_u64) == Some(0) {
        // Pingora would accept it and then fail to build its runtime.
        top.error("threads", "must be at least 1");
        server_ok = false;
    }
    for (key, value) in server_defaults() {
        if !server.contains_key(key) {
            server.insert(Value::from(key), value);
        }
    }
    let yaml = match serde_yaml::to_string(&Value::Mapping(server)) {
        Ok(yaml) => yaml,
        Err(err) => {
            top.error("(server)", format!("cannot serialize server keys: {err}"));
            String::new()
        }
    };
    if server_ok && !yaml.is_empty() {
        if let Err(err) = ServerConf::from_yaml(&yaml) {
            top.error("(server)", pingora_message(&err));
        }
    }
    yaml
}

fn syntax_error(err: serde_yaml::Error) -> ConfigErrors {
    let mut message = err.to_string();
    // The line is reported separately; drop serde_yaml's own " at line L column C" suffix.
    if let Some(at) = message.find(" at line ") {
        message.truncate(at);
    }
    let line = err.location().map(|loc| loc.line());
    ConfigErrors(vec![ConfigError {
        route: None,
        key: String::new(),
        message: format!("invalid YAML: {message}"),
        line,
    }])
}

/// Pingora's own keys, derived from its config type so that a new Pingora release needs no edit.
fn pingora_keys() -> Vec<String> {
    match serde_yaml::to_value(ServerConf::default()) {
        Ok(Value::Mapping(map)) => map
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Pingora's defaults that do not suit a gateway which must drain in seconds and keep many
/// upstream connections warm; applied only where the user set nothing.
fn server_defaults() -> [(&'static str, Value); 4] {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    [
        ("threads", Value::from(threads as u64)),
        ("grace_period_seconds", Value::from(1u64)),
        ("graceful_shutdown_timeout_seconds", Value::from(3u64)),
        ("upstream_keepalive_pool_size", Value::from(1024u64)),
    ]
}

fn pingora_message(err: &pingora::Error) -> String {
    // Pingora's context quotes the whole document; the cause (or the explanation) is the point.
    match (&err.cause, &err.context) {
        (Some(cause), _) => cause.to_string(),
        (None, Some(context)) => context.as_str().to_string(),
        (None, None) => err.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and defaults
// ---------------------------------------------------------------------------------------------

const GATEWAY_KEYS: &[&str] = &[
    "listen",
    "path_prefix",
    "docker",
    "tick",
    "max_concurrent_stops",
    "defaults",
    "routes",
];
/// Keys a route inherits from `defaults`.
const INHERIT_KEYS: &[&str] = &[
    "idle_timeout",
    "wake_timeout",
    "stop_method",
    "stop_signal",
    "stop_timeout",
    "max_waiters",
    "retry_backoff",
    "health",
    "no_loading_page",
];
/// Keys only a route may set.
const ROUTE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "docker",
    "proxmox",
    "port",
    "upstream",
    "start_endpoint",
    "depends_on",
];
const HEALTH_KEYS: &[&str] = &["path", "statuses", "tcp"];

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_PATH_PREFIX: &str = "/.idlewatcher/";
const DEFAULT_TICK: Duration = Duration::from_secs(1);
const MAX_TICK: Duration = Duration::from_secs(60);
const DEFAULT_MAX_CONCURRENT_STOPS: usize = 8;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_WAITERS: usize = 10_000;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
const DEFAULT_STATUSES: (u16, u16) = (200, 499);
const VMID_RANGE: (u64, u64) = (100, 999_999_999);

const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

// ---------------------------------------------------------------------------------------------
// Walking a mapping key by key
// ---------------------------------------------------------------------------------------------

/// One YAML mapping being validated: keys are taken out one by one as they are parsed, problems
/// are recorded (never returned early), and whatever is left at the end is an unknown key.
struct Fields {
    map: Mapping,
    route: Option<String>,
    /// Dotted path of this mapping plus `.` (empty at the top of the file or of a route).
    prefix: String,
    known: Vec<String>,
    /// Keys that are known elsewhere, with a note saying where they belong.
    hints: Vec<(&'static [&'static str], &'static str)>,
    errors: Vec<ConfigError>,
}

impl Fields {
    fn of_mapping(map: Mapping, route: Option<String>, path: &str, known: &[&str]) -> Self {
        Fields {
            map,
            route,
            prefix: if path.is_empty() {
                String::new()
            } else {
                format!("{path}.")
            },
            known: known.iter().map(|k| k.to_string()).collect(),
            hints: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn new(
        value: Value,
        route: Option<String>,
        path: &str,
        known: &[&str],
    ) -> Result<Self, ConfigError> {
        match value {
            Value::Mapping(map) => Ok(Fields::of_mapping(map, route, path, known)),
            other => Err(ConfigError::new(
                route.as_deref(),
                path,
                format!("expected a mapping, got {}", describe(&other)),
            )),
        }
    }

    fn hint(mut self, groups: &[&'static [&'static str]], note: &'static str) -> Self {
        for group in groups {
            self.hints.push((group, note));
        }
        self
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        let key = self.full_key(key);
        self.errors
            .push(ConfigError::new(self.route.as_deref(), &key, message));
    }

    fn string_keys(&self) -> Vec<String> {
        self.map
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    }

    /// Set to something other than null (`key:` alone or `key: ~` counts as not set).
    fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// Takes the key out; null counts as not set.
    fn raw(&mut self, key: &str) -> Option<Value> {
        self.map.shift_remove(key).filter(|v| !v.is_null())
    }

    /// Takes and parses an optional key, recording a parse failure under that key.
    fn get<T>(&mut self, key: &str, parse: impl FnOnce(Value) -> Result<T, String>) -> Option<T> {
        let value = self.raw(key)?;
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    /// Like [`Fields::get`], and a missing key is an error.
    fn required<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<T> {
        if !self.has(key) {
            self.missing(key);
            return None;
        }
        self.get(key, parse)
    }

    /// Records a missing required key (and drops a null placeholder for it).
    fn missing(&mut self, key: &str) {
        self.map.shift_remove(key);
        self.error(key, "required key is missing");
    }

    /// A list (a single scalar also accepted), each item parsed on its own so that every bad
    /// item is reported; the good items are returned so cross-checks can still use them.
    /// `if_empty`: the error for an empty list, when one is not allowed.
    fn list<T>(
        &mut self,
        key: &str,
        item: impl Fn(Value) -> Result<T, String>,
        if_empty: Option<&str>,
    ) -> Option<Vec<T>> {
        let items = match self.raw(key)? {
            Value::Sequence(items) => items,
            Value::Mapping(_) => {
                self.error(key, "expected a list, got a mapping");
                return None;
            }
            one => vec![one],
        };
        if let (true, Some(message)) = (items.is_empty(), if_empty) {
            self.error(key, message);
        }
        let mut parsed = Vec::with_capacity(items.len());
        for value in items {
            match item(value) {
                Ok(value) => parsed.push(value),
                Err(message) => self.error(key, message),
            }
        }
        Some(parsed)
    }

    /// A nested mapping, validated with the same route and a dotted key path; hand it back with
    /// [`Fields::absorb`].
    fn sub(&mut self, key: &str, known: &[&str]) -> Option<Fields> {
        let value = self.raw(key)?;
        match Fields::new(value, self.route.clone(), &self.full_key(key), known) {
            Ok(fields) => Some(fields),
            Err(err) => {
                self.errors.push(err);
                None
            }
        }
    }

    fn absorb(&mut self, child: Fields) {
        let errors = child.finish();
        self.errors.extend(errors);
    }

    /// Why an unknown key may be there: it belongs elsewhere, or it is a typo of a known key.
    fn note_for(&self, name: &str) -> String {
        let belongs = |key: &str| {
            self.hints
                .iter()
                .find(|(group, _)| group.contains(&key))
                .map(|(_, note)| *note)
        };
        if let Some(note) = belongs(name) {
            return format!(" ({note})");
        }
        let elsewhere = self
            .hints
            .iter()
            .flat_map(|(group, _)| group.iter().copied());
        let candidates = self.known.iter().map(String::as_str).chain(elsewhere);
        match closest(name, candidates) {
            Some(key) => match belongs(key) {
                Some(note) if !self.known.iter().any(|k| k == key) => {
                    format!(" (did you mean \"{key}\"? {note})")
                }
                _ => format!(" (did you mean \"{key}\"?)"),
            },
            None => String::new(),
        }
    }

    /// The recorded errors plus one per key nobody took (unknown keys).
    fn finish(mut self) -> Vec<ConfigError> {
        let mut errors = std::mem::take(&mut self.errors);
        for (key, _) in std::mem::take(&mut self.map) {
            let (name, message) = match key {
                Value::String(name) => {
                    let message = format!("unknown key \"{name}\"{}", self.note_for(&name));
                    (name, message)
                }
                other => (scalar_text(&other), "keys must be strings".to_string()),
            };
            let key = format!("{}{name}", self.prefix);
            errors.push(ConfigError::new(self.route.as_deref(), &key, message));
        }
        errors
    }
}

/// The known name closest to a misspelt one, if it is close enough to be a likely typo.
fn closest<'a>(wrong: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (wrong.chars().count() / 4).clamp(1, 3);
    known
        .map(|k| (edit_distance(wrong, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions (`listne`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

// ---------------------------------------------------------------------------------------------
// Value parsers: each takes one YAML value and says precisely what is wrong with it
// ---------------------------------------------------------------------------------------------

/// A short human description of a value for "got ..." messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_string(),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
        Value::String(s) => format!("{s:?}"),
        other => scalar_text(other),
    }
}

/// A scalar as the user wrote it (strings unquoted).
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => describe(other),
    }
}

fn string(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("expected a string, got {}", describe(&other))),
    }
}

fn non_empty(value: Value) -> Result<String, String> {
    let s = string(value)?;
    if s.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s)
}

fn boolean(value: Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(b),
        other => Err(format!("expected true or false, got {}", describe(&other))),
    }
}

fn integer(low: u64, high: u64) -> impl Fn(Value) -> Result<u64, String> {
    move |value| {
        let expected = if high == u64::MAX {
            format!("an integer >= {low}")
        } else {
            format!("an integer in {low}..={high}")
        };
        match value.as_u64() {
            Some(n) if (low..=high).contains(&n) => Ok(n),
            _ => Err(format!("expected {expected}, got {}", describe(&value))),
        }
    }
}

fn count(low: u64) -> impl Fn(Value) -> Result<usize, String> {
    let parse = integer(low, usize::MAX as u64);
    move |value| parse(value).map(|n| n as usize)
}

/// `500ms`, `30s`, `5m`, `1h30m`, or a bare integer (YAML or string) meaning seconds.
fn duration(value: Value) -> Result<Duration, String> {
    let text = match &value {
        Value::Number(n) => match n.as_u64() {
            Some(secs) => return Ok(Duration::from_secs(secs)),
            None => n.to_string(),
        },
        Value::String(s) => s.trim().to_string(),
        other => {
            return Err(format!(
                "expected a duration like 30s, got {}",
                describe(other)
            ))
        }
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
    }
    humantime::parse_duration(&text)
        .map_err(|_| format!("invalid duration \"{text}\" (expected e.g. 500ms, 30s, 5m, 1h)"))
}

fn positive_duration(value: Value) -> Result<Duration, String> {
    let d = duration(value)?;
    if d.is_zero() {
        return Err("must be greater than 0".to_string());
    }
    Ok(d)
}

fn tick(value: Value) -> Result<Duration, String> {
    let d = positive_duration(value)?;
    if d > MAX_TICK {
        return Err(format!(
            "must be at most 60s, got {}",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

fn socket_addr(value: Value) -> Result<String, String> {
    let text = string(value)?;
    text.trim()
        .parse::<SocketAddr>()
        .map(|addr| addr.to_string())
        .map_err(|_| format!("invalid address \"{text}\" (expected ip:port, e.g. 0.0.0.0:8080)"))
}

fn path_prefix(value: Value) -> Result<String, String> {
    let mut prefix = string(value)?;
    if !prefix.starts_with('/') {
        return Err(format!("\"{prefix}\" must start with \"/\""));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/$".contains(*c)))
    {
        return Err(format!(
            "invalid character {bad:?} in \"{prefix}\" (allowed: A-Z a-z 0-9 - . _ ~ / $)"
        ));
    }
    if prefix.chars().all(|c| c == '/') {
        return Err(format!(
            "\"{prefix}\" would shadow every path; use e.g. {DEFAULT_PATH_PREFIX}"
        ));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok(prefix)
}

fn docker_host(value: Value) -> Result<String, String> {
    let host = non_empty(value)?;
    let ok = ["unix://", "tcp://", "http://", "https://"]
        .iter()
        .any(|scheme| {
            host.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
    if !ok {
        return Err(format!(
            "unsupported Docker host \"{host}\" (expected unix:///path, tcp://host:port, http://host:port or https://host:port)"
        ));
    }
    Ok(host)
}

/// An absolute URL path such as `/healthz`.
fn abs_path(value: Value) -> Result<String, String> {
    let path = string(value)?;
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(format!(
            "\"{path}\" must be an absolute path starting with \"/\", without spaces"
        ));
    }
    Ok(path)
}

fn stop_method(value: Value) -> Result<StopMethod, String> {
    let text = string(value)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "pause" => Ok(StopMethod::Pause),
        "stop" => Ok(StopMethod::Stop),
        "kill" => Ok(StopMethod::Kill),
        _ => Err(format!(
            "invalid stop method \"{text}\" (expected pause, stop or kill)"
        )),
    }
}

fn stop_method_name(method: StopMethod) -> &'static str {
    match method {
        StopMethod::Pause => "pause",
        StopMethod::Stop => "stop",
        StopMethod::Kill => "kill",
    }
}

/// `SIGTERM`, `TERM`, `sigterm` → `SIGTERM`; `15` → `15`.
fn stop_signal(value: Value) -> Result<String, String> {
    let text = scalar_text(&value);
    let invalid =
        || format!("invalid signal \"{text}\" (expected a name like SIGTERM or a number 1-64)");
    match value {
        Value::Number(_) | Value::String(_) => {}
        _ => return Err(invalid()),
    }
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<u64>() {
        return if (1..=64).contains(&n) {
            Ok(n.to_string())
        } else {
            Err(invalid())
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&bare) {
        Ok(format!("SIG{bare}"))
    } else {
        Err(invalid())
    }
}

fn status_code(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!(
            "invalid status code \"{}\" (expected 100-599)",
            text.trim()
        )),
    }
}

/// `"200-299,301"`, `204`, or a list of those.
fn statuses(value: Value) -> Result<Vec<(u16, u16)>, String> {
    let items = match value {
        Value::Sequence(items) => items,
        one => vec![one],
    };
    let mut ranges = Vec::new();
    for item in items {
        let text = match item {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "expected status codes like \"200-299,301\", got {}",
                    describe(&other)
                ))
            }
        };
        for part in text.split(',') {
            let range = match part.split_once('-') {
                Some((low, high)) => {
                    let range = (status_code(low)?, status_code(high)?);
                    if range.0 > range.1 {
                        return Err(format!(
                            "invalid status range \"{}\" (low end above high end)",
                            part.trim()
                        ));
                    }
                    range
                }
                None => {
                    let code = status_code(part)?;
                    (code, code)
                }
            };
            ranges.push(range);
        }
    }
    if ranges.is_empty() {
        return Err("must list at least one status code".to_string());
    }
    Ok(ranges)
}

/// A host name as matched against `Host`: lowercased; no scheme, port, path or whitespace.
fn host(value: Value) -> Result<String, String> {
    let text = string(value)?;
    let bad = |why: &str| Err(format!("invalid host \"{text}\": {why}"));
    if text.is_empty() {
        return bad("empty");
    }
    if text.contains("://") {
        return bad("remove the scheme, give just the host name");
    }
    if text.chars().any(char::is_whitespace) {
        return bad("contains whitespace");
    }
    if text.contains('/') {
        return bad("remove the path, give just the host name");
    }
    if let Some(inner) = text.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(ip) if ip.parse::<Ipv6Addr>().is_ok() => Ok(text.to_ascii_lowercase()),
            _ if inner.contains("]:") => bad("remove the port (the port is ignored when matching)"),
            _ => bad("not a valid [IPv6] address"),
        };
    }
    if text.contains(':') {
        return if text.parse::<Ipv6Addr>().is_ok() {
            bad("write IPv6 addresses in brackets, e.g. [::1]")
        } else {
            bad("remove the port (the port is ignored when matching)")
        };
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._".contains(*c)))
    {
        return bad(&format!("invalid character {c:?}"));
    }
    Ok(text.to_ascii_lowercase())
}

/// `host:port` with a valid port, e.g. `127.0.0.1:8081` or `[::1]:80`.
fn upstream(value: Value) -> Result<String, String> {
    let text = string(value)?;
    let invalid =
        || format!("invalid upstream \"{text}\" (expected host:port, e.g. 127.0.0.1:8081)");
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(invalid());
    };
    let host_ok = !host.is_empty()
        && !host.contains('/')
        && !host.chars().any(char::is_whitespace)
        && (!host.contains(':')
            || host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok()));
    match port.parse::<u16>() {
        Ok(p) if p >= 1 && host_ok => Ok(text),
        _ => Err(invalid()),
    }
}

/// `db` or `db:service_healthy`.
fn dependency(value: Value) -> Result<Dependency, String> {
    let text = string(value)?;
    let (route, condition) = match text.rsplit_once(':') {
        None => (text.as_str(), DependencyCondition::Started),
        Some((route, "service_started")) => (route, DependencyCondition::Started),
        Some((route, "service_healthy")) => (route, DependencyCondition::Healthy),
        Some((_, other)) => {
            return Err(format!(
                "invalid condition \"{other}\" in \"{text}\" (expected service_started or service_healthy)"
            ))
        }
    };
    let route = route.trim();
    if route.is_empty() {
        return Err(format!("\"{text}\" does not name a route"));
    }
    Ok(Dependency {
        route: route.to_string(),
        condition,
    })
}

fn condition_name(condition: DependencyCondition) -> &'static str {
    match condition {
        DependencyCondition::Started => "service_started",
        DependencyCondition::Healthy => "service_healthy",
    }
}

// ---------------------------------------------------------------------------------------------
// The idlewatcher section
// ---------------------------------------------------------------------------------------------

/// Route settings that `defaults` may provide; `None` = not set here.
#[derive(Default)]
struct Inherit {
    idle_timeout: Option<Duration>,
    wake_timeout: Option<Duration>,
    stop_method: Option<StopMethod>,
    stop_signal: Option<String>,
    stop_timeout: Option<Duration>,
    max_waiters: Option<usize>,
    retry_backoff: Option<Duration>,
    health: Option<HealthCheck>,
    no_loading_page: Option<bool>,
}

impl Inherit {
    fn parse(f: &mut Fields) -> Inherit {
        Inherit {
            idle_timeout: f.get("idle_timeout", duration),
            wake_timeout: f.get("wake_timeout", positive_duration),
            stop_method: f.get("stop_method", stop_method),
            stop_signal: f.get("stop_signal", stop_signal),
            stop_timeout: f.get("stop_timeout", positive_duration),
            max_waiters: f.get("max_waiters", count(1)),
            retry_backoff: f.get("retry_backoff", positive_duration),
            health: health(f),
            no_loading_page: f.get("no_loading_page", boolean),
        }
    }

    /// This route's settings over `defaults`, over the built-in defaults.
    fn resolve(self, defaults: &Inherit) -> Settings {
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
            health: self
                .health
                .or_else(|| defaults.health.clone())
                .unwrap_or_else(default_health),
            no_loading_page: self
                .no_loading_page
                .or(defaults.no_loading_page)
                .unwrap_or(false),
        }
    }
}

struct Settings {
    idle_timeout: Duration,
    wake_timeout: Duration,
    stop_method: StopMethod,
    stop_signal: Option<String>,
    stop_timeout: Duration,
    max_waiters: usize,
    retry_backoff: Duration,
    health: HealthCheck,
    no_loading_page: bool,
}

fn default_health() -> HealthCheck {
    HealthCheck::Http {
        path: "/".to_string(),
        statuses: vec![DEFAULT_STATUSES],
    }
}

fn health(f: &mut Fields) -> Option<HealthCheck> {
    let mut h = f.sub("health", HEALTH_KEYS)?;
    let has_http_keys = h.has("path") || h.has("statuses");
    let tcp = h.get("tcp", boolean);
    let path = h.get("path", abs_path);
    let statuses = h.get("statuses", statuses);
    let check = if tcp == Some(true) {
        if has_http_keys {
            h.error(
                "tcp",
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

fn parse_gateway(mut f: Fields, parent: &mut Fields) -> Option<GatewayConfig> {
    f = f.hint(&[INHERIT_KEYS], "set it under defaults: or in a route");
    let listen = match f.list(
        "listen",
        socket_addr,
        Some("must list at least one address"),
    ) {
        Some(listen) => {
            for (i, addr) in listen.iter().enumerate() {
                if listen[..i].contains(addr) {
                    f.error("listen", format!("address \"{addr}\" is listed twice"));
                }
            }
            listen
        }
        None => vec![DEFAULT_LISTEN.to_string()],
    };
    let path_prefix = f
        .get("path_prefix", path_prefix)
        .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_string());
    let docker_host = f.sub("docker", &["host"]).and_then(|mut d| {
        let host = d.get("host", docker_host);
        f.absorb(d);
        host
    });
    let tick = f.get("tick", tick).unwrap_or(DEFAULT_TICK);
    let max_concurrent_stops = f
        .get("max_concurrent_stops", count(1))
        .unwrap_or(DEFAULT_MAX_CONCURRENT_STOPS);
    let defaults = match f.sub("defaults", INHERIT_KEYS) {
        Some(d) => {
            let mut d = d.hint(&[ROUTE_KEYS], "only a route may set it");
            let defaults = Inherit::parse(&mut d);
            f.absorb(d);
            defaults
        }
        None => Inherit::default(),
    };
    let routes = match f.raw("routes") {
        None => Some(Vec::new()),
        Some(Value::Sequence(items)) => parse_routes(items, &defaults, &mut f.errors),
        Some(other) => {
            f.error(
                "routes",
                format!("expected a list of routes, got {}", describe(&other)),
            );
            None
        }
    };
    parent.absorb(f);
    Some(GatewayConfig {
        listen,
        path_prefix,
        docker_host,
        tick,
        max_concurrent_stops,
        routes: routes?,
    })
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/// A route as far as it could be parsed; cross-route checks run on these even when some routes
/// have errors, so that one bad route does not hide problems in the others.
struct RouteDraft {
    label: String,
    name: Option<String>,
    hosts: Vec<String>,
    backend: Option<BackendConfig>,
    target: Option<(Option<u16>, Option<String>)>,
    start_endpoint: Option<String>,
    depends_on: Vec<Dependency>,
    settings: Settings,
}

impl RouteDraft {
    fn build(self) -> Option<RouteConfig> {
        let (port, upstream) = self.target?;
        let s = self.settings;
        Some(RouteConfig {
            name: self.name?,
            hosts: self.hosts,
            backend: self.backend?,
            port,
            upstream,
            start_endpoint: self.start_endpoint,
            no_loading_page: s.no_loading_page,
            depends_on: self.depends_on,
            health: s.health,
            idle_timeout: s.idle_timeout,
            wake_timeout: s.wake_timeout,
            stop_method: s.stop_method,
            stop_signal: s.stop_signal,
            stop_timeout: s.stop_timeout,
            max_waiters: s.max_waiters,
            retry_backoff: s.retry_backoff,
        })
    }

    /// The keys that belong to the backend, not the route, with a comparable rendering: routes
    /// sharing a backend must agree on all of them.
    fn backend_keys(&self) -> [(&'static str, String); 7] {
        let s = &self.settings;
        let mut deps: Vec<String> = self
            .depends_on
            .iter()
            .map(|d| format!("{}:{}", d.route, condition_name(d.condition)))
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

fn describe_backend(backend: &BackendConfig) -> String {
    match backend {
        BackendConfig::Docker { container } => format!("docker container \"{container}\""),
        BackendConfig::Proxmox { node, vmid } => format!("proxmox guest {vmid} on node \"{node}\""),
    }
}

/// The route's usable name, if it has one (used before the route is parsed, to label errors).
fn peek_name(value: &Value) -> Option<&str> {
    value
        .get("name")
        .and_then(Value::as_str)
        .filter(|name| !name.trim().is_empty())
}

fn parse_routes(
    items: Vec<Value>,
    defaults: &Inherit,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<RouteConfig>> {
    // Labels first: a route is named by its name, or by its index when the name is missing or
    // already taken (so that errors about the second "a" do not look like errors about the first).
    let mut first_with_name: HashMap<String, usize> = HashMap::new();
    let mut labels = Vec::with_capacity(items.len());
    let mut duplicate_of = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let index_label = format!("routes[{i}]");
        match peek_name(item) {
            Some(name) => match first_with_name.get(name) {
                Some(&first) => {
                    labels.push(index_label);
                    duplicate_of.push(Some(first));
                }
                None => {
                    first_with_name.insert(name.to_string(), i);
                    labels.push(name.to_string());
                    duplicate_of.push(None);
                }
            },
            None => {
                labels.push(index_label);
                duplicate_of.push(None);
            }
        }
    }

    let mut drafts = Vec::with_capacity(items.len());
    for ((item, label), dup) in items.into_iter().zip(labels).zip(duplicate_of) {
        let mut known = ROUTE_KEYS.to_vec();
        known.extend_from_slice(INHERIT_KEYS);
        let mut f = match Fields::new(item, Some(label.clone()), "", &known) {
            Ok(f) => f,
            Err(err) => {
                errors.push(err);
                continue;
            }
        };
        let name = f.required("name", non_empty);
        if let (Some(name), Some(first)) = (&name, dup) {
            f.error(
                "name",
                format!("duplicate route name \"{name}\" (already used by routes[{first}])"),
            );
        }
        let draft = parse_route(&mut f, label, name, defaults);
        errors.extend(f.finish());
        drafts.push(draft);
    }

    check_hosts(&drafts, errors);
    check_dependencies(&drafts, &first_with_name, errors);
    check_shared_backends(&drafts, errors);
    drafts.into_iter().map(RouteDraft::build).collect()
}

fn parse_route(
    f: &mut Fields,
    label: String,
    name: Option<String>,
    defaults: &Inherit,
) -> RouteDraft {
    let hosts = if f.has("hosts") {
        f.list("hosts", host, Some("must list at least one host name"))
    } else {
        f.missing("hosts");
        None
    };

    let backend = backend(f);
    let target = match (f.has("port"), f.has("upstream")) {
        (false, false) => {
            f.error(
                "port",
                "required key is missing: set port (the backend's port) or upstream (host:port)",
            );
            None
        }
        (true, true) => {
            f.error(
                "upstream",
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
    };
    let start_endpoint = f.get("start_endpoint", abs_path);
    let depends_on = f.list("depends_on", dependency, None).unwrap_or_default();
    let settings = Inherit::parse(f).resolve(defaults);
    RouteDraft {
        label,
        name,
        hosts: hosts.unwrap_or_default(),
        backend,
        target,
        start_endpoint,
        depends_on,
        settings,
    }
}

/// Exactly one of `docker: { container }` and `proxmox: { node, vmid }`.
fn backend(f: &mut Fields) -> Option<BackendConfig> {
    let (has_docker, has_proxmox) = (f.has("docker"), f.has("proxmox"));
    if has_docker && has_proxmox {
        f.error(
            "proxmox",
            "docker and proxmox are both set; a route has exactly one backend",
        );
    } else if !has_docker && !has_proxmox {
        f.error(
            "docker",
            "required key is missing: set docker: { container: NAME } or proxmox: { node: NAME, vmid: ID }",
        );
    }
    let docker = f.sub("docker", &["container"]).and_then(|mut d| {
        let container = d.required("container", non_empty);
        f.absorb(d);
        container.map(|container| BackendConfig::Docker { container })
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
    match (docker, proxmox) {
        (Some(b), None) | (None, Some(b)) => Some(b),
        _ => None,
    }
}

fn route_error(route: &str, key: &str, message: String) -> ConfigError {
    ConfigError::new(Some(route), key, message)
}

/// Host names are unique across all routes and within each (case-insensitively: they are
/// lowercased when parsed).
fn check_hosts(drafts: &[RouteDraft], errors: &mut Vec<ConfigError>) {
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, draft) in drafts.iter().enumerate() {
        for host in &draft.hosts {
            match owner.get(host.as_str()) {
                Some(&j) if j == i => errors.push(route_error(
                    &draft.label,
                    "hosts",
                    format!("host \"{host}\" is listed twice"),
                )),
                Some(&j) => errors.push(route_error(
                    &draft.label,
                    "hosts",
                    format!(
                        "host \"{host}\" is already used by route \"{}\"",
                        drafts[j].label
                    ),
                )),
                None => {
                    owner.insert(host, i);
                }
            }
        }
    }
}

/// Every dependency names another existing route, and the dependency graph has no cycle.
fn check_dependencies(
    drafts: &[RouteDraft],
    by_name: &HashMap<String, usize>,
    errors: &mut Vec<ConfigError>,
) {
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); drafts.len()];
    for (i, draft) in drafts.iter().enumerate() {
        let mut seen = HashSet::new();
        for dep in &draft.depends_on {
            if !seen.insert(dep.route.as_str()) {
                errors.push(route_error(
                    &draft.label,
                    "depends_on",
                    format!("route \"{}\" is listed twice", dep.route),
                ));
                continue;
            }
            match by_name.get(&dep.route) {
                Some(&j) if j == i => errors.push(route_error(
                    &draft.label,
                    "depends_on",
                    "a route cannot depend on itself".to_string(),
                )),
                Some(&j) => edges[i].push(j),
                None => {
                    let hint = closest(&dep.route, by_name.keys().map(String::as_str))
                        .map(|k| format!(" (did you mean \"{k}\"?)"))
                        .unwrap_or_default();
                    errors.push(route_error(
                        &draft.label,
                        "depends_on",
                        format!("unknown route \"{}\"{hint}", dep.route),
                    ));
                }
            }
        }
    }
    for cycle in find_cycles(&edges) {
        let names: Vec<&str> = cycle.iter().map(|&i| drafts[i].label.as_str()).collect();
        errors.push(route_error(
            names[0],
            "depends_on",
            format!("dependency cycle: {}", names.join(" -> ")),
        ));
    }
}

/// Each cycle found by an iterative depth-first search (no recursion: route counts can be large),
/// as a closed path `[a, b, a]`.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; edges.len()];
    let mut cycles = Vec::new();
    for start in 0..edges.len() {
        if state[start] != NEW {
            continue;
        }
        state[start] = ON_PATH;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            match edges[node].get(next) {
                Some(&to) => {
                    top.1 += 1;
                    match state[to] {
                        NEW => {
                            state[to] = ON_PATH;
                            stack.push((to, 0));
                        }
                        ON_PATH => {
                            let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                stack[from..].iter().map(|(n, _)| *n).collect();
                            cycle.push(to);
                            cycles.push(cycle);
                        }
                        _ => {}
                    }
                }
                None => {
                    state[node] = DONE;
                    stack.pop();
                }
            }
        }
    }
    cycles
}

/// Routes naming the same backend share its watcher, so they must agree on everything the
/// backend (not the route) decides.
fn check_shared_backends(drafts: &[RouteDraft], errors: &mut Vec<ConfigError>) {
    let mut first: HashMap<&BackendConfig, usize> = HashMap::new();
    for (i, draft) in drafts.iter().enumerate() {
        let Some(backend) = &draft.backend else {
            continue;
        };
        let Some(&j) = first.get(backend) else {
            first.insert(backend, i);
            continue;
        };
        let other = &drafts[j];
        for ((key, mine), (_, theirs)) in draft.backend_keys().into_iter().zip(other.backend_keys())
        {
            if mine != theirs {
                errors.push(route_error(
                    &draft.label,
                    key,
                    format!(
                        "routes \"{}\" and \"{}\" share {} but set different {key}: {theirs} vs {mine}",
                        other.label,
                        draft.label,
                        describe_backend(backend)
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(g.docker_host.as_deref(), Some("tcp://127.0.0.1:2375"));
        assert_eq!(g.tick, Duration::from_millis(500));
        assert_eq!(g.max_concurrent_stops, 4);
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
            depends_on: vec![],
            health: HealthCheck::Tcp,
            idle_timeout: Duration::from_secs(300),
            wake_timeout: Duration::from_secs(180),
            stop_method: StopMethod::Pause,
            stop_signal: Some("SIGTERM".into()),
            stop_timeout: Duration::from_secs(30),
            max_waiters: 50,
            retry_backoff: Duration::from_secs(2),
        };
        let whoami = RouteConfig {
            name: "whoami".into(),
            hosts: vec!["whoami.localhost".into(), "who.localhost".into()],
            backend: BackendConfig::Docker {
                container: "whoami".into(),
            },
            port: Some(80),
            upstream: None,
            start_endpoint: Some("/".into()),
            no_loading_page: false,
            depends_on: vec![Dependency {
                route: "db".into(),
                condition: DependencyCondition::Healthy,
            }],
            health: HealthCheck::Http {
                path: "/".into(),
                statuses: vec![(204, 204), (300, 302)],
            },
            idle_timeout: Duration::from_secs(5400),
            wake_timeout: Duration::from_secs(90),
            stop_method: StopMethod::Kill,
            stop_signal: Some("SIGKILL".into()),
            stop_timeout: Duration::from_secs(15),
            max_waiters: 7,
            retry_backoff: Duration::from_millis(250),
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
        assert_eq!(g.docker_host, None);
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
            r#"route "whoami": key "idle_timeout": invalid duration "5x" (expected e.g. 500ms, 30s, 5m, 1h)"#
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
    fn docker_host_schemes() {
        for ok in [
            "unix:///var/run/docker.sock",
            "tcp://1.2.3.4:2375",
            "http://h:2375",
            "https://h:2376",
        ] {
            let config = valid(&format!("idlewatcher:\n  docker: {{ host: \"{ok}\" }}\n"));
            assert_eq!(config.gateway.docker_host.as_deref(), Some(ok));
        }
        for bad in ["ftp://h", "/var/run/docker.sock", "unix://", "\"\""] {
            let e = errors(&format!("idlewatcher:\n  docker: {{ host: {bad} }}\n"));
            has(&e, None, "idlewatcher.docker.host", "");
        }
    }

    #[test]
    fn yaml_syntax_error_reports_its_line() {
        let text = "idlewatcher:\n  listen: [\"0.0.0.0:8080\"]\n  routes:\n    - name: a\n   bad indent: x\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, Some(5), "{}", e[0]);
        assert_eq!(e[0].key, "");
        assert!(
            e[0].to_string().starts_with("line 5: invalid YAML: "),
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
        has(&e, Some("b"), "hosts", "required key is missing");
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
            has(&errors(&routes(&format!("- name: a\n  hosts: [a.localhost]\n  docker: {{ container: a }}\n  port: {bad}\n"))), Some("a"), "port", "1..=65535");
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
}
