//! The `idlewatcher:` section: the gateway's own keys, `defaults`, and the list of routes.
//!
//! Why its own module: it is the layout of *our* part of the file (which keys exist at this level,
//! their defaults, how routes are labelled in errors); what one route means is in `route`, and
//! what routes must agree on is in `checks`.

use std::collections::HashMap;
use std::time::Duration;

use super::checks::check_routes;
use super::error::ConfigError;
use super::fields::Fields;
use super::model::{
    AdminConfig, BackendConfig, ClientLimits, DockerEngine, GatewayConfig, ProxmoxConfig, PveTrust,
    RouteConfig, RouteDefaults, StopMethod, TokenSecret,
};
use super::route::{docker_engine, draft_route, peek_name, RouteDraft, INHERIT_KEYS, ROUTE_KEYS};
use super::values::{
    boolean, count, existing_file, integer, non_empty, path_prefix, positive_duration,
    pve_token_id, pve_url, sha256_fingerprint, socket_addr, tick, DEFAULT_PATH_PREFIX,
};
use super::yaml::{Node, Value};

/// Keys of the `idlewatcher:` section.
pub(crate) const GATEWAY_KEYS: &[&str] = &[
    "listen",
    "path_prefix",
    "admin",
    "docker",
    "proxmox",
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
    let path_prefix = f
        .get("path_prefix", path_prefix)
        .unwrap_or_else(|| DEFAULT_PATH_PREFIX.to_string());
    let admin = f.sub("admin", &["listen", "token_file"]).and_then(|mut a| {
        let admin = parse_admin(&mut a, &listen);
        f.absorb(a);
        admin
    });
    let (docker, docker_labels) = f
        .sub("docker", &["host", "tls", "labels"])
        .map(|mut d| {
            let engine = docker_engine(&mut d);
            let labels = d.get("labels", boolean).unwrap_or(false);
            f.absorb(d);
            (engine, labels)
        })
        .unwrap_or_default();
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
        path_prefix,
        admin,
        docker,
        docker_labels,
        proxmox,
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
    if public.contains(&listen) {
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

/// The `clients:` section `c`: every key optional, defaults from [`ClientLimits::default`].
fn parse_clients(c: &mut Fields) -> ClientLimits {
    let defaults = ClientLimits::default();
    let seconds = |node: Node| {
        let d = positive_duration(node)?;
        if d.as_secs() == 0 {
            return Err("must be at least 1s".to_string());
        }
        Ok(d)
    };
    ClientLimits {
        header_timeout: c
            .get("header_timeout", positive_duration)
            .unwrap_or(defaults.header_timeout),
        keepalive_timeout: c
            .get("keepalive_timeout", seconds)
            .unwrap_or(defaults.keepalive_timeout),
        body_timeout: c
            .get("body_timeout", positive_duration)
            .unwrap_or(defaults.body_timeout),
        min_body_rate: c
            .get("min_body_rate", integer(0, u64::MAX))
            .unwrap_or(defaults.min_body_rate),
        h2_idle_timeout: c
            .get("h2_idle_timeout", positive_duration)
            .unwrap_or(defaults.h2_idle_timeout),
        max_connections_per_ip: c
            .get("max_connections_per_ip", count(0))
            .unwrap_or(defaults.max_connections_per_ip),
        max_held_per_ip: c
            .get("max_held_per_ip", count(0))
            .unwrap_or(defaults.max_held_per_ip),
        max_event_streams_per_ip: c
            .get("max_event_streams_per_ip", count(1))
            .unwrap_or(defaults.max_event_streams_per_ip),
        max_event_streams_per_route: c
            .get("max_event_streams_per_route", count(1))
            .unwrap_or(defaults.max_event_streams_per_route),
    }
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
