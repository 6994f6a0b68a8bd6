//! Authorization: the AuthorizationPolicies that select a proxy, as the Envoy
//! RBAC filters Istio's builder writes for them.
//!
//! The ALLOW, DENY and AUDIT policies make at most three filters per chain, in
//! this order: AUDIT (RBAC action LOG), DENY, ALLOW, each present only when
//! a policy of that action applies. Each rule of each policy is one entry
//! `ns[<namespace>]-policy[<name>]-rule[<index>]`; dry-run policies go to the
//! filter's shadow rules. HTTP chains get `envoy.filters.http.rbac` in their
//! connection manager; TCP chains `envoy.filters.network.rbac` before
//! `tcp_proxy`, built from the same rules with what TCP cannot see taken out.
//!
//! CUSTOM policies ([`custom`], ext_authz) and RequestAuthentication
//! (`generate::authn`, jwt_authn) have builders of their own; their filters go
//! in front of these (see [`Filters`]).

pub(crate) mod attribute;
pub(crate) mod custom;
pub(crate) mod filter;
pub(crate) mod matcher;
pub(crate) mod model;
pub(crate) mod trust_domain;

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use oxmesh_config::security::authorization_policy::Action as PolicyAction;

use self::custom::Custom;
use self::filter::Rules;
use self::model::{Chain, Node, Rule};
use self::trust_domain::TrustDomains;
use crate::proxy::ProxyClass;
use crate::push_context::{Authorization, PushContext, Scoped};

/// The authentication and authorization filters of a proxy's server-side
/// chains (a sidecar's inbound, a gateway's): HTTP filters for its connection
/// managers, network filters for its TCP chains. Empty when no policy applies.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filters {
    pub(crate) http: Vec<HttpFilter>,
    pub(crate) tcp: Vec<Filter>,
}

impl Filters {
    pub(crate) fn for_proxy(ctx: &PushContext, proxy: &ProxyClass) -> Self {
        let domains = TrustDomains::new(
            ctx.mesh.trust_domain.as_str(),
            &ctx.mesh.trust_domain_aliases,
        );
        // Istio's order: each CUSTOM provider's shadow RBAC and ext_authz
        // pair, then jwt_authn, then AUDIT, DENY, ALLOW.
        let custom = Custom::new(ctx.authorization_policies_for(proxy), &domains);
        let (custom_http, custom_tcp) = (custom.http(ctx), custom.tcp(ctx));
        let jwt = super::authn::filter(ctx, proxy);
        let local = Local::new(ctx.authorization_policies_for(proxy), domains);
        Self {
            http: custom_http
                .into_iter()
                .chain(jwt)
                .chain(local.http())
                .collect(),
            tcp: custom_tcp.into_iter().chain(local.tcp()).collect(),
        }
    }
}

/// The ALLOW, DENY and AUDIT policies that apply to one proxy, in the order
/// they were selected (Istio's "local" builder).
pub(crate) struct Local<'a> {
    audit: Vec<&'a Scoped<Authorization>>,
    deny: Vec<&'a Scoped<Authorization>>,
    allow: Vec<&'a Scoped<Authorization>>,
    domains: TrustDomains,
}

impl<'a> Local<'a> {
    /// Sorts `policies` by action. CUSTOM ones are not this builder's: they
    /// belong to the ext_authz one.
    pub(crate) fn new(
        policies: impl IntoIterator<Item = &'a Scoped<Authorization>>,
        domains: TrustDomains,
    ) -> Self {
        let mut local = Self {
            audit: Vec::new(),
            deny: Vec::new(),
            allow: Vec::new(),
            domains,
        };
        for policy in policies {
            match policy.spec.policy.action {
                PolicyAction::Allow => local.allow.push(policy),
                PolicyAction::Deny => local.deny.push(policy),
                PolicyAction::Audit => local.audit.push(policy),
                PolicyAction::Custom => {}
            }
        }
        local
    }

    /// The filters for a connection manager, AUDIT, DENY, ALLOW.
    pub(crate) fn http(&self) -> Vec<HttpFilter> {
        self.buckets(Chain::Http)
            .map(|(rules, shadow)| filter::http(rules, shadow))
            .collect()
    }

    /// The filters for a TCP chain, AUDIT, DENY, ALLOW.
    pub(crate) fn tcp(&self) -> Vec<Filter> {
        self.buckets(Chain::Tcp)
            .map(|(rules, shadow)| filter::network(rules, shadow))
            .collect()
    }

    /// Enforced and dry-run rules of each action that has policies, in filter
    /// order.
    fn buckets(&self, chain: Chain) -> impl Iterator<Item = (Option<Rules>, Option<Rules>)> + '_ {
        [
            (&self.audit, Action::Log),
            (&self.deny, Action::Deny),
            (&self.allow, Action::Allow),
        ]
        .into_iter()
        .filter(|(policies, _)| !policies.is_empty())
        .map(move |(policies, action)| self.rules(policies, action, chain))
    }

    /// The policies of one action: enforced ones in `rules`, present as soon as
    /// one policy is enforced, even if none of its rules made it (an empty
    /// ALLOW then denies everything, as in Istio); dry-run ones likewise in
    /// the shadow rules.
    fn rules(
        &self,
        policies: &[&Scoped<Authorization>],
        action: Action,
        chain: Chain,
    ) -> (Option<Rules>, Option<Rules>) {
        let (shadow, enforced): (Vec<_>, Vec<_>) =
            policies.iter().copied().partition(|p| p.spec.dry_run);
        let build = |policies: &[&Scoped<Authorization>]| {
            (!policies.is_empty())
                .then(|| build_rules(policies, action, chain, &self.domains, policy_name))
        };
        (build(&enforced), build(&shadow))
    }
}

/// One RBAC engine's policies: each rule of each policy under `name(policy,
/// index)`, generated for `chain` and `action`; a policy without rules
/// matches nothing.
pub(crate) fn build_rules(
    policies: &[&Scoped<Authorization>],
    action: Action,
    chain: Chain,
    domains: &TrustDomains,
    name: impl Fn(&Scoped<Authorization>, usize) -> String,
) -> Rules {
    let mut rules = Rules::new(action);
    for policy in policies {
        let spec_rules = policy.spec.policy.rules.as_deref().unwrap_or_default();
        for (index, rule) in spec_rules.iter().enumerate() {
            let name = name(policy, index);
            let generated = Rule::new(&policy.namespace, rule).and_then(|mut rule| {
                rule.migrate_trust_domains(domains);
                rule.generate(chain, action)
            });
            match generated {
                Ok(generated) => {
                    rules.policies.insert(name, generated);
                }
                // Unknown keys are reported by validation; the rest is
                // what this chain cannot match.
                Err(e) => tracing::debug!("skipped rule {name} on {chain} filter chain: {e}"),
            }
        }
        if spec_rules.is_empty() {
            rules.policies.insert(name(policy, 0), match_never());
        }
    }
    rules
}

/// `ns[<namespace>]-policy[<name>]-rule[<index>]`: what Envoy reports as the
/// matched policy.
fn policy_name(policy: &Scoped<Authorization>, index: usize) -> String {
    format!(
        "ns[{}]-policy[{}]-rule[{index}]",
        policy.namespace, policy.name
    )
}

/// The policy of a policy without rules: it matches nothing, so an ALLOW
/// without rules denies everything and a DENY without rules does nothing.
fn match_never() -> Policy {
    Policy {
        permissions: vec![Permission::any().not()],
        principals: vec![Principal::any().not()],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
