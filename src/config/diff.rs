//! What a reload changes: two validated configurations compared, without touching anything
//! running. Routes are compared by name and whole value (where a key was written does not count);
//! the keys a running gateway cannot apply (its listeners and the other start-up settings) are
//! named so the operator knows a restart (`-u` upgrade) is needed for them.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::model::{Config, GatewayConfig, RouteConfig, StreamConfig, Written};

/// The difference between the configuration in force and a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Routes only in the new file, by name, in its order.
    pub added: Vec<String>,
    /// Routes only in the old one, by name, in its order.
    pub removed: Vec<String>,
    /// Routes in both whose settings differ, by name, in the new file's order.
    pub changed: Vec<String>,
    /// Keys that changed but take effect only after a restart (`idlewatcher.listen`,
    /// `idlewatcher.admin.listen`, a route's `streams`…): reported, not applied.
    pub restart_needed: Vec<String>,
}

impl ConfigDiff {
    /// Whether the routes in force change at all.
    pub fn changes_routes(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

/// What the next reload compares with: the configuration in force, its routes kept as
/// fingerprints. A running gateway keeps this for the life of the process, so it does not keep
/// the parsed routes (≈ 800 bytes each; a fingerprint is 8).
#[derive(Debug, Clone)]
pub struct InForce {
    /// Gateway-level settings, without the routes.
    gateway: GatewayConfig,
    /// Pingora's part of the file.
    server_yaml: String,
    /// Each route by name: its fingerprint and its stream listeners (bound at start-up).
    routes: Vec<RouteInForce>,
}

#[derive(Debug, Clone)]
struct RouteInForce {
    name: String,
    fingerprint: u64,
    streams: Vec<StreamConfig>,
}

impl InForce {
    /// The record of `config`.
    pub fn of(config: &Config) -> Self {
        let gateway = GatewayConfig {
            routes: Vec::new(),
            ..config.gateway.clone()
        };
        let routes = config
            .gateway
            .routes
            .iter()
            .map(|route| RouteInForce {
                name: route.name.clone(),
                fingerprint: fingerprint(route),
                streams: route.streams.clone(),
            })
            .collect();
        Self {
            gateway,
            server_yaml: config.server_yaml.clone(),
            routes,
        }
    }

    /// The gateway-level settings in force (no routes).
    pub fn gateway(&self) -> &GatewayConfig {
        &self.gateway
    }

    /// The fingerprint of each route in force, by name.
    pub fn fingerprints(&self) -> HashMap<&str, u64> {
        self.routes
            .iter()
            .map(|route| (route.name.as_str(), route.fingerprint))
            .collect()
    }
}

/// A route's fingerprint: equal for routes configured alike, different as soon as one setting
/// differs. It hashes the route's whole value as `Debug` shows it (every field), but for where
/// its keys were written in the file, which does not make a route another (as for `==`).
pub fn fingerprint(route: &RouteConfig) -> u64 {
    let unplaced = RouteConfig {
        written: Written::default(),
        ..route.clone()
    };
    let mut hasher = DefaultHasher::new();
    format!("{unplaced:?}").hash(&mut hasher);
    hasher.finish()
}

/// Compares `old` (in force) with `new` (just validated).
pub fn diff(old: &InForce, new: &Config) -> ConfigDiff {
    let before = old.fingerprints();
    let after: HashMap<&str, &RouteConfig> = new
        .gateway
        .routes
        .iter()
        .map(|route| (route.name.as_str(), route))
        .collect();
    let mut result = ConfigDiff::default();
    for route in &new.gateway.routes {
        match before.get(route.name.as_str()) {
            None => result.added.push(route.name.clone()),
            Some(previous) if *previous != fingerprint(route) => {
                result.changed.push(route.name.clone())
            }
            Some(_) => {}
        }
    }
    for route in &old.routes {
        if !after.contains_key(route.name.as_str()) {
            result.removed.push(route.name.clone());
        }
    }
    result.restart_needed = restart_needed(old, new);
    result
}

/// The keys that differ but are only read at start-up.
fn restart_needed(old: &InForce, new: &Config) -> Vec<String> {
    let (a, b) = (&old.gateway, &new.gateway);
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &str| {
        if changed {
            keys.push(key.to_string());
        }
    };
    check(a.listen != b.listen, "idlewatcher.listen");
    // A changed certificate set is read again by the reload; the listeners are not.
    check(
        a.tls.as_ref().map(|tls| &tls.listen) != b.tls.as_ref().map(|tls| &tls.listen),
        "idlewatcher.tls.listen",
    );
    check(
        a.admin.as_ref().map(|admin| &admin.listen) != b.admin.as_ref().map(|admin| &admin.listen),
        "idlewatcher.admin.listen",
    );
    check(
        a.admin.as_ref().map(|admin| &admin.token_file)
            != b.admin.as_ref().map(|admin| &admin.token_file),
        "idlewatcher.admin.token_file",
    );
    check(a.path_prefix != b.path_prefix, "idlewatcher.path_prefix");
    check(a.tick != b.tick, "idlewatcher.tick");
    check(
        a.max_concurrent_stops != b.max_concurrent_stops,
        "idlewatcher.max_concurrent_stops",
    );
    check(a.clients != b.clients, "idlewatcher.clients");
    check(a.docker != b.docker, "idlewatcher.docker");
    check(
        a.docker_labels != b.docker_labels,
        "idlewatcher.docker.labels",
    );
    check(a.proxmox != b.proxmox, "idlewatcher.proxmox");
    check(a.instance != b.instance, "idlewatcher.instance");
    check(
        a.docker_traffic_veto != b.docker_traffic_veto,
        "idlewatcher.docker.traffic_veto",
    );
    check(old.server_yaml != new.server_yaml, "(server)");
    // Stream listeners are bound at start-up: any change to the set of streams waits for a
    // restart (the streams of routes kept go on as they were).
    let before: Vec<(String, Vec<StreamConfig>)> = old
        .routes
        .iter()
        .filter(|route| !route.streams.is_empty())
        .map(|route| (route.name.clone(), route.streams.clone()))
        .collect();
    let after: Vec<(String, Vec<StreamConfig>)> = new
        .gateway
        .routes
        .iter()
        .filter(|route| !route.streams.is_empty())
        .map(|route| (route.name.clone(), route.streams.clone()))
        .collect();
    for (name, list) in &after {
        if before
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, l)| l)
            != Some(list)
        {
            keys.push(format!("idlewatcher.routes[{name}].streams"));
        }
    }
    for (name, _) in &before {
        if !after.iter().any(|(known, _)| known == name) {
            keys.push(format!("idlewatcher.routes[{name}].streams"));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn config(gateway: &str, routes: &str) -> Config {
        let text = format!("idlewatcher:\n{gateway}  routes:\n{routes}");
        match parse(&text) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        }
    }

    const A: &str = "    - { name: a, hosts: [a.test], docker: { container: a }, port: 80 }\n";
    const B: &str = "    - { name: b, hosts: [b.test], docker: { container: b }, port: 80 }\n";

    #[test]
    fn routes_added_removed_and_changed_are_named() {
        let old = config("", &format!("{A}{B}"));
        let c = "    - { name: c, hosts: [c.test], docker: { container: c }, port: 80 }\n";
        let b2 = "    - { name: b, hosts: [b.test], docker: { container: b }, port: 80, idle_timeout: 5m }\n";
        let new = config("", &format!("{b2}{c}"));
        let found = diff(&InForce::of(&old), &new);
        assert_eq!(found.added, ["c"]);
        assert_eq!(found.removed, ["a"]);
        assert_eq!(found.changed, ["b"]);
        assert!(found.restart_needed.is_empty(), "{found:?}");
        assert!(found.changes_routes());
    }

    #[test]
    fn a_route_written_elsewhere_in_the_file_is_unchanged() {
        let old = config("", &format!("{A}{B}"));
        let new = config("  tick: 1s\n", &format!("{B}\n\n{A}"));
        let found = diff(&InForce::of(&old), &new);
        assert_eq!(found, ConfigDiff::default());
        assert!(!found.changes_routes());
    }

    #[test]
    fn listeners_and_start_up_settings_need_a_restart() {
        let old = config(
            "  listen: [\"127.0.0.1:8080\"]\n  admin: { listen: \"127.0.0.1:9090\" }\n",
            A,
        );
        let streams = "    - { name: a, hosts: [a.test], docker: { container: a }, port: 80, streams: [{ listen: \"127.0.0.1:2525\", port: 25 }] }\n";
        let new = config(
            "  listen: [\"127.0.0.1:8081\"]\n  admin: { listen: \"127.0.0.1:9091\" }\n  tick: 2s\n",
            streams,
        );
        // HTTPS listeners added (the certificate files are not read by the diff).
        let mut new = new;
        new.gateway.tls = Some(crate::config::TlsConfig {
            listen: vec!["127.0.0.1:8443".to_string()],
            certificates: Vec::new(),
        });
        let found = diff(&InForce::of(&old), &new);
        assert_eq!(
            found.restart_needed,
            [
                "idlewatcher.listen",
                "idlewatcher.tls.listen",
                "idlewatcher.admin.listen",
                "idlewatcher.tick",
                "idlewatcher.routes[a].streams"
            ]
        );
        assert_eq!(found.changed, ["a"], "the route's own change is applied");
    }
}
