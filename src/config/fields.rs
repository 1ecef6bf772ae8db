//! Walking one mapping key by key, recording every problem with its position.
//!
//! Why a walker rather than `#[derive(Deserialize)]`: a user should fix a config in one pass, so
//! nothing returns early; every problem names its key and line; an unknown key gets a "did you
//! mean" (or a note saying where it belongs); and "not set" (`key:` or `key: ~`) is told apart
//! from every bad value.

use super::error::ConfigError;
use super::yaml::{Node, Position, Value};

/// What is wrong with a value, and optionally exactly where inside it (an item of a list); without
/// a position the problem is located at the value itself. Parsers that only ever blame the whole
/// value return a plain `String`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// What is wrong.
    pub message: String,
    /// Where inside the value, when narrower than the value.
    pub at: Option<Position>,
}

impl From<String> for Problem {
    fn from(message: String) -> Self {
        Problem { message, at: None }
    }
}

/// One mapping being validated: keys are taken out one by one as they are parsed, problems are
/// recorded (never returned early), and whatever is left at the end is an unknown key.
pub(crate) struct Fields {
    entries: Vec<(Node, Node)>,
    /// Where the mapping starts: the place of problems about the mapping as a whole (a missing
    /// key).
    at: Position,
    route: Option<String>,
    /// Dotted path of this mapping plus `.` (empty at the top of the file or of a route).
    prefix: String,
    known: Vec<String>,
    /// Keys that are known elsewhere, with a note saying where they belong.
    hints: Vec<(&'static [&'static str], &'static str)>,
    /// Keys taken so far, with where their value was written.
    taken: Vec<(String, Position)>,
    errors: Vec<ConfigError>,
}

impl Fields {
    /// The walker over the entries of a mapping written at `at`.
    pub(crate) fn of_mapping(
        entries: Vec<(Node, Node)>,
        at: Position,
        route: Option<String>,
        path: &str,
        known: &[&str],
    ) -> Self {
        Fields {
            entries,
            at,
            route,
            prefix: if path.is_empty() {
                String::new()
            } else {
                format!("{path}.")
            },
            known: known.iter().map(|k| k.to_string()).collect(),
            hints: Vec::new(),
            taken: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The walker over `node`, or the error saying it is not a mapping.
    pub(crate) fn new(
        node: Node,
        route: Option<String>,
        path: &str,
        known: &[&str],
    ) -> Result<Self, ConfigError> {
        let at = node.position();
        match node.value {
            Value::Mapping(entries) => Ok(Fields::of_mapping(entries, at, route, path, known)),
            other => Err(ConfigError::new(
                route.as_deref(),
                path,
                format!("expected a mapping, got {}", other.describe()),
            )
            .at(at)),
        }
    }

    /// Adds groups of keys that are valid elsewhere, so an unknown key can be pointed there.
    pub(crate) fn hint(mut self, groups: &[&'static [&'static str]], note: &'static str) -> Self {
        for group in groups {
            self.hints.push((group, note));
        }
        self
    }

    /// Where this mapping starts.
    pub(crate) fn position(&self) -> Position {
        self.at
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Records a problem with `key`, located at `at`.
    pub(crate) fn error_at(&mut self, key: &str, at: Position, message: impl Into<String>) {
        let key = self.full_key(key);
        self.errors
            .push(ConfigError::new(self.route.as_deref(), &key, message).at(at));
    }

    /// Records a problem found elsewhere (cross-route checks) with this mapping's problems.
    pub(crate) fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// Whether a problem with `key` (a full key) was already recorded.
    pub(crate) fn has_error_for(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key == key)
    }

    /// The string keys still present, in file order.
    pub(crate) fn string_keys(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect()
    }

    fn find(&self, key: &str) -> Option<&(Node, Node)> {
        self.entries.iter().find(|(k, _)| k.as_str() == Some(key))
    }

    /// Set to something other than null (`key:` alone or `key: ~` counts as not set).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.find(key).is_some_and(|(_, v)| !v.is_null())
    }

    /// Where `key` itself is written, if it is still there (for problems about the key being
    /// present at all, such as two keys that exclude each other); else where the mapping starts.
    pub(crate) fn key_position(&self, key: &str) -> Position {
        self.find(key).map_or(self.at, |(k, _)| k.position())
    }

    /// Where the value of `key` was written, whether or not it was already taken; `None` when the
    /// key is not in this mapping.
    pub(crate) fn value_position(&self, key: &str) -> Option<Position> {
        self.find(key)
            .map(|(_, v)| v.position())
            .or_else(|| self.taken.iter().find(|(k, _)| k == key).map(|(_, at)| *at))
    }

    /// Takes the key out; null counts as not set.
    pub(crate) fn raw(&mut self, key: &str) -> Option<Node> {
        let index = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))?;
        let (_, value) = self.entries.remove(index);
        self.taken.push((key.to_string(), value.position()));
        (!value.is_null()).then_some(value)
    }

    /// Records `problem` with `key`, at the place it names or else at `at` (the value).
    fn problem(&mut self, key: &str, at: Position, problem: impl Into<Problem>) {
        let problem = problem.into();
        self.error_at(key, problem.at.unwrap_or(at), problem.message);
    }

    /// Takes and parses an optional key, recording a parse failure under that key, at the value.
    pub(crate) fn get<T, E: Into<Problem>>(
        &mut self,
        key: &str,
        parse: impl FnOnce(Node) -> Result<T, E>,
    ) -> Option<T> {
        let value = self.raw(key)?;
        let at = value.position();
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(problem) => {
                self.problem(key, at, problem);
                None
            }
        }
    }

    /// Like [`Fields::get`], and a missing key is an error.
    pub(crate) fn required<T, E: Into<Problem>>(
        &mut self,
        key: &str,
        parse: impl FnOnce(Node) -> Result<T, E>,
    ) -> Option<T> {
        if !self.has(key) {
            self.missing(key);
            return None;
        }
        self.get(key, parse)
    }

    /// Records a missing required key (and drops a null placeholder for it), at the mapping.
    pub(crate) fn missing(&mut self, key: &str) {
        self.missing_because(key, "required key is missing");
    }

    /// Like [`Fields::missing`], with a message saying what to set.
    pub(crate) fn missing_because(&mut self, key: &str, message: &str) {
        self.raw(key);
        let at = self.at;
        self.error_at(key, at, message);
    }

    /// A list (a single scalar also accepted), each item parsed on its own so that every bad
    /// item is reported at its own position; the good items are returned, with where each was
    /// written, so cross-checks can still use (and locate) them. `if_empty`: the error for an
    /// empty list, when one is not allowed.
    pub(crate) fn list<T, E: Into<Problem>>(
        &mut self,
        key: &str,
        item: impl Fn(Node) -> Result<T, E>,
        if_empty: Option<&str>,
    ) -> Option<Vec<(T, Position)>> {
        let value = self.raw(key)?;
        let at = value.position();
        let items = match value.value {
            Value::Sequence(items) => items,
            Value::Mapping(_) => {
                self.error_at(key, at, "expected a list, got a mapping");
                return None;
            }
            one => vec![Node::new(one, at)],
        };
        if let (true, Some(message)) = (items.is_empty(), if_empty) {
            self.error_at(key, at, message);
        }
        let mut parsed = Vec::with_capacity(items.len());
        for value in items {
            let item_at = value.position();
            match item(value) {
                Ok(value) => parsed.push((value, item_at)),
                Err(problem) => self.problem(key, item_at, problem),
            }
        }
        Some(parsed)
    }

    /// A nested mapping, validated with the same route and a dotted key path; hand it back with
    /// [`Fields::absorb`].
    pub(crate) fn sub(&mut self, key: &str, known: &[&str]) -> Option<Fields> {
        let value = self.raw(key)?;
        match Fields::new(value, self.route.clone(), &self.full_key(key), known) {
            Ok(fields) => Some(fields),
            Err(err) => {
                self.errors.push(err);
                None
            }
        }
    }

    /// Takes over the problems of a nested mapping.
    pub(crate) fn absorb(&mut self, child: Fields) {
        let errors = child.finish();
        self.errors.extend(errors);
    }

    /// Keys taken so far, with where their value was written.
    pub(crate) fn taken(&self) -> &[(String, Position)] {
        &self.taken
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

    /// The recorded errors plus one per key nobody took (unknown keys), located at the key.
    pub(crate) fn finish(mut self) -> Vec<ConfigError> {
        let mut errors = std::mem::take(&mut self.errors);
        for (key, _) in std::mem::take(&mut self.entries) {
            let at = key.position();
            let (name, message) = match key.value {
                Value::String(name) => {
                    let message = format!("unknown key \"{name}\"{}", self.note_for(&name));
                    (name, message)
                }
                other => (other.scalar_text(), "keys must be strings".to_string()),
            };
            let key = format!("{}{name}", self.prefix);
            errors.push(ConfigError::new(self.route.as_deref(), &key, message).at(at));
        }
        errors
    }
}

/// The known name closest to a misspelt one, if it is close enough to be a likely typo. Distance
/// is optimal string alignment (Levenshtein plus adjacent transpositions, so `listne` is one edit
/// from `listen`).
pub(crate) fn closest<'a>(wrong: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (wrong.chars().count() / 4).clamp(1, 3);
    known
        .map(|k| (strsim::osa_distance(wrong, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
