//! The Kubernetes Gateway API end to end on `oxmesh up`: a Gateway of class
//! `istio` gets its gateway deployed (`<name>-istio`), HTTPRoutes attached to
//! it route, split, match, rewrite and refuse as Istio's implementation does,
//! and an HTTPRoute whose parent is a Service steers the mesh's own requests
//! (GAMMA); GRPCRoutes pick backends by method and header, TCPRoutes and
//! TLSRoutes carry connections whole, and HTTPS listeners terminate with a
//! certificate from a Secret. Needs root, iproute2, iptables, openssl,
//! python3 (with grpcio in `OXMESH_PYTHON`) and curl.

use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use support::edge::{
    STATUS_ONLY, certificates, curl_https, mesh_with, mesh_with_curl, passes_tls_through, sample,
    service_address, tls_secret, tls_server,
};
use support::mesh::Mesh;

mod support;

/// Istio's "Kubernetes Gateway API" ingress task: its Gateway, in a
/// namespace of its own, taking routes from every namespace.
const INGRESS_GATEWAY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-ingress}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway, namespace: istio-ingress}
spec:
  gatewayClassName: istio
  listeners:
  - name: default
    hostname: "*.example.com"
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces: {from: All}
"#;

/// The task's first route: `/get` on httpbin.example.com to httpbin.
const HTTPBIN_GET: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http, namespace: default}
spec:
  parentRefs:
  - name: gateway
    namespace: istio-ingress
  hostnames: ["httpbin.example.com"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /get}
    backendRefs:
    - name: httpbin
      port: 8000
"#;

/// The task's second route: `/headers` too, with a header added.
const HTTPBIN_HEADERS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http, namespace: default}
spec:
  parentRefs:
  - name: gateway
    namespace: istio-ingress
  hostnames: ["httpbin.example.com"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /get}
    - path: {type: PathPrefix, value: /headers}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add:
        - name: my-added-header
          value: added-value
    backendRefs:
    - name: httpbin
      port: 8000
"#;

/// `oxmesh get KIND NAME -n NS -o json`: the object as the mesh holds it.
fn get(mesh: &Mesh, kind: &str, namespace: &str, name: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args([
            "get",
            kind,
            name,
            "-n",
            namespace,
            "-o",
            "json",
            "--mesh",
            &mesh.path(),
        ])
        .output()
        .expect("oxmesh get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A condition's status and reason from a `conditions` list.
fn condition(conditions: &serde_json::Value, kind: &str) -> (String, String) {
    let found = conditions
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {conditions}"));
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    (text(&found["status"]), text(&found["reason"]))
}

/// Polls `get` until `check` holds of the object (the control plane writes
/// status after each push).
fn status_settles(
    mesh: &Mesh,
    (kind, namespace, name): (&str, &str, &str),
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let object = get(mesh, kind, namespace, name);
        if check(&object["status"]) {
            return object;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} {namespace}/{name}: {object}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `curl` from outside the mesh to the deployed gateway with a Host header;
/// the status and the body.
fn through_gateway(mesh: &Mesh, host: &str, path: &str, header: Option<&str>) -> (String, String) {
    let host_header = format!("Host: {host}");
    let mut command = vec!["curl", "-s", "-m", "5", "-H", &host_header];
    if let Some(h) = header {
        command.extend(["-H", h]);
    }
    let url = format!("http://gateway-istio.istio-ingress{path}");
    command.extend(["-w", "\n%{http_code}", &url]);
    let out = mesh.run("outside", &command);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

/// Polls `through_gateway` until it answers `status` (the gateway has to be
/// deployed and configured first).
fn settles(mesh: &Mesh, host: &str, path: &str, header: Option<&str>, status: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = through_gateway(mesh, host, path, header);
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path}: {got} {body:?}, never {status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The task as Istio's docs run it: the Gateway is deployed as
/// `gateway-istio`, `/get` is routed and `/headers` is not (404), then the
/// updated route adds a header on the way to httpbin.
#[test]
fn istios_gateway_api_ingress_task() {
    let httpbin = sample("httpbin.yaml");
    let mesh = mesh_with(
        "gwapi-task",
        &[
            ("httpbin.yaml", httpbin),
            ("gateway.yaml", INGRESS_GATEWAY.to_owned()),
        ],
    );
    mesh.apply("route.yaml", HTTPBIN_GET);
    settles(&mesh, "httpbin.example.com", "/get", None, "200");
    let (status, _) = through_gateway(&mesh, "httpbin.example.com", "/headers", None);
    assert_eq!(status, "404", "only /get is routed");
    let (status, _) = through_gateway(&mesh, "other.example.com", "/get", None);
    assert_eq!(status, "404", "only httpbin.example.com is routed");
    // Status, as `kubectl get -o yaml` would show it.
    let gateway = status_settles(&mesh, ("gtw", "istio-ingress", "gateway"), |s| {
        s["conditions"].is_array() && condition(&s["conditions"], "Programmed").0 == "True"
    });
    let status = &gateway["status"];
    assert_eq!(
        condition(&status["conditions"], "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert!(
        status["addresses"][0]["value"]
            .as_str()
            .is_some_and(|a| a.starts_with("198.19.")),
        "{status}"
    );
    assert_eq!(status["listeners"][0]["attachedRoutes"], 1, "{status}");
    let class = get(&mesh, "gatewayclass", "", "istio");
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted"),
        ("True".into(), "Accepted".into()),
        "the GatewayClass Istio installs: {class}"
    );
    let route = get(&mesh, "httproute", "default", "http");
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "istio.io/gateway-controller");
    assert_eq!(
        condition(&parent["conditions"], "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        condition(&parent["conditions"], "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
    mesh.apply("route.yaml", HTTPBIN_HEADERS);
    let body = settles(&mesh, "httpbin.example.com", "/headers", None, "200");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("httpbin's JSON");
    assert_eq!(seen["headers"]["my-added-header"], "added-value", "{body}");

    // The deployed gateway, as kubectl shows it: a gateway pod, whose only
    // container (its proxy) `logs` reads without `-c`.
    let oxmesh = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxmesh"))
            .args(args)
            .args(["--mesh", &mesh.path()])
            .output()
            .expect("oxmesh");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pods = oxmesh(&["get", "pods", "-n", "istio-ingress"]);
    assert!(
        pods.lines()
            .any(|l| l.contains("gateway-istio-") && l.trim_end().ends_with("gateway")),
        "{pods}"
    );
    oxmesh(&["logs", "-n", "istio-ingress", "deploy/gateway-istio"]);

    // From the host, as the task's `kubectl port-forward` does it.
    let forward = PortForward::start(&mesh, &["-n", "istio-ingress", "svc/gateway-istio", "0:80"]);
    let answer = forward.get("httpbin.example.com", "/get");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `oxmesh port-forward` running; SIGTERM when dropped, so its relay goes.
struct PortForward {
    child: std::process::Child,
    port: u16,
}

impl PortForward {
    fn start(mesh: &Mesh, args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oxmesh"))
            .args(["port-forward", "--mesh", &mesh.path()])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("oxmesh port-forward");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let port = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("port-forward said {line:?}"));
        Self { child, port }
    }

    /// A plain HTTP/1.1 GET through the forwarded port: the whole answer.
    fn get(&self, host: &str, path: &str) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Two versions of the echo server behind a Service each, and one Service
/// over both (for the mesh's own requests).
const ECHO_VERSIONS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1}
spec:
  selector: {app: echo, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2}
spec:
  selector: {app: echo, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v1}
spec:
  selector: {matchLabels: {app: echo, version: v1}}
  template:
    metadata: {labels: {app: echo, version: v1}}
    spec:
      containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2}
spec:
  selector: {matchLabels: {app: echo, version: v2}}
  template:
    metadata: {labels: {app: echo, version: v2}}
    spec:
      containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
"#;

/// One route with the Gateway API's matches and filters: a header match
/// (more specific, so first, whatever the order written), an 80/20 split,
/// a prefix rewrite, a redirect, and a backend that does not exist.
const ECHO_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs:
  - {name: gateway, namespace: istio-ingress}
  hostnames: ["echo.example.com"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /split}
    backendRefs:
    - {name: echo-v1, port: 80, weight: 80}
    - {name: echo-v2, port: 80, weight: 20}
  - matches:
    - path: {type: PathPrefix, value: /split}
      headers:
      - {name: x-version, value: v2}
    backendRefs:
    - {name: echo-v2, port: 80}
  - matches:
    - path: {type: PathPrefix, value: /old}
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
    backendRefs:
    - {name: echo-v1, port: 80}
  - matches:
    - path: {type: Exact, value: /moved}
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: elsewhere.example.com, statusCode: 301}
  - matches:
    - path: {type: PathPrefix, value: /cors}
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://*.example.com"]
        allowMethods: [GET, POST]
        maxAge: 60
    backendRefs:
    - {name: echo-v1, port: 80}
  - matches:
    - path: {type: PathPrefix, value: /old-docs}
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /docs}
  - matches:
    - path: {type: PathPrefix, value: /missing}
    backendRefs:
    - {name: nothing, port: 80}
"#;

/// Which version's pod answered, from the echo server's JSON.
fn version(body: &str) -> &'static str {
    let seen: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let server = seen["server"].as_str().unwrap_or_default();
    if server.starts_with("echo-v1-") {
        "v1"
    } else if server.starts_with("echo-v2-") {
        "v2"
    } else {
        "?"
    }
}

/// HTTPRoute traffic splitting and matching through the deployed gateway:
/// the weights hold within tolerance, the header match wins over the plain
/// prefix, `PathPrefix` takes whole segments only, the rewrite and the
/// redirect are applied, and a missing backend answers 500 as the Gateway
/// API requires.
#[test]
fn http_routes_split_match_rewrite_and_refuse() {
    let mesh = mesh_with(
        "gwapi-routes",
        &[
            ("echo.yaml", ECHO_VERSIONS.to_owned()),
            ("gateway.yaml", INGRESS_GATEWAY.to_owned()),
        ],
    );
    mesh.apply("route.yaml", ECHO_ROUTES);
    let host = "echo.example.com";
    settles(&mesh, host, "/split", None, "200");
    let mut v2 = 0;
    let total = 200;
    for _ in 0..total {
        let (status, body) = through_gateway(&mesh, host, "/split", None);
        assert_eq!(status, "200", "{body}");
        if version(&body) == "v2" {
            v2 += 1;
        }
    }
    // 20 % of 200 is 40; ±4 sigma of the binomial is about ±23.
    assert!((17..=63).contains(&v2), "{v2} of {total} to v2");
    for _ in 0..10 {
        let (_, body) = through_gateway(&mesh, host, "/split/x", Some("x-version: v2"));
        assert_eq!(version(&body), "v2", "the header match wins: {body}");
    }
    let (status, _) = through_gateway(&mesh, host, "/splitting", None);
    assert_eq!(status, "404", "a prefix takes whole path segments");
    let (_, body) = through_gateway(&mesh, host, "/old/page?q=1", None);
    let seen: serde_json::Value = serde_json::from_str(&body).expect("echo's JSON");
    assert_eq!(seen["path"], "/new/page?q=1", "{body}");
    let out = mesh.run(
        "outside",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: echo.example.com",
            "http://gateway-istio.istio-ingress/moved",
        ],
    );
    let redirect = String::from_utf8_lossy(&out.stdout);
    assert_eq!(redirect, "301 http://elsewhere.example.com/moved");
    let out = mesh.run(
        "outside",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: echo.example.com",
            "http://gateway-istio.istio-ingress/old-docs/intro?x=1",
        ],
    );
    let redirect = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        redirect, "302 http://echo.example.com/docs/intro?x=1",
        "the matched prefix replaced, 302 by default, the port the listener's"
    );
    // A CORS preflight from an allowed origin is answered by the gateway.
    let out = mesh.run(
        "outside",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-X",
            "OPTIONS",
            "-H",
            "Host: echo.example.com",
            "-H",
            "Origin: https://app.example.com",
            "-H",
            "Access-Control-Request-Method: POST",
            "http://gateway-istio.istio-ingress/cors",
        ],
    );
    let answer = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 200")
            && answer.contains("access-control-allow-origin: https://app.example.com")
            && answer.contains("access-control-max-age: 60"),
        "{answer}"
    );
    let (status, _) = through_gateway(&mesh, host, "/missing", None);
    assert_eq!(status, "500", "a backend that does not exist answers 500");
    let route = status_settles(&mesh, ("httproute", "default", "echo"), |s| {
        s["parents"].is_array()
    });
    let conditions = &route["status"]["parents"][0]["conditions"];
    assert_eq!(condition(conditions, "Accepted").0, "True", "{route}");
    assert_eq!(
        condition(conditions, "ResolvedRefs"),
        ("False".into(), "BackendNotFound".into()),
        "{route}"
    );
}

/// GAMMA: an HTTPRoute whose parent is the Service `echo` sends the mesh's
/// requests for it to v2 only, with a header added; a request to echo-v1
/// itself is not touched.
const MESH_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-mesh, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-routed-by, value: gamma}]
    backendRefs:
    - {name: echo-v2, port: 80}
"#;

#[test]
fn a_route_with_a_service_parent_steers_the_mesh() {
    let mesh = mesh_with_curl("gwapi-gamma", vec![("echo.yaml", ECHO_VERSIONS.to_owned())]);
    mesh.settles("curl", "GET", "http://echo/", "200");
    mesh.apply("mesh-route.yaml", MESH_ROUTE);
    let routed = |body: &str| {
        let seen: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        seen["headers"]["x-routed-by"] == "gamma"
    };
    // The route has landed once its header shows; from then on every
    // request goes to v2 with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = mesh.http("curl", "GET", "http://echo/");
        if routed(&body) {
            break;
        }
        assert!(Instant::now() < deadline, "the route never applied: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..20 {
        let (_, body) = mesh.http("curl", "GET", "http://echo/");
        assert!(version(&body) == "v2" && routed(&body), "{body}");
    }
    let (_, body) = mesh.http("curl", "GET", "http://echo-v1/");
    assert_eq!(version(&body), "v1", "{body}");
}

/// A Service per tcp-echo version, beside Istio's own tcp-echo manifests.
const TCP_ECHO_VERSIONS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: tcp-echo-v1}
spec:
  selector: {app: tcp-echo, version: v1}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo-v2}
spec:
  selector: {app: tcp-echo, version: v2}
  ports: [{name: tcp, port: 9000}]
"#;

/// A TCP listener and a TLS passthrough listener, and their routes: TCP
/// connections split 80/20 between the tcp-echo versions, TLS for
/// nginx.example.com passed through to the app by SNI.
const L4_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway, namespace: istio-ingress}
spec:
  gatewayClassName: istio
  listeners:
  - name: tcp
    port: 31400
    protocol: TCP
    allowedRoutes: {namespaces: {from: All}}
  - name: tls
    port: 443
    protocol: TLS
    hostname: "*.example.com"
    tls: {mode: Passthrough}
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: tcp-echo, namespace: default}
spec:
  parentRefs: [{name: gateway, namespace: istio-ingress, sectionName: tcp}]
  rules:
  - backendRefs:
    - {name: tcp-echo-v1, port: 9000, weight: 80}
    - {name: tcp-echo-v2, port: 9000, weight: 20}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: nginx, namespace: default}
spec:
  parentRefs: [{name: gateway, namespace: istio-ingress}]
  hostnames: [nginx.example.com]
  rules:
  - backendRefs: [{name: my-nginx, port: 443}]
"#;

/// The deployed gateway's address, as an outside client's DNS gives it.
fn gateway_address(mesh: &Mesh) -> String {
    service_address(mesh, "gateway-istio.istio-ingress.svc.cluster.local")
}

/// TCPRoute and TLSRoute (the experimental channel, as Istio serves it):
/// connections are split by weight, and TLS is passed through untouched by
/// SNI (the client verifies the app's own certificate); another SNI is
/// closed.
#[test]
fn tcp_and_tls_routes_carry_connections_whole() {
    let certs = certificates("gwapi-l4", "nginx.example.com");
    let nginx = tls_server("my-nginx", "default", &certs, "nginx.example.com");
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-ingress}\n";
    let mesh = mesh_with(
        "gwapi-l4",
        &[
            ("tcp-echo.yaml", sample("tcp-echo-tcp-echo-services.yaml")),
            ("versions.yaml", TCP_ECHO_VERSIONS.to_owned()),
            ("nginx.yaml", nginx),
            ("ingress-ns.yaml", namespace.to_owned()),
        ],
    );
    mesh.apply("gateway.yaml", L4_ROUTES);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut one, mut two) = (0, 0);
    while one + two < 200 {
        let (a, b) = mesh.tcp_echo_versions("outside", ("gateway-istio.istio-ingress", 31400), 20);
        one += a;
        two += b;
        assert!(
            Instant::now() < deadline,
            "200 answers never came: {one} v1, {two} v2"
        );
    }
    // 20 % of 200 is 40; ±4 sigma of the binomial is about ±23.
    assert!((17..=63).contains(&two), "{one} to v1, {two} to v2");

    passes_tls_through(&mesh, &certs, &gateway_address(&mesh));
    let route = status_settles(&mesh, ("tlsroute", "default", "nginx"), |s| {
        s["parents"].is_array()
    });
    let conditions = &route["status"]["parents"][0]["conditions"];
    assert_eq!(
        condition(conditions, "Accepted"),
        ("True".into(), "Accepted".into()),
        "{route}"
    );
}

/// Istio's secure gateway task with the Gateway API: an HTTPS listener
/// terminating with the certificate in a Secret of the Gateway's namespace,
/// and one with a Secret of another namespace that a ReferenceGrant opens,
/// each verified by curl against its CA.
#[test]
fn https_listeners_terminate_with_their_certificate_refs() {
    let certs = certificates("gwapi-https", "httpbin.example.com");
    let httpbin = sample("httpbin.yaml");
    let secret = tls_secret(
        &certs,
        "httpbin.example.com",
        "istio-ingress",
        "httpbin-credential",
    );
    let gateway = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-ingress}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway, namespace: istio-ingress}
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    hostname: httpbin.example.com
    port: 443
    protocol: HTTPS
    tls:
      mode: Terminate
      certificateRefs: [{name: httpbin-credential}]
    allowedRoutes: {namespaces: {from: All}}
  - name: shared
    hostname: shared.example.com
    port: 443
    protocol: HTTPS
    tls:
      mode: Terminate
      certificateRefs: [{name: shared-credential, namespace: certs}]
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: v1
kind: Namespace
metadata: {name: certs}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways-use-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: istio-ingress}]
  to: [{group: "", kind: Secret, name: shared-credential}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: httpbin, namespace: default}
spec:
  parentRefs: [{name: gateway, namespace: istio-ingress}]
  hostnames: [httpbin.example.com, shared.example.com]
  rules:
  - backendRefs: [{name: httpbin, port: 8000}]
"#;
    // A certificate kept in another namespace, which a ReferenceGrant opens
    // to Gateways of istio-ingress.
    let shared = certificates("gwapi-https-shared", "shared.example.com");
    let shared_secret = tls_secret(&shared, "shared.example.com", "certs", "shared-credential");
    let mesh = mesh_with(
        "gwapi-https",
        &[
            ("httpbin.yaml", httpbin),
            ("gateway.yaml", gateway.to_owned()),
            ("shared.yaml", shared_secret),
        ],
    );
    mesh.apply("secret.yaml", &secret);
    let address = gateway_address(&mesh);
    for (certs, host) in [
        (&certs, "httpbin.example.com"),
        (&shared, "shared.example.com"),
    ] {
        serves_tls(&mesh, certs, &address, host);
    }
    let gateway = get(&mesh, "gtw", "istio-ingress", "gateway");
    for listener in 0..2 {
        let conditions = &gateway["status"]["listeners"][listener]["conditions"];
        assert_eq!(
            condition(conditions, "ResolvedRefs"),
            ("True".into(), "ResolvedRefs".into()),
            "{gateway}"
        );
    }
}

/// Waits until the gateway at `address` serves `host` over TLS with a
/// certificate curl verifies against `certs`' CA.
fn serves_tls(mesh: &Mesh, certs: &TempDir, address: &str, host: &str) {
    let ca = certs.path("ca.crt").to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = curl_https(
            mesh,
            "outside",
            &ca,
            (host, address),
            "/status/418",
            &STATUS_ONLY,
        );
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        if status == "418" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} never served over TLS: {status:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Python with grpcio (`.ci/run` makes a virtualenv and names it here).
fn python_with_grpc() -> String {
    std::env::var("OXMESH_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Two versions of a stock gRPC echo server (`sidecar/grpc_echo.py`), each
/// answering with its name, behind Services `echo-v1` and `echo-v2`.
fn grpc_echo_versions() -> String {
    let python = python_with_grpc();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sidecar/grpc_echo.py")
        .to_string_lossy()
        .into_owned();
    ["v1", "v2"]
        .map(|v| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: echo-{v}}}\nspec:\n  selector: {{app: echo, version: {v}}}\n  ports: [{{name: grpc, port: 7070}}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: echo-{v}}}\nspec:\n  selector: {{matchLabels: {{app: echo, version: {v}}}}}\n  template:\n    metadata: {{labels: {{app: echo, version: {v}}}}}\n    spec:\n      containers:\n      - {{name: grpc, image: grpc, command: [\"{python}\", \"{script}\", \"7070\", echo-{v}]}}\n"
            )
        })
        .join("---\n")
}

/// A GRPCRoute on the ingress Gateway: calls of `oxmesh.Echo/Call` that
/// carry `x-version: v2` go to v2, every other call of the service to v1.
const GRPC_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{name: gateway, namespace: istio-ingress}]
  hostnames: [grpc.example.com]
  rules:
  - matches:
    - method: {service: oxmesh.Echo, method: Call}
      headers: [{name: x-version, value: v2}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches:
    - method: {service: oxmesh.Echo}
    backendRefs: [{name: echo-v1, port: 7070}]
"#;

/// A stock gRPC client through the gateway at `address`, authority
/// grpc.example.com: a unary call of `method` (`/service/method`, with
/// `x-version: v2` when `v2`), printing the answer or the status's name.
fn grpc_call(mesh: &Mesh, address: &str, method: &str, v2: bool) -> String {
    let script = format!(
        "import grpc\nmetadata = [('x-version', 'v2')] if {v2} else []\nwith grpc.insecure_channel('{address}:80', options=[('grpc.default_authority', 'grpc.example.com')]) as channel:\n  try:\n    print(channel.unary_unary('{method}')(b'hi', timeout=5, metadata=metadata).decode().split(' |')[0])\n  except grpc.RpcError as e:\n    print(e.code().name)\n",
        v2 = if v2 { "True" } else { "False" },
    );
    let out = mesh.run("outside", &[&python_with_grpc(), "-c", &script]);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if answer.is_empty() {
        return String::from_utf8_lossy(&out.stderr).into_owned();
    }
    answer
}

/// GRPCRoute end to end: method and header matches pick the backend through
/// the deployed gateway, as Istio's implementation routes them.
#[test]
fn grpc_routes_pick_backends_by_method_and_header() {
    let mesh = mesh_with(
        "gwapi-grpc",
        &[
            ("echo.yaml", grpc_echo_versions()),
            ("gateway.yaml", INGRESS_GATEWAY.to_owned()),
            ("route.yaml", GRPC_ROUTE.to_owned()),
        ],
    );
    let address = gateway_address(&mesh);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = grpc_call(&mesh, &address, "/oxmesh.Echo/Call", false);
        if answer == "echo-v1: hi" {
            break;
        }
        assert!(Instant::now() < deadline, "never routed: {answer:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        grpc_call(&mesh, &address, "/oxmesh.Echo/Call", true),
        "echo-v2: hi"
    );
    // A service no rule names, even one whose name starts like it: the
    // gateway's 404, which gRPC reads as UNIMPLEMENTED.
    for unrouted in ["/other.Echo/Call", "/oxmesh.EchoX/Call"] {
        assert_eq!(
            grpc_call(&mesh, &address, unrouted, false),
            "UNIMPLEMENTED",
            "{unrouted}"
        );
    }
}
