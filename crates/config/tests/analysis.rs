//! Each analyzer: a case that triggers it and a near miss that must not.

use std::path::Path;

use oxmesh_config::analysis::{self, Code, Message};
use oxmesh_config::load::load_bytes;

fn analyze(yaml: &str) -> Vec<Message> {
    let loaded = load_bytes(Path::new("mesh.yaml"), yaml.as_bytes());
    analysis::analyze(&loaded.objects, &loaded.diagnostics, &Default::default())
}

fn codes(yaml: &str) -> Vec<&'static str> {
    analyze(yaml).iter().map(|m| m.code.id()).collect()
}

fn assert_reports(yaml: &str, code: Code, text: &str) {
    let messages = analyze(yaml);
    assert!(
        messages
            .iter()
            .any(|m| m.code == code && m.to_string().contains(text)),
        "expected {} containing {text:?}, got:\n{}",
        code.id(),
        messages
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn assert_quiet(yaml: &str, code: Code) {
    let messages = analyze(yaml);
    assert!(
        !messages.iter().any(|m| m.code == code),
        "expected no {}, got:\n{}",
        code.id(),
        messages
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
";

const TWO_PORTS: &str = "apiVersion: v1
kind: Service
metadata: {name: multi, namespace: shop}
spec:
  selector: {app: multi}
  ports: [{name: http, port: 80}, {name: grpc, port: 9090}]
---
";

fn vs(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: shop}}\nspec:\n{body}---\n"
    )
}

#[test]
fn ist0101_hosts_ports_and_subsets() {
    let route = |dest: &str| {
        vs(&format!(
            "hosts: [reviews]\nhttp: [{{route: [{{destination: {dest}}}]}}]"
        ))
    };
    assert_reports(
        &(SERVICE.to_owned() + &route("{host: ratings}")),
        Code::ReferencedResourceNotFound,
        "Referenced host not found: \"ratings\"",
    );
    assert_quiet(
        &(SERVICE.to_owned() + &route("{host: reviews}")),
        Code::ReferencedResourceNotFound,
    );
    assert_quiet(
        &(SERVICE.to_owned() + &route("{host: reviews.shop.svc.cluster.local}")),
        Code::ReferencedResourceNotFound,
    );
    assert_reports(
        &(SERVICE.to_owned() + &route("{host: reviews, port: {number: 9999}}")),
        Code::ReferencedResourceNotFound,
        "Referenced host:port not found: \"reviews:9999\"",
    );
    assert_reports(
        &(SERVICE.to_owned() + &route("{host: reviews, subset: v9}")),
        Code::ReferencedResourceNotFound,
        "Referenced host+subset in destinationrule not found: \"reviews+v9\"",
    );
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec: {host: reviews, subsets: [{name: v9, labels: {version: v9}}]}\n---\n";
    assert_quiet(
        &(SERVICE.to_owned() + dr + &route("{host: reviews, subset: v9}")),
        Code::ReferencedResourceNotFound,
    );
}

#[test]
fn ist0101_service_entries_and_visibility() {
    let entry = |export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext, namespace: other}}\nspec: {{hosts: ['*.example.com'], ports: [{{number: 443, name: tls, protocol: TLS}}], resolution: NONE, exportTo: [{export}]}}\n---\n"
        )
    };
    let route = vs(
        "hosts: [api.example.com]\ntls: [{match: [{sniHosts: [api.example.com]}], route: [{destination: {host: api.example.com}}]}]",
    );
    assert_quiet(&(entry("'*'") + &route), Code::ReferencedResourceNotFound);
    assert_reports(
        &(entry("'.'") + &route),
        Code::ReferencedResourceNotFound,
        "Referenced host not found: \"api.example.com\"",
    );
}

#[test]
fn ist0101_and_ist0132_gateways() {
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\nspec:\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*.shop.example.com']}]\n---\n";
    let bound = |host: &str, gateway: &str| {
        vs(&format!(
            "hosts: ['{host}']\ngateways: [{gateway}]\nhttp: [{{route: [{{destination: {{host: reviews}}}}]}}]"
        ))
    };
    assert_reports(
        &(SERVICE.to_owned() + &bound("a.shop.example.com", "missing")),
        Code::ReferencedResourceNotFound,
        "Referenced gateway not found: \"missing\"",
    );
    assert_quiet(
        &(SERVICE.to_owned() + gw + &bound("a.shop.example.com", "gw")),
        Code::ReferencedResourceNotFound,
    );
    assert_quiet(
        &(SERVICE.to_owned() + gw + &bound("a.shop.example.com", "shop/gw")),
        Code::VirtualServiceHostNotFoundInGateway,
    );
    assert_reports(
        &(SERVICE.to_owned() + gw + &bound("a.other.com", "gw")),
        Code::VirtualServiceHostNotFoundInGateway,
        "one or more host [a.other.com] defined in VirtualService shop/vs not found in Gateway shop/gw.",
    );
}

#[test]
fn ist0112_multiple_ports_need_a_port() {
    let route = |dest: &str| {
        vs(&format!(
            "hosts: [multi]\nhttp: [{{route: [{{destination: {dest}}}]}}]"
        ))
    };
    assert_reports(
        &(TWO_PORTS.to_owned() + &route("{host: multi}")),
        Code::VirtualServiceDestinationPortSelectorRequired,
        "routes to a service \"multi\" that exposes multiple ports [80 9090]",
    );
    assert_quiet(
        &(TWO_PORTS.to_owned() + &route("{host: multi, port: {number: 80}}")),
        Code::VirtualServiceDestinationPortSelectorRequired,
    );
}

#[test]
fn ist0109_mesh_virtual_services_sharing_a_host() {
    let named = |name: &str, ns: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{hosts: [reviews.shop.svc.cluster.local], exportTo: [{export}], http: [{{route: [{{destination: {{host: reviews.shop.svc.cluster.local}}}}]}}]}}\n---\n"
        )
    };
    let both = SERVICE.to_owned() + &named("a", "shop", "'*'") + &named("b", "team", "'*'");
    assert_reports(
        &both,
        Code::ConflictingMeshGatewayVirtualServiceHosts,
        "The VirtualServices shop/a,team/b associated with mesh gateway define the same host",
    );
    let private = SERVICE.to_owned() + &named("a", "shop", "'.'") + &named("b", "team", "'.'");
    assert_quiet(&private, Code::ConflictingMeshGatewayVirtualServiceHosts);
}

const WORKLOAD: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec: {containers: [{name: app, image: reviews}]}
---
";

fn sidecar(name: &str, selector: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  {selector}\n  egress: [{{hosts: ['./*']}}]\n---\n"
    )
}

#[test]
fn ist0110_ist0111_and_sidecar_selectors() {
    let one = WORKLOAD.to_owned() + &sidecar("a", "workloadSelector: {labels: {app: reviews}}");
    assert_quiet(&one, Code::ConflictingSidecarWorkloadSelectors);
    let two = one.clone() + &sidecar("b", "workloadSelector: {labels: {version: v1}}");
    assert_reports(
        &two,
        Code::ConflictingSidecarWorkloadSelectors,
        "The Sidecars [a b] in namespace \"shop\" select the same workload pod \"reviews-v1\"",
    );
    let none = WORKLOAD.to_owned() + &sidecar("a", "workloadSelector: {labels: {app: ratings}}");
    assert_reports(
        &none,
        Code::ReferencedResourceNotFound,
        "Referenced selector not found: \"app=ratings\"",
    );
    let wide = sidecar("a", "outboundTrafficPolicy: {mode: ALLOW_ANY}")
        + &sidecar("b", "outboundTrafficPolicy: {mode: ALLOW_ANY}");
    assert_reports(
        &wide,
        Code::MultipleSidecarsWithoutWorkloadSelectors,
        "The Sidecars [a b] in namespace \"shop\" have no workload selector",
    );
    assert_quiet(
        &sidecar("a", "outboundTrafficPolicy: {mode: ALLOW_ANY}"),
        Code::MultipleSidecarsWithoutWorkloadSelectors,
    );
}

#[test]
fn ist0127_policies_that_select_nothing() {
    let policy = |labels: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {{selector: {{matchLabels: {labels}}}, rules: [{{}}]}}\n---\n"
        )
    };
    assert_reports(
        &(WORKLOAD.to_owned() + &policy("{app: bogus, version: v1}")),
        Code::NoMatchingWorkloadsFound,
        "following labels: app=bogus,version=v1",
    );
    assert_quiet(
        &(WORKLOAD.to_owned() + &policy("{app: reviews}")),
        Code::NoMatchingWorkloadsFound,
    );
    // Config without workloads says nothing about them.
    assert_quiet(&policy("{app: bogus}"), Code::NoMatchingWorkloadsFound);
}

#[test]
fn ist0101_policies_naming_namespaces_that_do_not_exist() {
    let policy = |namespaces: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: team-a}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {{rules: [{{from: [{{source: {{namespaces: {namespaces}}}}}]}}]}}\n---\n"
        )
    };
    assert_reports(
        &policy("[shop, bogus]"),
        Code::ReferencedResourceNotFound,
        "Referenced namespace not found: \"bogus\"",
    );
    assert_quiet(
        &policy("[shop, \"team-*\", \"*-a\", \"*\"]"),
        Code::ReferencedResourceNotFound,
    );
    // Principals are never checked, and config without Namespaces says
    // nothing about which exist.
    assert_quiet(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {rules: [{from: [{source: {namespaces: [bogus], principals: [other.td/ns/x/sa/y]}}]}]}\n",
        Code::ReferencedResourceNotFound,
    );
}

#[test]
fn ist0102_namespaces_without_injection() {
    let ns = |labels: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {labels}}}\n---\n"
        )
    };
    assert_reports(
        &ns("{}"),
        Code::NamespaceNotInjected,
        "kubectl label namespace shop istio-injection=enabled",
    );
    assert_quiet(
        &ns("{istio-injection: enabled}"),
        Code::NamespaceNotInjected,
    );
    assert_quiet(
        &ns("{istio-injection: disabled}"),
        Code::NamespaceNotInjected,
    );
    assert_quiet(&ns("{istio.io/rev: canary}"), Code::NamespaceNotInjected);
}

#[test]
fn ist0118_port_names() {
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: shop}}\nspec: {{ports: [{{name: {name}, port: 8080, targetPort: 9080}}]}}\n---\n"
        )
    };
    assert_reports(
        &service("web"),
        Code::PortNameIsNotUnderNamingConvention,
        "Port name web (port: 8080, targetPort: 9080) doesn't follow the naming convention of Istio port.",
    );
    assert_quiet(
        &service("http-web"),
        Code::PortNameIsNotUnderNamingConvention,
    );
}

#[test]
fn ist0128_ist0129_unverified_server_tls() {
    let dr = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db, namespace: shop}}\nspec: {{host: db.example.com, trafficPolicy: {tls}}}\n---\n"
        )
    };
    assert_reports(
        &dr("{tls: {mode: SIMPLE}}"),
        Code::NoServerCertificateVerificationDestinationLevel,
        "has TLS mode set to SIMPLE but no caCertificates",
    );
    assert_quiet(
        &dr("{tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}}"),
        Code::NoServerCertificateVerificationDestinationLevel,
    );
    assert_quiet(
        &dr("{tls: {mode: ISTIO_MUTUAL}}"),
        Code::NoServerCertificateVerificationDestinationLevel,
    );
    assert_reports(
        &dr("{portLevelSettings: [{port: {number: 5432}, tls: {mode: SIMPLE}}]}"),
        Code::NoServerCertificateVerificationPortLevel,
        "at port number:5432",
    );
}

#[test]
fn ist0130_ist0131_unreachable_rules() {
    let rules = vs(
        "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}}]\n- route: [{destination: {host: reviews}}]",
    );
    assert_reports(
        &(SERVICE.to_owned() + &rules),
        Code::VirtualServiceUnreachableRule,
        "VirtualService rule #1 not used (only the last rule can have no matches).",
    );
    let dup = vs(
        "hosts: [reviews]\nhttp:\n- match: [{uri: {exact: /a}}]\n  route: [{destination: {host: reviews}}]\n- match: [{uri: {exact: /a}}, {uri: {exact: /b}}]\n  route: [{destination: {host: reviews}}]",
    );
    assert_reports(
        &(SERVICE.to_owned() + &dup),
        Code::VirtualServiceIneffectiveMatch,
        "VirtualService rule #1 match #0 is not used (duplicate/overlapping match in rule #0).",
    );
    assert_quiet(
        &(SERVICE.to_owned() + &dup),
        Code::VirtualServiceUnreachableRule,
    );
}

#[test]
fn ist0145_gateways_claiming_a_host() {
    let gw = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{selector: {{istio: ingressgateway}}, servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ['{host}']}}]}}\n---\n"
        )
    };
    assert_reports(
        &(gw("alpha", "foo.bar") + &gw("beta", "foo.bar")),
        Code::ConflictingGateways,
        "Conflict with gateways shop/beta (workload selector istio=ingressgateway, port 80, hosts foo.bar).",
    );
    assert_quiet(
        &(gw("alpha", "foo.bar") + &gw("beta", "baz.bar")),
        Code::ConflictingGateways,
    );
}

#[test]
fn schema_errors_are_ist0106_and_messages_are_sorted() {
    let bad =
        vs("hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews, subset: v_1}}]}]");
    assert_reports(
        &bad,
        Code::SchemaValidationError,
        "Schema validation error: spec.http[0].route[0].destination.subset: subset name is invalid: v_1",
    );
    let all = codes(
        &(bad
            + &sidecar("a", "outboundTrafficPolicy: {mode: ALLOW_ANY}")
            + &sidecar("b", "outboundTrafficPolicy: {mode: ALLOW_ANY}")),
    );
    let mut sorted = all.clone();
    sorted.sort_by_key(|c| Code::from_id(c).map(|c| (c.level(), c.id())));
    assert_eq!(all, sorted);
}
