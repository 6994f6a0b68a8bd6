//! Syntax of the names, hosts, labels, addresses and ports that Istio objects hold,
//! with the rules and wording of Istio's validation.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use crate::duration::Duration;
use crate::protocol::Protocol;

pub type Check = Result<(), String>;

fn re(pattern: &str) -> Regex {
    // Patterns are literals in this file; a typo fails every test at once.
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in pattern {pattern}: {e}"))
}

static DNS1123_LABEL: LazyLock<Regex> =
    LazyLock::new(|| re("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"));
static WILDCARD_LABEL: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$"));
static LABEL_KEY_NAME: LazyLock<Regex> =
    LazyLock::new(|| re("^(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"));
static LABEL_VALUE: LazyLock<Regex> =
    LazyLock::new(|| re("^(?:(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"));
static HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| re(r"^[!#$%&'*+\-.^_`|~A-Za-z0-9]+$"));
static STRICT_HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| re("^[-A-Za-z0-9]+$"));
static KUBE_NAME: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")
});

/// A DNS-1123 label as Istio checks it: up to 63 characters; upper case allowed.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && DNS1123_LABEL.is_match(s)
}

/// A lower-case DNS-1123 label, as Kubernetes requires of namespaces.
pub fn is_kube_label(s: &str) -> bool {
    s.len() <= 63 && KUBE_NAME.is_match(s) && !s.contains('.')
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn kube_name(name: &str) -> Check {
    if name.len() > 253 || !KUBE_NAME.is_match(name) {
        return Err(format!(
            "invalid name {name:?}: must be lower case letters, digits, '-' and '.', start and end with a letter or digit, at most 253 characters"
        ));
    }
    Ok(())
}

fn dns_preconditions(name: &str) -> Check {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    Ok(())
}

fn dns_labels(domain: &str) -> Check {
    let labels: Vec<&str> = domain.split('.').collect();
    let top = labels.last().copied().unwrap_or_default();
    if !top.is_empty()
        && top
            .trim_start_matches(['+', '-'])
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {top:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        // A trailing dot (`istio.io.`) leaves an empty last label, which is fine.
        if label.is_empty() && i == labels.len() - 1 && i > 0 {
            continue;
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// A fully qualified (or short) DNS name without wildcards: `reviews`, `a.b.com`.
pub fn fqdn(name: &str) -> Check {
    dns_preconditions(name)?;
    dns_labels(name)
}

/// A DNS name whose first label may be a wildcard: `*`, `*.foo.com`, `reviews`.
pub fn wildcard_domain(name: &str) -> Check {
    dns_preconditions(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if first.len() > 63 || !WILDCARD_LABEL.is_match(first) {
        return Err(format!(
            "domain name {name:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => dns_labels(rest),
        None => Ok(()),
    }
}

/// `*` in any position but a leading `*.` label.
pub fn partial_wildcard(host: &str) -> Check {
    if host.contains('*') && host != "*" && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

pub fn is_ip(s: &str) -> bool {
    parse_ip(s).is_some()
}

/// An IP address, accepting an IPv6 zone (`fe80::1%eth0`) as Go's netip does.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let address = match s.split_once('%') {
        Some((addr, zone)) if addr.contains(':') && !zone.is_empty() => addr,
        _ => s,
    };
    address.parse().ok()
}

pub fn ip_address(s: &str) -> Check {
    if is_ip(s) {
        Ok(())
    } else {
        Err(format!("{s} is not a valid IP"))
    }
}

/// An IP address or a CIDR block.
pub fn ip_subnet(s: &str) -> Check {
    match s.split_once('/') {
        Some((address, bits)) => {
            let ok = address
                .parse::<IpAddr>()
                .ok()
                .zip(bits.parse::<u8>().ok())
                .is_some_and(|(ip, bits)| {
                    bits <= if ip.is_ipv4() { 32 } else { 128 } && !bits_has_sign(s)
                });
            if ok {
                Ok(())
            } else {
                Err(format!("{s} is not a valid CIDR block"))
            }
        }
        None => ip_address(s),
    }
}

fn bits_has_sign(s: &str) -> bool {
    s.rsplit('/')
        .next()
        .is_some_and(|b| b.starts_with(['+', '-']))
}

/// A network interface's name as the kernel takes it: 1 to 15 bytes, no
/// space, `/` or `:`, and not `.` or `..`.
pub fn interface_name(name: &str) -> Check {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not an interface name"))
    }
}

pub fn port(number: u32) -> Check {
    if (1..=65535).contains(&number) {
        Ok(())
    } else {
        Err(format!(
            "port number {number} must be in the range 1..65535"
        ))
    }
}

pub fn port_name(name: &str) -> Check {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name}"))
    }
}

/// A protocol Istio's ports may name (case-insensitive), if it is one.
pub fn protocol(name: &str) -> Option<Protocol> {
    Some(Protocol::parse(name)).filter(|p| *p != Protocol::Unknown)
}

/// An empty protocol is allowed (it is then detected); anything else must be known.
pub fn optional_protocol(name: &str) -> Check {
    if name.is_empty() || protocol(name).is_some() {
        Ok(())
    } else {
        Err(format!("unsupported protocol: {name}"))
    }
}

/// Label keys and values as Istio checks them (`pkg/config/labels`).
pub fn labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, value) in labels {
        if let Err(e) = label_key(key) {
            errors.push(e);
        }
        if !LABEL_VALUE.is_match(value) {
            errors.push(format!("invalid tag value: {value:?}"));
        }
    }
    errors
}

fn label_key(key: &str) -> Check {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.len() > 253 {
            return Err(format!("invalid tag key: {key:?} (DNS prefix is too long)"));
        }
        if prefix.split('.').any(|l| !is_dns1123_label(l)) {
            return Err(format!("invalid tag key: {key:?}"));
        }
    }
    if name.len() > 63 {
        return Err(format!("invalid tag key: {key:?} (name is too long)"));
    }
    if !LABEL_KEY_NAME.is_match(name) {
        return Err(format!("invalid tag key: {key:?}"));
    }
    Ok(())
}

/// An HTTP header name (RFC 7230 token).
pub fn header_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name cannot be empty".to_owned());
    }
    if HEADER_NAME.is_match(name) {
        Ok(())
    } else {
        Err(format!("header name {name} is not a valid header name"))
    }
}

/// Letters, digits and `-` only, as Istio requires where a header name is emitted.
pub fn strict_header_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name cannot be empty".to_owned());
    }
    if STRICT_HEADER_NAME.is_match(name) {
        Ok(())
    } else {
        Err(format!("header name {name} is not a valid header name"))
    }
}

/// Durations Istio accepts: at least 1ms, in whole milliseconds.
pub fn duration(d: Duration) -> Check {
    let d = d.as_std();
    if d < std::time::Duration::from_millis(1) {
        return Err("must be a valid duration greater than 1ms".to_owned());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".to_owned());
    }
    Ok(())
}

/// A unix socket path after `unix://`: absolute, or abstract (`@name`).
pub fn unix_address(path: &str) -> Check {
    if path.is_empty() {
        return Err("unix address must not be empty".to_owned());
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path} is not an absolute path to a file"));
    }
    Ok(())
}

/// A regular expression Istio will hand to Envoy (RE2 syntax, at most 1024 bytes).
pub fn regex(pattern: &str, what: &str) -> Check {
    if pattern.len() > 1024 {
        return Err(format!(
            "{what:?}: regex is too large, max length allowed is 1024"
        ));
    }
    regex::Regex::new(pattern).map(drop).map_err(|e| {
        format!("{what:?}: {e}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "reviews",
            "reviews.default.svc.cluster.local",
            "istio.io.",
            "mesh",
            "a-b.c",
        ] {
            assert_eq!(fqdn(ok), Ok(()), "{ok}");
        }
        for bad in ["", "*.foo.com", "a..b", "foo.123", "-a.com", "a_b.com"] {
            assert!(fqdn(bad).is_err(), "{bad}");
        }
        for ok in ["*", "*.foo.com", "*foo.com", "reviews", "123"] {
            assert_eq!(wildcard_domain(ok), Ok(()), "{ok}");
        }
        for bad in ["f*o.com", "a.*.com", "1.2.3.4", "::1"] {
            assert!(wildcard_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_rules() {
        let map =
            |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(labels(&map("app", "reviews")).is_empty());
        assert!(labels(&map("topology.istio.io/subzone", "")).is_empty());
        assert_eq!(
            labels(&map("a b", "x")),
            vec![r#"invalid tag key: "a b""#.to_owned()]
        );
        assert_eq!(
            labels(&map("app", "-x")),
            vec![r#"invalid tag value: "-x""#.to_owned()]
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(ip_subnet("10.0.0.0/8"), Ok(()));
        assert_eq!(ip_subnet("2001:db8::/32"), Ok(()));
        assert!(ip_subnet("1.2.3.4/99").is_err());
        assert!(ip_subnet("1.2.3/8").is_err());
        assert_eq!(ip_address("fe80::1%eth0"), Ok(()));
        assert!(ip_address("1.2.3.04").is_err());
    }

    #[test]
    fn durations() {
        let d = |s: &str| {
            s.parse::<Duration>()
                .map_err(|e| e.to_string())
                .and_then(duration)
        };
        assert_eq!(d("1ms"), Ok(()));
        assert!(d("0s").is_err());
        assert!(d("1500us").is_err());
    }
}
