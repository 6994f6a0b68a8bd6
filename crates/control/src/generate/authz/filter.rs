//! The RBAC filters themselves: `envoy.filters.http.rbac` for connection
//! managers and `envoy.filters.network.rbac` for TCP chains, each with enforced
//! `rules` and dry-run `shadow_rules`.
//!
//! Their configs are encoded from local mirrors of Envoy's messages that keep
//! the policies in a `BTreeMap`: envoy-types keeps them in a `HashMap`, whose
//! order (and so the encoding, and so the listener's version) would change
//! from one push to the next. The wire format is Envoy's; only the order of the
//! map entries is fixed.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::Policy;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::util::pack_any;

pub(crate) const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub(crate) const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix for network RBAC: stats read `tcp.rbac.allowed`.
const TCP_STAT_PREFIX: &str = "tcp.";
/// Where Envoy's shadow (dry-run) results and stats go, per shadow action.
const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";
const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";

/// `envoy.config.rbac.v3.RBAC`: an action and the policies, by name, that
/// trigger it. Envoy evaluates them in name order.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Rules {
    #[prost(int32, tag = "1")]
    pub(crate) action: i32,
    #[prost(btree_map = "string, message", tag = "2")]
    pub(crate) policies: BTreeMap<String, Policy>,
}

impl Rules {
    pub(crate) fn new(action: Action) -> Self {
        Self {
            action: action as i32,
            policies: BTreeMap::new(),
        }
    }
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC`, the fields Istio sets.
#[derive(Clone, PartialEq, prost::Message)]
struct HttpRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<Rules>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<Rules>,
    #[prost(string, tag = "3")]
    shadow_rules_stat_prefix: String,
}

impl prost::Name for HttpRbac {
    const NAME: &'static str = "RBAC";
    const PACKAGE: &'static str = "envoy.extensions.filters.http.rbac.v3";
    fn type_url() -> String {
        format!("type.googleapis.com/{}.{}", Self::PACKAGE, Self::NAME)
    }
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`, the fields Istio sets.
#[derive(Clone, PartialEq, prost::Message)]
struct NetworkRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<Rules>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<Rules>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
    #[prost(string, tag = "5")]
    shadow_rules_stat_prefix: String,
}

impl prost::Name for NetworkRbac {
    const NAME: &'static str = "RBAC";
    const PACKAGE: &'static str = "envoy.extensions.filters.network.rbac.v3";
    fn type_url() -> String {
        format!("type.googleapis.com/{}.{}", Self::PACKAGE, Self::NAME)
    }
}

/// The shadow stat prefix, chosen from the shadow rules' action. Istio reads
/// the action of absent shadow rules as the enum's default, ALLOW, so a filter
/// without dry-run policies still says `istio_dry_run_allow_`; kept, so configs
/// compare equal with Istio's.
fn shadow_prefix(shadow: Option<&Rules>) -> &'static str {
    let action = shadow.map_or(Action::Allow as i32, |s| s.action);
    match Action::try_from(action) {
        Ok(Action::Allow) => DRY_RUN_ALLOW_PREFIX,
        Ok(Action::Deny) => DRY_RUN_DENY_PREFIX,
        _ => "",
    }
}

/// An HTTP RBAC filter: `rules` enforced, `shadow_rules` only reported.
pub(crate) fn http(rules: Option<Rules>, shadow_rules: Option<Rules>) -> HttpFilter {
    let prefix = shadow_prefix(shadow_rules.as_ref());
    http_with_prefix(rules, shadow_rules, prefix)
}

/// An HTTP RBAC filter whose shadow results go under `prefix` (CUSTOM's
/// `istio_ext_authz_`, which its ext_authz filter reads).
pub(crate) fn http_with_prefix(
    rules: Option<Rules>,
    shadow_rules: Option<Rules>,
    prefix: &str,
) -> HttpFilter {
    let config = HttpRbac {
        shadow_rules_stat_prefix: prefix.to_owned(),
        rules,
        shadow_rules,
    };
    HttpFilter {
        name: HTTP_RBAC.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

/// A network RBAC filter, for a chain ending in `tcp_proxy`.
pub(crate) fn network(rules: Option<Rules>, shadow_rules: Option<Rules>) -> Filter {
    let prefix = shadow_prefix(shadow_rules.as_ref());
    network_with_prefix(rules, shadow_rules, prefix)
}

pub(crate) fn network_with_prefix(
    rules: Option<Rules>,
    shadow_rules: Option<Rules>,
    prefix: &str,
) -> Filter {
    let config = NetworkRbac {
        shadow_rules_stat_prefix: prefix.to_owned(),
        stat_prefix: TCP_STAT_PREFIX.to_owned(),
        rules,
        shadow_rules,
    };
    Filter {
        name: NETWORK_RBAC.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::rbac::v3 as envoy;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as EnvoyHttpRbac;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as EnvoyNetworkRbac;
    use prost::Message;

    fn rules(action: Action, names: &[&str]) -> Rules {
        let mut rules = Rules::new(action);
        for name in names {
            rules.policies.insert((*name).to_owned(), Policy::default());
        }
        rules
    }

    fn envoy_rules(action: Action, names: &[&str]) -> envoy::Rbac {
        envoy::Rbac {
            action: action as i32,
            policies: names
                .iter()
                .map(|n| ((*n).to_owned(), Policy::default()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn http_filters_decode_as_envoys() {
        let filter = http(
            Some(rules(Action::Deny, &["b", "a"])),
            Some(rules(Action::Deny, &["c"])),
        );
        assert_eq!(filter.name, "envoy.filters.http.rbac");
        let Some(http_filter::ConfigType::TypedConfig(any)) = filter.config_type else {
            panic!("typed config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        );
        let decoded = EnvoyHttpRbac::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(
            decoded,
            EnvoyHttpRbac {
                rules: Some(envoy_rules(Action::Deny, &["a", "b"])),
                shadow_rules: Some(envoy_rules(Action::Deny, &["c"])),
                shadow_rules_stat_prefix: "istio_dry_run_deny_".to_owned(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn network_filters_decode_as_envoys() {
        let filter = network(Some(rules(Action::Allow, &["a"])), None);
        assert_eq!(filter.name, "envoy.filters.network.rbac");
        let Some(filter::ConfigType::TypedConfig(any)) = filter.config_type else {
            panic!("typed config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
        );
        let decoded = EnvoyNetworkRbac::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(
            decoded,
            EnvoyNetworkRbac {
                rules: Some(envoy_rules(Action::Allow, &["a"])),
                stat_prefix: "tcp.".to_owned(),
                shadow_rules_stat_prefix: "istio_dry_run_allow_".to_owned(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn shadow_prefix_follows_the_shadow_action() {
        assert_eq!(shadow_prefix(None), "istio_dry_run_allow_");
        assert_eq!(
            shadow_prefix(Some(&Rules::new(Action::Allow))),
            "istio_dry_run_allow_"
        );
        assert_eq!(
            shadow_prefix(Some(&Rules::new(Action::Deny))),
            "istio_dry_run_deny_"
        );
        assert_eq!(shadow_prefix(Some(&Rules::new(Action::Log))), "");
    }

    #[test]
    fn encoding_is_the_same_every_time() {
        let names: Vec<String> = (0..50)
            .map(|i| format!("ns[a]-policy[p]-rule[{i}]"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let first = http(Some(rules(Action::Allow, &names)), None);
        let mut reversed = names.clone();
        reversed.reverse();
        for _ in 0..5 {
            assert_eq!(http(Some(rules(Action::Allow, &reversed)), None), first);
        }
    }
}
