//! Envoy's RBAC filters (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`),
//! as Istio generates them from AuthorizationPolicies: an enforced engine
//! (`rules`) and a shadow one (`shadow_rules`, Istio's dry-run), each an action
//! and named policies of permissions (what is asked) and principals (who asks).
//! Converted once here; [`crate::authz`] evaluates them. Matchers this proxy
//! cannot evaluate are refused, never read as "matches nothing".

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::rbac::v3 as envoy;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, ValueMatcher, filter_state_matcher, list_matcher, path_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use ipnet::IpNet;
use prost::Message;

use super::route::HeaderMatch;
use super::string_match::Matcher;

pub const HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const NETWORK_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const URI_TEMPLATE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

/// One RBAC filter.
#[derive(Debug)]
pub struct RbacFilter {
    /// What decides (Istio's enforced policies); `None`: nothing enforced.
    pub enforced: Option<Engine>,
    /// What is only evaluated and reported (Istio's dry-run policies).
    pub shadow: Option<Engine>,
    /// Prefixes the shadow result's metadata keys and stats
    /// (`istio_dry_run_allow_`, `istio_ext_authz_`).
    pub shadow_prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineAction {
    /// Allowed if a policy matches.
    Allow,
    /// Denied if a policy matches.
    Deny,
    /// Never denies; a match marks the request for the access log (AUDIT).
    Log,
}

#[derive(Debug)]
pub struct Engine {
    pub action: EngineAction,
    /// In name order: Envoy keeps policies in an ordered map and reports the
    /// first that matches.
    pub policies: Vec<Policy>,
}

/// Matches when one of its permissions and one of its principals match.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

#[derive(Debug)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    /// The path without its query.
    UrlPath(Matcher),
    UriTemplate(UriTemplate),
    DestinationIp(IpNet),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange(u16, u16),
    Metadata(MetadataMatch),
    RequestedServerName(Matcher),
}

#[derive(Debug)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A peer that presented a certificate (`None`), or whose identity (URI
    /// SAN) matches.
    Authenticated(Option<Matcher>),
    /// The address the connection came from.
    DirectRemoteIp(IpNet),
    /// The client's address as forwarded (`x-forwarded-for`, trusted hops).
    RemoteIp(IpNet),
    Header(HeaderMatch),
    UrlPath(Matcher),
    Metadata(MetadataMatch),
    FilterState {
        key: String,
        matcher: Matcher,
    },
}

/// A value in the request's dynamic metadata (`envoy.filters.http.jwt_authn`'s
/// `payload`, ...) at `path`.
#[derive(Debug)]
pub struct MetadataMatch {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatch,
    pub invert: bool,
}

#[derive(Debug)]
pub enum ValueMatch {
    Null,
    String(Matcher),
    Bool(bool),
    Present(bool),
    /// A list with a member that matches.
    ListOneOf(Box<ValueMatch>),
    Or(Vec<ValueMatch>),
}

/// A path template of literal segments, `*` (exactly one segment) and `**`
/// (any number, last of its kind), as Istio writes `{*}` and `{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    pub segments: Vec<TemplateSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSegment {
    Literal(String),
    One,
    Rest,
}

pub fn http_filter(any: &Any) -> Result<RbacFilter, String> {
    let rbac = HttpRbac::decode(any.value.as_slice()).map_err(|e| format!("RBAC: {e}"))?;
    if rbac.matcher.is_some() || rbac.shadow_matcher.is_some() {
        return Err("RBAC matchers (the matcher API) are not supported".to_owned());
    }
    filter(
        rbac.rules.as_ref(),
        rbac.shadow_rules.as_ref(),
        rbac.shadow_rules_stat_prefix,
    )
}

pub fn network_filter(any: &Any) -> Result<RbacFilter, String> {
    let rbac = NetworkRbac::decode(any.value.as_slice()).map_err(|e| format!("RBAC: {e}"))?;
    if rbac.matcher.is_some() || rbac.shadow_matcher.is_some() {
        return Err("RBAC matchers (the matcher API) are not supported".to_owned());
    }
    filter(
        rbac.rules.as_ref(),
        rbac.shadow_rules.as_ref(),
        rbac.shadow_rules_stat_prefix,
    )
}

fn filter(
    rules: Option<&envoy::Rbac>,
    shadow: Option<&envoy::Rbac>,
    shadow_prefix: String,
) -> Result<RbacFilter, String> {
    Ok(RbacFilter {
        enforced: rules.map(engine).transpose()?,
        shadow: shadow.map(engine).transpose()?,
        shadow_prefix,
    })
}

fn engine(rbac: &envoy::Rbac) -> Result<Engine, String> {
    let action = match envoy::rbac::Action::try_from(rbac.action) {
        Ok(envoy::rbac::Action::Allow) => EngineAction::Allow,
        Ok(envoy::rbac::Action::Deny) => EngineAction::Deny,
        Ok(envoy::rbac::Action::Log) => EngineAction::Log,
        Err(_) => return Err(format!("unknown RBAC action {}", rbac.action)),
    };
    let mut names: Vec<&String> = rbac.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .map(|name| policy(name, &rbac.policies[name.as_str()]))
        .collect::<Result<_, String>>()?;
    Ok(Engine { action, policies })
}

fn policy(name: &str, p: &envoy::Policy) -> Result<Policy, String> {
    let context = |e: String| format!("policy {name:?}: {e}");
    if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
        return Err(context("CEL conditions are not supported".to_owned()));
    }
    Ok(Policy {
        name: Arc::from(name),
        permissions: p
            .permissions
            .iter()
            .map(permission)
            .collect::<Result<_, _>>()
            .map_err(context)?,
        principals: p
            .principals
            .iter()
            .map(principal)
            .collect::<Result<_, _>>()
            .map_err(context)?,
    })
}

// Istio still writes `metadata` matchers, which Envoy has deprecated for
// `sourced_metadata`.
#[allow(deprecated)]
fn permission(p: &envoy::Permission) -> Result<Permission, String> {
    let all = |rules: &[envoy::Permission]| rules.iter().map(permission).collect::<Result<_, _>>();
    Ok(match &p.rule {
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::Any(false)) | None => return Err("a permission without a rule".to_owned()),
        Some(Rule::AndRules(set)) => Permission::And(all(&set.rules)?),
        Some(Rule::OrRules(set)) => Permission::Or(all(&set.rules)?),
        Some(Rule::NotRule(inner)) => Permission::Not(Box::new(permission(inner)?)),
        Some(Rule::Header(h)) => Permission::Header(super::route::header_match(h)?),
        Some(Rule::UrlPath(path)) => Permission::UrlPath(path_matcher(path)?),
        Some(Rule::DestinationIp(cidr)) => Permission::DestinationIp(ip_range(cidr)?),
        Some(Rule::DestinationPort(port)) => Permission::DestinationPort(
            u16::try_from(*port).map_err(|_| format!("destination port {port} is out of range"))?,
        ),
        Some(Rule::DestinationPortRange(range)) => {
            let bound = |n: i32| u16::try_from(n.clamp(0, 65_536)).unwrap_or(u16::MAX);
            Permission::DestinationPortRange(bound(range.start), bound(range.end))
        }
        Some(Rule::Metadata(m)) => Permission::Metadata(metadata(m)?),
        Some(Rule::RequestedServerName(m)) => {
            Permission::RequestedServerName(Matcher::from_envoy(m)?)
        }
        Some(Rule::UriTemplate(config)) => Permission::UriTemplate(uri_template(config)?),
        Some(other) => return Err(format!("permission {} is not supported", rule_name(other))),
    })
}

fn rule_name(rule: &Rule) -> &'static str {
    match rule {
        Rule::Matcher(_) => "matcher",
        Rule::SourcedMetadata(_) => "sourced_metadata",
        _ => "rule",
    }
}

#[allow(deprecated)]
fn principal(p: &envoy::Principal) -> Result<Principal, String> {
    let all = |ids: &[envoy::Principal]| ids.iter().map(principal).collect::<Result<_, _>>();
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::Any(false)) | None => {
            return Err("a principal without an identifier".to_owned());
        }
        Some(Identifier::AndIds(set)) => Principal::And(all(&set.ids)?),
        Some(Identifier::OrIds(set)) => Principal::Or(all(&set.ids)?),
        Some(Identifier::NotId(inner)) => Principal::Not(Box::new(principal(inner)?)),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(Matcher::from_envoy)
                .transpose()?,
        ),
        // `source_ip` is the deprecated spelling of `direct_remote_ip`.
        Some(Identifier::SourceIp(cidr)) => Principal::DirectRemoteIp(ip_range(cidr)?),
        Some(Identifier::DirectRemoteIp(cidr)) => Principal::DirectRemoteIp(ip_range(cidr)?),
        Some(Identifier::RemoteIp(cidr)) => Principal::RemoteIp(ip_range(cidr)?),
        Some(Identifier::Header(h)) => Principal::Header(super::route::header_match(h)?),
        Some(Identifier::UrlPath(path)) => Principal::UrlPath(path_matcher(path)?),
        Some(Identifier::Metadata(m)) => Principal::Metadata(metadata(m)?),
        Some(Identifier::FilterState(f)) => match &f.matcher {
            Some(filter_state_matcher::Matcher::StringMatch(m)) => Principal::FilterState {
                key: f.key.clone(),
                matcher: Matcher::from_envoy(m)?,
            },
            _ => return Err(format!("filter state {:?}: only string matches", f.key)),
        },
        Some(_) => return Err("principal kind is not supported".to_owned()),
    })
}

fn path_matcher(path: &PathMatcher) -> Result<Matcher, String> {
    match &path.rule {
        Some(path_matcher::Rule::Path(m)) => Matcher::from_envoy(m),
        None => Err("a path matcher without a rule".to_owned()),
    }
}

/// As Envoy reads a CIDR range: the address as written, the length 0 when unset.
fn ip_range(cidr: &CidrRange) -> Result<IpNet, String> {
    let ip: IpAddr = cidr
        .address_prefix
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", cidr.address_prefix))?;
    let len = cidr.prefix_len.as_ref().map_or(0, |l| l.value);
    let len = u8::try_from(len).map_err(|_| format!("prefix length {len} is out of range"))?;
    IpNet::new(ip, len).map_err(|e| format!("{ip}/{len}: {e}"))
}

pub(crate) fn metadata(m: &MetadataMatcher) -> Result<MetadataMatch, String> {
    let path = m
        .path
        .iter()
        .map(|segment| match &segment.segment {
            Some(Segment::Key(key)) => Ok(key.clone()),
            None => Err("a metadata path segment without a key".to_owned()),
        })
        .collect::<Result<_, String>>()?;
    let value = m
        .value
        .as_ref()
        .ok_or("a metadata matcher without a value")?;
    Ok(MetadataMatch {
        filter: m.filter.clone(),
        path,
        value: value_match(value)?,
        invert: m.invert,
    })
}

fn value_match(v: &ValueMatcher) -> Result<ValueMatch, String> {
    Ok(match &v.match_pattern {
        Some(MatchPattern::NullMatch(_)) => ValueMatch::Null,
        Some(MatchPattern::StringMatch(m)) => ValueMatch::String(Matcher::from_envoy(m)?),
        Some(MatchPattern::BoolMatch(b)) => ValueMatch::Bool(*b),
        Some(MatchPattern::PresentMatch(p)) => ValueMatch::Present(*p),
        Some(MatchPattern::ListMatch(list)) => match &list.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(inner)) => {
                ValueMatch::ListOneOf(Box::new(value_match(inner)?))
            }
            None => return Err("a list matcher without a pattern".to_owned()),
        },
        Some(MatchPattern::OrMatch(or)) => ValueMatch::Or(
            or.value_matchers
                .iter()
                .map(value_match)
                .collect::<Result<_, _>>()?,
        ),
        Some(MatchPattern::DoubleMatch(_)) => {
            return Err("number matches on metadata are not supported".to_owned());
        }
        None => return Err("a value matcher without a pattern".to_owned()),
    })
}

fn uri_template(config: &TypedExtensionConfig) -> Result<UriTemplate, String> {
    let any = config
        .typed_config
        .as_ref()
        .filter(|a| a.type_url == URI_TEMPLATE)
        .ok_or_else(|| format!("path matcher {:?} is not a URI template", config.name))?;
    let template = UriTemplateMatchConfig::decode(any.value.as_slice())
        .map_err(|e| format!("URI template: {e}"))?;
    parse_template(&template.path_template)
}

/// `/a/*/b/**`: only Istio's operators (`*`, `**`), not named variables.
pub fn parse_template(text: &str) -> Result<UriTemplate, String> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("URI template {text:?} does not start with /"));
    };
    let mut segments = Vec::new();
    for part in rest.split('/') {
        let segment = match part {
            "*" => TemplateSegment::One,
            "**" => TemplateSegment::Rest,
            literal if literal.contains(['*', '{', '}']) => {
                return Err(format!(
                    "URI template {text:?}: {literal:?} is neither a literal nor * or **"
                ));
            }
            literal => TemplateSegment::Literal(literal.to_owned()),
        };
        segments.push(segment);
    }
    let rest_at = segments.iter().position(|s| *s == TemplateSegment::Rest);
    if let Some(i) = rest_at
        && segments[i + 1..]
            .iter()
            .any(|s| !matches!(s, TemplateSegment::Literal(_)))
    {
        return Err(format!("URI template {text:?}: no operator may follow **"));
    }
    Ok(UriTemplate { segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_as_istio_writes_them() {
        assert_eq!(
            parse_template("/a/*/b/**").expect("valid").segments,
            vec![
                TemplateSegment::Literal("a".into()),
                TemplateSegment::One,
                TemplateSegment::Literal("b".into()),
                TemplateSegment::Rest
            ]
        );
        assert!(parse_template("/**/x").is_ok(), "literals may follow **");
        assert!(parse_template("/**/*").is_err());
        assert!(parse_template("/{name}").is_err());
        assert!(parse_template("no-slash").is_err());
    }
}
