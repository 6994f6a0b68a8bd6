//! Istio's per-object rules, each with a case that breaks it and a near miss that
//! must pass. Objects are written as the spec only; the test wraps them.

use std::path::Path;

use oxmesh_config::Severity;
use oxmesh_config::load::load_bytes;

/// (kind, apiVersion, spec, expected: None = valid, Some(text) = an error containing text)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const NET: &str = "networking.istio.io/v1";
const SEC: &str = "security.istio.io/v1";

const CASES: &[Case] = &[
    // VirtualService
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{route: [{destination: {host: r}}]}]",
        None,
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]",
        Some("http, tcp or tls must be provided"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: ['*']\nhttp: [{route: [{destination: {host: r}}]}]",
        Some("wildcard host * is not allowed"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: ['*']\ngateways: [ns/gw]\nhttp: [{route: [{destination: {host: r}}]}]",
        None,
    ),
    (
        "VirtualService",
        NET,
        "hosts: ['*.a.com', b.a.com]\nhttp: [{route: [{destination: {host: r}}]}]",
        Some("duplicate hosts in virtual service"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{route: [{destination: {host: r}, weight: 0}, {destination: {host: s}, weight: 0}]}]",
        Some("total destination weight = 0"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{route: [{destination: {host: r}, weight: 0}, {destination: {host: s}, weight: 10}]}]",
        None,
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{redirect: {uri: /x}, route: [{destination: {host: r}}]}]",
        Some("cannot contain both route and redirect"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{match: [{uri: {regex: '(a'}}], route: [{destination: {host: r}}]}]",
        Some("invalid regex"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{match: [{headers: {'@request.auth.claims.group': {exact: a}}}], route: [{destination: {host: r}}]}]",
        Some("JWT claim based routing"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\ngateways: [ns/gw]\nhttp: [{match: [{headers: {'@request.auth.claims.group': {exact: a}}}], route: [{destination: {host: r}}]}]",
        None,
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{retries: {attempts: 3, retryOn: '5xx,gateway-error'}, route: [{destination: {host: r}}]}]",
        None,
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{retries: {attempts: 3, retryOn: '5xx, reset'}, route: [{destination: {host: r}}]}]",
        Some("is not a valid retryOn policy"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{fault: {abort: {httpStatus: 700}}, route: [{destination: {host: r}}]}]",
        Some("HTTP status 700 is not in range"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{fault: {abort: {grpcStatus: NOPE}}, route: [{destination: {host: r}}]}]",
        Some("gRPC status \"NOPE\" is not supported"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{timeout: 0.5ms, route: [{destination: {host: r}}]}]",
        Some("greater than 1ms"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{headers: {request: {set: {':path': x}}}, route: [{destination: {host: r}}]}]",
        Some("header cannot have \":\" prefix"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\nhttp: [{headers: {request: {set: {':authority': x}}}, route: [{destination: {host: r}}]}]",
        None,
    ),
    (
        "VirtualService",
        NET,
        "hosts: [a.com]\ntls: [{match: [{sniHosts: [b.com]}], route: [{destination: {host: r}}]}]",
        Some("not a compatible subset"),
    ),
    (
        "VirtualService",
        NET,
        "hosts: ['*.com']\ntls: [{match: [{sniHosts: [b.com]}], route: [{destination: {host: r}}]}]",
        None,
    ),
    (
        "VirtualService",
        NET,
        "hosts: [r]\ngateways: [bad_ns/gw]\nhttp: [{route: [{destination: {host: r}}]}]",
        Some("invalid value for namespace"),
    ),
    // DestinationRule
    (
        "DestinationRule",
        NET,
        "host: r\nsubsets: [{name: v1}, {name: v2}]",
        None,
    ),
    (
        "DestinationRule",
        NET,
        "host: r\ntrafficPolicy: {}",
        Some("traffic policy must have at least one field"),
    ),
    (
        "DestinationRule",
        NET,
        "host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 1000}}}}",
        Some("must be a prime number"),
    ),
    (
        "DestinationRule",
        NET,
        "host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65537}}}}",
        None,
    ),
    (
        "DestinationRule",
        NET,
        "host: r\ntrafficPolicy: {tls: {mode: MUTUAL}}",
        Some("client certificate required"),
    ),
    (
        "DestinationRule",
        NET,
        "host: r\ntrafficPolicy: {tls: {mode: MUTUAL, credentialName: c}}",
        None,
    ),
    (
        "DestinationRule",
        NET,
        "host: r\ntrafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a/b/*, to: {'a/b/*': 60, 'c/*': 30}}]}}}",
        Some("total locality weight 90 != 100"),
    ),
    (
        "DestinationRule",
        NET,
        "host: r\ntrafficPolicy: {connectionPool: {http: {http2MaxRequests: -1}}}",
        Some("must be non-negative"),
    ),
    (
        "DestinationRule",
        NET,
        "host: 1.2.3.4",
        Some("top level domain"),
    ),
    // Gateway
    (
        "Gateway",
        NET,
        "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]",
        None,
    ),
    (
        "Gateway",
        NET,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*']}]",
        Some("server must have TLS settings"),
    ),
    (
        "Gateway",
        NET,
        "servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: c}}]",
        None,
    ),
    (
        "Gateway",
        NET,
        "servers: [{port: {number: 80, name: http, protocol: HTTPX}, hosts: ['*']}]",
        Some("invalid protocol \"HTTPX\""),
    ),
    (
        "Gateway",
        NET,
        "servers: [{port: {number: 80, name: a, protocol: HTTP}, hosts: [reviews]}]",
        Some("short names (non FQDN) are not allowed"),
    ),
    (
        "Gateway",
        NET,
        "servers: [{port: {number: 80, name: a, protocol: HTTP}, hosts: [ns/a.com]}, {port: {number: 81, name: a, protocol: HTTP}, hosts: [b.com]}]",
        Some("port names in servers must be unique"),
    ),
    // ServiceEntry
    (
        "ServiceEntry",
        NET,
        "hosts: [api.example.com]\nports: [{number: 443, name: https, protocol: HTTPS}]\nresolution: DNS",
        None,
    ),
    (
        "ServiceEntry",
        NET,
        "hosts: ['*.example.com']\nports: [{number: 443, name: https, protocol: HTTPS}]\nresolution: DNS",
        Some("hosts must be FQDN"),
    ),
    (
        "ServiceEntry",
        NET,
        "hosts: [a.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: a.b.com}]",
        Some("not a valid IP address"),
    ),
    (
        "ServiceEntry",
        NET,
        "hosts: [a.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: 1.2.3.4, ports: {grpc: 90}}]",
        Some("endpoint port grpc is not defined"),
    ),
    // Sidecar
    (
        "Sidecar",
        NET,
        "egress: [{hosts: ['./*', istio-system/*]}]",
        None,
    ),
    (
        "Sidecar",
        NET,
        "egress: [{hosts: [reviews]}]",
        Some("host must be of form namespace/dnsName"),
    ),
    (
        "Sidecar",
        NET,
        "{}",
        Some("sidecar: empty configuration provided"),
    ),
    (
        "Sidecar",
        NET,
        "egress: [{hosts: ['*/*']}, {port: {number: 80}, hosts: ['*/*']}]",
        Some("empty port should be the last"),
    ),
    (
        "Sidecar",
        NET,
        "ingress: [{port: {number: 80, protocol: HTTP}, defaultEndpoint: '10.0.0.1:80'}]",
        Some("defaultEndpoint must be of form"),
    ),
    (
        "Sidecar",
        NET,
        "ingress: [{port: {number: 80, protocol: HTTP}, defaultEndpoint: '127.0.0.1:8080'}]",
        None,
    ),
    // WorkloadEntry
    (
        "WorkloadEntry",
        NET,
        "address: 10.0.0.1\nports: {http: 8080}\nlabels: {app: vm}",
        None,
    ),
    ("WorkloadEntry", NET, "address: vm.example.com", None),
    (
        "WorkloadEntry",
        NET,
        "address: not_a_host",
        Some("not a valid FQDN or an IP address"),
    ),
    // PeerAuthentication
    ("PeerAuthentication", SEC, "mtls: {mode: STRICT}", None),
    (
        "PeerAuthentication",
        SEC,
        "selector: {matchLabels: {app: a}}\nportLevelMtls: {'8080': {mode: DISABLE}}",
        None,
    ),
    // AuthorizationPolicy
    (
        "AuthorizationPolicy",
        SEC,
        "action: DENY",
        Some("DENY action without `rules` is meaningless"),
    ),
    ("AuthorizationPolicy", SEC, "action: ALLOW", None),
    (
        "AuthorizationPolicy",
        SEC,
        "rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]",
        Some("bad CIDR range"),
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "rules: [{to: [{operation: {ports: ['80', '65536']}}]}]",
        Some("bad port (65536)"),
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]",
        Some("{**} is not the last operator"),
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "rules: [{when: [{key: 'request.auth.claims[groups]', values: [admin]}]}]",
        None,
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "rules: [{when: [{key: request.size, values: ['1']}]}]",
        Some("unknown attribute: request.size"),
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "action: CUSTOM\nrules: [{}]",
        Some("`provider.name` must not be empty"),
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "action: CUSTOM\nprovider: {name: ext}\nrules: [{}]",
        None,
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "targetRef: {kind: Deployment, name: a}\nrules: [{}]",
        Some("targetRef must be to one of"),
    ),
    (
        "AuthorizationPolicy",
        SEC,
        "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: a}]\nrules: [{}]",
        None,
    ),
    // RequestAuthentication
    (
        "RequestAuthentication",
        SEC,
        "jwtRules: [{issuer: a, jwksUri: 'https://a.com/jwks'}]",
        None,
    ),
    (
        "RequestAuthentication",
        SEC,
        "jwtRules: [{issuer: a, jwksUri: 'ftp://a.com/jwks'}]",
        Some("url must have scheme"),
    ),
    (
        "RequestAuthentication",
        SEC,
        "jwtRules: [{issuer: a, jwks: 'not json'}]",
        Some("jwks parse error"),
    ),
    (
        "RequestAuthentication",
        SEC,
        "jwtRules: [{audiences: [x]}]",
        Some("issuer or jwksUri must be non-empty"),
    ),
    // Telemetry and friends
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "tracing: [{randomSamplingPercentage: 10}]",
        None,
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "tracing: [{randomSamplingPercentage: 101}]",
        Some("randomSamplingPercentage must be in range"),
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "accessLogging: [{providers: [{name: envoy}], filter: {expression: \"response.code >= 400 && request.headers['x-debug'] == 'on'\"}}]",
        None,
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "accessLogging: [{filter: {expression: \"response.code >=\"}}]",
        Some("must be a valid CEL expression"),
    ),
    (
        "ProxyConfig",
        "networking.istio.io/v1beta1",
        "concurrency: 2",
        None,
    ),
    (
        "EnvoyFilter",
        "networking.istio.io/v1alpha3",
        "configPatches: [{applyTo: CLUSTER, patch: {operation: MERGE}}]",
        Some("missing patch value"),
    ),
    (
        "EnvoyFilter",
        "networking.istio.io/v1alpha3",
        "configPatches: [{applyTo: CLUSTER, match: {listener: {name: a}}, patch: {operation: REMOVE}}]",
        Some("cannot have non cluster match"),
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: oci://ghcr.io/a/b:1",
        None,
    ),
];

#[test]
fn each_rule_refuses_its_case_and_passes_its_near_miss() {
    let mut failures = Vec::new();
    for (kind, api, spec, expected) in CASES {
        let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
        let yaml = format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: case, namespace: ns}}\nspec:\n{body}"
        );
        let loaded = load_bytes(Path::new("case.yaml"), yaml.as_bytes());
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        let ok = match expected {
            None => errors.is_empty(),
            Some(text) => errors.iter().any(|e| e.contains(text)),
        };
        if !ok {
            failures.push(format!(
                "{kind} {spec:?}: expected {expected:?}, got {errors:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
