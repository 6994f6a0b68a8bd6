//! Envoy's string matchers (`exact`, `prefix`, `suffix`, `contains`, `safe_regex`,
//! with `ignore_case`), compiled once at conversion.

use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use regex::Regex;

#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored: Envoy's regexes match the whole value.
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pattern: StringMatch,
    ignore_case: bool,
}

impl Matcher {
    pub fn exact(value: &str) -> Self {
        Self {
            pattern: StringMatch::Exact(value.to_owned()),
            ignore_case: false,
        }
    }

    pub fn from_envoy(m: &StringMatcher) -> Result<Self, String> {
        let ignore_case = m.ignore_case;
        let fold = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        let pattern = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatch::Exact(fold(s)),
            Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(fold(s)),
            Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(fold(s)),
            Some(MatchPattern::Contains(s)) => StringMatch::Contains(fold(s)),
            Some(MatchPattern::SafeRegex(r)) => StringMatch::Regex(anchored(&r.regex)?),
            Some(MatchPattern::Custom(_)) => return Err("custom string matchers".to_owned()),
            None => return Err("a string matcher without a pattern".to_owned()),
        };
        Ok(Self {
            pattern,
            ignore_case,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        if self.ignore_case && !matches!(self.pattern, StringMatch::Regex(_)) {
            return self.matches_folded(&value.to_ascii_lowercase());
        }
        self.matches_folded(value)
    }

    fn matches_folded(&self, value: &str) -> bool {
        match &self.pattern {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Contains(s) => value.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// Compiles `pattern` to match whole values, as Envoy's RE2 matchers do.
pub fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("bad regex {pattern:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;

    fn matcher(pattern: MatchPattern, ignore_case: bool) -> Matcher {
        Matcher::from_envoy(&StringMatcher {
            match_pattern: Some(pattern),
            ignore_case,
        })
        .expect("valid")
    }

    #[test]
    fn each_pattern_matches_as_envoy_documents() {
        assert!(matcher(MatchPattern::Exact("jason".into()), false).matches("jason"));
        assert!(!matcher(MatchPattern::Exact("jason".into()), false).matches("Jason"));
        assert!(matcher(MatchPattern::Exact("jason".into()), true).matches("JASON"));
        assert!(matcher(MatchPattern::Prefix("/api".into()), false).matches("/api/v1"));
        assert!(matcher(MatchPattern::Suffix(".js".into()), false).matches("a.js"));
        assert!(matcher(MatchPattern::Contains("oo".into()), false).matches("food"));
        let regex = MatchPattern::SafeRegex(RegexMatcher {
            regex: "v[0-9]".into(),
            ..Default::default()
        });
        assert!(matcher(regex.clone(), false).matches("v1"));
        assert!(
            !matcher(regex, false).matches("xv1"),
            "regexes are anchored"
        );
    }
}
