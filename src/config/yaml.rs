//! The YAML document as a tree of [`Node`]s that remember where they were written.
//!
//! Why our own tree: every config error names its line and column, so the validator needs
//! positions on every value; and the same validator must run on routes that never were YAML
//! (Docker labels), which [`Node::from_pairs`] builds without positions. The rest of `config`
//! therefore depends on this small type, not on a YAML library.
//!
//! The tree is built from the events of `saphyr-parser` (a maintained YAML 1.2 parser that reports
//! positions) and does what `serde_yaml` used to do for us:
//! - YAML 1.2 core-schema scalars: `null`/`~`/empty, `true`/`false`, integers (also `0x`, `0o`,
//!   `0b`), floats (also `.inf`, `.nan`); quoted scalars stay strings; `!!str`, `!!int`… apply;
//! - anchors and aliases, and merge keys (`<<: *base`, `<<: [*a, *b]`; explicit keys win, earlier
//!   mappings in a list win over later ones);
//! - rejects duplicate keys and more than one document, and bounds nesting and alias expansion
//!   (a few lines of aliases can otherwise expand to gigabytes);
//! - keeps other tags (`!foo x`) as [`Value::Tagged`], so messages can say "a value tagged !foo".

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

/// Deepest nesting of lists and mappings accepted; deeper is surely not a config (and the tree
/// is walked recursively).
const MAX_DEPTH: usize = 128;

/// Most nodes that aliases may copy in one document (a guard against "billion laughs").
const MAX_ALIAS_NODES: usize = 1_000_000;

/// Where something was written. Lines and columns are 1-based (columns count characters); both
/// are `None` for values that did not come from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column, in characters.
    pub column: Option<usize>,
}

impl Position {
    /// For values that were not read from a file (built by code, from Docker labels…).
    pub const UNKNOWN: Position = Position {
        line: None,
        column: None,
    };

    fn from_parser(line: usize, col: usize) -> Self {
        // saphyr-parser: lines are 1-based, columns 0-based.
        Position {
            line: Some(line),
            column: Some(col + 1),
        }
    }

    fn of(span: &Span) -> Self {
        Position::from_parser(span.start.line(), span.start.col())
    }
}

/// One value of the document and where it starts, so that any problem with it can be located.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What was written.
    pub value: Value,
    /// 1-based line where the value starts; `None` when it did not come from a file.
    pub line: Option<usize>,
    /// 1-based column where the value starts; `None` when it did not come from a file.
    pub column: Option<usize>,
}

/// A YAML value, scalars already resolved to their core-schema type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~`, or nothing at all (`key:`).
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer (wide enough for any `u64` and `i64`).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// A string: a quoted scalar, or a plain one that is nothing else.
    String(String),
    /// A list, in order.
    Sequence(Vec<Node>),
    /// A mapping, in file order (merge keys already applied). Keys are nodes because YAML allows
    /// any value as a key; the validator reports non-string keys.
    Mapping(Vec<(Node, Node)>),
    /// A value with a tag the core schema does not know, e.g. `!secret abc`: (tag, value).
    Tagged(String, Box<Node>),
}

/// A YAML syntax error, or a construct the configuration does not accept (duplicate keys, a second
/// document, a bad merge key…), with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub at: Position,
}

impl YamlError {
    fn new(message: impl Into<String>, at: Position) -> Self {
        YamlError {
            message: message.into(),
            at,
        }
    }
}

impl From<ScanError> for YamlError {
    fn from(err: ScanError) -> Self {
        let at = Position::from_parser(err.marker().line(), err.marker().col());
        YamlError::new(err.info(), at)
    }
}

impl Node {
    /// A node written at `at`.
    pub fn new(value: Value, at: Position) -> Self {
        Node {
            value,
            line: at.line,
            column: at.column,
        }
    }

    /// A node that was not read from a file (no position).
    pub fn unplaced(value: Value) -> Self {
        Node::new(value, Position::UNKNOWN)
    }

    /// A scalar given as text, typed as if it were written unquoted in YAML (`80` is an integer,
    /// `true` a boolean, `5m` a string): how label values are read.
    pub fn scalar(text: &str) -> Self {
        Node::unplaced(resolve_plain(text))
    }

    /// A mapping with string keys and no position.
    pub fn mapping<K: Into<String>>(entries: impl IntoIterator<Item = (K, Node)>) -> Self {
        Node::unplaced(Value::Mapping(
            entries
                .into_iter()
                .map(|(key, value)| (Node::unplaced(Value::String(key.into())), value))
                .collect(),
        ))
    }

    /// A mapping built from plain `(key, value)` text pairs, e.g. Docker labels with their prefix
    /// removed, so that the file's validator can run on them. Values are typed as by
    /// [`Node::scalar`]; a dotted key (`health.path`) is put in a nested mapping (`health:
    /// { path: … }`). Pairs apply in order: a later pair for the same key replaces an earlier one,
    /// and a dotted key under a key that holds a scalar replaces that scalar.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut root = Vec::new();
        for (key, value) in pairs {
            let path: Vec<&str> = key.as_ref().split('.').collect();
            insert_path(&mut root, &path, Node::scalar(value.as_ref()));
        }
        Node::unplaced(Value::Mapping(root))
    }

    /// Where this node starts.
    pub fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }

    /// The value of `key` in a mapping with string keys.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Mapping(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one that fits a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match self.value {
            Value::Int(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    /// `null`, `~` or nothing: "not set" for the validator.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Same value, wherever written (how keys are compared).
    fn same_value(&self, other: &Node) -> bool {
        match (&self.value, &other.value) {
            (Value::Sequence(a), Value::Sequence(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_value(y))
            }
            (Value::Mapping(a), Value::Mapping(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka.same_value(kb) && va.same_value(vb))
            }
            (Value::Tagged(ta, a), Value::Tagged(tb, b)) => ta == tb && a.same_value(b),
            (a, b) => a == b,
        }
    }

    /// How many nodes this tree holds (to bound alias expansion).
    fn count(&self) -> usize {
        1 + match &self.value {
            Value::Sequence(items) => items.iter().map(Node::count).sum(),
            Value::Mapping(entries) => entries.iter().map(|(k, v)| k.count() + v.count()).sum(),
            Value::Tagged(_, inner) => inner.count(),
            _ => 0,
        }
    }
}

impl Value {
    /// A short human description for "got ..." messages: strings quoted, scalars as written,
    /// collections by kind.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "nothing".to_string(),
            Value::Sequence(_) => "a list".to_string(),
            Value::Mapping(_) => "a mapping".to_string(),
            Value::Tagged(tag, _) => format!("a value tagged {tag}"),
            Value::String(s) => format!("{s:?}"),
            other => other.scalar_text(),
        }
    }

    /// A scalar as the user would write it (strings unquoted); collections as [`Value::describe`].
    pub fn scalar_text(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(x) => float_text(*x),
            other => other.describe(),
        }
    }
}

fn float_text(x: f64) -> String {
    if x.is_nan() {
        ".nan".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { ".inf" } else { "-.inf" }.to_string()
    } else {
        format!("{x:?}")
    }
}

fn insert_path(entries: &mut Vec<(Node, Node)>, path: &[&str], value: Node) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let index = match entries.iter().position(|(k, _)| k.as_str() == Some(first)) {
        Some(index) => index,
        None => {
            entries.push((
                Node::unplaced(Value::String((*first).to_string())),
                Node::unplaced(Value::Null),
            ));
            entries.len() - 1
        }
    };
    let slot = &mut entries[index].1;
    if rest.is_empty() {
        *slot = value;
        return;
    }
    if !matches!(slot.value, Value::Mapping(_)) {
        *slot = Node::unplaced(Value::Mapping(Vec::new()));
    }
    if let Value::Mapping(inner) = &mut slot.value {
        insert_path(inner, rest, value);
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars (YAML 1.2 core schema, as serde_yaml resolved them)
// ---------------------------------------------------------------------------------------------

/// Types an unquoted scalar: null, boolean, integer, float, else string.
fn resolve_plain(text: &str) -> Value {
    if is_null(text) {
        return Value::Null;
    }
    if let Some(b) = parse_bool(text) {
        return Value::Bool(b);
    }
    if let Some(n) = parse_int(text) {
        return Value::Int(n);
    }
    if !digits_but_not_number(text) {
        if let Some(x) = parse_float(text) {
            return Value::Float(x);
        }
    }
    Value::String(text.to_string())
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Decimal, `0x` hex, `0o` octal or `0b` binary, with an optional sign.
fn parse_int(text: &str) -> Option<i128> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = if let Some(rest) = unsigned.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = unsigned.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = unsigned.strip_prefix("0b") {
        (2, rest)
    } else {
        (10, unsigned)
    };
    // `from_str_radix` would accept a second sign.
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    if radix == 10 && digits_but_not_number(text) {
        return None;
    }
    let magnitude = i128::try_from(u128::from_str_radix(digits, radix).ok()?).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

fn parse_float(text: &str) -> Option<f64> {
    let unsigned = match text.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return None,
        Some(rest) => rest,
        None => text,
    };
    match unsigned {
        ".inf" | ".Inf" | ".INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    unsigned.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Leading zeros followed by digits (`0123`) is a string in YAML 1.2, not an octal number.
fn digits_but_not_number(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    digits.len() > 1 && digits.starts_with('0') && digits[1..].bytes().all(|b| b.is_ascii_digit())
}

/// What a tag asks for.
enum TagKind {
    /// No tag, or the non-specific `!`.
    None,
    /// A core-schema tag such as `!!str`: its suffix (`str`).
    Core(String),
    /// Any other tag, shown as written.
    Other(String),
}

fn tag_kind(tag: Option<&Tag>) -> TagKind {
    match tag {
        None => TagKind::None,
        Some(tag) if tag.is_yaml_core_schema() => TagKind::Core(tag.suffix.clone()),
        // The non-specific tag `!`, which only says "not plain": saphyr reports it either way.
        Some(tag)
            if (tag.handle.is_empty() && tag.suffix == "!")
                || (tag.handle == "!" && tag.suffix.is_empty()) =>
        {
            TagKind::None
        }
        Some(tag) => TagKind::Other(tag.to_string()),
    }
}

fn scalar_value(
    text: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    at: Position,
) -> Result<Value, YamlError> {
    let plain = style == ScalarStyle::Plain;
    let untagged = || {
        if plain {
            resolve_plain(text)
        } else {
            Value::String(text.to_string())
        }
    };
    let invalid = |what: &str| YamlError::new(format!("invalid {what} {text:?}"), at);
    Ok(match tag_kind(tag) {
        TagKind::None if tag.is_some() => Value::String(text.to_string()),
        TagKind::None => untagged(),
        TagKind::Core(suffix) => match suffix.as_str() {
            "null" => is_null(text)
                .then_some(Value::Null)
                .ok_or_else(|| invalid("!!null value"))?,
            "bool" => Value::Bool(parse_bool(text).ok_or_else(|| invalid("!!bool value"))?),
            "int" => Value::Int(parse_int(text).ok_or_else(|| invalid("!!int value"))?),
            "float" => Value::Float(
                parse_int(text)
                    .map(|n| n as f64)
                    .or_else(|| parse_float(text))
                    .ok_or_else(|| invalid("!!float value"))?,
            ),
            _ => Value::String(text.to_string()),
        },
        TagKind::Other(tag) => Value::Tagged(tag, Box::new(Node::new(untagged(), at))),
    })
}

// ---------------------------------------------------------------------------------------------
// Building the tree from parser events
// ---------------------------------------------------------------------------------------------

/// A list or mapping still being read.
struct Open {
    at: Position,
    anchor: usize,
    tag: Option<String>,
    kind: OpenKind,
}

enum OpenKind {
    Sequence(Vec<Node>),
    Mapping {
        entries: Vec<(Node, Node)>,
        /// The key read, waiting for its value.
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    open: Vec<Open>,
    /// Finished anchored nodes, by the parser's anchor id.
    anchors: HashMap<usize, Node>,
    /// Nodes copied by aliases so far.
    alias_nodes: usize,
    root: Option<Node>,
}

impl Builder {
    fn start(
        &mut self,
        at: Position,
        anchor: usize,
        tag: Option<&Tag>,
        kind: OpenKind,
    ) -> Result<(), YamlError> {
        if self.open.len() >= MAX_DEPTH {
            return Err(YamlError::new(
                format!("lists and mappings are nested more than {MAX_DEPTH} deep"),
                at,
            ));
        }
        let tag = match tag_kind(tag) {
            TagKind::Other(tag) => Some(tag),
            TagKind::None | TagKind::Core(_) => None,
        };
        self.open.push(Open {
            at,
            anchor,
            tag,
            kind,
        });
        Ok(())
    }

    fn end(&mut self) -> Result<(), YamlError> {
        let Some(open) = self.open.pop() else {
            return Ok(());
        };
        let value = match open.kind {
            OpenKind::Sequence(items) => Value::Sequence(items),
            OpenKind::Mapping { mut entries, .. } => {
                apply_merge(&mut entries)?;
                Value::Mapping(entries)
            }
        };
        let node = Node::new(value, open.at);
        let node = match open.tag {
            Some(tag) => Node::new(Value::Tagged(tag, Box::new(node)), open.at),
            None => node,
        };
        self.finish(node, open.anchor)
    }

    fn alias(&mut self, id: usize, at: Position) -> Result<(), YamlError> {
        let Some(target) = self.anchors.get(&id) else {
            return Err(YamlError::new(
                "an alias cannot refer to a list or mapping that contains it",
                at,
            ));
        };
        self.alias_nodes += target.count();
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(YamlError::new(
                format!("aliases expand to more than {MAX_ALIAS_NODES} values"),
                at,
            ));
        }
        // Where the alias is used; what it copies keeps the positions where it was written.
        let mut node = target.clone();
        node.line = at.line;
        node.column = at.column;
        self.finish(node, 0)
    }

    /// A complete node: remember its anchor, and give it to its parent.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => self.root = Some(node),
            Some(Open {
                kind: OpenKind::Sequence(items),
                ..
            }) => items.push(node),
            Some(Open {
                kind: OpenKind::Mapping { entries, key },
                ..
            }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => {
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.same_value(&node)) {
                        let first_line = first
                            .line
                            .map(|line| format!(" (first set on line {line})"))
                            .unwrap_or_default();
                        return Err(YamlError::new(
                            format!("duplicate key \"{}\"{first_line}", node.value.scalar_text()),
                            node.position(),
                        ));
                    }
                    *key = Some(node);
                }
            },
        }
        Ok(())
    }
}

/// Applies the merge key `<<` of one mapping: the keys of the mapping (or of each mapping of the
/// list) that it names are added unless already set; among several, the first wins.
fn apply_merge(entries: &mut Vec<(Node, Node)>) -> Result<(), YamlError> {
    let Some(index) = entries.iter().position(|(k, _)| k.as_str() == Some("<<")) else {
        return Ok(());
    };
    let (_, merge) = entries.remove(index);
    let at = merge.position();
    let sources = match merge.value {
        Value::Mapping(source) => vec![source],
        Value::Sequence(items) => items
            .into_iter()
            .map(|item| {
                let item_at = item.position();
                match item.value {
                    Value::Mapping(source) => Ok(source),
                    other => Err(YamlError::new(
                        format!(
                            "invalid merge key (<<): expected a mapping to merge, got {}",
                            other.describe()
                        ),
                        item_at,
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(YamlError::new(
                format!(
                    "invalid merge key (<<): expected a mapping or a list of mappings, got {}",
                    other.describe()
                ),
                at,
            ))
        }
    };
    for source in sources {
        for (key, value) in source {
            if !entries.iter().any(|(k, _)| k.same_value(&key)) {
                entries.push((key, value));
            }
        }
    }
    Ok(())
}

/// Reads one YAML document (an empty text is a null document).
pub(crate) fn parse_document(text: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let mut documents = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = next?;
        let at = Position::of(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError::new(
                        "more than one YAML document (a second \"---\"); the config is one document",
                        at,
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar_value(&text, style, tag.as_deref(), at)?;
                builder.finish(Node::new(value, at), anchor)?;
            }
            Event::SequenceStart(anchor, tag) => {
                builder.start(at, anchor, tag.as_deref(), OpenKind::Sequence(Vec::new()))?;
            }
            Event::MappingStart(anchor, tag) => builder.start(
                at,
                anchor,
                tag.as_deref(),
                OpenKind::Mapping {
                    entries: Vec::new(),
                    key: None,
                },
            )?,
            Event::SequenceEnd | Event::MappingEnd => builder.end()?,
            Event::Alias(id) => builder.alias(id, at)?,
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(builder.root.unwrap_or_else(|| Node::unplaced(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Node {
        parse_document(text).unwrap_or_else(|e| panic!("{e:?}\n---\n{text}"))
    }

    fn value_of(text: &str) -> Value {
        doc(&format!("k: {text}\n"))
            .get("k")
            .map(|n| n.value.clone())
            .unwrap_or(Value::Null)
    }

    fn fails(text: &str) -> YamlError {
        match parse_document(text) {
            Ok(node) => panic!("expected an error, got {node:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn core_schema_scalars_resolve_like_serde_yaml_did() {
        let s = |t: &str| Value::String(t.to_string());
        for (text, expected) in [
            ("~", Value::Null),
            ("null", Value::Null),
            ("NULL", Value::Null),
            ("", Value::Null),
            ("true", Value::Bool(true)),
            ("False", Value::Bool(false)),
            ("yes", s("yes")),
            ("80", Value::Int(80)),
            ("+5", Value::Int(5)),
            ("-5", Value::Int(-5)),
            ("0x1F", Value::Int(31)),
            ("0o17", Value::Int(15)),
            ("0b11", Value::Int(3)),
            ("-0x10", Value::Int(-16)),
            ("0123", s("0123")),
            ("18446744073709551616", Value::Int(1 << 64)),
            ("1.5", Value::Float(1.5)),
            ("1e3", Value::Float(1000.0)),
            (".inf", Value::Float(f64::INFINITY)),
            ("-.inf", Value::Float(f64::NEG_INFINITY)),
            ("inf", s("inf")),
            ("5m", s("5m")),
            ("\"5\"", s("5")),
            ("'true'", s("true")),
            ("\"\"", s("")),
            ("!!str 5", s("5")),
            ("!!int \"7\"", Value::Int(7)),
            ("!!float 1", Value::Float(1.0)),
            ("! 5", s("5")),
        ] {
            assert_eq!(value_of(text), expected, "{text}");
        }
        assert!(matches!(value_of(".nan"), Value::Float(x) if x.is_nan()));
        assert_eq!(
            value_of("!secret abc"),
            Value::Tagged(
                "!secret".into(),
                Box::new(Node::new(
                    Value::String("abc".into()),
                    Position::from_parser(1, 3)
                ))
            )
        );
        assert_eq!(value_of("!secret abc").describe(), "a value tagged !secret");
        assert!(fails("k: !!int x\n")
            .message
            .contains("invalid !!int value"));
        assert_eq!(Value::Float(1.0).scalar_text(), "1.0");
        assert_eq!(Value::Float(f64::NEG_INFINITY).scalar_text(), "-.inf");
    }

    #[test]
    fn nodes_know_where_they_were_written() {
        let root = doc("# comment\na:\n  b: [1, \"x\"]\n  c: { d: e }\n");
        assert_eq!(root.position(), Position::from_parser(2, 0));
        let a = root.get("a").expect("a");
        assert_eq!((a.line, a.column), (Some(3), Some(3)));
        let Value::Sequence(items) = &a.get("b").expect("b").value else {
            panic!("b is a list");
        };
        assert_eq!((items[1].line, items[1].column), (Some(3), Some(10)));
        let d = a.get("c").and_then(|c| c.get("d")).expect("d");
        assert_eq!(
            (d.line, d.column, d.as_str()),
            (Some(4), Some(11), Some("e"))
        );
        // Keys too.
        let Value::Mapping(entries) = &root.value else {
            panic!("a mapping");
        };
        assert_eq!((entries[0].0.line, entries[0].0.column), (Some(2), Some(1)));
    }

    #[test]
    fn aliases_copy_the_anchored_value() {
        let root = doc("a: &x { k: 1 }\nb: *x\nc: &s text\nd: *s\n");
        let b = root.get("b").expect("b");
        assert_eq!(b.get("k").and_then(Node::as_u64), Some(1));
        assert_eq!(b.line, Some(2), "the alias is where it is used");
        assert_eq!(
            b.get("k").and_then(|k| k.line),
            Some(1),
            "what it copies stays where it was written"
        );
        assert_eq!(root.get("d").and_then(Node::as_str), Some("text"));
        assert!(fails("a: *nope\n").message.contains("unknown anchor"));
    }

    #[test]
    fn merge_keys_fill_in_without_overriding() {
        let root = doc("a: &a { x: 1, y: 1 }\nb: &b { y: 2, z: 2 }\nc:\n  <<: [*a, *b]\n  x: 3\nd:\n  <<: *b\n");
        let c = root.get("c").expect("c");
        let get = |n: &Node, k: &str| n.get(k).and_then(Node::as_u64);
        assert_eq!(
            (get(c, "x"), get(c, "y"), get(c, "z")),
            (Some(3), Some(1), Some(2))
        );
        assert!(c.get("<<").is_none());
        let d = root.get("d").expect("d");
        assert_eq!((get(d, "y"), get(d, "z")), (Some(2), Some(2)));
        // A merge inside the merged mapping was applied when that mapping was read.
        let nested = doc("a: &a { x: 1 }\nb: &b { <<: *a, y: 2 }\nc: { <<: *b }\n");
        let c = nested.get("c").expect("c");
        assert_eq!((get(c, "x"), get(c, "y")), (Some(1), Some(2)));
        assert!(fails("a:\n  <<: [1]\n")
            .message
            .contains("expected a mapping to merge"));
        assert!(fails("a:\n  <<: x\n").message.contains("invalid merge key"));
    }

    #[test]
    fn what_the_config_does_not_accept() {
        let err = fails("a: 1\nb: 2\na: 3\n");
        assert_eq!(err.message, "duplicate key \"a\" (first set on line 1)");
        assert_eq!(err.at, Position::from_parser(3, 0));
        assert!(fails("a: 1\n---\nb: 2\n").message.contains("more than one"));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(fails(&deep).message.contains("nested more than"));
        // Each level doubles the size: 2^25 values from a few lines.
        let mut bomb = String::from("a0: &a0 [x, x]\n");
        for i in 1..25 {
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1));
        }
        assert!(fails(&bomb).message.contains("aliases expand"));
        let err = fails("a: [1\n");
        assert!(err.at.line.is_some(), "{err:?}");
    }

    #[test]
    fn empty_documents_are_null() {
        assert!(doc("").is_null());
        assert!(doc("# nothing\n").is_null());
        assert!(doc("---\n").is_null());
    }

    #[test]
    fn mappings_from_plain_pairs() {
        let node = Node::from_pairs([
            ("port", "80"),
            ("health.path", "/hz"),
            ("health.tcp", "false"),
            ("name", "a"),
            ("name", "b"),
        ]);
        assert_eq!(node.position(), Position::UNKNOWN);
        assert_eq!(node.get("port").and_then(Node::as_u64), Some(80));
        let health = node.get("health").expect("health");
        assert_eq!(health.get("path").and_then(Node::as_str), Some("/hz"));
        assert_eq!(
            health.get("tcp").map(|n| n.value.clone()),
            Some(Value::Bool(false))
        );
        assert_eq!(
            node.get("name").and_then(Node::as_str),
            Some("b"),
            "last wins"
        );
        let Value::Mapping(entries) = &node.value else {
            panic!("a mapping");
        };
        assert_eq!(entries.len(), 3);
        assert_eq!(
            Node::mapping([("k", Node::scalar("v"))])
                .get("k")
                .and_then(Node::as_str),
            Some("v")
        );
    }
}
