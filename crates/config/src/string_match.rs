//! Istio's `StringMatch`: `{exact: ...}`, `{prefix: ...}` or `{regex: ...}` (RE2 syntax).

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};
use std::fmt;

/// A compiled RE2-syntax regular expression; compiled once, when the config is read.
#[derive(Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        // Envoy matches the whole string, so the pattern is anchored at both ends.
        regex::Regex::new(&format!("^(?:{source})$")).map(Pattern)
    }

    /// The expression as the user wrote it.
    pub fn as_str(&self) -> &str {
        let anchored = self.0.as_str();
        &anchored[4..anchored.len() - 2]
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::new(&source)
            .map_err(|e| D::Error::custom(format!("invalid regex {source:?}: {e}")))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum StringMatch {
    /// `{}`: matches any value; for headers, that the header is present.
    Any,
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

impl StringMatch {
    pub fn matches(&self, text: &str) -> bool {
        match self {
            StringMatch::Any => true,
            StringMatch::Exact(s) => text == s,
            StringMatch::Prefix(p) => text.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(text),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<Pattern>,
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        match (wire.exact, wire.prefix, wire.regex) {
            (None, None, None) => Ok(StringMatch::Any),
            (Some(e), None, None) => Ok(StringMatch::Exact(e)),
            (None, Some(p), None) => Ok(StringMatch::Prefix(p)),
            (None, None, Some(r)) => Ok(StringMatch::Regex(r)),
            _ => Err(D::Error::custom(
                "only one of exact, prefix or regex may be set",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<StringMatch, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn reads_each_form() {
        assert_eq!(
            read(r#"{"exact":"a"}"#).ok(),
            Some(StringMatch::Exact("a".into()))
        );
        assert_eq!(
            read(r#"{"prefix":"/a"}"#).ok(),
            Some(StringMatch::Prefix("/a".into()))
        );
        assert_eq!(read("{}").ok(), Some(StringMatch::Any));
        let regex = read(r#"{"regex":"v[0-9]+"}"#).expect("valid regex");
        assert!(regex.matches("v12") && !regex.matches("xv12") && !regex.matches("v1x"));
    }

    #[test]
    fn refuses_two_forms_and_bad_regex() {
        let two = read(r#"{"exact":"a","prefix":"b"}"#).expect_err("two forms");
        assert!(
            two.to_string()
                .contains("only one of exact, prefix or regex")
        );
        let bad = read(r#"{"regex":"(a"}"#).expect_err("bad regex");
        assert!(bad.to_string().contains("invalid regex"));
        assert!(read(r#"{"suffix":"a"}"#).is_err());
    }
}
