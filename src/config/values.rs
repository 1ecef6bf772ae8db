//! Value parsers: each takes one YAML value and says precisely what is wrong with it.
//!
//! Why apart from the walker and the routes: these are the rules for what a duration, an address,
//! a host name, a signal… may look like. They know nothing of keys or positions (the walker adds
//! those), so they are easy to test and reuse for values that do not come from the file.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::fields::Problem;
use super::model::{Dependency, DependencyCondition, StopMethod, StreamProtocol};
use super::yaml::{Node, Value};

/// Where the internal endpoints live unless `path_prefix` says otherwise (also the example given
/// when a prefix is rejected).
pub(crate) const DEFAULT_PATH_PREFIX: &str = "/.idlewatcher/";

/// Longest `tick`: a coarser idle clock would make idle timeouts meaninglessly late.
const MAX_TICK: Duration = Duration::from_secs(60);

/// Signal names accepted by `stop_signal` (with or without `SIG`, any case).
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// A string, as written.
pub(crate) fn string(node: Node) -> Result<String, String> {
    match node.value {
        Value::String(s) => Ok(s),
        other => Err(format!("expected a string, got {}", other.describe())),
    }
}

/// A string with something in it other than whitespace.
pub(crate) fn non_empty(node: Node) -> Result<String, String> {
    let s = string(node)?;
    if s.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s)
}

/// `true` or `false` (YAML booleans only: `yes` is a string, and an error here).
pub(crate) fn boolean(node: Node) -> Result<bool, String> {
    match node.value {
        Value::Bool(b) => Ok(b),
        other => Err(format!("expected true or false, got {}", other.describe())),
    }
}

/// An integer in `low..=high`; the message states the range.
pub(crate) fn integer(low: u64, high: u64) -> impl Fn(Node) -> Result<u64, String> {
    move |node| {
        let expected = if high == u64::MAX {
            format!("an integer >= {low}")
        } else {
            format!("an integer in {low}..={high}")
        };
        match node.as_u64() {
            Some(n) if (low..=high).contains(&n) => Ok(n),
            _ => Err(format!(
                "expected {expected}, got {}",
                node.value.describe()
            )),
        }
    }
}

/// A count of at least `low` (waiters, concurrent stops).
pub(crate) fn count(low: u64) -> impl Fn(Node) -> Result<usize, String> {
    let parse = integer(low, usize::MAX as u64);
    move |node| parse(node).map(|n| n as usize)
}

/// `500ms`, `30s`, `5m`, `1h30m`, or a bare integer (YAML or string) meaning seconds.
pub(crate) fn duration(node: Node) -> Result<Duration, String> {
    let text = match &node.value {
        Value::Int(n) => match u64::try_from(*n) {
            Ok(secs) => return Ok(Duration::from_secs(secs)),
            Err(_) => n.to_string(),
        },
        Value::Float(_) => node.value.scalar_text(),
        Value::String(s) => s.trim().to_string(),
        other => {
            return Err(format!(
                "expected a duration like 30s, got {}",
                other.describe()
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

/// A duration that must not be zero (a zero timeout would fail every wake at once).
pub(crate) fn positive_duration(node: Node) -> Result<Duration, String> {
    let d = duration(node)?;
    if d.is_zero() {
        return Err("must be greater than 0".to_string());
    }
    Ok(d)
}

/// The idle clock's resolution: more than zero, at most [`MAX_TICK`].
pub(crate) fn tick(node: Node) -> Result<Duration, String> {
    let d = positive_duration(node)?;
    if d > MAX_TICK {
        return Err(format!(
            "must be at most 60s, got {}",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

/// `ip:port` to listen on, normalised (`[::]:80`).
pub(crate) fn socket_addr(node: Node) -> Result<String, String> {
    let text = string(node)?;
    text.trim()
        .parse::<SocketAddr>()
        .map(|addr| addr.to_string())
        .map_err(|_| format!("invalid address \"{text}\" (expected ip:port, e.g. 0.0.0.0:8080)"))
}

/// `ip:port` a stream listens on: an address that can be bound, port 1–65535.
pub(crate) fn stream_listen(node: Node) -> Result<SocketAddr, String> {
    let text = string(node)?;
    match text.trim().parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        Ok(_) => Err(format!(
            "invalid address \"{text}\": the port must be in 1..=65535"
        )),
        Err(_) => Err(format!(
            "invalid address \"{text}\" (expected ip:port, e.g. 0.0.0.0:5432)"
        )),
    }
}

/// `tcp` or `udp`.
pub(crate) fn stream_protocol(node: Node) -> Result<StreamProtocol, String> {
    match string(node)?.as_str() {
        "tcp" => Ok(StreamProtocol::Tcp),
        "udp" => Ok(StreamProtocol::Udp),
        other => Err(format!(
            "unknown protocol \"{other}\" (expected tcp or udp)"
        )),
    }
}

/// The prefix of the internal endpoints: absolute, URL-safe, not `/` alone, ending in `/`.
pub(crate) fn path_prefix(node: Node) -> Result<String, String> {
    let mut prefix = string(node)?;
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

/// The Docker engine's address, in one of the schemes bollard can use.
pub(crate) fn docker_host(node: Node) -> Result<String, String> {
    let host = non_empty(node)?;
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

/// Docker's client TLS files, as `DOCKER_CERT_PATH` holds them.
pub(crate) const DOCKER_TLS_FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

/// A directory holding Docker's client TLS files (`ca.pem`, `cert.pem`, `key.pem`), each present
/// and parsable as PEM (certificates; one private key), so `-t` finds a broken set before the
/// engine is ever reached. The message names the file at fault.
pub(crate) fn docker_cert_path(node: Node) -> Result<std::path::PathBuf, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::PathBuf::from(non_empty(node)?);
    if !dir.is_dir() {
        return Err(format!(
            "\"{}\" is not a directory (expected one holding ca.pem, cert.pem and key.pem)",
            dir.display()
        ));
    }
    for name in DOCKER_TLS_FILES {
        let file = dir.join(name);
        let shown = file.display();
        std::fs::metadata(&file).map_err(|e| format!("cannot read \"{shown}\": {e}"))?;
        let problem = if name == "key.pem" {
            PrivateKeyDer::from_pem_file(&file)
                .err()
                .map(|e| format!("no usable private key ({e})"))
        } else {
            match CertificateDer::pem_file_iter(&file).map(Iterator::collect::<Result<Vec<_>, _>>) {
                Ok(Ok(certs)) if !certs.is_empty() => None,
                Ok(Ok(_)) => Some("no PEM certificate in it".to_string()),
                Ok(Err(e)) | Err(e) => Some(format!("not a PEM certificate ({e})")),
            }
        };
        if let Some(problem) = problem {
            return Err(format!("\"{shown}\": {problem}"));
        }
    }
    Ok(dir)
}

/// An absolute URL path such as `/healthz`.
pub(crate) fn abs_path(node: Node) -> Result<String, String> {
    let path = string(node)?;
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(format!(
            "\"{path}\" must be an absolute path starting with \"/\", without spaces"
        ));
    }
    Ok(path)
}

/// `pause`, `stop` or `kill`, any case.
pub(crate) fn stop_method(node: Node) -> Result<StopMethod, String> {
    let text = string(node)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "pause" => Ok(StopMethod::Pause),
        "stop" => Ok(StopMethod::Stop),
        "kill" => Ok(StopMethod::Kill),
        _ => Err(format!(
            "invalid stop method \"{text}\" (expected pause, stop or kill)"
        )),
    }
}

/// How a stop method is written in the file (to show it back in messages).
pub(crate) fn stop_method_name(method: StopMethod) -> &'static str {
    match method {
        StopMethod::Pause => "pause",
        StopMethod::Stop => "stop",
        StopMethod::Kill => "kill",
    }
}

/// `SIGTERM`, `TERM`, `sigterm` → `SIGTERM`; `15` → `15`.
pub(crate) fn stop_signal(node: Node) -> Result<String, String> {
    let text = node.value.scalar_text();
    let invalid =
        || format!("invalid signal \"{text}\" (expected a name like SIGTERM or a number 1-64)");
    match node.value {
        Value::Int(_) | Value::Float(_) | Value::String(_) => {}
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

/// One status code, 100-599.
fn status_code(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!(
            "invalid status code \"{}\" (expected 100-599)",
            text.trim()
        )),
    }
}

/// `"200-299,301"`, `204`, or a list of those. A bad item of a list is blamed at that item.
pub(crate) fn statuses(node: Node) -> Result<Vec<(u16, u16)>, Problem> {
    let at = node.position();
    let (items, in_list) = match node.value {
        Value::Sequence(items) => (items, true),
        one => (vec![Node::new(one, at)], false),
    };
    let mut ranges = Vec::new();
    for item in items {
        let at = in_list.then(|| item.position());
        let located = |message: String| Problem { message, at };
        ranges.extend(status_ranges(item).map_err(located)?);
    }
    if ranges.is_empty() {
        return Err("must list at least one status code".to_string().into());
    }
    Ok(ranges)
}

/// One item of `statuses`: `"200-299,301"` or `204`.
fn status_ranges(item: Node) -> Result<Vec<(u16, u16)>, String> {
    let text = match item.value {
        Value::String(s) => s,
        Value::Int(_) | Value::Float(_) => item.value.scalar_text(),
        other => {
            return Err(format!(
                "expected status codes like \"200-299,301\", got {}",
                other.describe()
            ))
        }
    };
    let mut ranges = Vec::new();
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
    Ok(ranges)
}

/// The longest host name DNS allows (without a trailing dot).
const MAX_HOST_LEN: usize = 253;
/// The longest label (dot-separated part) of a host name.
const MAX_LABEL_LEN: usize = 63;

/// A host name as matched against `Host`: lowercased; no scheme, port, path or whitespace.
pub(crate) fn host(node: Node) -> Result<String, String> {
    let text = string(node)?;
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
    // DNS limits (RFC 1035): a longer name can never be matched by a real client.
    let name = text.strip_suffix('.').unwrap_or(&text);
    if name.len() > MAX_HOST_LEN {
        return bad(&format!(
            "{} characters long, at most {MAX_HOST_LEN} allowed",
            name.len()
        ));
    }
    if let Some(label) = name.split('.').find(|label| label.len() > MAX_LABEL_LEN) {
        return bad(&format!(
            "the label \"{label}\" is {} characters long, at most {MAX_LABEL_LEN} allowed",
            label.len()
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// `host:port` with a valid port, e.g. `127.0.0.1:8081` or `[::1]:80`.
pub(crate) fn upstream(node: Node) -> Result<String, String> {
    let text = string(node)?;
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
pub(crate) fn dependency(node: Node) -> Result<Dependency, String> {
    let text = string(node)?;
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

/// How a dependency condition is written in the file (to show it back in messages).
pub(crate) fn condition_name(condition: DependencyCondition) -> &'static str {
    match condition {
        DependencyCondition::Started => "service_started",
        DependencyCondition::Healthy => "service_healthy",
    }
}

// ---------------------------------------------------------------------------------------------

/// The PVE API's base URL: `https://host[:port]`, nothing after the authority but an optional
/// `/` (the API paths are ours to add). Plain `http` is refused: the token would travel in clear.
pub(crate) fn pve_url(node: Node) -> Result<String, String> {
    let url = non_empty(node)?;
    let trimmed = url.trim().trim_end_matches('/');
    let Some(authority) = trimmed.strip_prefix("https://") else {
        return Err(format!(
            "\"{url}\" must be an https:// URL such as \"https://pve.lan:8006\" (the API token must not travel in clear)"
        ));
    };
    if authority.is_empty() || authority.contains('/') || authority.contains(char::is_whitespace) {
        return Err(format!(
            "\"{url}\" must be just https://host[:port], e.g. \"https://pve.lan:8006\""
        ));
    }
    Ok(trimmed.to_string())
}

/// A PVE API token id, `user@realm!name` (as `pveum user token add` shows it).
pub(crate) fn pve_token_id(node: Node) -> Result<String, String> {
    let id = non_empty(node)?;
    let shape = || -> Option<()> {
        let (user_realm, name) = id.split_once('!')?;
        let (user, realm) = user_realm.rsplit_once('@')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '!' && c != '=')
        };
        (ok(user) && ok(realm) && ok(name) && !realm.contains('@')).then_some(())
    };
    match shape() {
        Some(()) => Ok(id),
        None => Err(format!(
            "\"{id}\" is not an API token id: expected user@realm!name, e.g. \"root@pam!idlewatcher\""
        )),
    }
}

/// A SHA-256 fingerprint: 32 bytes in hex, with or without `:` between them (the PVE GUI shows
/// `AB:CD:…`), any case.
pub(crate) fn sha256_fingerprint(node: Node) -> Result<[u8; 32], String> {
    let text = non_empty(node)?;
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || {
        format!(
            "\"{text}\" is not a SHA-256 fingerprint: expected 64 hex digits, optionally as AB:CD:…"
        )
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// One `ignore_user_agents` entry: a non-empty substring, matched case-insensitively (so kept
/// lowercased).
pub(crate) fn user_agent_part(node: Node) -> Result<String, String> {
    let part = non_empty(node)?;
    Ok(part.trim().to_ascii_lowercase())
}

/// A file that must exist now (a secret, a CA bundle): a missing file is a configuration error,
/// not a start-up surprise.
pub(crate) fn existing_file(node: Node) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(non_empty(node)?);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(format!("\"{}\" is not a file", path.display())),
        Err(e) => Err(format!("cannot read \"{}\": {e}", path.display())),
    }
}
