//! L4 authorization as ztunnel evaluates `istio.security.Authorization`:
//! a DENY that matches denies; with no ALLOW policy everything else is
//! allowed; otherwise a matching ALLOW is needed. A policy matches when any
//! of its rules does; a rule when all its clauses do; a clause when any of
//! its matches does; a match when every field it sets holds (and a match
//! that sets nothing holds for nothing).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use oxmesh_identity::SpiffeId;
use oxmesh_xds::security as api;

use crate::state::ConvertError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    pub dry_run: bool,
    /// Rules of clauses of matches.
    pub rules: Vec<Vec<Vec<Match>>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub service_accounts: Vec<(String, String)>,
    pub not_service_accounts: Vec<(String, String)>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (StringMatch::Presence, Some(_)) => true,
            (StringMatch::Exact(want), Some(v)) => v == want,
            (StringMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (StringMatch::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
        }
    }
}

/// What a policy sees of a connection.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The caller's proven identity; `None` for plaintext.
    pub source: Option<SpiffeId>,
    pub source_ip: IpAddr,
    pub destination: SocketAddr,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy applies to workloads of `namespace` without naming
    /// them (mesh-wide, or namespace-wide).
    pub fn applies_by_scope(&self, namespace: &str) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::Namespace => self.namespace == namespace,
            Scope::WorkloadSelector => false,
        }
    }

    fn matches(&self, conn: &Connection) -> bool {
        self.rules.iter().any(|clauses| {
            clauses
                .iter()
                .all(|matches| matches.iter().any(|m| m.matches(conn)))
        })
    }
}

impl Match {
    fn is_empty(&self) -> bool {
        *self == Match::default()
    }

    fn matches(&self, conn: &Connection) -> bool {
        if self.is_empty() {
            return false;
        }
        let namespace = conn.source.as_ref().map(|s| s.namespace());
        let principal = conn.source.as_ref().map(principal);
        let account = conn
            .source
            .as_ref()
            .map(|s| (s.namespace(), s.service_account()));
        let strings =
            |list: &[StringMatch], value: Option<&str>| list.iter().any(|m| m.matches(value));
        let accounts = |list: &[(String, String)]| {
            account.is_some_and(|(ns, sa)| list.iter().any(|(n, a)| n == ns && a == sa))
        };
        let nets = |list: &[IpNet], ip: IpAddr| list.iter().any(|n| n.contains(&ip));
        let dst = conn.destination;
        let wanted = |list_empty: bool, holds: bool| list_empty || holds;
        let unwanted = |list_empty: bool, holds: bool| list_empty || !holds;
        wanted(
            self.namespaces.is_empty(),
            strings(&self.namespaces, namespace),
        ) && unwanted(
            self.not_namespaces.is_empty(),
            strings(&self.not_namespaces, namespace),
        ) && wanted(
            self.principals.is_empty(),
            strings(&self.principals, principal.as_deref()),
        ) && unwanted(
            self.not_principals.is_empty(),
            strings(&self.not_principals, principal.as_deref()),
        ) && wanted(
            self.service_accounts.is_empty(),
            accounts(&self.service_accounts),
        ) && unwanted(
            self.not_service_accounts.is_empty(),
            accounts(&self.not_service_accounts),
        ) && wanted(
            self.source_ips.is_empty(),
            nets(&self.source_ips, conn.source_ip),
        ) && unwanted(
            self.not_source_ips.is_empty(),
            nets(&self.not_source_ips, conn.source_ip),
        ) && wanted(
            self.destination_ips.is_empty(),
            nets(&self.destination_ips, dst.ip()),
        ) && unwanted(
            self.not_destination_ips.is_empty(),
            nets(&self.not_destination_ips, dst.ip()),
        ) && wanted(
            self.destination_ports.is_empty(),
            self.destination_ports.contains(&dst.port()),
        ) && unwanted(
            self.not_destination_ports.is_empty(),
            self.not_destination_ports.contains(&dst.port()),
        )
    }
}

/// Istio's principal form: the SPIFFE id without its scheme.
fn principal(id: &SpiffeId) -> String {
    let text = id.to_string();
    text.strip_prefix("spiffe://").unwrap_or(&text).to_owned()
}

/// Whether `conn` may reach a workload that `policies` apply to; `Err`
/// names the policy that decided.
pub fn check<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    conn: &Connection,
) -> Result<(), String> {
    let mut allows = false;
    let mut allowed = false;
    for policy in policies.into_iter().filter(|p| !p.dry_run) {
        match policy.action {
            Action::Deny if policy.matches(conn) => {
                return Err(format!("denied by {}", policy.key()));
            }
            Action::Deny => {}
            Action::Allow => {
                allows = true;
                allowed |= policy.matches(conn);
            }
        }
    }
    if allows && !allowed {
        return Err("no ALLOW policy matches".to_owned());
    }
    Ok(())
}

impl Policy {
    /// Converts `policy`, named `name` in the stream; a field that does not
    /// parse refuses it, naming it.
    pub fn from_api(name: &str, policy: api::Authorization) -> Result<Self, ConvertError> {
        let fail = |reason: String| ConvertError::Policy {
            resource: name.to_owned(),
            reason,
        };
        let scope = match api::Scope::try_from(policy.scope) {
            Ok(api::Scope::Global) => Scope::Global,
            Ok(api::Scope::Namespace) => Scope::Namespace,
            Ok(api::Scope::WorkloadSelector) => Scope::WorkloadSelector,
            Err(_) => return Err(fail(format!("unknown scope {}", policy.scope))),
        };
        let action = match api::Action::try_from(policy.action) {
            Ok(api::Action::Allow) => Action::Allow,
            Ok(api::Action::Deny) => Action::Deny,
            Err(_) => return Err(fail(format!("unknown action {}", policy.action))),
        };
        let rules = policy
            .rules
            .into_iter()
            .map(|rule| {
                rule.clauses
                    .into_iter()
                    .map(|clause| {
                        clause
                            .matches
                            .into_iter()
                            .map(|m| convert_match(name, m))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            name: policy.name,
            namespace: policy.namespace,
            scope,
            action,
            dry_run: policy.dry_run,
            rules,
        })
    }
}

fn convert_match(name: &str, m: api::Match) -> Result<Match, ConvertError> {
    let nets = |list: Vec<api::Address>| {
        list.into_iter()
            .map(|a| {
                let ip = crate::state::convert_ip(name, &a.address)?;
                let len = u8::try_from(a.length).unwrap_or(u8::MAX);
                IpNet::new(ip, len).map_err(|e| ConvertError::Policy {
                    resource: name.to_owned(),
                    reason: format!("{ip}/{}: {e}", a.length),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let ports = |list: Vec<u32>| {
        list.into_iter()
            .map(|p| {
                u16::try_from(p).map_err(|_| ConvertError::Policy {
                    resource: name.to_owned(),
                    reason: format!("port {p} is out of range"),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |list: Vec<api::ServiceAccountMatch>| {
        list.into_iter()
            .map(|a| (a.namespace, a.service_account))
            .collect()
    };
    Ok(Match {
        namespaces: strings(m.namespaces),
        not_namespaces: strings(m.not_namespaces),
        principals: strings(m.principals),
        not_principals: strings(m.not_principals),
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
        source_ips: nets(m.source_ips)?,
        not_source_ips: nets(m.not_source_ips)?,
        destination_ips: nets(m.destination_ips)?,
        not_destination_ips: nets(m.not_destination_ips)?,
        destination_ports: ports(m.destination_ports)?,
        not_destination_ports: ports(m.not_destination_ports)?,
    })
}

fn strings(list: Vec<api::StringMatch>) -> Vec<StringMatch> {
    use api::string_match::MatchType;
    list.into_iter()
        .filter_map(|m| {
            Some(match m.match_type? {
                MatchType::Exact(v) => StringMatch::Exact(v),
                MatchType::Prefix(v) => StringMatch::Prefix(v),
                MatchType::Suffix(v) => StringMatch::Suffix(v),
                MatchType::Presence(()) => StringMatch::Presence,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
