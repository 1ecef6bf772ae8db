//! How a problem in the configuration is reported: where (line and column), which route, which
//! key, and what is wrong.
//!
//! Its own module because every other part of `config` produces these, and because the shape of
//! the text is a contract with users (and with scripts that grep `idlewatcher -t`'s output).

use std::fmt;

use super::yaml::Position;

/// One problem found in the config file, precise enough that a user can fix it without guessing:
/// where it is, which route (if any), which key, and what is wrong.
///
/// Displayed as `line 9, column 21: route "whoami": key "idle_timeout": invalid duration "5x"
/// (...)`; outside routes as `line 3, column 11: key "idlewatcher.listen": ...`; for YAML syntax
/// errors as `line 7, column 4: invalid YAML: ...`. The location is left out when it is not known
/// (an unreadable file, problems Pingora finds in its keys taken together, routes that did not
/// come from a file). `key` is empty when the problem is not about one key.
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
    /// 1-based line of the offending value (of the key, for an unknown key; of the enclosing
    /// mapping, for a missing key), whenever it is known.
    pub line: Option<usize>,
    /// 1-based column (in characters) on that line, whenever it is known.
    pub column: Option<usize>,
}

impl ConfigError {
    /// A problem with no location yet; see [`ConfigError::at`].
    pub(crate) fn new(route: Option<&str>, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            route: route.map(str::to_string),
            key: key.to_string(),
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// The same problem, located at `at`.
    pub(crate) fn at(mut self, at: Position) -> Self {
        self.line = at.line;
        self.column = at.column;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: ")?,
            (Some(line), None) => write!(f, "line {line}: ")?,
            _ => {}
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
    /// Top-down in the file (problems without a place last); callers should not rely on the order.
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
    /// A single problem that stops everything (the file cannot be read or is not YAML).
    pub(crate) fn one(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}
