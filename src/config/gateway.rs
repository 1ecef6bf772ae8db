//! The `idlewatcher:` section: the gateway's own keys, `defaults`, and the list of routes.
//!
//! Why its own module: it is the layout of *our* part of the file (which keys exist at this level,
//! their defaults, how routes are labelled in errors); what one route means is in `route`, and
//! what routes must agree on is in `checks`.

use std::collections::HashMap;
use std::time::Duration;

use super::certs::{load_certified_key, CertificateFiles};
use super::checks::{check_routes, overlaps};
use super::error::ConfigError;
use super::fields::Fields;
use super::model::{
    AdminConfig, BackendConfig, ClientLimits, DockerEngine, GatewayConfig, ProxmoxConfig, PveTrust,
    RouteConfig, RouteDefaults, StopMethod, TlsConfig, TokenSecret,
};
use super::route::{docker_engine, draft_route, peek_name, RouteDraft, INHERIT_KEYS, ROUTE_KEYS};
use super::values::{
    boolean, count, existing_file, integer, non_empty, path_prefix, positive_duration,
    pve_token_id, pve_url, sha256_fingerprint, socket_addr, tick, DEFAULT_PATH_PREFIX,
};
use super::yaml::{Node, Position, Value};

/// Keys of the `idlewatcher:` section.
pub(crate) const GATEWAY_KEYS: &[&str] = &[
    "listen",
    "tls",
    "path_prefix",
    "admin",
    "docker",
    "proxmox",
    "instance",
    "tick",
    "max_concurrent_stops",
    "clients",
    "defaults",
    "routes",
];

/// Keys of the `proxmox:` section.
const PROXMOX_KEYS: &[&str] = &[
    "url",
    "token_id",
    "token_secret",
    "token_secret_file",
    "ca_file",
    "fingerprint",
    "insecure",
    "poll",
];

/// Keys of the `clients:` section (see [`ClientLimits`]).
const CLIENT_KEYS: &[&str] = &[
    "header_timeout",
    "keepalive_timeout",
    "body_timeout",
    "min_body_rate",
    "h2_idle_timeout",
    "max_connections_per_ip",
    "max_held_per_ip",
    "max_event_streams_per_ip",
    "max_event_streams_per_route",
];

/// Default interval of the bulk Proxmox status poll.
const DEFAULT_PROXMOX_POLL: Duration = Duration::from_secs(2);

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_TICK: Duration = Duration::from_secs(1);
const DEFAULT_MAX_CONCURRENT_STOPS: usize = 8;

/// Validates the `idlewatcher:` section `f`, handing its problems to `parent` (the top of the
/// file). `None` when the routes could not even be read as a list.
pub(crate) fn parse_gateway(mut f: Fields, parent: &mut Fields) -> Option<GatewayConfig> {
    f = f.hint(&[INHERIT_KEYS], "set it under defaults: or in a route");
    let listen = match f.list(
        "listen",
        socket_addr,
        Some("must list at least one address"),
    ) {
        Some(listen) => {
            for (i, (addr, at)) in listen.iter().enumerate() {
                if listen[..i].iter().any(|(earlier, _)| earlier == addr) {
                    f.error_at("listen", *at, format!("address \"{addr}\" is listed twice"));
                }
            }
            listen.into_iter().map(|(addr, _)| addr).collect()
        }
        None => vec![DEFAULT_LISTEN.to_string()],
    };
    let tls = f.sub("tls", &["listen", "certificates"]).and_then(|mut t| {
        let tls = parse_tls(&mut t, &listen);
        f.absorb(t);
        tls
    });
    let path_prefix = f
        .get("path_prefix", path_prefix)
        .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_string());
    // The public listeners, HTTP and HTTPS: the admin listener and streams need others.
    let public: Vec<String> = listen
        .iter()
        .chain(tls.iter().flat_map(|tls| &tls.listen))
        .cloned()
        .collect();
    let admin = f.sub("admin", &["listen", "token_file"]).and_then(|mut a| {
        let admin = parse_admin(&mut a, &public);
        f.absorb(a);
        admin
    });
    let (docker, docker_labels, docker_traffic_veto) = f
        .sub("docker", &["host", "tls", "labels", "traffic_veto"])
        .map(|mut d| {
            let engine = docker_engine(&mut d);
            let labels = d.get("labels", boolean).unwrap_or(false);
            let veto = d.get("traffic_veto", integer(0, u64::MAX)).unwrap_or(0);
            f.absorb(d);
            (engine, labels, veto)
        })
        .unwrap_or_default();
    let instance = f
        .get("instance", instance_name)
        .unwrap_or_else(default_instance);
    let proxmox_written = f.has("proxmox");
    let proxmox = f.sub("proxmox", PROXMOX_KEYS).and_then(|mut p| {
        let proxmox = parse_proxmox(&mut p);
        f.absorb(p);
        proxmox
    });
    let tick = f.get("tick", tick).unwrap_or(DEFAULT_TICK);
    let max_concurrent_stops = f
        .get("max_concurrent_stops", count(1))
        .unwrap_or(DEFAULT_MAX_CONCURRENT_STOPS);
    let clients = f
        .sub("clients", CLIENT_KEYS)
        .map_or_else(ClientLimits::default, |mut c| {
            let clients = parse_clients(&mut c);
            f.absorb(c);
            clients
        });
    let defaults = match f.sub("defaults", INHERIT_KEYS) {
        Some(d) => {
            let mut d = d.hint(&[ROUTE_KEYS], "only a route may set it");
            let defaults = RouteDefaults::parse(&mut d);
            f.absorb(d);
            defaults
        }
        None => RouteDefaults::default(),
    };
    let routes = match f.raw("routes") {
        None => Some(Vec::new()),
        Some(Node {
            value: Value::Sequence(items),
            ..
        }) => {
            let mut errors = Vec::new();
            // Addresses a TCP stream may not take: the public HTTP ones and the admin listener.
            let mut taken: Vec<(String, &str)> = listen
                .iter()
                .map(|addr| (addr.clone(), "HTTP listen address (idlewatcher.listen)"))
                .collect();
            for addr in tls.iter().flat_map(|tls| &tls.listen) {
                taken.push((
                    addr.clone(),
                    "HTTPS listen address (idlewatcher.tls.listen)",
                ));
            }
            if let Some(admin) = &admin {
                taken.push((
                    admin.listen.clone(),
                    "admin listen address (idlewatcher.admin.listen)",
                ));
            }
            let routes = parse_routes(items, &defaults, &taken, &docker, &mut errors);
            for error in errors {
                f.push(error);
            }
            routes
        }
        Some(other) => {
            f.error_at(
                "routes",
                other.position(),
                format!("expected a list of routes, got {}", other.value.describe()),
            );
            None
        }
    };
    if let Some(routes) = &routes {
        check_proxmox_routes(routes, proxmox_written, &mut f);
    }
    parent.absorb(f);
    Some(GatewayConfig {
        listen,
        tls,
        path_prefix,
        admin,
        docker,
        docker_labels,
        proxmox,
        instance,
        docker_traffic_veto,
        tick,
        max_concurrent_stops,
        clients,
        defaults,
        routes: routes?,
    })
}

/// Every route of the list, then the checks across them; `None` if any route has a problem (all
/// of them are in `errors`).
fn parse_routes(
    items: Vec<Node>,
    defaults: &RouteDefaults,
    taken: &[(String, &str)],
    docker: &DockerEngine,
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

    // Items that are not mappings give no draft: `draft_index` maps the file's indices to the
    // drafts' so that the checks find the right routes.
    let mut drafts: Vec<RouteDraft> = Vec::with_capacity(items.len());
    let mut draft_index = Vec::with_capacity(items.len());
    for ((item, label), dup) in items.into_iter().zip(labels).zip(duplicate_of) {
        draft_index.push(drafts.len());
        if let Some(mut draft) = draft_route(item, label, dup, defaults, errors) {
            if let Some(backend) = &mut draft.backend {
                inherit_engine(backend, docker);
            }
            drafts.push(draft);
        }
    }
    let by_name: HashMap<String, usize> = first_with_name
        .into_iter()
        .map(|(name, i)| (name, draft_index[i]))
        .collect();

    check_routes(&drafts, &by_name, taken, errors);
    let all_read = drafts.len() == draft_index.len();
    let routes: Option<Vec<RouteConfig>> = drafts.into_iter().map(RouteDraft::build).collect();
    routes.filter(|_| all_read)
}

/// The `admin:` section `a`: its own listener (never one of the public ones), and a token that
/// anything but a loopback listener must have.
fn parse_admin(a: &mut Fields, public: &[String]) -> Option<AdminConfig> {
    let listen_at = a.value_position("listen");
    let listen = a.required("listen", socket_addr)?;
    let token_file = a.get("token_file", existing_file);
    let at = listen_at.unwrap_or_else(|| a.position());
    if public.iter().any(|other| same_port(other, &listen)) {
        a.error_at(
            "listen",
            at,
            format!("\"{listen}\" is also a public listen address; the admin API needs its own"),
        );
    }
    let loopback = listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| addr.ip().is_loopback());
    if !loopback && token_file.is_none() && !a.has_error_for("token_file") {
        a.error_at(
            "listen",
            at,
            format!(
                "\"{listen}\" is reachable from other machines: set token_file (a file holding the bearer token) or listen on 127.0.0.1"
            ),
        );
    }
    Some(AdminConfig { listen, token_file })
}

/// Whether two listen addresses (`ip:port`, already validated) could not both be bound.
fn same_port(a: &str, b: &str) -> bool {
    match (a.parse(), b.parse()) {
        (Ok(a), Ok(b)) => overlaps(&a, &b),
        _ => a == b,
    }
}

/// The `tls:` section `t`: HTTPS listen addresses (none shared with the HTTP ones or each
/// other) and at least one certificate, each pair read and matched now so that `-t` names a
/// missing, malformed or mismatched file at its line.
fn parse_tls(t: &mut Fields, http: &[String]) -> Option<TlsConfig> {
    let listen = t.list(
        "listen",
        socket_addr,
        Some("must list at least one address"),
    );
    if listen.is_none() && !t.has_error_for("idlewatcher.tls.listen") {
        t.missing("listen");
    }
    let listen = listen.unwrap_or_default();
    for (i, (addr, at)) in listen.iter().enumerate() {
        if let Some((earlier, _)) = listen[..i].iter().find(|(e, _)| same_port(e, addr)) {
            let message = if earlier == addr {
                format!("address \"{addr}\" is listed twice")
            } else {
                format!("address \"{addr}\" clashes with \"{earlier}\", listed before")
            };
            t.error_at("listen", *at, message);
        } else if let Some(plain) = http.iter().find(|plain| same_port(plain, addr)) {
            t.error_at(
                "listen",
                *at,
                format!("address \"{addr}\" clashes with \"{plain}\", an HTTP listen address (idlewatcher.listen); HTTPS needs its own"),
            );
        }
    }
    let certificates = match t.raw("certificates") {
        None => {
            t.missing_because(
                "certificates",
                "required key is missing: list at least one { cert: FILE.pem, key: FILE.key }",
            );
            None
        }
        Some(Node {
            value: Value::Sequence(items),
            line,
            column,
        }) => {
            if items.is_empty() {
                let at = Position { line, column };
                t.error_at(
                    "certificates",
                    at,
                    "must list at least one { cert: FILE.pem, key: FILE.key }",
                );
            }
            let mut certificates = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let path = format!("idlewatcher.tls.certificates[{i}]");
                match Fields::new(item, None, &path, &["cert", "key"]) {
                    Ok(mut c) => {
                        if let Some(files) = parse_certificate(&mut c) {
                            certificates.push(files);
                        }
                        t.absorb(c);
                    }
                    Err(error) => t.push(error),
                }
            }
            Some(certificates)
        }
        Some(other) => {
            t.error_at(
                "certificates",
                other.position(),
                format!(
                    "expected a list of {{ cert, key }} pairs, got {}",
                    other.value.describe()
                ),
            );
            None
        }
    };
    Some(TlsConfig {
        listen: listen.into_iter().map(|(addr, _)| addr).collect(),
        certificates: certificates?,
    })
}

/// One `{ cert, key }` pair of `tls.certificates`: both files exist, parse as PEM, and the key
/// is the certificate's. A problem is located at the file at fault (the key's, for a pair that
/// does not match).
fn parse_certificate(c: &mut Fields) -> Option<CertificateFiles> {
    let cert_at = c.value_position("cert");
    let key_at = c.value_position("key");
    let cert = c.required("cert", existing_file);
    let key = c.required("key", existing_file);
    let files = CertificateFiles {
        cert: cert?,
        key: key?,
    };
    if let Err(error) = load_certified_key(&files) {
        let (key, at) = if error.is_about_key(&files) {
            ("key", key_at)
        } else {
            ("cert", cert_at)
        };
        let at: Position = at.unwrap_or_else(|| c.position());
        c.error_at(key, at, error.to_string());
        return None;
    }
    Some(files)
}

/// The `clients:` section `c`: every key optional, defaults from [`ClientLimits::default`].
fn parse_clients(c: &mut Fields) -> ClientLimits {
    let seconds = |node: Node| {
        let d = positive_duration(node)?;
        if d.as_secs() == 0 {
            return Err("must be at least 1s".to_string());
        }
        Ok(d)
    };
    let mut limits = ClientLimits::default();
    // Each key present overrides its default; the field is named as the key.
    macro_rules! override_with {
        ($($key:ident: $parser:expr),* $(,)?) => {
            $(if let Some(value) = c.get(stringify!($key), $parser) {
                limits.$key = value;
            })*
        };
    }
    override_with! {
        header_timeout: positive_duration,
        keepalive_timeout: seconds,
        body_timeout: positive_duration,
        min_body_rate: integer(0, u64::MAX),
        h2_idle_timeout: positive_duration,
        max_connections_per_ip: count(0),
        max_held_per_ip: count(0),
        max_event_streams_per_ip: count(1),
        max_event_streams_per_route: count(1),
    }
    limits
}

/// A Docker route that names no engine runs on the gateway's (`docker: { host, tls }`); one
/// naming the gateway's host without `tls` takes the gateway's TLS material too. Resolved before
/// the cross-route checks, so routes on the same engine and container share one backend.
pub(super) fn inherit_engine(backend: &mut BackendConfig, default: &DockerEngine) {
    let BackendConfig::Docker { engine, .. } = backend else {
        return;
    };
    if engine.host.is_none() || engine.host == default.host {
        engine.host.clone_from(&default.host);
        if engine.cert_path.is_none() {
            engine.cert_path.clone_from(&default.cert_path);
        }
    }
}

/// This gateway's name when `instance` is not set: the machine's host name (each gateway of
/// several runs on its own machine or container, whose host name differs), else `idlewatcher`.
fn default_instance() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| instance_name_ok(name))
        .unwrap_or_else(|| "idlewatcher".to_string())
}

/// `instance`: a name that can end a Docker label key (`idlewatcher.active.<instance>`).
fn instance_name(node: Node) -> Result<String, String> {
    let name = non_empty(node)?;
    if instance_name_ok(&name) {
        Ok(name)
    } else {
        Err(format!(
            "\"{name}\" is not a usable instance name: use letters, digits, '-', '_' and '.' (at most 128)"
        ))
    }
}

fn instance_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `proxmox:` section `p`: one cluster, one token, exactly one way to trust its certificate.
fn parse_proxmox(p: &mut Fields) -> Option<ProxmoxConfig> {
    let url = p.required("url", pve_url);
    let token_id = p.required("token_id", pve_token_id);
    let token_secret = match (p.has("token_secret"), p.has("token_secret_file")) {
        (true, true) => {
            let at = p.key_position("token_secret_file");
            p.raw("token_secret");
            p.raw("token_secret_file");
            p.error_at(
                "token_secret_file",
                at,
                "token_secret and token_secret_file are both set; set exactly one",
            );
            None
        }
        (false, false) => {
            p.missing_because(
                "token_secret",
                "required key is missing: set token_secret or token_secret_file",
            );
            None
        }
        (true, false) => p.get("token_secret", non_empty).map(TokenSecret::Inline),
        (false, true) => p
            .get("token_secret_file", existing_file)
            .map(TokenSecret::File),
    };
    let set: Vec<&str> = ["ca_file", "fingerprint", "insecure"]
        .into_iter()
        .filter(|key| p.has(key))
        .collect();
    let trust = match set.as_slice() {
        [] => {
            p.missing_because(
                "ca_file",
                "required key is missing: set ca_file (PVE's CA, /etc/pve/pve-root-ca.pem), fingerprint (SHA-256 of the API's certificate) or insecure: true",
            );
            None
        }
        ["ca_file"] => p.get("ca_file", existing_file).map(PveTrust::CaFile),
        ["fingerprint"] => p
            .get("fingerprint", sha256_fingerprint)
            .map(PveTrust::Fingerprint),
        ["insecure"] => match p.get("insecure", boolean) {
            Some(true) => Some(PveTrust::Insecure),
            Some(false) => {
                let at = p.position();
                p.error_at(
                    "insecure",
                    at,
                    "insecure: false leaves no way to trust the API: set ca_file or fingerprint",
                );
                None
            }
            None => None,
        },
        several => {
            let at = p.key_position(several[1]);
            for key in several {
                p.raw(key);
            }
            p.error_at(
                several[1],
                at,
                format!(
                    "{} are {} set; set exactly one of ca_file, fingerprint, insecure",
                    several.join(" and "),
                    if several.len() == 2 { "both" } else { "all" }
                ),
            );
            None
        }
    };
    let poll = p.get("poll", tick).unwrap_or(DEFAULT_PROXMOX_POLL);
    Some(ProxmoxConfig {
        url: url?,
        token_id: token_id?,
        token_secret: token_secret?,
        trust: trust?,
        poll,
    })
}

/// Routes on Proxmox guests need the `proxmox:` section, and cannot be paused: LXC suspend is an
/// experimental CRIU checkpoint that leaves the guest stopped, not frozen.
fn check_proxmox_routes(routes: &[RouteConfig], section_written: bool, f: &mut Fields) {
    for route in routes {
        if !matches!(route.backend, BackendConfig::Proxmox { .. }) {
            continue;
        }
        if !section_written {
            f.push(
                ConfigError::new(
                    Some(&route.name),
                    "proxmox",
                    "names a Proxmox guest, but there is no idlewatcher.proxmox section (url, token_id, token_secret…) to reach the cluster",
                )
                .at(route.written.position_of("proxmox")),
            );
        }
        if route.stop_method == StopMethod::Pause {
            f.push(
                ConfigError::new(
                    Some(&route.name),
                    "stop_method",
                    "proxmox guests cannot be paused: LXC suspend is an experimental CRIU checkpoint that leaves the guest stopped; use stop (a graceful shutdown) or kill (a hard stop)",
                )
                .at(route.written.position_of("stop_method")),
            );
        }
    }
}
