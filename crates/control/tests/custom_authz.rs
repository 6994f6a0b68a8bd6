//! CUSTOM AuthorizationPolicies as the listeners carry them
//! (`tests/custom_authz/mesh.yaml`): per provider a shadow RBAC filter that
//! only matches and an ext_authz filter enabled by its match, HTTP and gRPC
//! providers configured from the mesh config, gRPC ones on TCP chains too,
//! and a provider that cannot be used denying what its policies match.

use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ext_authz::Services;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use policy::{context, listeners, named, proxy};
use prost::Message;

mod policy;

fn typed(f: &Filter) -> (&str, &[u8]) {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => (any.type_url.as_str(), &any.value),
        _ => panic!("typed config"),
    }
}

/// The chain named `name` of `listener`.
fn chain<'a>(listener: &'a Listener, name: &str) -> &'a [Filter] {
    listener
        .filter_chains
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.filters.as_slice())
        .unwrap_or_else(|| panic!("no chain {name}"))
}

fn http_filters(filters: &[Filter]) -> Vec<(String, Vec<u8>)> {
    let (_, bytes) = typed(filters.last().expect("a filter"));
    let hcm = HttpConnectionManager::decode(bytes).expect("hcm");
    hcm.http_filters
        .into_iter()
        .map(|f| {
            let bytes = match f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) => any.value,
                _ => Vec::new(),
            };
            (f.name, bytes)
        })
        .collect()
}

fn names(filters: &[(String, Vec<u8>)]) -> Vec<&str> {
    filters.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn an_http_provider_gets_a_shadow_rbac_and_ext_authz_pair() {
    let ctx = context("custom_authz");
    let web = proxy("sidecar", "web-1", "foo", &[("app", "web")]);
    let listeners = listeners(&ctx, &web);
    let inbound = named(&listeners, "virtualInbound");
    let http = http_filters(chain(inbound, "inbound|8080||-mtls"));
    assert_eq!(
        names(&http),
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.ext_authz",
            "istio.stats",
            "envoy.filters.http.router"
        ]
    );
    let rbac = HttpRbac::decode(http[0].1.as_slice()).expect("rbac");
    assert!(rbac.rules.is_none(), "the RBAC only matches");
    let shadow = rbac.shadow_rules.expect("shadow rules");
    assert_eq!(shadow.action, Action::Deny as i32);
    let policies: Vec<&String> = shadow.policies.keys().collect();
    assert_eq!(
        policies,
        ["istio-ext-authz-sample-ext-authz-http-ns[foo]-policy[ext-authz]-rule[0]"]
    );
    assert_eq!(rbac.shadow_rules_stat_prefix, "istio_ext_authz_");

    let authz = ExtAuthz::decode(http[1].1.as_slice()).expect("ext_authz");
    let Some(Services::HttpService(service)) = &authz.services else {
        panic!("an HTTP service");
    };
    let uri = service.server_uri.as_ref().expect("server uri");
    assert_eq!(uri.uri, "http://ext-authz.foo.svc.cluster.local");
    assert_eq!(uri.timeout.map(|t| t.seconds), Some(2));
    let response = service.authorization_response.as_ref().expect("response");
    assert!(response.allowed_upstream_headers.is_some());
    let allowed = authz.allowed_headers.as_ref().expect("allowed headers");
    assert_eq!(
        allowed.patterns[0].match_pattern,
        Some(MatchPattern::Exact("x-ext-authz".to_owned()))
    );
    assert!(allowed.patterns[0].ignore_case);
    let enabled = authz.filter_enabled_metadata.expect("enabled by the match");
    assert_eq!(enabled.filter, "envoy.filters.http.rbac");
    let Some(ValuePattern::StringMatch(m)) = enabled.value.and_then(|v| v.match_pattern) else {
        panic!("a string match");
    };
    assert_eq!(
        m.match_pattern,
        Some(MatchPattern::Prefix(
            "istio-ext-authz-sample-ext-authz-http".to_owned()
        ))
    );

    // TCP chains: an HTTP provider has no TCP form.
    let tcp = chain(inbound, "inbound|9000||-mtls");
    let kinds: Vec<&str> = tcp.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        kinds,
        ["istio.stats", "envoy.filters.network.tcp_proxy"],
        "no authorization filter"
    );
}

#[test]
fn a_grpc_provider_also_guards_tcp_chains() {
    let ctx = context("custom_authz");
    let api = proxy("sidecar", "api-1", "foo", &[("app", "api")]);
    let listeners = listeners(&ctx, &api);
    let inbound = named(&listeners, "virtualInbound");
    let http = http_filters(chain(inbound, "inbound|8080||-mtls"));
    let authz = ExtAuthz::decode(http[1].1.as_slice()).expect("ext_authz");
    assert!(authz.failure_mode_allow, "failOpen");
    let Some(Services::GrpcService(grpc)) = &authz.services else {
        panic!("a gRPC service");
    };
    assert_eq!(
        grpc.timeout.map(|t| t.seconds),
        Some(600),
        "Istio's default"
    );

    let tcp = chain(inbound, "inbound|9000||-mtls");
    let kinds: Vec<&str> = tcp.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.ext_authz",
            "istio.stats",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    let network = NetworkExtAuthz::decode(typed(&tcp[1]).1).expect("network ext_authz");
    assert_eq!(network.stat_prefix, "tcp.");
    let enabled = network
        .filter_enabled_metadata
        .expect("enabled by the match");
    assert_eq!(enabled.filter, "envoy.filters.network.rbac");
}

#[test]
fn a_provider_that_cannot_be_used_denies_what_it_would_check() {
    let ctx = context("custom_authz");
    let other = proxy("sidecar", "other-1", "foo", &[("app", "other")]);
    let listeners = listeners(&ctx, &other);
    let inbound = named(&listeners, "virtualInbound");
    let http = http_filters(chain(inbound, "inbound|8080||-mtls"));
    assert_eq!(
        names(&http),
        [
            "envoy.filters.http.rbac",
            "istio.stats",
            "envoy.filters.http.router"
        ]
    );
    let rbac = HttpRbac::decode(http[0].1.as_slice()).expect("rbac");
    let rules = rbac.rules.expect("enforced");
    assert_eq!(rules.action, Action::Deny as i32);
    let policies: Vec<&String> = rules.policies.keys().collect();
    assert_eq!(
        policies,
        ["istio-ext-authz-broken-ns[foo]-policy[broken]-rule[0]-deny-due-to-bad-CUSTOM-action"]
    );
}
