//! Pingora's own keys, which sit at the top level of the same file (`threads`, `pid_file`…).
//!
//! Why apart: their list and their types belong to Pingora's `ServerConf`, not to us. Each key is
//! checked on its own through `ServerConf`'s serde implementation (so an error names the key and
//! its line), the known keys are derived from `ServerConf::default()` (a new Pingora release needs
//! no edit here), our defaults are added, and the result is handed to Pingora as text — JSON,
//! which is YAML, so `ServerConf::from_yaml` reads it.

use pingora::server::configuration::ServerConf;
use serde_json::{Map, Number, Value as Json};

use super::fields::Fields;
use super::yaml::{Node, Position, Value};

/// The key under which problems Pingora finds in its keys taken together are reported.
const WHOLE: &str = "(server)";

/// Pingora's own keys, derived from its config type so that a new Pingora release needs no edit.
pub(crate) fn pingora_keys() -> Vec<String> {
    match serde_json::to_value(ServerConf::default()) {
        Ok(Json::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Pingora's defaults that do not suit a gateway which must drain in seconds and keep many
/// upstream connections warm; applied only where the user set nothing.
fn server_defaults() -> [(&'static str, Json); 4] {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    [
        ("threads", Json::from(threads)),
        ("grace_period_seconds", Json::from(1u64)),
        ("graceful_shutdown_timeout_seconds", Json::from(3u64)),
        ("upstream_keepalive_pool_size", Json::from(1024u64)),
    ]
}

/// Takes Pingora's keys out of the top-level mapping, checks each on its own (so errors name the
/// key and its line), adds our defaults, has Pingora validate the result, and returns it as text
/// for `ServerConf::from_yaml`.
pub(crate) fn server_part(top: &mut Fields, server_keys: &[String]) -> String {
    let mut server = Map::new();
    let mut server_ok = true;
    let mut threads_at = Position::UNKNOWN;
    for key in top.string_keys() {
        if !server_keys.contains(&key) {
            continue;
        }
        let Some(node) = top.raw(&key) else { continue };
        let at = node.position();
        if key == "threads" {
            threads_at = at;
        }
        let value = match to_json(&node) {
            Ok(value) => value,
            Err(message) => {
                top.error_at(&key, at, message);
                server_ok = false;
                continue;
            }
        };
        let single = Map::from_iter([(key.clone(), value.clone())]);
        if let Err(err) = serde_json::from_value::<ServerConf>(Json::Object(single)) {
            top.error_at(&key, at, err.to_string());
            server_ok = false;
        }
        server.insert(key, value);
    }
    if server.get("threads").and_then(Json::as_u64) == Some(0) {
        // Pingora would accept it and then fail to build its runtime.
        top.error_at("threads", threads_at, "must be at least 1");
        server_ok = false;
    }
    for (key, value) in server_defaults() {
        server.entry(key).or_insert(value);
    }
    let text = match serde_json::to_string_pretty(&Json::Object(server)) {
        Ok(text) => text,
        Err(err) => {
            top.error_at(
                WHOLE,
                Position::UNKNOWN,
                format!("cannot write the server keys: {err}"),
            );
            return String::new();
        }
    };
    if server_ok {
        if let Err(err) = ServerConf::from_yaml(&text) {
            top.error_at(WHOLE, Position::UNKNOWN, pingora_message(&err));
        }
    }
    text
}

/// The same value as JSON, for `ServerConf`'s serde implementation.
fn to_json(node: &Node) -> Result<Json, String> {
    Ok(match &node.value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(n) => match (u64::try_from(*n), i64::try_from(*n)) {
            (Ok(n), _) => Json::from(n),
            (_, Ok(n)) => Json::from(n),
            _ => return Err(format!("integer {n} is out of range")),
        },
        Value::Float(x) => Number::from_f64(*x)
            .map(Json::Number)
            .ok_or_else(|| format!("expected a finite number, got {}", node.value.scalar_text()))?,
        Value::String(s) => Json::String(s.clone()),
        Value::Sequence(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Mapping(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let Value::String(key) = &key.value else {
                    return Err(format!(
                        "keys must be strings, got {}",
                        key.value.describe()
                    ));
                };
                map.insert(key.clone(), to_json(value)?);
            }
            Json::Object(map)
        }
        Value::Tagged(tag, _) => {
            return Err(format!("unexpected value tagged {tag}"));
        }
    })
}

fn pingora_message(err: &pingora::Error) -> String {
    // Pingora's context quotes the whole document; the cause (or the explanation) is the point.
    match (&err.cause, &err.context) {
        (Some(cause), _) => cause.to_string(),
        (None, Some(context)) => context.as_str().to_string(),
        (None, None) => err.to_string(),
    }
}
