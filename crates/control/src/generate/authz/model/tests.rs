//! The rule model against hand-written Envoy protos: every field and `when`
//! key, the not-forms, and what TCP chains and each action do with what a chain
//! cannot match.

use super::*;
use crate::generate::authz::matcher::{self, any_value, exact, prefix, regex, suffix};
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as P;
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier as I};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, ValueMatcher};

fn parse(yaml: &str) -> config::Rule {
    serde_saphyr::from_str(yaml).expect("the rule parses")
}

fn generate_with(
    yaml: &str,
    domains: &TrustDomains,
    chain: Chain,
    action: Action,
) -> Result<Policy, RuleError> {
    let mut rule = Rule::new("foo", &parse(yaml))?;
    rule.migrate_trust_domains(domains);
    rule.generate(chain, action)
}

fn generate(yaml: &str, chain: Chain, action: Action) -> Result<Policy, RuleError> {
    generate_with(
        yaml,
        &TrustDomains::new("cluster.local", &[]),
        chain,
        action,
    )
}

fn http_allow(yaml: &str) -> Policy {
    generate(yaml, Chain::Http, Action::Allow).expect("generates")
}

fn perm(rule: P) -> Permission {
    Permission { rule: Some(rule) }
}

fn pid(identifier: I) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn authn(name: StringMatcher) -> Principal {
    pid(I::Authenticated(Authenticated {
        principal_name: Some(name),
    }))
}

fn cidr(address: &str, len: u32) -> CidrRange {
    CidrRange {
        address_prefix: address.to_owned(),
        prefix_len: Some(crate::generate::wire::u32_value(len)),
    }
}

#[allow(deprecated)]
fn jwt_principal(path: &[&str], value: ValueMatcher) -> Principal {
    let path = std::iter::once("payload".to_owned()).chain(path.iter().map(|s| (*s).to_owned()));
    pid(I::Metadata(matcher::metadata(
        "envoy.filters.http.jwt_authn",
        path,
        value,
    )))
}

fn iss_sub(iss: StringMatcher, sub: StringMatcher) -> Principal {
    Principal::and(vec![
        jwt_principal(&["iss"], matcher::string_value(iss)),
        jwt_principal(&["sub"], matcher::string_value(sub)),
    ])
}

/// The members of the AND of a policy's only principal.
fn principal_members(policy: &Policy) -> &[Principal] {
    match policy.principals.as_slice() {
        [
            Principal {
                identifier: Some(I::AndIds(set)),
            },
        ] => &set.ids,
        other => panic!("one and_ids principal expected, got {other:?}"),
    }
}

/// The members of the AND of a policy's only permission.
fn permission_members(policy: &Policy) -> &[Permission] {
    match policy.permissions.as_slice() {
        [
            Permission {
                rule: Some(P::AndRules(set)),
            },
        ] => &set.rules,
        other => panic!("one and_rules permission expected, got {other:?}"),
    }
}

fn any_permission() -> Vec<Permission> {
    vec![Permission::and(vec![Permission::any()])]
}

fn any_principal() -> Vec<Principal> {
    vec![Principal::and(vec![Principal::any()])]
}

#[test]
fn an_empty_rule_matches_everything() {
    let policy = http_allow("{}");
    assert_eq!(policy.permissions, any_permission());
    assert_eq!(policy.principals, any_principal());
    // A null source or operation is an empty one.
    let policy = http_allow("{from: [{source: null}], to: [{operation: null}]}");
    assert_eq!(policy.permissions, any_permission());
    assert_eq!(policy.principals, any_principal());
}

#[test]
fn froms_and_tos_are_alternatives() {
    let policy = http_allow(
        "from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}]\n\
         to: [{operation: {ports: ['1']}}, {operation: {ports: ['2']}}, {operation: {ports: ['3']}}]\n",
    );
    assert_eq!(policy.principals.len(), 2);
    assert_eq!(policy.permissions.len(), 3);
    assert_eq!(
        policy.permissions[2],
        Permission::and(vec![Permission::or(vec![perm(P::DestinationPort(3))])])
    );
}

#[test]
fn principals_take_the_spiffe_prefix() {
    let policy = http_allow(
        "from: [{source: {principals: [cluster.local/ns/a/sa/b, 'td/ns/x/*', '*/sa/c', '*'], \
         notPrincipals: [bad]}}]",
    );
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![
                authn(exact("spiffe://cluster.local/ns/a/sa/b", false)),
                authn(prefix("spiffe://td/ns/x/", false)),
                authn(regex("spiffe://.*/sa/c".to_owned())),
                authn(any_value()),
            ]),
            Principal::or(vec![authn(exact("spiffe://bad", false))]).not(),
        ]
    );
}

#[test]
fn request_principals_match_issuer_and_subject_apart() {
    let policy = http_allow(
        "from: [{source: {requestPrincipals: ['https://example.com/*', iss/sub, '*'], \
         notRequestPrincipals: ['*-bad']}}]",
    );
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![
                iss_sub(exact("https://example.com", false), any_value()),
                iss_sub(exact("iss", false), exact("sub", false)),
                iss_sub(any_value(), any_value()),
            ]),
            // One value stands alone, not inside an OR.
            iss_sub(any_value(), suffix("-bad", false)).not(),
        ]
    );
}

#[test]
fn namespaces_service_accounts_and_trust_domains_match_the_spiffe_id() {
    let policy = http_allow(
        "from: [{source: {namespaces: [ns, 'ns-*', '*-ns', '*', 'a[0].b'], notNamespaces: [x]}}]",
    );
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![
                authn(regex(".*/ns/ns/.*".to_owned())),
                authn(regex(".*/ns/ns-.*/.*".to_owned())),
                authn(regex(".*/ns/.*-ns/.*".to_owned())),
                authn(regex(".*/ns/.*/.*".to_owned())),
                authn(regex(r".*/ns/a\[0\]\.b/.*".to_owned())),
            ]),
            Principal::or(vec![authn(regex(".*/ns/x/.*".to_owned()))]).not(),
        ]
    );
    // A bare account is in the policy's namespace (`foo`).
    let policy = http_allow(
        "from: [{source: {serviceAccounts: [my-ns/my-sa, sa.1], notServiceAccounts: [other]}}]",
    );
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![
                authn(regex(
                    "spiffe://.+/ns/my-ns/(.+/|)sa/my-sa(/.+)?".to_owned()
                )),
                authn(regex(r"spiffe://.+/ns/foo/(.+/|)sa/sa\.1(/.+)?".to_owned())),
            ]),
            Principal::or(vec![authn(regex(
                "spiffe://.+/ns/foo/(.+/|)sa/other(/.+)?".to_owned()
            ))])
            .not(),
        ]
    );
    let policy = http_allow(
        "from: [{source: {trustDomains: ['*', td.example, 'bad*', '*.old'], notTrustDomains: [x]}}]",
    );
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![
                authn(prefix("spiffe://", false)),
                authn(prefix("spiffe://td.example/", false)),
                authn(regex("spiffe://bad[^/]*/.*".to_owned())),
                authn(regex(r"spiffe://[^/]*\.old/.*".to_owned())),
            ]),
            Principal::or(vec![authn(prefix("spiffe://x/", false))]).not(),
        ]
    );
}

#[test]
fn ip_blocks_are_the_peer_and_remote_ip_blocks_the_client() {
    let policy = http_allow(
        "from: [{source: {ipBlocks: [1.2.3.4, 5.6.7.8/16], notIpBlocks: ['2001:db8::/32'], \
         remoteIpBlocks: [10.0.0.0/8], notRemoteIpBlocks: [10.1.1.1]}}]",
    );
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![pid(I::RemoteIp(cidr("10.0.0.0", 8)))]),
            Principal::or(vec![pid(I::RemoteIp(cidr("10.1.1.1", 32)))]).not(),
            Principal::or(vec![
                pid(I::DirectRemoteIp(cidr("1.2.3.4", 32))),
                // The address as written, not masked.
                pid(I::DirectRemoteIp(cidr("5.6.7.8", 16))),
            ]),
            Principal::or(vec![pid(I::DirectRemoteIp(cidr("2001:db8::", 32)))]).not(),
        ]
    );
}

#[test]
fn source_fields_come_in_istios_order() {
    let policy = http_allow(
        "from: [{source: {ipBlocks: [1.1.1.1], remoteIpBlocks: [2.2.2.2], namespaces: [n], \
         trustDomains: [t], requestPrincipals: [i/s], principals: [p]}}]\n\
         when: [{key: source.ip, values: [3.3.3.3]}]\n",
    );
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![authn(exact("spiffe://p", false))]),
            iss_sub(exact("i", false), exact("s", false)),
            Principal::or(vec![authn(prefix("spiffe://t/", false))]),
            Principal::or(vec![authn(regex(".*/ns/n/.*".to_owned()))]),
            Principal::or(vec![pid(I::RemoteIp(cidr("2.2.2.2", 32)))]),
            Principal::or(vec![pid(I::DirectRemoteIp(cidr("1.1.1.1", 32)))]),
            Principal::or(vec![pid(I::DirectRemoteIp(cidr("3.3.3.3", 32)))]),
        ]
    );
}

#[test]
fn operation_fields() {
    let policy = http_allow(
        "to: [{operation: {\
         hosts: [exact.com, '*.suffix.com', 'prefix.*', '*'], notHosts: [Not.com], \
         methods: [GET, 'P*', '*T', '*'], notMethods: [DELETE], \
         paths: [/exact, '/prefix/*', '*/suffix', '*', '/t/{*}', '/{**}/t'], notPaths: [/admin], \
         ports: ['80'], notPorts: ['9000']}}]",
    );
    let host = |v: &str| perm(P::Header(matcher::host(":authority", v)));
    let method = |v: &str| perm(P::Header(matcher::header(":method", v)));
    let path = |m: StringMatcher| {
        perm(P::UrlPath(
            envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher {
                rule: Some(
                    envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(m),
                ),
            },
        ))
    };
    let template = |v: &str| perm(P::UriTemplate(matcher::path_template(v)));
    assert_eq!(
        permission_members(&policy),
        [
            Permission::or(vec![
                host("exact.com"),
                host("*.suffix.com"),
                host("prefix.*"),
                host("*"),
            ]),
            Permission::or(vec![host("Not.com")]).not(),
            Permission::or(vec![method("GET"), method("P*"), method("*T"), method("*")]),
            Permission::or(vec![method("DELETE")]).not(),
            Permission::or(vec![
                path(exact("/exact", false)),
                path(prefix("/prefix/", false)),
                path(suffix("/suffix", false)),
                path(any_value()),
                template("/t/{*}"),
                template("/{**}/t"),
            ]),
            Permission::or(vec![path(exact("/admin", false))]).not(),
            Permission::or(vec![perm(P::DestinationPort(80))]),
            Permission::or(vec![perm(P::DestinationPort(9000))]).not(),
        ]
    );
}

#[test]
fn when_keys() {
    let policy = http_allow(
        "from: [{source: {namespaces: [n]}}]\n\
         to: [{operation: {ports: ['80']}}]\n\
         when:\n\
         - {key: 'request.headers[X-Id]', values: [a, '*'], notValues: ['b*']}\n\
         - {key: source.ip, values: [10.0.0.1]}\n\
         - {key: remote.ip, notValues: [10.0.0.0/24]}\n\
         - {key: source.namespace, values: ['ns-*']}\n\
         - {key: source.principal, values: [cluster.local/ns/a/sa/b]}\n\
         - {key: source.serviceAccount, values: [a/b]}\n\
         - {key: source.trustDomain, values: [td]}\n\
         - {key: request.auth.principal, values: [iss/sub]}\n\
         - {key: request.auth.audiences, values: [aud1, 'aud2*']}\n\
         - {key: request.auth.presenter, notValues: [p]}\n\
         - {key: 'request.auth.claims[groups]', values: [admin]}\n\
         - {key: 'request.auth.claims[a][b]', values: [c]}\n\
         - {key: destination.ip, values: [10.0.0.2]}\n\
         - {key: destination.port, values: ['8080']}\n\
         - {key: connection.sni, values: ['*.example.com']}\n\
         - {key: 'experimental.envoy.filters.a.b[c]', values: [v, '[w]'], notValues: [x]}\n",
    );
    let header = |v: &str| pid(I::Header(matcher::header("X-Id", v)));
    let one_string = |v: &str| matcher::string_value(matcher::string(v));
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![authn(regex(".*/ns/n/.*".to_owned()))]),
            Principal::or(vec![header("a"), header("*")]),
            Principal::or(vec![header("b*")]).not(),
            Principal::or(vec![pid(I::DirectRemoteIp(cidr("10.0.0.1", 32)))]),
            Principal::or(vec![pid(I::RemoteIp(cidr("10.0.0.0", 24)))]).not(),
            Principal::or(vec![authn(regex(".*/ns/ns-.*/.*".to_owned()))]),
            Principal::or(vec![authn(exact(
                "spiffe://cluster.local/ns/a/sa/b",
                false
            ))]),
            Principal::or(vec![authn(regex(
                "spiffe://.+/ns/a/(.+/|)sa/b(/.+)?".to_owned()
            ))]),
            Principal::or(vec![authn(prefix("spiffe://td/", false))]),
            iss_sub(exact("iss", false), exact("sub", false)),
            jwt_principal(
                &["aud"],
                matcher::list_or_value(matcher::any_of(vec![
                    one_string("aud1"),
                    one_string("aud2*"),
                ])),
            ),
            jwt_principal(&["azp"], matcher::list_or_value(one_string("p"))).not(),
            jwt_principal(&["groups"], matcher::list_or_value(one_string("admin"))),
            jwt_principal(&["a", "b"], matcher::list_or_value(one_string("c"))),
        ]
    );
    #[allow(deprecated)]
    let envoy_filter = |value: ValueMatcher| {
        perm(P::Metadata(matcher::metadata(
            "envoy.filters.a.b",
            ["c".to_owned()],
            value,
        )))
    };
    assert_eq!(
        permission_members(&policy),
        [
            Permission::or(vec![perm(P::DestinationPort(80))]),
            Permission::or(vec![perm(P::DestinationIp(cidr("10.0.0.2", 32)))]),
            Permission::or(vec![perm(P::DestinationPort(8080))]),
            Permission::or(vec![perm(P::RequestedServerName(suffix(
                ".example.com",
                false
            )))]),
            envoy_filter(matcher::any_of(vec![
                one_string("v"),
                matcher::list_of(one_string("w")),
            ])),
            envoy_filter(one_string("x")).not(),
        ]
    );
}

#[test]
fn when_conditions_join_every_source_and_operation() {
    let policy = http_allow(
        "from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}]\n\
         to: [{operation: {ports: ['1']}}, {operation: {ports: ['2']}}]\n\
         when: [{key: source.ip, values: [1.1.1.1]}, {key: destination.port, values: ['9']}]\n",
    );
    let source_ip = Principal::or(vec![pid(I::DirectRemoteIp(cidr("1.1.1.1", 32)))]);
    let port_9 = Permission::or(vec![perm(P::DestinationPort(9))]);
    for principal in &policy.principals {
        let Some(I::AndIds(set)) = &principal.identifier else {
            panic!("and_ids");
        };
        assert_eq!(set.ids.len(), 2);
        assert_eq!(set.ids[1], source_ip);
    }
    for permission in &policy.permissions {
        let Some(P::AndRules(set)) = &permission.rule else {
            panic!("and_rules");
        };
        assert_eq!(set.rules.len(), 2);
        assert_eq!(set.rules[1], port_9);
    }
    // Without from or to, the when conditions alone.
    let policy = http_allow("when: [{key: destination.port, values: ['9']}]");
    assert_eq!(policy.permissions, vec![Permission::and(vec![port_9])]);
    assert_eq!(policy.principals, any_principal());
}

#[test]
fn an_unknown_when_key_spoils_the_rule_for_every_action() {
    for action in [Action::Allow, Action::Deny, Action::Log] {
        for chain in [Chain::Http, Chain::Tcp] {
            assert_eq!(
                generate(
                    "when: [{key: destination.namespace, values: [a]}]",
                    chain,
                    action
                ),
                Err(RuleError::UnknownAttribute(
                    "destination.namespace".to_owned()
                ))
            );
        }
    }
}

const HTTP_ONLY: &str = "from: [{source: {requestPrincipals: ['*'], namespaces: [n]}}]\n\
     to: [{operation: {methods: [GET], ports: ['80'], hosts: [h], paths: [/p]}}]\n\
     when: [{key: 'request.headers[x]', values: [v]}, {key: request.auth.audiences, values: [a]}, \
     {key: request.auth.presenter, values: [p]}, {key: 'request.auth.claims[c]', values: [v]}, \
     {key: request.auth.principal, values: [i/s]}]\n";

#[test]
fn allow_skips_http_only_rules_on_tcp() {
    let error = generate(HTTP_ONLY, Chain::Tcp, Action::Allow).expect_err("skipped");
    assert!(matches!(error, RuleError::HttpOnly(_)), "{error}");
    assert_eq!(
        generate(
            "to: [{operation: {methods: [GET]}}]",
            Chain::Tcp,
            Action::Allow
        ),
        Err(RuleError::HttpOnly(":method".to_owned()))
    );
    assert_eq!(
        generate(
            "when: [{key: 'request.headers[x]', values: [v]}]",
            Chain::Tcp,
            Action::Allow
        ),
        Err(RuleError::HttpOnly("request.headers[x]".to_owned()))
    );
    // The same rule is whole on HTTP.
    assert!(generate(HTTP_ONLY, Chain::Http, Action::Allow).is_ok());
}

#[test]
fn deny_and_audit_drop_http_only_fields_on_tcp() {
    for action in [Action::Deny, Action::Log] {
        let policy = generate(HTTP_ONLY, Chain::Tcp, action).expect("generates");
        assert_eq!(
            principal_members(&policy),
            [Principal::or(vec![authn(regex(".*/ns/n/.*".to_owned()))])]
        );
        assert_eq!(
            permission_members(&policy),
            [Permission::or(vec![perm(P::DestinationPort(80))])]
        );
        // Only HTTP fields: the rule widens to everything.
        let policy = generate(
            "from: [{source: {requestPrincipals: ['*']}}]\nto: [{operation: {paths: [/a]}}]",
            Chain::Tcp,
            action,
        )
        .expect("generates");
        assert_eq!(policy.permissions, any_permission());
        assert_eq!(policy.principals, any_principal());
    }
}

#[test]
fn invalid_values_narrow_allow_and_widen_deny() {
    let rule = "from: [{source: {ipBlocks: [1.2.3.4, not-an-ip]}}]\n\
                to: [{operation: {ports: ['80', '99999']}}]\n";
    for chain in [Chain::Http, Chain::Tcp] {
        // Permissions are generated first, as in Istio.
        assert_eq!(
            generate(rule, chain, Action::Allow),
            Err(RuleError::Port("99999".to_owned()))
        );
        assert_eq!(
            generate(
                "from: [{source: {ipBlocks: [not-an-ip]}}]",
                chain,
                Action::Allow
            ),
            Err(RuleError::Cidr(matcher::InvalidCidr(
                "not-an-ip".to_owned()
            )))
        );
        let policy = generate(rule, chain, Action::Deny).expect("generates");
        assert_eq!(
            principal_members(&policy),
            [Principal::or(vec![pid(I::DirectRemoteIp(cidr(
                "1.2.3.4", 32
            )))])]
        );
        assert_eq!(
            permission_members(&policy),
            [Permission::or(vec![perm(P::DestinationPort(80))])]
        );
    }
    // Every value dropped: the field says nothing.
    let policy = generate(
        "from: [{source: {ipBlocks: [x]}}]",
        Chain::Http,
        Action::Deny,
    )
    .expect("generates");
    assert_eq!(policy.principals, any_principal());
    // A malformed key is an error of its values, on any chain.
    for key in ["request.headers", "experimental.envoy.filters.x"] {
        let rule = format!("when: [{{key: '{key}', values: [v]}}]");
        assert_eq!(
            generate(&rule, Chain::Http, Action::Allow),
            Err(RuleError::Key(key.to_owned()))
        );
        let policy = generate(&rule, Chain::Http, Action::Deny).expect("generates");
        assert_eq!(policy.principals, any_principal());
        assert_eq!(policy.permissions, any_permission());
    }
}

#[test]
fn trust_domain_aliases() {
    let domains = TrustDomains::new("td1", &["cluster.local".to_owned()]);
    let policy = generate_with(
        "from: [{source: {principals: [cluster.local/ns/a/sa/b], trustDomains: [td1]}}]",
        &domains,
        Chain::Http,
        Action::Allow,
    )
    .expect("generates");
    assert_eq!(
        principal_members(&policy),
        [
            Principal::or(vec![
                authn(exact("spiffe://td1/ns/a/sa/b", false)),
                authn(exact("spiffe://cluster.local/ns/a/sa/b", false)),
            ]),
            Principal::or(vec![
                authn(prefix("spiffe://td1/", false)),
                authn(prefix("spiffe://cluster.local/", false)),
            ]),
        ]
    );
    // `when` principals are rewritten once per source, as Istio does: with two
    // sources the aliases appear twice.
    let policy = generate_with(
        "from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}]\n\
         when: [{key: source.principal, values: [td1/ns/a/sa/b]}]\n",
        &domains,
        Chain::Http,
        Action::Allow,
    )
    .expect("generates");
    let td1 = authn(exact("spiffe://td1/ns/a/sa/b", false));
    let local = authn(exact("spiffe://cluster.local/ns/a/sa/b", false));
    let Some(I::AndIds(set)) = &policy.principals[1].identifier else {
        panic!("and_ids");
    };
    assert_eq!(
        set.ids[1],
        Principal::or(vec![td1.clone(), local.clone(), td1, local])
    );
}
