//! One rule of an AuthorizationPolicy as an Envoy RBAC policy: it matches when
//! one of its permissions (one per `to`) and one of its principals (one per
//! `from`) match. Inside a permission or principal, the fields of the `source`
//! or `operation` and the `when` conditions are ANDed, in Istio's order; the
//! values of one field are ORed, and its not-values make a NOT of their OR.

use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use oxmesh_config::security::authorization_policy as config;

use super::attribute::{
    Attribute, PermissionAttribute, PrincipalAttribute, RuleError, Translation, WhenAttribute,
};
use super::trust_domain::TrustDomains;

/// What a filter chain carries: HTTP (a connection manager) or TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chain {
    Http,
    Tcp,
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "HTTP",
            Self::Tcp => "TCP",
        })
    }
}

/// An attribute, the values it asks for and the ones it refuses.
#[derive(Clone, Debug)]
struct Condition<A> {
    attribute: A,
    values: Vec<String>,
    not_values: Vec<String>,
}

/// One rule, before it meets a chain.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    /// One list per `to` entry (one empty list without `to`).
    operations: Vec<Vec<Condition<PermissionAttribute>>>,
    /// One list per `from` entry (one empty list without `from`).
    sources: Vec<Vec<Condition<PrincipalAttribute>>>,
    /// `when` conditions, after every operation's own ones.
    when_permissions: Vec<Condition<PermissionAttribute>>,
    /// `when` conditions, after every source's own ones.
    when_principals: Vec<Condition<PrincipalAttribute>>,
}

impl Rule {
    /// The rule of a policy in `policy_namespace`. An unknown `when` key makes
    /// the whole rule unusable, whatever the chain and action.
    pub(crate) fn new(policy_namespace: &str, rule: &config::Rule) -> Result<Self, RuleError> {
        let mut when_permissions = Vec::new();
        let mut when_principals = Vec::new();
        for when in &rule.when {
            match WhenAttribute::parse(&when.key, policy_namespace)? {
                WhenAttribute::Permission(attribute) => {
                    push(
                        &mut when_permissions,
                        attribute,
                        &when.values,
                        &when.not_values,
                    );
                }
                WhenAttribute::Principal(attribute) => {
                    push(
                        &mut when_principals,
                        attribute,
                        &when.values,
                        &when.not_values,
                    );
                }
            }
        }
        let mut sources: Vec<_> = rule
            .from
            .iter()
            .map(|from| {
                from.source
                    .as_ref()
                    .map(|s| source_conditions(policy_namespace, s))
                    .unwrap_or_default()
            })
            .collect();
        if sources.is_empty() {
            sources.push(Vec::new());
        }
        let mut operations: Vec<_> = rule
            .to
            .iter()
            .map(|to| {
                to.operation
                    .as_ref()
                    .map(operation_conditions)
                    .unwrap_or_default()
            })
            .collect();
        if operations.is_empty() {
            operations.push(Vec::new());
        }
        Ok(Self {
            operations,
            sources,
            when_permissions,
            when_principals,
        })
    }

    /// Rewrites principals and trust domains for the mesh's trust-domain
    /// aliases. Istio shares the `when` conditions among the rule's sources and
    /// rewrites them once per source, so with several `from` entries their
    /// principals are rewritten again; done the same way here, the output is
    /// Istio's, duplicates included.
    pub(crate) fn migrate_trust_domains(&mut self, domains: &TrustDomains) {
        for source in &mut self.sources {
            for condition in source.iter_mut() {
                condition.migrate(domains);
            }
        }
        for _ in 0..self.sources.len() {
            for condition in &mut self.when_principals {
                condition.migrate(domains);
            }
        }
    }

    /// The Envoy policy for `chain`. What an attribute the chain cannot match
    /// (or an invalid value) does depends on `action`: ALLOW fails the whole rule
    /// so the allowed set only narrows; DENY and AUDIT drop the value so what
    /// they catch only widens.
    pub(crate) fn generate(&self, chain: Chain, action: Action) -> Result<Policy, RuleError> {
        let permissions = self
            .operations
            .iter()
            .map(|own| all_of(own.iter().chain(&self.when_permissions), chain, action))
            .collect::<Result<Vec<Permission>, _>>()?;
        let principals = self
            .sources
            .iter()
            .map(|own| all_of(own.iter().chain(&self.when_principals), chain, action))
            .collect::<Result<Vec<Principal>, _>>()?;
        Ok(Policy {
            permissions,
            principals,
            ..Default::default()
        })
    }
}

/// A `source`'s fields in the order Istio puts them.
fn source_conditions(
    policy_namespace: &str,
    s: &config::Source,
) -> Vec<Condition<PrincipalAttribute>> {
    use PrincipalAttribute as P;
    let mut conditions = Vec::new();
    let fields = [
        (P::Principals, &s.principals, &s.not_principals),
        (
            P::RequestPrincipals,
            &s.request_principals,
            &s.not_request_principals,
        ),
        (
            P::ServiceAccounts {
                policy_namespace: policy_namespace.to_owned(),
            },
            &s.service_accounts,
            &s.not_service_accounts,
        ),
        (P::TrustDomains, &s.trust_domains, &s.not_trust_domains),
        (P::Namespaces, &s.namespaces, &s.not_namespaces),
        (P::RemoteIp, &s.remote_ip_blocks, &s.not_remote_ip_blocks),
        (P::SourceIp, &s.ip_blocks, &s.not_ip_blocks),
    ];
    for (attribute, values, not_values) in fields {
        push(&mut conditions, attribute, values, not_values);
    }
    conditions
}

/// An `operation`'s fields in the order Istio puts them.
fn operation_conditions(o: &config::Operation) -> Vec<Condition<PermissionAttribute>> {
    use PermissionAttribute as P;
    let mut conditions = Vec::new();
    let fields = [
        (P::Hosts, &o.hosts, &o.not_hosts),
        (P::Methods, &o.methods, &o.not_methods),
        (P::Paths, &o.paths, &o.not_paths),
        (P::Ports, &o.ports, &o.not_ports),
    ];
    for (attribute, values, not_values) in fields {
        push(&mut conditions, attribute, values, not_values);
    }
    conditions
}

/// Adds a condition unless it has no values at all.
fn push<A>(conditions: &mut Vec<Condition<A>>, attribute: A, values: &[String], not: &[String]) {
    if values.is_empty() && not.is_empty() {
        return;
    }
    conditions.push(Condition {
        attribute,
        values: values.to_vec(),
        not_values: not.to_vec(),
    });
}

impl Condition<PrincipalAttribute> {
    fn migrate(&mut self, domains: &TrustDomains) {
        let rewrite: fn(&TrustDomains, &[String]) -> Vec<String> = match self.attribute {
            PrincipalAttribute::Principals => TrustDomains::replace_aliases,
            PrincipalAttribute::TrustDomains => TrustDomains::expand,
            _ => return,
        };
        self.values = rewrite(domains, &self.values);
        self.not_values = rewrite(domains, &self.not_values);
    }
}

impl<A: Attribute> Condition<A>
where
    A::Output: Node,
{
    /// This condition's members of the AND: the values' OR, then the NOT of
    /// the not-values' OR, each left out when nothing of it remains.
    fn generate(&self, chain: Chain, action: Action) -> Result<Vec<A::Output>, RuleError> {
        let mut members = Vec::new();
        if let Some(any) = self.part(&self.values, chain, action)? {
            members.push(any);
        }
        if let Some(any) = self.part(&self.not_values, chain, action)? {
            members.push(any.not());
        }
        Ok(members)
    }

    fn part(
        &self,
        values: &[String],
        chain: Chain,
        action: Action,
    ) -> Result<Option<A::Output>, RuleError> {
        if values.is_empty() {
            return Ok(None);
        }
        let keep = |result: Result<A::Output, RuleError>| match result {
            Ok(node) => Ok(Some(node)),
            Err(e) if action == Action::Allow => Err(e),
            Err(_) => Ok(None),
        };
        if chain == Chain::Tcp && self.attribute.http_only() {
            return keep(Err(RuleError::HttpOnly(self.attribute.key().to_owned())));
        }
        match self.attribute.translate(values) {
            Translation::EachValue(results) => {
                let mut any = Vec::new();
                for result in results {
                    any.extend(keep(result)?);
                }
                Ok((!any.is_empty()).then(|| A::Output::or(any)))
            }
            Translation::AllValues(result) => keep(result),
        }
    }
}

/// The AND of `conditions`, or "any" when none says anything.
fn all_of<'a, A: Attribute + 'a>(
    conditions: impl Iterator<Item = &'a Condition<A>>,
    chain: Chain,
    action: Action,
) -> Result<A::Output, RuleError>
where
    A::Output: Node,
{
    let mut all = Vec::new();
    for condition in conditions {
        all.extend(condition.generate(chain, action)?);
    }
    if all.is_empty() {
        all.push(A::Output::any());
    }
    Ok(A::Output::and(all))
}

/// The boolean structure permissions and principals share.
pub(crate) trait Node: Sized {
    fn any() -> Self;
    fn and(all: Vec<Self>) -> Self;
    fn or(any: Vec<Self>) -> Self;
    fn not(self) -> Self;
}

impl Node for Permission {
    fn any() -> Self {
        rule(permission::Rule::Any(true))
    }
    fn and(rules: Vec<Self>) -> Self {
        rule(permission::Rule::AndRules(permission::Set { rules }))
    }
    fn or(rules: Vec<Self>) -> Self {
        rule(permission::Rule::OrRules(permission::Set { rules }))
    }
    fn not(self) -> Self {
        rule(permission::Rule::NotRule(Box::new(self)))
    }
}

impl Node for Principal {
    fn any() -> Self {
        id(principal::Identifier::Any(true))
    }
    fn and(ids: Vec<Self>) -> Self {
        id(principal::Identifier::AndIds(principal::Set { ids }))
    }
    fn or(ids: Vec<Self>) -> Self {
        id(principal::Identifier::OrIds(principal::Set { ids }))
    }
    fn not(self) -> Self {
        id(principal::Identifier::NotId(Box::new(self)))
    }
}

fn rule(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn id(identifier: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

#[cfg(test)]
mod tests;
