//! The configuration file: one YAML document, Pingora's server keys at the top level and ours
//! under `idlewatcher:`. Parsing validates everything at once and reports *every* problem, each
//! with its line and column, the route and the key, so a user fixes a config in one pass.
//!
//! This module is the facade ([`load`], [`parse`] and the types); the work is split by reason to
//! change:
//!
//! | module | concern |
//! |---|---|
//! | `model` | the runtime structures ([`Config`], [`RouteConfig`]…), no parsing |
//! | `error` | how a problem is reported ([`ConfigError`]) |
//! | [`yaml`] | the document as a tree of [`Node`]s with positions (`saphyr-parser`, merge keys) |
//! | `fields` | walking a mapping key by key, recording every problem at its position |
//! | `values` | what a duration, address, host, status, signal… may look like |
//! | [`certs`] | one HTTPS certificate and key pair, read and matched (also what the listeners load) |
//! | `server` | Pingora's top-level keys, checked through its own `ServerConf` |
//! | `gateway` | the `idlewatcher:` section and its list of routes |
//! | `route` | one route, from the file or from any mapping ([`parse_route`]) |
//! | `checks` | what routes must agree on (unique names and hosts, dependencies, shared backends) |
//! | `labels` | Docker labels → routes, by the same route parser and checks |
//! | `diff` | what a reload changes: routes added, removed, changed; keys that need a restart |
//!
//! A syntax error is the only early exit. Cross-route checks run on whatever could be parsed, so
//! one broken route does not hide problems in the others. Problems are returned top-down in the
//! file.
//!
//! Error keys: inside a route they are relative to the route (`health.statuses`); elsewhere they
//! are full dotted paths (`idlewatcher.listen`, `idlewatcher.defaults.idle_timeout`, `threads`).
//! A route is labelled by its `name`, or `routes[i]` when the name is missing or duplicated. The
//! position is that of the offending value; of the key, for an unknown key; of the enclosing
//! mapping, for a missing key. Pingora's keys are not listed here: they are derived from
//! `ServerConf` itself.

pub mod certs;
mod checks;
mod diff;
mod error;
mod fields;
mod gateway;
mod labels;
mod model;
mod route;
mod server;
mod values;
pub mod yaml;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use certs::{load_certified_key, CertificateError, CertificateFiles};
pub use diff::{diff, fingerprint, ConfigDiff, InForce};
pub use error::{ConfigError, ConfigErrors};
pub use labels::{
    label_routes, route_from_labels, LabelRoutes, LabeledContainer, RejectedRoute, ENABLE_LABEL,
    LABEL_PREFIX,
};
pub use model::RouteDefaults;
pub use model::{
    AdminConfig, BackendConfig, ClientLimits, Config, Dependency, DependencyCondition,
    DockerEngine, GatewayConfig, HealthCheck, ProxmoxConfig, PveTrust, RouteConfig, StopMethod,
    StreamConfig, StreamProtocol, StreamSettings, TlsConfig, TokenSecret, Written,
};
pub use route::parse_route;
pub use yaml::Node;

use fields::Fields;
use yaml::Value;

/// Reads and validates the config file at `path`; an unreadable file is one error naming it.
/// This is what the gateway and `idlewatcher -t` call.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigErrors::one(ConfigError::new(
            None,
            "",
            format!("cannot read config file \"{}\": {err}", path.display()),
        ))
    })?;
    parse(&text)
}

/// Validates a whole config document and resolves it (defaults applied), or returns every problem
/// found, each naming its line, route and key. Kept separate from [`load`] so tests and embedders
/// can validate text they already hold.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let root = yaml::parse_document(text).map_err(|err| {
        ConfigErrors::one(
            ConfigError::new(None, "", format!("invalid YAML: {}", err.message)).at(err.at),
        )
    })?;
    let at = root.position();
    let entries = match root.value {
        Value::Mapping(entries) => entries,
        Value::Null => Vec::new(),
        other => {
            return Err(ConfigErrors::one(
                ConfigError::new(
                    None,
                    "",
                    format!(
                        "the file must be a mapping of keys, got {}",
                        other.describe()
                    ),
                )
                .at(at),
            ))
        }
    };

    let server_keys = server::pingora_keys();
    let mut known: Vec<&str> = server_keys.iter().map(String::as_str).collect();
    known.push("idlewatcher");
    let mut top = Fields::of_mapping(entries, at, None, "", &known).hint(
        &[
            gateway::GATEWAY_KEYS,
            route::INHERIT_KEYS,
            route::ROUTE_KEYS,
        ],
        "it belongs under idlewatcher:",
    );

    let server_yaml = server::server_part(&mut top, &server_keys);

    let gateway = match top.sub("idlewatcher", gateway::GATEWAY_KEYS) {
        Some(section) => gateway::parse_gateway(section, &mut top),
        None => {
            if !top.has_error_for("idlewatcher") {
                top.missing("idlewatcher");
            }
            None
        }
    };
    let mut errors = top.finish();
    // Top-down, as the user reads the file; problems without a place last. (Stable: problems at
    // the same place keep the order in which they were found.)
    errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
    match gateway {
        Some(gateway) if errors.is_empty() => Ok(Config {
            server_yaml,
            gateway,
        }),
        _ if errors.is_empty() => Err(ConfigErrors::one(ConfigError::new(
            None,
            "",
            "internal error: incomplete config",
        ))),
        _ => Err(ConfigErrors(errors)),
    }
}
