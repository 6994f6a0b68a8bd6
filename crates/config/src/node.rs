//! A YAML/JSON document as a tree that remembers where each value was written, so
//! any finding about a field can name its line.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

use crate::path::{FieldPath, Segment};

/// A value and the line it starts on (1-based, in the whole file).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: u32,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A mapping entry; the key keeps its own line because a finding about a field
/// (an unknown one, say) points at the key, not its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_line: u32,
    pub value: Node,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self.value, Value::Map(_))
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The line of the deepest node on `path` that exists; the key's line for a field.
    pub fn line_of(&self, path: &FieldPath) -> u32 {
        let mut node = self;
        let mut line = self.line;
        for segment in path.segments() {
            let next = match (segment, &node.value) {
                (Segment::Field(name), Value::Map(entries)) => entries
                    .iter()
                    .find(|e| &e.key == name)
                    .map(|e| (e.key_line, &e.value)),
                (Segment::Index(i), Value::Seq(items)) => items.get(*i).map(|n| (n.line, n)),
                _ => None,
            };
            match next {
                Some((l, n)) => {
                    line = l;
                    node = n;
                }
                None => break,
            }
        }
        line
    }

    /// Removes the value at `path` (a field of a mapping), returning the key's line.
    pub fn remove(&mut self, path: &[Segment]) -> Option<u32> {
        let (last, parents) = path.split_last()?;
        let mut node = self;
        for segment in parents {
            node = node.child_mut(segment)?;
        }
        match (last, &mut node.value) {
            (Segment::Field(name), Value::Map(entries)) => {
                let at = entries.iter().position(|e| &e.key == name)?;
                Some(entries.remove(at).key_line)
            }
            _ => None,
        }
    }

    fn child_mut(&mut self, segment: &Segment) -> Option<&mut Node> {
        match (segment, &mut self.value) {
            (Segment::Field(name), Value::Map(entries)) => entries
                .iter_mut()
                .find(|e| &e.key == name)
                .map(|e| &mut e.value),
            (Segment::Index(i), Value::Seq(items)) => items.get_mut(*i),
            _ => None,
        }
    }

    /// Moves every line down by `offset`, for documents parsed out of a larger file.
    pub fn shift_lines(&mut self, offset: u32) {
        self.line += offset;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.shift_lines(offset)),
            Value::Map(entries) => {
                for e in entries {
                    e.key_line += offset;
                    e.value.shift_lines(offset);
                }
            }
            _ => {}
        }
    }

    /// The same tree as JSON, the form typed decoding reads.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// `[1.2.3.4, 2001:db8::]` reads in YAML as a list whose second item is the
    /// mapping `{"2001:db8:": null}`; Go's YAML reader, which Kubernetes uses, reads
    /// the string `"2001:db8::"`. A list item that is a one-entry mapping with a null
    /// value and a colon in its key can only be such a scalar, so it is read as one.
    fn unsplit_colon_scalar(self) -> Node {
        match self.value {
            Value::Map(mut entries)
                if entries.len() == 1
                    && entries[0].key.contains(':')
                    && entries[0].value.is_null() =>
            {
                let key = entries.pop().map(|e| e.key).unwrap_or_default();
                Node {
                    line: self.line,
                    value: Value::Str(format!("{key}:")),
                }
            }
            value => Node {
                line: self.line,
                value,
            },
        }
    }

    /// A short name for the node's type, for messages ("expected a mapping, found a list").
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

fn line(location: serde_saphyr::Location) -> u32 {
    u32::try_from(location.line()).unwrap_or(u32::MAX)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Node {
            line: line(spanned.referenced),
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::UInt(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item.unsplit_colon_scalar());
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Spanned<Key>, Node>()? {
            entries.push(Entry {
                key: key.value.0,
                key_line: line(key.referenced),
                value,
            });
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key. Kubernetes objects only have string keys, but YAML lets a key be
/// `80` or `true`; those read as their text, as the API server's YAML reader does.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match Value::deserialize(deserializer)? {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".to_owned(),
            Value::Seq(_) | Value::Map(_) => {
                return Err(serde::de::Error::custom(
                    "a mapping key must be a scalar, not a list or mapping",
                ));
            }
        };
        Ok(Key(text))
    }
}
