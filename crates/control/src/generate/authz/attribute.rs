//! What each attribute of a rule, a `source` or `operation` field or a `when`
//! key, becomes in Envoy's RBAC: a permission (about the request or the
//! connection) or a principal (about the peer or the request's credentials).
//!
//! Most attributes translate value by value, and the rule model ORs the
//! results; the JWT and Envoy-metadata ones (Istio's "extended" generators)
//! translate all values into one matcher, so an error drops them all at once.

use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, permission, principal};
use envoy_types::pb::envoy::r#type::matcher::v3::{MetadataMatcher, StringMatcher};

use super::matcher::{self, InvalidCidr};

/// Where jwt_authn leaves a verified token's payload: dynamic metadata of its
/// filter, under `payload` (Istio's `payload_in_metadata`).
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const JWT_PAYLOAD: &str = "payload";

/// Why a rule, or one value of it, has no Envoy form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RuleError {
    #[error("unknown attribute {0}")]
    UnknownAttribute(String),
    #[error("{0:?} is HTTP only")]
    HttpOnly(String),
    #[error(transparent)]
    Cidr(#[from] InvalidCidr),
    #[error("invalid port {0:?}: must be a number up to 65535")]
    Port(String),
    #[error("invalid key {0:?}: expecting <attribute>[<name>]")]
    Key(String),
}

/// What an attribute's values become.
pub(crate) enum Translation<T> {
    /// One result per value, to be ORed.
    EachValue(Vec<Result<T, RuleError>>),
    /// One matcher for all the values.
    AllValues(Result<T, RuleError>),
}

/// An attribute of one side of a rule.
pub(crate) trait Attribute {
    type Output;
    /// The attribute's name in errors (Istio's: `:authority` for `hosts`).
    fn key(&self) -> &str;
    /// Whether only an HTTP chain can match it.
    fn http_only(&self) -> bool;
    fn translate(&self, values: &[String]) -> Translation<Self::Output>;
}

/// About the request or connection (`to.operation`, `destination.*`,
/// `connection.sni`, `experimental.envoy.filters.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PermissionAttribute {
    Hosts,
    Methods,
    Paths,
    /// `ports` and `destination.port`.
    Ports,
    DestinationIp,
    Sni,
    /// `experimental.envoy.filters.<filter>[<key>]`, the whole key.
    EnvoyFilter(String),
}

/// About the peer or the request's credentials (`from.source`, `source.*`,
/// `remote.ip`, `request.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PrincipalAttribute {
    /// `principals` and `source.principal`.
    Principals,
    /// `requestPrincipals` and `request.auth.principal`.
    RequestPrincipals,
    /// `serviceAccounts` and `source.serviceAccount`; a bare account is in the
    /// policy's namespace.
    ServiceAccounts {
        policy_namespace: String,
    },
    /// `trustDomains` and `source.trustDomain`.
    TrustDomains,
    /// `namespaces` and `source.namespace`.
    Namespaces,
    /// `remoteIpBlocks` and `remote.ip`: the client as XFF or PROXY protocol
    /// tell it.
    RemoteIp,
    /// `ipBlocks` and `source.ip`: the connection's peer.
    SourceIp,
    /// `request.headers[<name>]`, the whole key.
    RequestHeader(String),
    Audiences,
    Presenter,
    /// `request.auth.claims[<claim>]...`, the whole key.
    Claims(String),
}

/// A `when` key, resolved to its side.
pub(crate) enum WhenAttribute {
    Permission(PermissionAttribute),
    Principal(PrincipalAttribute),
}

impl WhenAttribute {
    /// The attribute a `when` key names. A key with a known prefix but a
    /// malformed rest (`request.headers` without brackets) resolves, and fails
    /// when translated, as in Istio.
    pub(crate) fn parse(key: &str, policy_namespace: &str) -> Result<Self, RuleError> {
        use PermissionAttribute as P;
        use PrincipalAttribute as S;
        let attribute = match key {
            "destination.ip" => Self::Permission(P::DestinationIp),
            "destination.port" => Self::Permission(P::Ports),
            "connection.sni" => Self::Permission(P::Sni),
            k if k.starts_with("experimental.envoy.filters.") => {
                Self::Permission(P::EnvoyFilter(k.to_owned()))
            }
            "source.ip" => Self::Principal(S::SourceIp),
            "remote.ip" => Self::Principal(S::RemoteIp),
            "source.namespace" => Self::Principal(S::Namespaces),
            "source.trustDomain" => Self::Principal(S::TrustDomains),
            "source.serviceAccount" => Self::Principal(S::ServiceAccounts {
                policy_namespace: policy_namespace.to_owned(),
            }),
            "source.principal" => Self::Principal(S::Principals),
            "request.auth.principal" => Self::Principal(S::RequestPrincipals),
            "request.auth.audiences" => Self::Principal(S::Audiences),
            "request.auth.presenter" => Self::Principal(S::Presenter),
            k if k.starts_with("request.headers") => {
                Self::Principal(S::RequestHeader(k.to_owned()))
            }
            k if k.starts_with("request.auth.claims") => Self::Principal(S::Claims(k.to_owned())),
            other => return Err(RuleError::UnknownAttribute(other.to_owned())),
        };
        Ok(attribute)
    }
}

impl Attribute for PermissionAttribute {
    type Output = Permission;

    fn key(&self) -> &str {
        match self {
            Self::Hosts => ":authority",
            Self::Methods => ":method",
            Self::Paths => "path-matcher",
            Self::Ports => "destination.port",
            Self::DestinationIp => "destination.ip",
            Self::Sni => "connection.sni",
            Self::EnvoyFilter(key) => key,
        }
    }

    fn http_only(&self) -> bool {
        matches!(self, Self::Hosts | Self::Methods | Self::Paths)
    }

    fn translate(&self, values: &[String]) -> Translation<Permission> {
        let each = |f: &dyn Fn(&str) -> Result<permission::Rule, RuleError>| {
            Translation::EachValue(
                values
                    .iter()
                    .map(|v| f(v).map(|rule| Permission { rule: Some(rule) }))
                    .collect(),
            )
        };
        match self {
            Self::Hosts => each(&|v| Ok(permission::Rule::Header(matcher::host(":authority", v)))),
            Self::Methods => each(&|v| Ok(permission::Rule::Header(matcher::header(":method", v)))),
            Self::Paths => each(&|v| {
                Ok(if matcher::is_path_template(v) {
                    permission::Rule::UriTemplate(matcher::path_template(v))
                } else {
                    permission::Rule::UrlPath(matcher::path(v))
                })
            }),
            Self::Ports => each(&|v| port(v).map(permission::Rule::DestinationPort)),
            Self::DestinationIp => {
                each(&|v| Ok(permission::Rule::DestinationIp(matcher::cidr(v)?)))
            }
            Self::Sni => each(&|v| Ok(permission::Rule::RequestedServerName(matcher::string(v)))),
            Self::EnvoyFilter(key) => {
                Translation::AllValues(envoy_filter(key, values).map(permission_metadata))
            }
        }
    }
}

impl Attribute for PrincipalAttribute {
    type Output = Principal;

    fn key(&self) -> &str {
        match self {
            Self::Principals => "source.principal",
            Self::RequestPrincipals => "request.auth.principal",
            Self::ServiceAccounts { .. } => "source.serviceAccount",
            Self::TrustDomains => "source.trustDomain",
            Self::Namespaces => "source.namespace",
            Self::RemoteIp => "remote.ip",
            Self::SourceIp => "source.ip",
            Self::Audiences => "request.auth.audiences",
            Self::Presenter => "request.auth.presenter",
            Self::RequestHeader(key) | Self::Claims(key) => key,
        }
    }

    fn http_only(&self) -> bool {
        matches!(
            self,
            Self::RequestPrincipals
                | Self::RequestHeader(_)
                | Self::Audiences
                | Self::Presenter
                | Self::Claims(_)
        )
    }

    fn translate(&self, values: &[String]) -> Translation<Principal> {
        let each = |f: &dyn Fn(&str) -> Result<Identifier, RuleError>| {
            Translation::EachValue(
                values
                    .iter()
                    .map(|v| {
                        f(v).map(|id| Principal {
                            identifier: Some(id),
                        })
                    })
                    .collect(),
            )
        };
        let jwt = |claims: Vec<String>| {
            let path = std::iter::once(JWT_PAYLOAD.to_owned()).chain(claims);
            let value = matcher::list_or_value(matcher::any_string(values));
            principal_metadata(matcher::metadata(JWT_FILTER, path, value))
        };
        match self {
            Self::Principals => each(&|v| Ok(authenticated(matcher::with_prefix(v, "spiffe://")))),
            Self::ServiceAccounts { policy_namespace } => each(&|v| {
                Ok(authenticated(matcher::regex(service_account_regex(
                    policy_namespace,
                    v,
                ))))
            }),
            Self::TrustDomains => each(&|v| Ok(authenticated(trust_domain(v)))),
            Self::Namespaces => each(&|v| Ok(authenticated(namespace(v)))),
            Self::RemoteIp => each(&|v| Ok(Identifier::RemoteIp(matcher::cidr(v)?))),
            Self::SourceIp => each(&|v| Ok(Identifier::DirectRemoteIp(matcher::cidr(v)?))),
            Self::RequestHeader(key) => each(&|v| {
                let name = key
                    .strip_prefix("request.headers")
                    .and_then(in_brackets)
                    .ok_or_else(|| RuleError::Key(key.clone()))?;
                Ok(Identifier::Header(matcher::header(name, v)))
            }),
            Self::RequestPrincipals => Translation::AllValues(Ok(request_principals(values))),
            Self::Audiences => Translation::AllValues(Ok(jwt(vec!["aud".to_owned()]))),
            Self::Presenter => Translation::AllValues(Ok(jwt(vec!["azp".to_owned()]))),
            Self::Claims(key) => Translation::AllValues(
                key.strip_prefix("request.auth.claims")
                    .and_then(claim_path)
                    .map(jwt)
                    .ok_or_else(|| RuleError::Key(key.clone())),
            ),
        }
    }
}

/// A port as Go's `strconv.ParseUint(v, 10, 32)` reads it, up to 65535.
fn port(value: &str) -> Result<u32, RuleError> {
    Some(value)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|p| *p <= 65535)
        .ok_or_else(|| RuleError::Port(value.to_owned()))
}

/// The text between the brackets of `[<name>]`.
fn in_brackets(text: &str) -> Option<&str> {
    text.strip_prefix('[')?.strip_suffix(']')
}

/// `[a][b]...` as `[a, b, ...]`; text that is not a clean run of bracket groups
/// is one claim, its outer brackets stripped, as Istio reads it.
fn claim_path(text: &str) -> Option<Vec<String>> {
    let mut claims = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let group = rest
            .strip_prefix('[')
            .and_then(|r| r.find(['[', ']']).map(|end| (r, end)))
            .filter(|(r, end)| r[*end..].starts_with(']'));
        let Some((inner, end)) = group else {
            return in_brackets(text).map(|claim| vec![claim.to_owned()]);
        };
        claims.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    Some(claims)
}

/// The metadata matcher of `experimental.envoy.filters.<filter>[<key>]`: one
/// path segment, `<key>`; a value written `[v]` matches inside a list.
fn envoy_filter(key: &str, values: &[String]) -> Result<MetadataMatcher, RuleError> {
    let name = key.strip_prefix("experimental.").unwrap_or(key);
    let name = name.strip_suffix(']').unwrap_or(name);
    let (filter, path) = name
        .split_once('[')
        .ok_or_else(|| RuleError::Key(key.to_owned()))?;
    let matchers = values
        .iter()
        .map(|v| {
            if v.starts_with('[') && v.ends_with(']') {
                let inner = v.trim_matches(['[', ']']);
                matcher::list_of(matcher::string_value(matcher::string(inner)))
            } else {
                matcher::string_value(matcher::string(v))
            }
        })
        .collect();
    Ok(matcher::metadata(
        filter,
        [path.to_owned()],
        matcher::any_of(matchers),
    ))
}

/// The JWT issuer and subject a request principal (`<iss>/<sub>`, split at
/// the last `/` since issuers are often URLs) asks for, each matched on its own
/// in jwt_authn's payload.
fn request_principals(values: &[String]) -> Principal {
    let mut any: Vec<Principal> = values
        .iter()
        .map(|value| {
            let (iss, sub) = request_principal(value);
            let claim = |name: &str, m: StringMatcher| {
                principal_metadata(matcher::metadata(
                    JWT_FILTER,
                    [JWT_PAYLOAD.to_owned(), name.to_owned()],
                    matcher::string_value(m),
                ))
            };
            principal(Identifier::AndIds(principal::Set {
                ids: vec![claim("iss", iss), claim("sub", sub)],
            }))
        })
        .collect();
    if any.len() == 1
        && let Some(only) = any.pop()
    {
        return only;
    }
    principal(Identifier::OrIds(principal::Set { ids: any }))
}

/// The issuer and subject matchers of one request principal.
fn request_principal(value: &str) -> (StringMatcher, StringMatcher) {
    let split = value.rfind('/').map(|i| (&value[..i], &value[i + 1..]));
    if value == "*" {
        return (matcher::any_value(), matcher::any_value());
    }
    if let Some(rest) = value.strip_prefix('*') {
        return match split {
            Some(("*", sub)) => (matcher::any_value(), matcher::exact(sub, false)),
            Some((iss, sub)) => (
                matcher::suffix(iss.strip_prefix('*').unwrap_or(iss), false),
                matcher::exact(sub, false),
            ),
            None => (matcher::any_value(), matcher::suffix(rest, false)),
        };
    }
    if let Some(rest) = value.strip_suffix('*') {
        return match split {
            Some((iss, "*")) => (matcher::exact(iss, false), matcher::any_value()),
            Some((iss, sub)) => (
                matcher::exact(iss, false),
                matcher::prefix(sub.strip_suffix('*').unwrap_or(sub), false),
            ),
            None => (matcher::prefix(rest, false), matcher::any_value()),
        };
    }
    match split {
        Some((iss, sub)) => (matcher::exact(iss, false), matcher::exact(sub, false)),
        // No subject: only a token with an empty `sub` matches.
        None => (matcher::exact(value, false), matcher::exact("", false)),
    }
}

/// `<sa>` (in the policy's namespace) or `<ns>/<sa>`, anywhere in a SPIFFE id
/// whose path has `/ns/<ns>/` and then `sa/<sa>` at the end or before `/`.
fn service_account_regex(policy_namespace: &str, value: &str) -> String {
    let (namespace, account) = value.split_once('/').unwrap_or((policy_namespace, value));
    format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        matcher::quote_meta(namespace),
        matcher::quote_meta(account)
    )
}

/// A namespace pattern, `*` standing for anything at any place.
fn namespace(value: &str) -> StringMatcher {
    let pattern: Vec<String> = value.split('*').map(matcher::quote_meta).collect();
    matcher::regex(format!(".*/ns/{}/.*", pattern.join(".*")))
}

/// A trust-domain pattern: `*` any, `td` exactly, one `*` inside a label.
fn trust_domain(value: &str) -> StringMatcher {
    if value == "*" {
        return matcher::prefix("spiffe://", false);
    }
    match value.split_once('*') {
        None => matcher::prefix(&format!("spiffe://{value}/"), false),
        Some((before, after)) => matcher::regex(format!(
            "spiffe://{}[^/]*{}/.*",
            matcher::quote_meta(before),
            matcher::quote_meta(after)
        )),
    }
}

/// The peer's certificate identity. Waypoints will match the peer principal
/// from filter state instead, as Istio's do.
fn authenticated(name: StringMatcher) -> Identifier {
    Identifier::Authenticated(Authenticated {
        principal_name: Some(name),
    })
}

fn principal(identifier: Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

// Envoy deprecated `metadata` for `sourced_metadata`; Istio still writes it, and
// so do we, so configs read the same.
#[allow(deprecated)]
fn principal_metadata(m: MetadataMatcher) -> Principal {
    principal(Identifier::Metadata(m))
}

#[allow(deprecated)]
fn permission_metadata(m: MetadataMatcher) -> Permission {
    Permission {
        rule: Some(permission::Rule::Metadata(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_as_go_does() {
        assert_eq!(port("80"), Ok(80));
        assert_eq!(port("080"), Ok(80));
        assert_eq!(port("65535"), Ok(65535));
        for bad in ["", "65536", "-1", "+1", "http", "99999999999"] {
            assert_eq!(port(bad), Err(RuleError::Port(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn request_principal_forms() {
        use matcher::{any_value as any, exact, prefix, suffix};
        let cases = [
            ("*", (any(), any())),
            ("*/sub", (any(), exact("sub", false))),
            (
                "*.example.com/sub",
                (suffix(".example.com", false), exact("sub", false)),
            ),
            ("*sub", (any(), suffix("sub", false))),
            ("iss/*", (exact("iss", false), any())),
            ("iss/pre*", (exact("iss", false), prefix("pre", false))),
            ("iss*", (prefix("iss", false), any())),
            // Issuers are URLs: the subject is after the last `/`.
            (
                "https://example.com/a/sub",
                (exact("https://example.com/a", false), exact("sub", false)),
            ),
            ("iss", (exact("iss", false), exact("", false))),
        ];
        for (value, expected) in cases {
            assert_eq!(request_principal(value), expected, "{value}");
        }
    }

    #[test]
    fn claim_paths() {
        let path = |t: &str| claim_path(t);
        let owned = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(path("[iss]"), owned(&["iss"]));
        assert_eq!(path("[a][b][c]"), owned(&["a", "b", "c"]));
        // Not a clean run of groups: one claim, outer brackets stripped.
        assert_eq!(path("[a[b]]"), owned(&["a[b]"]));
        assert_eq!(path("[a]x[b]"), owned(&["a]x[b"]));
        assert_eq!(path("iss"), None);
        assert_eq!(path("[iss"), None);
    }

    #[test]
    fn when_keys_resolve_to_their_side() {
        let side = |key: &str| match WhenAttribute::parse(key, "ns") {
            Ok(WhenAttribute::Permission(_)) => "permission",
            Ok(WhenAttribute::Principal(_)) => "principal",
            Err(_) => "unknown",
        };
        for key in [
            "destination.ip",
            "destination.port",
            "connection.sni",
            "experimental.envoy.filters.a.b[c]",
        ] {
            assert_eq!(side(key), "permission", "{key}");
        }
        for key in [
            "source.ip",
            "remote.ip",
            "source.namespace",
            "source.principal",
            "source.serviceAccount",
            "source.trustDomain",
            "request.headers[x]",
            "request.auth.principal",
            "request.auth.audiences",
            "request.auth.presenter",
            "request.auth.claims[iss]",
        ] {
            assert_eq!(side(key), "principal", "{key}");
        }
        for key in ["destination.namespace", "source.user", "request.path", ""] {
            assert_eq!(side(key), "unknown", "{key}");
        }
    }
}
