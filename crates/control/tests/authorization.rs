//! AuthorizationPolicies as the listeners carry them: a namespace with
//! policies (`tests/authorization/mesh.yaml`) gives its workloads' inbound
//! chains and its ingress gateway the RBAC filters in Istio's order (AUDIT,
//! DENY, ALLOW), HTTP ones in the connection managers and network ones in front
//! of tcp_proxy; outbound chains get none.

use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use oxmesh_control::generate;
use oxmesh_control::push_context::PushContext;
use oxmesh_xds::ads::types;
use policy::{listeners, named, proxy};
use prost::Message;

mod policy;

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

fn context() -> PushContext {
    policy::context("authorization")
}

fn typed(filter: &Filter) -> (&str, &[u8]) {
    match &filter.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => (any.type_url.as_str(), &any.value),
        _ => panic!("{} has no typed config", filter.name),
    }
}

/// What a chain's filters enforce: the RBAC actions in order, and whether they
/// are HTTP filters in a connection manager or network filters.
#[derive(Debug, PartialEq)]
enum Guard {
    Http(Vec<Action>),
    Tcp(Vec<Action>),
}

fn action(rules: Option<&envoy_types::pb::envoy::config::rbac::v3::Rbac>) -> Action {
    Action::try_from(rules.map_or(0, |r| r.action)).expect("known action")
}

/// The guard of one chain, checking the filters around it on the way: the
/// router (after `fault` on gateways) ends a connection manager's filters, and
/// tcp_proxy ends a TCP chain's.
fn guard(filters: &[Filter]) -> Guard {
    let (last, before) = filters.split_last().expect("filters");
    match typed(last) {
        (HCM, bytes) => {
            assert!(before.is_empty(), "no network RBAC on HTTP chains");
            let hcm = HttpConnectionManager::decode(bytes).expect("hcm");
            let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
            let rbac: Vec<Action> = hcm
                .http_filters
                .iter()
                .filter(|f| f.name == "envoy.filters.http.rbac")
                .map(|f| {
                    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                        panic!("typed config");
                    };
                    assert_eq!(any.type_url, HTTP_RBAC);
                    let rbac = HttpRbac::decode(any.value.as_slice()).expect("rbac");
                    action(rbac.rules.as_ref().or(rbac.shadow_rules.as_ref()))
                })
                .collect();
            let rest = &names[rbac.len()..];
            assert!(
                rest == ["istio.stats", "envoy.filters.http.router"]
                    || rest
                        == [
                            "envoy.filters.http.fault",
                            "envoy.filters.http.cors",
                            "istio.stats",
                            "envoy.filters.http.router"
                        ],
                "RBAC comes first, then the rest: {names:?}"
            );
            Guard::Http(rbac)
        }
        (TCP_PROXY, _) => Guard::Tcp(
            before
                .iter()
                // Istio's stats filter comes right before the TCP proxy.
                .filter(|f| f.name != "istio.stats")
                .map(|f| {
                    assert_eq!(f.name, "envoy.filters.network.rbac");
                    let (type_url, bytes) = typed(f);
                    assert_eq!(type_url, NETWORK_RBAC);
                    let rbac = NetworkRbac::decode(bytes).expect("rbac");
                    assert_eq!(rbac.stat_prefix, "tcp.");
                    action(rbac.rules.as_ref().or(rbac.shadow_rules.as_ref()))
                })
                .collect(),
        ),
        (other, _) => panic!("unexpected last filter {other}"),
    }
}

fn chain_guards(listener: &Listener) -> Vec<(String, Guard)> {
    listener
        .filter_chains
        .iter()
        .chain(&listener.default_filter_chain)
        .map(|c| (c.name.clone(), guard(&c.filters)))
        .collect()
}

#[test]
fn inbound_chains_carry_audit_deny_allow() {
    let ctx = context();
    let web = proxy("sidecar", "web-1", "shop", &[("app", "web")]);
    let listeners = listeners(&ctx, &web);
    let all = || vec![Action::Log, Action::Deny, Action::Allow];
    let inbound = chain_guards(named(&listeners, "virtualInbound"));
    let guards: Vec<(&str, &Guard)> = inbound.iter().map(|(n, g)| (n.as_str(), g)).collect();
    assert_eq!(
        guards,
        [
            ("inbound|8080||-mtls", &Guard::Http(all())),
            ("inbound|8080||-tls-passthrough", &Guard::Tcp(all())),
            ("inbound|8080||-plaintext", &Guard::Http(all())),
            ("inbound|9000||-mtls", &Guard::Tcp(all())),
            ("inbound|9000||-tls-passthrough", &Guard::Tcp(all())),
            ("inbound|9000||-plaintext", &Guard::Tcp(all())),
            ("virtualInbound-catchall-mtls", &Guard::Tcp(all())),
            (
                "virtualInbound-catchall-tls-passthrough",
                &Guard::Tcp(all())
            ),
            ("virtualInbound-catchall-plaintext", &Guard::Tcp(all())),
        ]
    );
    // Outbound: nothing.
    for (name, guard) in chain_guards(named(&listeners, "virtualOutbound")) {
        assert!(
            matches!(&guard, Guard::Http(a) | Guard::Tcp(a) if a.is_empty()),
            "{name}: {guard:?}"
        );
    }
}

#[test]
fn the_allow_filter_holds_the_rules_and_the_dry_run() {
    let ctx = context();
    let web = proxy("sidecar", "web-1", "shop", &[("app", "web")]);
    let listeners = listeners(&ctx, &web);
    let inbound = named(&listeners, "virtualInbound");
    let chain = inbound
        .filter_chains
        .iter()
        .find(|c| c.name == "inbound|8080||-plaintext")
        .expect("the HTTP chain");
    let (_, bytes) = typed(&chain.filters[0]);
    let hcm = HttpConnectionManager::decode(bytes).expect("hcm");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[2].config_type else {
        panic!("typed config");
    };
    let allow = HttpRbac::decode(any.value.as_slice()).expect("rbac");
    let names = |rules: Option<&envoy_types::pb::envoy::config::rbac::v3::Rbac>| {
        let mut names: Vec<String> = rules
            .map(|r| r.policies.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(
        names(allow.rules.as_ref()),
        [
            "ns[shop]-policy[web]-rule[0]",
            "ns[shop]-policy[web]-rule[1]"
        ]
    );
    assert_eq!(
        names(allow.shadow_rules.as_ref()),
        ["ns[shop]-policy[web-next]-rule[0]"]
    );
    assert_eq!(allow.shadow_rules_stat_prefix, "istio_dry_run_allow_");
    // On TCP the rule asking for GET cannot be checked, so ALLOW drops it.
    let tcp = inbound
        .filter_chains
        .iter()
        .find(|c| c.name == "inbound|9000||-plaintext")
        .expect("the TCP chain");
    let (_, bytes) = typed(&tcp.filters[2]);
    let allow = NetworkRbac::decode(bytes).expect("rbac");
    assert_eq!(
        names(allow.rules.as_ref()),
        ["ns[shop]-policy[web]-rule[0]"]
    );
}

/// Workloads that differ only by labels get different filters: the policy
/// selecting `app: web` leaves `app: other` with the namespace's and the mesh's.
#[test]
fn selectors_decide_per_workload() {
    let ctx = context();
    let other = proxy("sidecar", "other-1", "shop", &[("app", "other")]);
    let generated = listeners(&ctx, &other);
    for (name, guard) in chain_guards(named(&generated, "virtualInbound")) {
        let actions = match guard {
            Guard::Http(a) | Guard::Tcp(a) => a,
        };
        assert_eq!(actions, [Action::Log, Action::Deny], "{name}");
    }
    // A namespace without policies has the mesh-wide one only.
    let elsewhere = proxy("sidecar", "x-1", "elsewhere", &[("app", "x")]);
    for listener in listeners(&ctx, &elsewhere) {
        for (name, guard) in chain_guards(&listener) {
            let actions = match guard {
                Guard::Http(a) | Guard::Tcp(a) => a,
            };
            let expected: &[Action] = if listener.name == "virtualInbound" {
                &[Action::Log]
            } else {
                &[]
            };
            assert_eq!(actions, expected, "{} {name}", listener.name);
        }
    }
}

#[test]
fn the_gateway_checks_before_fault_and_router() {
    let ctx = context();
    let gateway = proxy(
        "router",
        "istio-ingressgateway-1",
        "istio-system",
        &[("istio", "ingressgateway")],
    );
    let listeners = listeners(&ctx, &gateway);
    let listener = named(&listeners, "0.0.0.0_8080");
    let guards: Vec<Guard> = chain_guards(listener).into_iter().map(|(_, g)| g).collect();
    assert_eq!(
        guards,
        [Guard::Http(vec![Action::Log, Action::Deny, Action::Allow])]
    );
    let (_, bytes) = typed(&listener.filter_chains[0].filters[0]);
    let hcm = HttpConnectionManager::decode(bytes).expect("hcm");
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.rbac",
            "envoy.filters.http.rbac",
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "istio.stats",
            "envoy.filters.http.router",
        ]
    );
}

/// Listener versions are hashes of their encoding: two builds from the same
/// input must encode the RBAC policies (a map) in the same order.
#[test]
fn filters_encode_the_same_every_push() {
    let web = proxy("sidecar", "web-1", "shop", &[("app", "web")]);
    let first = generate::resources(&context(), &web, types::LISTENER);
    for _ in 0..3 {
        assert_eq!(
            generate::resources(&context(), &web, types::LISTENER),
            first
        );
    }
}
