//! Envoy matchers in the shapes Istio's authorization builder writes them.
//!
//! Every user value is one of four patterns: exact (`abc`), prefix (`abc*`),
//! suffix (`*abc`) or presence (`*`). Which Envoy matcher each becomes depends on
//! the field: a plain string matcher, one with the `spiffe://` prefix, a header
//! matcher, or a case-insensitive host matcher. `*` is tested first, then a
//! leading `*`, then a trailing one, so `*abc*` is a suffix match for `abc*`.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::{PathSegment, path_segment};
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};

use crate::generate::wire;

/// A value that is neither an IP address nor a CIDR range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an IP address or a CIDR range")]
pub(crate) struct InvalidCidr(pub(crate) String);

fn string_matcher(pattern: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        ignore_case,
        match_pattern: Some(pattern),
    }
}

pub(crate) fn exact(value: &str, ignore_case: bool) -> StringMatcher {
    string_matcher(MatchPattern::Exact(value.to_owned()), ignore_case)
}

pub(crate) fn prefix(value: &str, ignore_case: bool) -> StringMatcher {
    string_matcher(MatchPattern::Prefix(value.to_owned()), ignore_case)
}

pub(crate) fn suffix(value: &str, ignore_case: bool) -> StringMatcher {
    string_matcher(MatchPattern::Suffix(value.to_owned()), ignore_case)
}

pub(crate) fn regex(regex: String) -> StringMatcher {
    string_matcher(
        MatchPattern::SafeRegex(RegexMatcher {
            regex,
            ..Default::default()
        }),
        false,
    )
}

/// `.+`: any non-empty value. Envoy refuses an empty prefix or suffix, so `*`
/// can be neither.
pub(crate) fn any_value() -> StringMatcher {
    regex(".+".to_owned())
}

/// The plain flavour (paths, SNI, JWT claims, Envoy metadata).
pub(crate) fn string(value: &str) -> StringMatcher {
    with_prefix(value, "")
}

/// The flavour with `prefix` put in front of the value (`spiffe://` for
/// principals); `*` stays "any value", and a suffix match becomes a regex so the
/// prefix still anchors it.
pub(crate) fn with_prefix(value: &str, prefix_text: &str) -> StringMatcher {
    if value == "*" {
        return any_value();
    }
    if let Some(rest) = value.strip_prefix('*') {
        if prefix_text.is_empty() {
            return suffix(rest, false);
        }
        return regex(format!("{prefix_text}.*{}", quote_meta(rest)));
    }
    if let Some(rest) = value.strip_suffix('*') {
        return prefix(&format!("{prefix_text}{rest}"), false);
    }
    exact(&format!("{prefix_text}{value}"), false)
}

/// A header matcher for `name` (`:method`, `request.headers[...]`): `*` means
/// present, values are case-sensitive.
pub(crate) fn header(name: &str, value: &str) -> HeaderMatcher {
    header_matcher(name, value, false)
}

/// The `:authority` matcher of `hosts`: as [`header`], ignoring case.
pub(crate) fn host(name: &str, value: &str) -> HeaderMatcher {
    header_matcher(name, value, true)
}

fn header_matcher(name: &str, value: &str, ignore_case: bool) -> HeaderMatcher {
    let specifier = if value == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else if let Some(rest) = value.strip_prefix('*') {
        HeaderMatchSpecifier::StringMatch(suffix(rest, ignore_case))
    } else if let Some(rest) = value.strip_suffix('*') {
        HeaderMatchSpecifier::StringMatch(prefix(rest, ignore_case))
    } else {
        HeaderMatchSpecifier::StringMatch(exact(value, ignore_case))
    };
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// A path without template operators: the plain flavour on the path (Envoy
/// leaves the query string out).
pub(crate) fn path(value: &str) -> PathMatcher {
    PathMatcher {
        rule: Some(path_matcher::Rule::Path(string(value))),
    }
}

/// Whether a path uses `{*}` (one segment) or `{**}` (any number of segments).
pub(crate) fn is_path_template(value: &str) -> bool {
    value.contains("{*}") || value.contains("{**}")
}

/// The `uri_template` extension for a templated path: `{**}` becomes `**` and
/// `{*}` becomes `*`, in one left-to-right pass.
pub(crate) fn path_template(value: &str) -> TypedExtensionConfig {
    let mut template = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{**}") {
            template.push_str("**");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("{*}") {
            template.push('*');
            rest = after;
        } else {
            template.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    wire::extension(
        "uri-template",
        UriTemplateMatchConfig {
            path_template: template,
        },
    )
}

pub(crate) fn string_value(matcher: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(matcher)),
    }
}

/// Matches a list that holds a value `value` matches.
pub(crate) fn list_of(value: ValueMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(value))),
            },
        ))),
    }
}

/// Any of `matchers`; a single one stands alone.
pub(crate) fn any_of(mut matchers: Vec<ValueMatcher>) -> ValueMatcher {
    if matchers.len() == 1
        && let Some(only) = matchers.pop()
    {
        return only;
    }
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: matchers,
        })),
    }
}

/// The plain flavour of each value, any of them.
pub(crate) fn any_string(values: &[String]) -> ValueMatcher {
    any_of(values.iter().map(|v| string_value(string(v))).collect())
}

/// Dynamic metadata of `filter` at `path`, matched by `value`.
pub(crate) fn metadata(
    filter: &str,
    path: impl IntoIterator<Item = String>,
    value: ValueMatcher,
) -> MetadataMatcher {
    MetadataMatcher {
        filter: filter.to_owned(),
        path: path
            .into_iter()
            .map(|key| PathSegment {
                segment: Some(path_segment::Segment::Key(key)),
            })
            .collect(),
        value: Some(value),
        ..Default::default()
    }
}

/// A value `value` matches, alone or inside a list: JWT claims may be either.
pub(crate) fn list_or_value(value: ValueMatcher) -> ValueMatcher {
    any_of(vec![list_of(value.clone()), value])
}

/// An IP address (a /32 or /128) or a CIDR range, the address kept as written
/// (`5.6.7.8/16` stays `5.6.7.8`), as Go's `netip.ParsePrefix` reads it.
pub(crate) fn cidr(value: &str) -> Result<CidrRange, InvalidCidr> {
    let invalid = || InvalidCidr(value.to_owned());
    let (address, bits) = match value.split_once('/') {
        Some((address, bits)) => (address, Some(bits)),
        None => (value, None),
    };
    let ip: IpAddr = address.parse().map_err(|_| invalid())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match bits {
        None => max,
        // Decimal digits only, no sign and no leading zero.
        Some(bits)
            if !bits.is_empty()
                && bits.bytes().all(|b| b.is_ascii_digit())
                && (bits == "0" || !bits.starts_with('0')) =>
        {
            bits.parse::<u32>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(invalid)?
        }
        Some(_) => return Err(invalid()),
    };
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(wire::u32_value(len)),
    })
}

/// `text` with the characters RE2 treats as special escaped, as Go's
/// `regexp.QuoteMeta` does (and no others, so the regex reads the same).
pub(crate) fn quote_meta(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_flavour() {
        assert_eq!(string("*"), any_value());
        assert_eq!(string("*abc"), suffix("abc", false));
        assert_eq!(string("abc*"), prefix("abc", false));
        assert_eq!(string("abc"), exact("abc", false));
        // The leading star wins.
        assert_eq!(string("*abc*"), suffix("abc*", false));
    }

    #[test]
    fn spiffe_flavour() {
        let spiffe = |v: &str| with_prefix(v, "spiffe://");
        assert_eq!(spiffe("*"), any_value());
        assert_eq!(
            spiffe("*-suffix[0]"),
            regex(r"spiffe://.*-suffix\[0\]".to_owned())
        );
        assert_eq!(spiffe("td/ns/*"), prefix("spiffe://td/ns/", false));
        assert_eq!(
            spiffe("td/ns/a/sa/b"),
            exact("spiffe://td/ns/a/sa/b", false)
        );
    }

    #[test]
    fn header_and_host_flavours() {
        let specifier = |m: HeaderMatcher| {
            assert_eq!(m.name, ":x");
            m.header_match_specifier
        };
        assert_eq!(
            specifier(header(":x", "*")),
            Some(HeaderMatchSpecifier::PresentMatch(true))
        );
        assert_eq!(
            specifier(header(":x", "*T")),
            Some(HeaderMatchSpecifier::StringMatch(suffix("T", false)))
        );
        assert_eq!(
            specifier(header(":x", "G*")),
            Some(HeaderMatchSpecifier::StringMatch(prefix("G", false)))
        );
        assert_eq!(
            specifier(header(":x", "GET")),
            Some(HeaderMatchSpecifier::StringMatch(exact("GET", false)))
        );
        assert_eq!(
            specifier(host(":x", "*")),
            Some(HeaderMatchSpecifier::PresentMatch(true))
        );
        assert_eq!(
            specifier(host(":x", "*.example.com")),
            Some(HeaderMatchSpecifier::StringMatch(suffix(
                ".example.com",
                true
            )))
        );
        assert_eq!(
            specifier(host(":x", "example.*")),
            Some(HeaderMatchSpecifier::StringMatch(prefix("example.", true)))
        );
        assert_eq!(
            specifier(host(":x", "Example.com")),
            Some(HeaderMatchSpecifier::StringMatch(exact(
                "Example.com",
                true
            )))
        );
    }

    #[test]
    fn path_templates() {
        use envoy_types::pb::google::protobuf::Any;
        use prost::Message;
        let template = |v: &str| {
            let config = path_template(v);
            assert_eq!(config.name, "uri-template");
            let any: Any = config.typed_config.expect("typed config");
            assert_eq!(
                any.type_url,
                "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
            );
            UriTemplateMatchConfig::decode(any.value.as_slice())
                .expect("decodes")
                .path_template
        };
        assert!(is_path_template("/a/{*}"));
        assert!(is_path_template("/{**}/b"));
        assert!(!is_path_template("/a/*"));
        assert_eq!(template("/path/{*}/x/{**}"), "/path/*/x/**");
        assert_eq!(template("/{**}/päth"), "/**/päth");
    }

    #[test]
    fn cidrs_keep_the_address_as_written() {
        let range = |v: &str| cidr(v).map(|c| (c.address_prefix, c.prefix_len.map(|l| l.value)));
        assert_eq!(range("1.2.3.4"), Ok(("1.2.3.4".to_owned(), Some(32))));
        assert_eq!(range("5.6.7.8/16"), Ok(("5.6.7.8".to_owned(), Some(16))));
        assert_eq!(
            range("2001:db8::1"),
            Ok(("2001:db8::1".to_owned(), Some(128)))
        );
        assert_eq!(
            range("2001:DB8::/32"),
            Ok(("2001:db8::".to_owned(), Some(32)))
        );
        assert_eq!(range("0.0.0.0/0"), Ok(("0.0.0.0".to_owned(), Some(0))));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "::/129",
            "1.2.3.4/",
            "1.2.3.4/08",
            "1.2.3.4/+8",
            "host",
        ] {
            assert_eq!(cidr(bad), Err(InvalidCidr(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn quotes_what_re2_treats_as_special() {
        assert_eq!(quote_meta("a.b[0]-c"), r"a\.b\[0\]-c");
        assert_eq!(quote_meta(r"x\+*?()|{}^$"), r"x\\\+\*\?\(\)\|\{\}\^\$");
    }

    #[test]
    fn value_matchers() {
        let one = string_value(exact("a", false));
        assert_eq!(any_of(vec![one.clone()]), one);
        let both = any_string(&["a".to_owned(), "b*".to_owned()]);
        assert_eq!(
            both,
            ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                    value_matchers: vec![one.clone(), string_value(prefix("b", false))],
                })),
            }
        );
        assert_eq!(
            list_or_value(one.clone()),
            ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                    value_matchers: vec![list_of(one.clone()), one],
                })),
            }
        );
    }
}
