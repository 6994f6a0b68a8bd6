//! AuthorizationPolicy's L4 side, as istiod translates it for node proxies.
//! A node proxy sees connections, not requests: an ALLOW rule that needs
//! anything HTTP is dropped (so it allows nothing), and a DENY rule loses
//! its HTTP parts (so it denies more), exactly as Istio does it. Policies
//! that target a Service or Gateway (`targetRefs`) are for waypoints, and
//! CUSTOM, AUDIT and dry-run ones are not sent.

use std::net::IpAddr;

use oxmesh_config::security::authorization_policy::{Action, Condition, Operation, Rule, Source};
use oxmesh_xds::security::{
    self as wire, Address, Authorization, Clause, Match, Scope, ServiceAccountMatch, StringMatch,
    string_match,
};

use super::workload::STATIC_STRICT;
use crate::push_context::{Authorization as Policy, PushContext, Scoped};

pub(super) fn policies(ctx: &PushContext) -> Vec<Authorization> {
    let root = ctx.mesh.root_namespace.as_str();
    let mut out: Vec<Authorization> = ctx
        .authorization_policies()
        .iter()
        .filter(|p| is_sent(p))
        .map(|p| translate(p, root))
        .collect();
    if ctx.has_peer_authentications() {
        out.push(static_strict(root));
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Whether node proxies get this policy at all.
pub(super) fn is_sent(policy: &Scoped<Policy>) -> bool {
    let spec = &policy.spec.policy;
    let targeted =
        spec.target_ref.is_some() || spec.target_refs.as_ref().is_some_and(|t| !t.is_empty());
    !targeted && !policy.spec.dry_run && matches!(spec.action, Action::Allow | Action::Deny)
}

fn translate(policy: &Scoped<Policy>, root: &str) -> Authorization {
    let spec = &policy.spec.policy;
    let scope = if spec.selector.is_some() {
        Scope::WorkloadSelector
    } else if policy.namespace == root {
        Scope::Global
    } else {
        Scope::Namespace
    };
    let allow = spec.action == Action::Allow;
    let rules = spec
        .rules
        .iter()
        .flatten()
        .filter(|rule| !(allow && needs_http(rule)))
        .map(|rule| rule_of(rule, &policy.namespace))
        .collect();
    Authorization {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        scope: scope as i32,
        action: if allow {
            wire::Action::Allow
        } else {
            wire::Action::Deny
        } as i32,
        rules,
        ..Authorization::default()
    }
}

/// Denies every connection that carries no peer identity (plaintext): what
/// a STRICT PeerAuthentication is to a node proxy.
fn static_strict(root: &str) -> Authorization {
    let plaintext = Match {
        not_principals: vec![presence()],
        ..Match::default()
    };
    Authorization {
        name: STATIC_STRICT.to_owned(),
        namespace: root.to_owned(),
        scope: Scope::WorkloadSelector as i32,
        action: wire::Action::Deny as i32,
        rules: vec![wire::Rule {
            clauses: vec![Clause {
                matches: vec![plaintext],
            }],
        }],
        ..Authorization::default()
    }
}

/// The `when` keys a node proxy can evaluate.
const L4_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

fn needs_http(rule: &Rule) -> bool {
    let operation = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .any(|o| {
            !(o.hosts.is_empty()
                && o.not_hosts.is_empty()
                && o.methods.is_empty()
                && o.not_methods.is_empty()
                && o.paths.is_empty()
                && o.not_paths.is_empty())
        });
    let source = rule.from.iter().filter_map(|f| f.source.as_ref()).any(|s| {
        !(s.remote_ip_blocks.is_empty()
            && s.not_remote_ip_blocks.is_empty()
            && s.request_principals.is_empty()
            && s.not_request_principals.is_empty())
    });
    let when = rule.when.iter().any(|c| !L4_KEYS.contains(&c.key.as_str()));
    operation || source || when
}

/// A rule is a conjunction of clauses: what it goes to, where it comes
/// from, and each condition.
fn rule_of(rule: &Rule, namespace: &str) -> wire::Rule {
    let mut clauses = Vec::new();
    if !rule.to.is_empty() {
        let matches = rule
            .to
            .iter()
            .map(|t| t.operation.as_ref().map(operation).unwrap_or_default())
            .collect();
        clauses.push(Clause { matches });
    }
    if !rule.from.is_empty() {
        let matches = rule
            .from
            .iter()
            .map(|f| {
                f.source
                    .as_ref()
                    .map(|s| source(s, namespace))
                    .unwrap_or_default()
            })
            .collect();
        clauses.push(Clause { matches });
    }
    clauses.extend(
        rule.when
            .iter()
            .filter_map(condition)
            .map(|m| Clause { matches: vec![m] }),
    );
    wire::Rule { clauses }
}

fn operation(o: &Operation) -> Match {
    Match {
        destination_ports: ports(&o.ports),
        not_destination_ports: ports(&o.not_ports),
        ..Match::default()
    }
}

fn source(s: &Source, namespace: &str) -> Match {
    Match {
        source_ips: cidrs(&s.ip_blocks),
        not_source_ips: cidrs(&s.not_ip_blocks),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        service_accounts: accounts(&s.service_accounts, namespace),
        not_service_accounts: accounts(&s.not_service_accounts, namespace),
        ..Match::default()
    }
}

/// One `when` condition as a match of its own; keys a node proxy cannot
/// evaluate give none (only DENY rules keep them, without them).
fn condition(c: &Condition) -> Option<Match> {
    let mut m = Match::default();
    match c.key.as_str() {
        "source.ip" => {
            m.source_ips = cidrs(&c.values);
            m.not_source_ips = cidrs(&c.not_values);
        }
        "source.namespace" => {
            m.namespaces = strings(&c.values);
            m.not_namespaces = strings(&c.not_values);
        }
        "source.principal" => {
            m.principals = strings(&c.values);
            m.not_principals = strings(&c.not_values);
        }
        "destination.ip" => {
            m.destination_ips = cidrs(&c.values);
            m.not_destination_ips = cidrs(&c.not_values);
        }
        "destination.port" => {
            m.destination_ports = ports(&c.values);
            m.not_destination_ports = ports(&c.not_values);
        }
        _ => return None,
    }
    Some(m)
}

/// Ports in decimal; anything else is left out, as istiod leaves it.
fn ports(values: &[String]) -> Vec<u32> {
    values
        .iter()
        .filter_map(|v| v.parse::<u16>().ok())
        .map(u32::from)
        .collect()
}

/// CIDRs, a bare address being its own full-length prefix.
fn cidrs(values: &[String]) -> Vec<Address> {
    values
        .iter()
        .filter_map(|v| {
            let net: ipnet::IpNet = match v.parse::<IpAddr>() {
                Ok(ip) => ip.into(),
                Err(_) => v.parse().ok()?,
            };
            let net = net.trunc();
            Some(Address {
                address: super::ip_bytes(net.addr()),
                length: u32::from(net.prefix_len()),
            })
        })
        .collect()
}

/// Istio's string forms: `*` is presence, `*x` a suffix, `x*` a prefix.
fn strings(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| string(v)).collect()
}

fn string(value: &str) -> StringMatch {
    let kind = if value == "*" {
        string_match::MatchType::Presence(())
    } else if let Some(suffix) = value.strip_prefix('*') {
        string_match::MatchType::Suffix(suffix.to_owned())
    } else if let Some(prefix) = value.strip_suffix('*') {
        string_match::MatchType::Prefix(prefix.to_owned())
    } else {
        string_match::MatchType::Exact(value.to_owned())
    };
    StringMatch {
        match_type: Some(kind),
    }
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(string_match::MatchType::Presence(())),
    }
}

/// `namespace/account`, or an account of the policy's own namespace.
fn accounts(values: &[String], namespace: &str) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| {
            let (ns, account) = v.split_once('/').unwrap_or((namespace, v));
            ServiceAccountMatch {
                namespace: ns.to_owned(),
                service_account: account.to_owned(),
            }
        })
        .collect()
}
