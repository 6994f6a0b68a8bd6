//! RequestAuthentications as the listeners carry them
//! (`tests/authentication/mesh.yaml`): one jwt_authn filter in front of the
//! RBAC filters on inbound connection managers and gateways, its providers
//! sorted by issuer with Istio's names, requirement and options, and keys
//! inline; outbound chains get none.

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use oxmesh_control::jwks::FAIL_CLOSED_JWKS;
use oxmesh_control::proxy::Proxy;
use oxmesh_control::push_context::PushContext;
use policy::{listeners, named, proxy};
use prost::Message;

mod policy;

const JWT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

fn context() -> PushContext {
    policy::context("authentication")
}

/// Per HTTP chain of `listener`: its connection manager's filter names and
/// its JWT filter's config, if any.
fn managers(
    ctx: &PushContext,
    proxy: &Proxy,
    listener: &str,
) -> Vec<(Vec<String>, Option<JwtAuthentication>)> {
    let listeners = listeners(ctx, proxy);
    let listener = named(&listeners, listener);
    let mut found = Vec::new();
    for chain in listener
        .filter_chains
        .iter()
        .chain(&listener.default_filter_chain)
    {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            let names = hcm.http_filters.iter().map(|f| f.name.clone()).collect();
            let jwt = hcm.http_filters.iter().find_map(|f| match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) if any.type_url == JWT_TYPE => {
                    Some(JwtAuthentication::decode(any.value.as_slice()).expect("jwt_authn"))
                }
                _ => None,
            });
            found.push((names, jwt));
        }
    }
    found
}

fn inline_jwks(config: &JwtAuthentication, provider: &str) -> String {
    match &config.providers[provider].jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(source)) => match &source.specifier {
            Some(Specifier::InlineString(text)) => text.clone(),
            other => panic!("inline string, not {other:?}"),
        },
        other => panic!("local JWKS, not {other:?}"),
    }
}

#[test]
fn the_workloads_rules_become_sorted_providers_before_rbac() {
    let ctx = context();
    let web = proxy("sidecar", "web-1", "shop", &[("app", "web")]);
    let inbound = managers(&ctx, &web, "virtualInbound");
    assert!(!inbound.is_empty());
    for (names, jwt) in &inbound {
        assert_eq!(
            names,
            &[
                "envoy.filters.http.jwt_authn",
                "envoy.filters.http.rbac",
                "istio.stats",
                "envoy.filters.http.router"
            ],
            "jwt_authn first, then authorization"
        );
        let jwt = jwt.as_ref().expect("a JWT filter");
        assert!(jwt.bypass_cors_preflight);
        let mut names: Vec<&String> = jwt.providers.keys().collect();
        names.sort();
        assert_eq!(names, ["origins-0", "origins-1"]);

        let web = &jwt.providers["origins-0"];
        assert_eq!(web.issuer, "https://a.example.com", "sorted by issuer");
        assert_eq!(web.audiences, ["web"]);
        assert!(web.forward);
        assert!(!web.clear_route_cache, "sidecars do not route on claims");
        assert_eq!(web.payload_in_metadata, "payload");
        assert_eq!(web.forward_payload_header, "x-jwt-payload");
        assert_eq!(web.from_headers[0].name, "x-jwt");
        assert_eq!(web.from_headers[0].value_prefix, "Token ");
        assert_eq!(web.from_cookies, ["session"]);
        assert_eq!(web.claim_to_headers[0].header_name, "x-user");
        assert_eq!(web.claim_to_headers[0].claim_name, "sub");
        let normalize = web
            .normalize_payload_in_metadata
            .as_ref()
            .expect("normalize");
        assert_eq!(
            normalize.space_delimited_claims,
            ["permission", "roles", "scope"]
        );
        assert!(inline_jwks(jwt, "origins-0").contains("\"kid\":\"a\""));

        // The mesh-wide rule's keys were never fetched: they verify nothing.
        let mesh = &jwt.providers["origins-1"];
        assert_eq!(mesh.issuer, "https://z.example.com");
        assert_eq!(inline_jwks(jwt, "origins-1"), FAIL_CLOSED_JWKS);

        // Any provider, or each provider's token or none.
        let [rule] = jwt.rules.as_slice() else {
            panic!("one rule");
        };
        let Some(RequirementType::Requires(requires)) = &rule.requirement_type else {
            panic!("inline requirement");
        };
        let Some(RequiresType::RequiresAny(any)) = &requires.requires_type else {
            panic!("any-of");
        };
        assert_eq!(any.requirements.len(), 3);
    }
    for (names, _) in managers(&ctx, &web, "virtualOutbound") {
        assert!(!names.contains(&"envoy.filters.http.jwt_authn".to_owned()));
    }
}

#[test]
fn a_workload_no_selector_picks_gets_the_mesh_wide_rule_only() {
    let ctx = context();
    let other = proxy("sidecar", "other-1", "shop", &[("app", "other")]);
    for (names, jwt) in managers(&ctx, &other, "virtualInbound") {
        assert_eq!(
            names,
            [
                "envoy.filters.http.jwt_authn",
                "istio.stats",
                "envoy.filters.http.router"
            ]
        );
        let jwt = jwt.expect("the mesh-wide rule");
        assert_eq!(jwt.providers.len(), 1);
        assert_eq!(jwt.providers["origins-0"].issuer, "https://z.example.com");
    }
}

#[test]
fn gateways_verify_before_routing_on_claims() {
    let ctx = context();
    let gateway = proxy(
        "router",
        "istio-ingressgateway-1",
        "istio-system",
        &[("istio", "ingressgateway")],
    );
    let managers = managers(&ctx, &gateway, "0.0.0.0_8080");
    let [(names, jwt)] = managers.as_slice() else {
        panic!("one chain: {managers:?}");
    };
    assert_eq!(names[0], "envoy.filters.http.jwt_authn");
    let jwt = jwt.as_ref().expect("the mesh-wide rule");
    assert!(jwt.providers["origins-0"].clear_route_cache);
}
