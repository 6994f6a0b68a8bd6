//! Istio's authorization tasks end to end on `oxmesh up`: AuthorizationPolicies
//! applied to a running mesh, enforced by the destination's sidecar on HTTP
//! and TCP, with the callers' SPIFFE identities from mTLS. Needs root,
//! iproute2, iptables and curl.

use std::process::Command;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use support::mesh::Mesh;
use support::up::start_up;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

/// Namespace `foo` with injection: httpbin (the echo app) and tcp-echo
/// behind Services, and two clients, sleep and intruder, each with a service
/// account of its name.
fn mesh() -> String {
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: foo, labels: {istio-injection: enabled}}\n";
    [
        namespace.to_owned(),
        service("httpbin", "{name: http, port: 8000, targetPort: 8080}"),
        deployment("httpbin", "echo", ""),
        service("tcp-echo", "{name: tcp, port: 9000, targetPort: 9000}"),
        deployment("tcp-echo", "tcp-echo", ""),
        deployment("sleep", "curl", r#", command: [sleep, "3600"]"#),
        deployment("intruder", "curl", r#", command: [sleep, "3600"]"#),
    ]
    .join("---\n")
}

fn service(name: &str, port: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: foo}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{port}]\n"
    )
}

/// A Deployment `name` running `image` (with `container`: more container
/// fields) as service account `name`.
fn deployment(name: &str, image: &str, container: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      serviceAccountName: {name}\n      containers: [{{name: {name}, image: {image}{container}}}]\n"
    )
}

const HTTPBIN: &str = "http://httpbin.foo:8000/headers";

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[test]
fn http_and_tcp_authorization_follow_istios_tasks() {
    let dir = TempDir::new("authz-e2e");
    dir.write("mesh.yaml", &mesh());
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "foo");
    mesh.settles("sleep", "GET", HTTPBIN, "200");
    mesh.tcp_settles("intruder", |t| t == "hello hi", "echoed");

    // Deny all: an ALLOW policy with no rules.
    mesh.apply(
        "deny-all.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: foo}\nspec: {}\n",
    );
    let body = mesh.settles("sleep", "GET", HTTPBIN, "403");
    assert_eq!(body, "RBAC: access denied");

    // Allow GET by principal: sleep may read, not write; intruder may not.
    mesh.apply(
        "allow-get.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-viewer, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]
    to: [{operation: {methods: [GET]}}]
"#,
    );
    mesh.settles("sleep", "GET", HTTPBIN, "200");
    assert_eq!(mesh.http("sleep", "POST", HTTPBIN).0, "403");
    assert_eq!(mesh.http("intruder", "GET", HTTPBIN).0, "403");

    // Explicit deny wins over the allow.
    mesh.apply(
        "deny-headers.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-headers, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/headers"]}}]
"#,
    );
    mesh.settles("sleep", "GET", HTTPBIN, "403");
    assert_eq!(
        mesh.http("sleep", "GET", "http://httpbin.foo:8000/ip").0,
        "200"
    );

    // TCP: only sleep may reach tcp-echo's port 9000; the intruder's
    // connection is closed.
    mesh.apply(
        "tcp.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]
    to: [{operation: {ports: ["9000"]}}]
"#,
    );
    mesh.tcp_settles("intruder", |t| t == "closed", "closed");
    mesh.tcp_settles("sleep", |t| t == "hello hi", "echoed");

    // Dry-run: the deny-all is evaluated and counted, nothing is denied.
    for file in ["deny-all.yaml", "allow-get.yaml", "deny-headers.yaml"] {
        mesh.delete(file);
    }
    mesh.apply(
        "dry-run.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-post
  namespace: foo
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {methods: [POST]}}]
"#,
    );
    mesh.settles("intruder", "POST", HTTPBIN, "200");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(
            mesh.http("intruder", "POST", HTTPBIN).0,
            "200",
            "dry-run denies nothing"
        );
        let metrics = mesh.metrics("httpbin");
        if metrics
            .contains("decision=\"shadow_denied\",shadow_rules_prefix=\"istio_dry_run_deny_\"")
        {
            assert!(
                metrics.contains("response_code=\"403\""),
                "earlier denials were counted"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no shadow denial counted:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Istio's `require-jwt` policy for httpbin: the demo issuer's tokens, and
/// `when` (YAML to append to the rule) if given.
fn require_jwt(when: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: require-jwt, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{requestPrincipals: [testing@secure.istio.io/testing@secure.istio.io]}}}}]{when}\n"
    )
}

/// Istio's JWT tasks: a RequestAuthentication alone (invalid tokens 401,
/// missing ones let through), then with an AuthorizationPolicy that needs a
/// request principal and then a claim; an issuer whose keys cannot be fetched
/// fails closed; a huge token is stopped by the header limit.
#[test]
fn jwt_authentication_follows_istios_tasks() {
    let dir = TempDir::new("authn-e2e");
    dir.write("mesh.yaml", &mesh());
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "foo");
    mesh.settles("sleep", "GET", HTTPBIN, "200");

    let issuer = oxmesh_demo::jwt::Issuer::demo().expect("demo key");
    let token = issuer.token(&serde_json::json!({})).expect("token");
    let group1 = issuer
        .token(&serde_json::json!({"groups": ["group1"]}))
        .expect("token");
    let unreachable = {
        let mut claims = issuer.claims(&serde_json::json!({}));
        claims["iss"] = "unreachable@example.com".into();
        issuer.sign("RS256", &claims).expect("token")
    };
    mesh.apply(
        "jwt.yaml",
        &format!(
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-jwt-groups, claim: groups}}, {{header: x-jwt-sub, claim: sub}}]
  - issuer: unreachable@example.com
    jwksUri: https://127.0.0.1:1/jwks.json
    timeout: 1s
"#,
            jwks = issuer.jwks()
        ),
    );
    let body = mesh.settles_with("sleep", "GET", HTTPBIN, Some(&bearer("deadbeef")), "401");
    assert_eq!(body, "Jwt is not in the form of Header.Payload.Signature");
    assert_eq!(
        mesh.http("sleep", "GET", HTTPBIN).0,
        "200",
        "no token: let through"
    );
    let (status, body) = mesh.http_with("sleep", "GET", HTTPBIN, Some(&bearer(&token)));
    assert_eq!(status, "200");
    assert!(
        body.contains("testing@secure.istio.io") && !body.contains(&token),
        "the claim is passed on, the token is not: {body}"
    );
    let (status, body) = mesh.http_with("sleep", "GET", HTTPBIN, Some(&bearer(&unreachable)));
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("401", "Jwt verification fails")
    );

    // A token is required: requestPrincipals.
    mesh.apply("require-jwt.yaml", &require_jwt(""));
    mesh.settles("sleep", "GET", HTTPBIN, "403");
    assert_eq!(
        mesh.http_with("sleep", "GET", HTTPBIN, Some(&bearer(&token)))
            .0,
        "200"
    );

    // And a claim.
    mesh.apply(
        "require-jwt.yaml",
        &require_jwt("\n    when: [{key: \"request.auth.claims[groups]\", values: [group1]}]"),
    );
    mesh.settles_with("sleep", "GET", HTTPBIN, Some(&bearer(&token)), "403");
    assert_eq!(
        mesh.http_with("sleep", "GET", HTTPBIN, Some(&bearer(&group1)))
            .0,
        "200"
    );

    // 100 KB of token: the header limit answers before any verification.
    let huge = "a".repeat(100 * 1024);
    assert_eq!(
        mesh.http_with("sleep", "GET", HTTPBIN, Some(&bearer(&huge)))
            .0,
        "431"
    );

    // What applies to httpbin's sidecar, in order.
    let status = mesh.in_istiod(&["proxy-status"]);
    let proxy = status
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .next()
                .filter(|n| n.starts_with("httpbin-"))
        })
        .unwrap_or_else(|| panic!("httpbin in proxy-status:\n{status}"))
        .to_owned();
    let authz = mesh.in_istiod(&["proxy-config", "authz", &proxy]);
    let steps: Vec<&str> = authz
        .lines()
        .filter(|l| l.contains("inbound|8080||-mtls"))
        .collect();
    assert!(
        steps.len() == 2
            && steps[0].contains("jwt_authn")
            && steps[0].contains("origins-1 (unreachable@example.com)")
            && steps[1].contains("ALLOW")
            && steps[1].contains("ns[foo]-policy[require-jwt]-rule[0]")
            // On TCP chains the HTTP-only rule is dropped: nothing is allowed.
            && authz.contains("network rbac   ALLOW    (none: nothing matches)"),
        "{authz}"
    );
}

/// Istio's ext-authz sample and the mesh config that names it, over HTTP and
/// gRPC.
const EXT_AUTHZ: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: foo}
spec:
  selector: {app: ext-authz}
  ports:
  - {name: http, port: 8000}
  - {name: grpc, port: 9000}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ext-authz, namespace: foo}
spec:
  selector: {matchLabels: {app: ext-authz}}
  template:
    metadata: {labels: {app: ext-authz}}
    spec:
      containers:
      - name: ext-authz
        image: gcr.io/istio-testing/ext-authz:latest
        ports: [{containerPort: 8000}, {containerPort: 9000}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-result]
    - name: sample-ext-authz-grpc
      envoyExtAuthzGrpc:
        service: ext-authz.foo.svc.cluster.local
        port: 9000
"#;

fn custom_policy(provider: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ["/headers"]}}}}]
"#
    )
}

/// Istio's external authorization task: a CUSTOM policy sends requests to
/// /headers to the sample authorizer, first over HTTP, then over gRPC; the
/// authorizer's denial reaches the client, its allow lets the request on
/// with its header, and other paths never ask.
#[test]
fn custom_authorization_follows_istios_task() {
    let dir = TempDir::new("ext-authz-e2e");
    dir.write("mesh.yaml", &format!("{}{EXT_AUTHZ}", mesh()));
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "foo");
    mesh.settles("sleep", "GET", HTTPBIN, "200");
    let deny = Some("x-ext-authz: deny");
    let allow = Some("x-ext-authz: allow");
    for provider in ["sample-ext-authz-http", "sample-ext-authz-grpc"] {
        mesh.apply("ext-authz.yaml", &custom_policy(provider));
        let body = mesh.settles_with("sleep", "GET", HTTPBIN, deny, "403");
        assert_eq!(body, oxmesh_demo::ext_authz::DENIED_BODY, "{provider}");
        let (status, body) = mesh.http_with("sleep", "GET", HTTPBIN, allow);
        assert_eq!(status, "200", "{provider}: {body}");
        assert!(
            body.contains("x-ext-authz-check-result"),
            "{provider}: the allow's header reaches httpbin: {body}"
        );
        let ip = "http://httpbin.foo:8000/ip";
        assert_eq!(
            mesh.http_with("sleep", "GET", ip, deny).0,
            "200",
            "{provider}"
        );
    }
}

impl Mesh {
    /// `oxmesh intention ARGS` on this mesh: exit status and output.
    fn intention(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .arg("intention")
            .args(args)
            .args(["--mesh", &self.path()])
            .output()
            .expect("oxmesh intention");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn intends(&self, args: &[&str]) {
        let (ok, text) = self.intention(args);
        assert!(ok, "oxmesh intention {args:?}: {text}");
    }
}

/// Consul's intentions on oxmesh up: default deny with a named allow, a
/// namespace-wide deny under which a specific allow still wins, a request
/// condition more specific than both, and `check` naming what decides.
#[test]
fn intentions_follow_consuls_precedence() {
    let dir = TempDir::new("intention-e2e");
    dir.write("mesh.yaml", &mesh());
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "foo");
    mesh.settles("sleep", "GET", HTTPBIN, "200");

    mesh.intends(&["default", "deny", "-n", "foo"]);
    mesh.settles("sleep", "GET", HTTPBIN, "403");
    mesh.intends(&["allow", "foo/sleep", "foo/httpbin"]);
    mesh.settles("sleep", "GET", HTTPBIN, "200");
    assert_eq!(mesh.http("intruder", "GET", HTTPBIN).0, "403");
    let (allowed, text) = mesh.intention(&["check", "foo/sleep", "foo/httpbin"]);
    assert!(
        allowed && text.contains("allowed by intention \"allow foo/sleep -> foo/httpbin\""),
        "{text}"
    );
    let (allowed, text) = mesh.intention(&["check", "foo/intruder", "foo/httpbin"]);
    assert!(
        !allowed && text.contains("denied by the default of namespace foo (deny)"),
        "{text}"
    );

    // Back to allow by default, but deny the whole namespace: the specific
    // allow still wins, as in Consul (the deny is narrowed, not outranked).
    mesh.intends(&["default", "allow", "-n", "foo"]);
    mesh.intends(&["deny", "foo/*", "foo/httpbin"]);
    mesh.settles("intruder", "GET", HTTPBIN, "403");
    assert_eq!(mesh.http("sleep", "GET", HTTPBIN).0, "200");

    // More specific still: sleep may not POST.
    mesh.intends(&["deny", "foo/sleep", "foo/httpbin", "--method", "POST"]);
    mesh.settles("sleep", "POST", HTTPBIN, "403");
    assert_eq!(mesh.http("sleep", "GET", HTTPBIN).0, "200");
    let (_, list) = mesh.intention(&["list"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{list}");
    assert!(
        rows[0].contains("deny") && rows[0].contains("POST"),
        "{list}"
    );
    assert!(rows[2].contains("foo/*"), "{list}");

    mesh.intends(&["delete", "foo/sleep", "foo/httpbin", "--method", "POST"]);
    mesh.settles("sleep", "POST", HTTPBIN, "200");
}

/// Istio's trust-domain migration task: a policy written for the old trust
/// domain keeps allowing the same workloads once the mesh config names that
/// domain in `trustDomainAliases`, and stops when the alias goes.
#[test]
fn trust_domain_aliases_keep_old_policies_working() {
    let dir = TempDir::new("td-e2e");
    dir.write("mesh.yaml", &mesh());
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "foo");
    mesh.settles("sleep", "GET", HTTPBIN, "200");
    mesh.apply(
        "old-td-policy.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: [old-td/ns/foo/sa/sleep]}}]
"#,
    );
    // The mesh's identities are cluster.local: the old name matches nobody.
    mesh.settles("sleep", "GET", HTTPBIN, "403");
    let aliases = |list: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    trustDomainAliases: {list}\n"
        )
    };
    mesh.apply("mesh-config.yaml", &aliases("[old-td]"));
    mesh.settles("sleep", "GET", HTTPBIN, "200");
    assert_eq!(mesh.http("intruder", "GET", HTTPBIN).0, "403");
    mesh.apply("mesh-config.yaml", &aliases("[]"));
    mesh.settles("sleep", "GET", HTTPBIN, "403");
}

const INGRESS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: foo}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: foo}
spec:
  hosts: [httpbin.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: httpbin, port: {number: 8000}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultConfig:
      gatewayTopology: {numTrustedProxies: 1}
"#;

/// The status of a GET from the host through the ingress gateway, with an
/// `x-forwarded-for` as a load balancer in front would add it.
fn through_ingress(port: u16, forwarded_for: Option<&str>) -> String {
    let mut command = Command::new("curl");
    command.args(["-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}"]);
    command.args(["-H", "Host: httpbin.example.com"]);
    if let Some(xff) = forwarded_for {
        command.args(["-H", &format!("X-Forwarded-For: {xff}")]);
    }
    let out = command
        .arg(format!("http://127.0.0.1:{port}/headers"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Istio's ingress task with `remoteIpBlocks`: behind one trusted proxy
/// (`gatewayTopology.numTrustedProxies: 1`), the gateway allows the client
/// the forwarded address names and refuses others, and without the header the
/// peer's own address decides.
#[test]
fn ingress_remote_ip_blocks_follow_trusted_proxies() {
    let dir = TempDir::new("remote-ip-e2e");
    dir.write("mesh.yaml", &format!("{}{INGRESS}", mesh()));
    let (up, port) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "foo");
    let deadline = Instant::now() + Duration::from_secs(30);
    while through_ingress(port, Some("203.0.113.7")) != "200" {
        assert!(Instant::now() < deadline, "the ingress never routed");
        std::thread::sleep(Duration::from_millis(200));
    }
    mesh.apply(
        "ingress-policy.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress-allow, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]
"#,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while through_ingress(port, Some("198.51.100.1")) != "403" {
        assert!(Instant::now() < deadline, "the policy never applied");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(through_ingress(port, Some("203.0.113.7")), "200");
    assert_eq!(
        through_ingress(port, Some("203.0.113.7, 198.51.100.1")),
        "403",
        "only the last entry is the trusted proxy's"
    );
    assert_eq!(
        through_ingress(port, None),
        "403",
        "the peer is not allowed"
    );
}

/// The lines of `container`'s log of `deploy/<deployment>` in foo.
fn log_of(mesh: &Mesh, deployment: &str, container: &str) -> String {
    mesh.logs("foo", deployment, container)
}

/// Polls `deployment`'s proxy log until a line has every one of `parts`.
fn logged(mesh: &Mesh, deployment: &str, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = log_of(mesh, deployment, "istio-proxy");
        if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line of {deployment}'s proxy has {parts:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn access_logs_show_what_each_sidecar_served_and_denied() {
    let dir = TempDir::new("access-log-e2e");
    dir.write("mesh.yaml", &mesh());
    dir.write(
        "istio.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    accessLogFile: /dev/stdout\n",
    );
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "foo");
    mesh.settles("sleep", "GET", HTTPBIN, "200");

    // Both ends of one request, in Istio's text format.
    let server = logged(
        &mesh,
        "httpbin",
        &[
            "\"GET /headers HTTP/1.1\" 200 - via_upstream - \"-\" 0 ",
            " inbound|8080|| 127.0.0.6:",
        ],
    );
    assert!(server.contains("\"httpbin.foo:8000\""), "{server}");
    assert!(
        server.contains("outbound_.8000_._.httpbin.foo.svc.cluster.local"),
        "the SNI: {server}"
    );
    let client = logged(
        &mesh,
        "sleep",
        &[
            "\"GET /headers HTTP/1.1\" 200 - via_upstream",
            "outbound|8000||httpbin.foo.svc.cluster.local",
        ],
    );
    // No SNI from the app; the route istiod names `default`.
    assert!(client.ends_with(" - default"), "{client}");

    // A denial names the policy that denied it, as Envoy's RBAC filter does.
    mesh.apply(
        "deny-admin.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
    );
    mesh.settles("sleep", "GET", "http://httpbin.foo:8000/admin", "403");
    logged(
        &mesh,
        "httpbin",
        &[
            "\"GET /admin HTTP/1.1\" 403 - rbac_access_denied_matched_policy[ns[foo]-policy[deny-admin]-rule[0]] ",
        ],
    );

    // A Telemetry filter on the client: only its errors are logged now.
    mesh.apply(
        "errors-only.yaml",
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: sleep-errors, namespace: foo}\nspec:\n  selector: {matchLabels: {app: sleep}}\n  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: 'response.code >= 400'}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut probe = 0;
    loop {
        probe += 1;
        mesh.http(
            "sleep",
            "GET",
            &format!("http://httpbin.foo:8000/admin?probe={probe}"),
        );
        std::thread::sleep(Duration::from_millis(300));
        if log_of(&mesh, "sleep", "istio-proxy").contains(&format!("/admin?probe={probe} ")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the filtered log never showed a 403"
        );
    }
    // The filter is in place (the last probe was logged): a success is not.
    let (status, _) = mesh.http("sleep", "GET", "http://httpbin.foo:8000/headers?filtered=1");
    assert_eq!(status, "200");
    mesh.http("sleep", "GET", "http://httpbin.foo:8000/admin?after=1");
    let line = logged(&mesh, "sleep", &["/admin?after=1 "]);
    // The client saw the server sidecar's answer.
    assert!(line.contains("\" 403 - via_upstream "), "{line}");
    assert!(
        !log_of(&mesh, "sleep", "istio-proxy").contains("/headers?filtered=1 "),
        "a 200 passed the filter"
    );

    // A TCP connection is one line when it closes: no request, code 0.
    mesh.tcp_settles("sleep", |t| t == "hello hi", "echoed");
    logged(
        &mesh,
        "tcp-echo",
        &["\"- - -\" 0 - - - \"-\" 3 9 ", "inbound|9000||"],
    );

    // A connection the network RBAC refuses: closed, and logged with why.
    mesh.apply(
        "deny-tcp.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-sleep-tcp, namespace: foo}\nspec:\n  selector: {matchLabels: {app: tcp-echo}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]\n",
    );
    mesh.tcp_settles("sleep", |t| t == "closed", "closed");
    logged(
        &mesh,
        "tcp-echo",
        &[
            "\"- - -\" 0 - - rbac_access_denied_matched_policy[ns[foo]-policy[deny-sleep-tcp]-rule[0]] \"-\" 0 0 ",
        ],
    );
}
