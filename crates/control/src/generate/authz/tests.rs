//! The builder: which filters a set of policies makes, in which order, with
//! which rules, shadow rules and stat prefixes, decoded as Envoy reads them.

use std::path::Path;

use super::*;
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::rbac::v3 as envoy;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use oxmesh_config::object::Resource;
use oxmesh_config::service::ExportTo;
use prost::Message;

fn policy(name: &str, yaml: &str) -> Scoped<Authorization> {
    Scoped {
        namespace: "foo".to_owned(),
        name: name.to_owned(),
        export_to: ExportTo::All,
        spec: Authorization {
            policy: serde_saphyr::from_str(yaml).expect("the policy parses"),
            dry_run: false,
        },
    }
}

fn dry_run(mut policy: Scoped<Authorization>) -> Scoped<Authorization> {
    policy.spec.dry_run = true;
    policy
}

fn local(policies: &[Scoped<Authorization>]) -> Local<'_> {
    Local::new(policies, TrustDomains::new("cluster.local", &[]))
}

fn http(policies: &[Scoped<Authorization>]) -> Vec<HttpRbac> {
    local(policies)
        .http()
        .into_iter()
        .map(|f| {
            assert_eq!(f.name, "envoy.filters.http.rbac");
            let Some(http_filter::ConfigType::TypedConfig(any)) = f.config_type else {
                panic!("typed config");
            };
            assert_eq!(
                any.type_url,
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
            );
            HttpRbac::decode(any.value.as_slice()).expect("decodes")
        })
        .collect()
}

fn tcp(policies: &[Scoped<Authorization>]) -> Vec<NetworkRbac> {
    local(policies)
        .tcp()
        .into_iter()
        .map(|f| {
            assert_eq!(f.name, "envoy.filters.network.rbac");
            let Some(filter::ConfigType::TypedConfig(any)) = f.config_type else {
                panic!("typed config");
            };
            assert_eq!(
                any.type_url,
                "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
            );
            NetworkRbac::decode(any.value.as_slice()).expect("decodes")
        })
        .collect()
}

fn rbac(action: envoy::rbac::Action, policies: Vec<(&str, Policy)>) -> envoy::Rbac {
    envoy::Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(name, p)| (name.to_owned(), p))
            .collect(),
        ..Default::default()
    }
}

fn match_all() -> Policy {
    Policy {
        permissions: vec![Permission::and(vec![Permission::any()])],
        principals: vec![Principal::and(vec![Principal::any()])],
        ..Default::default()
    }
}

fn names(rules: Option<&envoy::Rbac>) -> Vec<&str> {
    let mut names: Vec<&str> = rules
        .map(|r| r.policies.keys().map(String::as_str).collect())
        .unwrap_or_default();
    names.sort_unstable();
    names
}

#[test]
fn no_policy_no_filter() {
    assert!(local(&[]).http().is_empty());
    assert!(local(&[]).tcp().is_empty());
    // CUSTOM policies are the ext_authz builder's.
    let custom = [policy(
        "ext",
        "{action: CUSTOM, provider: {name: p}, rules: [{}]}",
    )];
    assert!(local(&custom).http().is_empty());
    assert!(local(&custom).tcp().is_empty());
}

#[test]
fn allow_without_rules_denies_everything() {
    for spec in ["{}", "{rules: []}"] {
        let expected = HttpRbac {
            rules: Some(rbac(
                Action::Allow,
                vec![("ns[foo]-policy[allow-none]-rule[0]", match_never())],
            )),
            shadow_rules_stat_prefix: "istio_dry_run_allow_".to_owned(),
            ..Default::default()
        };
        assert_eq!(http(&[policy("allow-none", spec)]), [expected], "{spec}");
    }
    assert_eq!(
        match_never(),
        Policy {
            permissions: vec![Permission {
                rule: Some(envoy::permission::Rule::NotRule(
                    Box::new(Permission::any())
                )),
            }],
            principals: vec![Principal {
                identifier: Some(envoy::principal::Identifier::NotId(Box::new(
                    Principal::any()
                ))),
            }],
            ..Default::default()
        }
    );
}

#[test]
fn an_empty_rule_matches_everything() {
    let allow = http(&[policy("all", "{rules: [{}]}")]);
    assert_eq!(
        allow,
        [HttpRbac {
            rules: Some(rbac(
                Action::Allow,
                vec![("ns[foo]-policy[all]-rule[0]", match_all())]
            )),
            shadow_rules_stat_prefix: "istio_dry_run_allow_".to_owned(),
            ..Default::default()
        }]
    );
    let deny = tcp(&[policy("all", "{action: DENY, rules: [{}]}")]);
    assert_eq!(
        deny,
        [NetworkRbac {
            rules: Some(rbac(
                Action::Deny,
                vec![("ns[foo]-policy[all]-rule[0]", match_all())]
            )),
            stat_prefix: "tcp.".to_owned(),
            shadow_rules_stat_prefix: "istio_dry_run_allow_".to_owned(),
            ..Default::default()
        }]
    );
}

#[test]
fn audit_then_deny_then_allow() {
    let policies = [
        policy("a", "{rules: [{}]}"),
        policy("c", "{action: CUSTOM, provider: {name: p}, rules: [{}]}"),
        policy("d", "{action: DENY, rules: [{}]}"),
        policy("l", "{action: AUDIT, rules: [{}]}"),
        policy("a2", "{action: ALLOW, rules: [{}, {}]}"),
    ];
    let filters = http(&policies);
    let actions: Vec<i32> = filters
        .iter()
        .map(|f| f.rules.as_ref().map_or(-1, |r| r.action))
        .collect();
    assert_eq!(
        actions,
        [
            Action::Log as i32,
            Action::Deny as i32,
            Action::Allow as i32
        ]
    );
    assert_eq!(
        names(filters[2].rules.as_ref()),
        [
            "ns[foo]-policy[a2]-rule[0]",
            "ns[foo]-policy[a2]-rule[1]",
            "ns[foo]-policy[a]-rule[0]",
        ]
    );
    // Without dry-run policies every filter still names the ALLOW prefix, as
    // Istio's do.
    assert!(
        filters
            .iter()
            .all(|f| f.shadow_rules.is_none()
                && f.shadow_rules_stat_prefix == "istio_dry_run_allow_")
    );
    let tcp_actions: Vec<i32> = tcp(&policies)
        .iter()
        .map(|f| f.rules.as_ref().map_or(-1, |r| r.action))
        .collect();
    assert_eq!(tcp_actions, actions);
}

#[test]
fn dry_run_policies_are_shadow_rules() {
    let only = http(&[dry_run(policy("dry", "{rules: [{}]}"))]);
    assert_eq!(
        only,
        [HttpRbac {
            shadow_rules: Some(rbac(
                Action::Allow,
                vec![("ns[foo]-policy[dry]-rule[0]", match_all())]
            )),
            shadow_rules_stat_prefix: "istio_dry_run_allow_".to_owned(),
            ..Default::default()
        }]
    );
    let mixed = tcp(&[
        dry_run(policy("dry", "{rules: [{}]}")),
        policy("real", "{rules: [{}]}"),
    ]);
    assert_eq!(mixed.len(), 1);
    assert_eq!(
        names(mixed[0].rules.as_ref()),
        ["ns[foo]-policy[real]-rule[0]"]
    );
    assert_eq!(
        names(mixed[0].shadow_rules.as_ref()),
        ["ns[foo]-policy[dry]-rule[0]"]
    );
    let deny = http(&[dry_run(policy("dry", "{action: DENY, rules: [{}]}"))]);
    assert_eq!(deny[0].rules, None);
    assert_eq!(deny[0].shadow_rules_stat_prefix, "istio_dry_run_deny_");
    let audit = http(&[dry_run(policy("dry", "{action: AUDIT, rules: [{}]}"))]);
    assert_eq!(
        audit[0].shadow_rules.as_ref().map(|r| r.action),
        Some(Action::Log as i32)
    );
    assert_eq!(audit[0].shadow_rules_stat_prefix, "");
}

const MIXED: &str = "rules:\n\
    - to: [{operation: {methods: [GET]}}]\n\
    - to: [{operation: {ports: ['80']}}]\n\
    - from: [{source: {requestPrincipals: ['*']}}]\n\
    - from: [{source: {namespaces: [ns]}}]\n";

#[test]
fn tcp_keeps_what_it_can_see() {
    let allow = [policy("mixed", MIXED)];
    assert_eq!(
        names(http(&allow)[0].rules.as_ref()),
        [
            "ns[foo]-policy[mixed]-rule[0]",
            "ns[foo]-policy[mixed]-rule[1]",
            "ns[foo]-policy[mixed]-rule[2]",
            "ns[foo]-policy[mixed]-rule[3]",
        ]
    );
    // Skipped rules leave their index unused.
    assert_eq!(
        names(tcp(&allow)[0].rules.as_ref()),
        [
            "ns[foo]-policy[mixed]-rule[1]",
            "ns[foo]-policy[mixed]-rule[3]",
        ]
    );
    // An ALLOW made only of HTTP fields allows nothing on TCP: its rules are
    // there and empty.
    let http_only = tcp(&[policy(
        "http-only",
        "{rules: [{to: [{operation: {paths: [/a]}}]}]}",
    )]);
    assert_eq!(http_only[0].rules, Some(rbac(Action::Allow, Vec::new())));
    // A DENY of HTTP fields denies every TCP connection.
    let deny = tcp(&[policy(
        "deny",
        "{action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}",
    )]);
    assert_eq!(
        deny[0].rules,
        Some(rbac(
            Action::Deny,
            vec![("ns[foo]-policy[deny]-rule[0]", match_all())]
        ))
    );
}

#[test]
fn an_invalid_rule_is_skipped_alone() {
    let policies = [policy(
        "p",
        "rules: [{when: [{key: request.path, values: [/a]}]}, {}]",
    )];
    assert_eq!(
        names(http(&policies)[0].rules.as_ref()),
        ["ns[foo]-policy[p]-rule[1]"]
    );
}

#[test]
fn trust_domain_aliases_reach_the_filters() {
    let policies = [policy(
        "p",
        "rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]}]",
    )];
    let builder = Local::new(&policies, TrustDomains::new("td1", &["old-td".to_owned()]));
    let Some(http_filter::ConfigType::TypedConfig(any)) = builder.http().remove(0).config_type
    else {
        panic!("typed config");
    };
    let rules = HttpRbac::decode(any.value.as_slice())
        .expect("decodes")
        .rules
        .expect("rules");
    let policy = &rules.policies["ns[foo]-policy[p]-rule[0]"];
    let text = format!("{:?}", policy.principals);
    assert!(text.contains("spiffe://td1/ns/a/sa/b"), "{text}");
    assert!(text.contains("spiffe://old-td/ns/a/sa/b"), "{text}");
    assert!(!text.contains("cluster.local"), "{text}");
}

/// Istio's validation corpus, every field and `when` key: generates on both
/// chain kinds for every action without a panic.
#[test]
fn the_validation_corpus_generates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/istio/validation/authz-valid.yaml");
    let loaded = oxmesh_config::load::load_paths(&[path]);
    let specs: Vec<_> = loaded
        .objects
        .iter()
        .filter_map(|s| match &s.object.resource {
            Resource::AuthorizationPolicy(p) => Some((s.object.name().to_owned(), (**p).clone())),
            _ => None,
        })
        .collect();
    assert!(
        specs.len() >= 2,
        "the corpus loads: {:?}",
        loaded.diagnostics
    );
    for action in [PolicyAction::Allow, PolicyAction::Deny, PolicyAction::Audit] {
        let policies: Vec<Scoped<Authorization>> = specs
            .iter()
            .map(|(name, spec)| Scoped {
                namespace: "foo".to_owned(),
                name: name.clone(),
                export_to: ExportTo::All,
                spec: Authorization {
                    policy: oxmesh_config::security::authorization_policy::AuthorizationPolicy {
                        action,
                        ..spec.clone()
                    },
                    dry_run: false,
                },
            })
            .collect();
        let http = http(&policies);
        assert_eq!(http.len(), 1);
        let rules = http[0].rules.as_ref().expect("rules");
        assert!(
            rules.policies.len() >= specs.len(),
            "every policy has rules on HTTP: {:?}",
            names(Some(rules))
        );
        assert_eq!(tcp(&policies).len(), 1);
    }
}
