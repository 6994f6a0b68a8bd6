//! Istio's gateway tasks end to end on `oxmesh up`: TCP servers (Istio's
//! tcp-echo task through the ingress gateway) and TLS passthrough by SNI
//! (Istio's "ingress gateway without TLS termination" task), from a client
//! outside the mesh (a pod without a sidecar, which reaches the gateway's
//! Service through kube-proxy's rules as on a cluster); and those rules
//! behind a sidecar that passes a connection through to a VIP. Needs root,
//! iproute2, iptables, openssl, python3 and curl.

use std::process::Command;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use support::edge::{
    certificates, mesh_with, mesh_with_args, mesh_with_curl, passes_tls_through, sample,
    service_address, tls_secret, tls_server,
};
use support::mesh::Mesh;

mod support;

/// An address an app's own resolver might give an external host: in the
/// Service range, where the testbed hands out no VIP (they stop well
/// before), so only the client's sidecar makes sense of it, by Host or SNI.
const SOME_ADDRESS: &str = "198.19.255.254";

/// The external HTTPS server for `edition.cnn.com`, outside the mesh (its
/// namespace does not inject): its certificates, and its manifests.
fn external_tls_server(test: &str) -> (TempDir, Vec<(&'static str, String)>) {
    let certs = certificates(test, "edition.cnn.com");
    let server = tls_server("web-tls", "external", &certs, "edition.cnn.com");
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: external}\n";
    (
        certs,
        vec![
            ("external-ns.yaml", namespace.to_owned()),
            ("external.yaml", server),
        ],
    )
}

/// `connections` lines through the ingress gateway's TCP port from outside
/// the mesh; how many each tcp-echo version answered.
fn tcp_answers(mesh: &Mesh, connections: u32) -> (usize, usize) {
    mesh.tcp_echo_versions(
        "outside",
        ("istio-ingressgateway.istio-system", 31400),
        connections,
    )
}

/// The ingress gateway Service's address, as the client's DNS gives it.
fn ingress_address(mesh: &Mesh) -> String {
    service_address(mesh, "istio-ingressgateway.istio-system.svc.cluster.local")
}

/// Istio's TCP traffic-shifting task as its docs run it, through the
/// ingress gateway's TCP server on 31400 with Istio's own manifests: all
/// connections to tcp-echo v1, then 80/20 between v1 and v2.
#[test]
fn tcp_servers_route_by_the_gateways_tcp_rules() {
    let mesh = mesh_with(
        "gw-tcp",
        &[("tcp-echo.yaml", sample("tcp-echo-tcp-echo-services.yaml"))],
    );
    mesh.apply("all-v1.yaml", &sample("tcp-echo-tcp-echo-all-v1.yaml"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (one, two) = tcp_answers(&mesh, 10);
        if (one, two) == (10, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "all to v1 through the gateway: {one} v1, {two} v2"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    mesh.apply("20-v2.yaml", &sample("tcp-echo-tcp-echo-20-v2.yaml"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut one, mut two) = (0, 0);
    while one + two < 200 {
        let (a, b) = tcp_answers(&mesh, 20);
        one += a;
        two += b;
        // Until the push lands, every answer is v1's.
        if two == 0 {
            one = 0;
        }
        assert!(
            Instant::now() < deadline,
            "200 answers never came: {one} v1, {two} v2"
        );
    }
    // 20 % of 200 is 40; a binomial spread of ±4 sigma is about ±23.
    assert!((17..=63).contains(&two), "{one} to v1, {two} to v2");
}

const PASSTHROUGH: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx}
spec:
  hosts: [nginx.example.com]
  gateways: [mygateway]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    route:
    - destination: {host: my-nginx, port: {number: 443}}
"#;

/// Istio's "ingress gateway without TLS termination" task: the gateway
/// routes by SNI and passes the TLS through, so the client sees the app's
/// own certificate (verified against the test's CA) and the app's answer;
/// a name no route takes is closed.
#[test]
fn passthrough_servers_route_tls_by_sni_untouched() {
    let dir = certificates("gw-passthrough", "nginx.example.com");
    let server = tls_server("my-nginx", "default", &dir, "nginx.example.com");
    let mesh = mesh_with("gw-passthrough", &[("nginx.yaml", server)]);
    mesh.apply("gateway.yaml", PASSTHROUGH);
    passes_tls_through(&mesh, &dir, &ingress_address(&mesh));
}

/// A Service exported only to its own namespace, with an app answering
/// `hidden` on 8080.
const HIDDEN: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: hidden, labels: {istio-injection: enabled}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: hidden, annotations: {networking.istio.io/exportTo: \".\"}}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: hidden}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: web\n        image: python\n        command: [python3, -c, \"import http.server\\nclass H(http.server.BaseHTTPRequestHandler):\\n  def do_GET(self):\\n    self.send_response(200)\\n    self.send_header('content-length', '6')\\n    self.end_headers()\\n    self.wfile.write(b'hidden')\\nhttp.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\\n\"]\n";

/// What a sidecar passes through to a Service VIP reaches an endpoint, as
/// kube-proxy on a node sends it: the Service is exported only to its own
/// namespace, so the client's sidecar does not know it and sends the
/// connection on to the VIP (PassthroughCluster) unchanged.
#[test]
fn a_sidecar_passing_through_to_a_vip_reaches_an_endpoint() {
    let mesh = mesh_with_curl("gw-kube-proxy", vec![("hidden.yaml", HIDDEN.to_owned())]);
    let body = mesh.settles("curl", "GET", "http://web.hidden/", "200");
    assert_eq!(body, "hidden");
    let clusters = mesh.run("curl", &["curl", "-s", "localhost:15000/clusters"]);
    let clusters = String::from_utf8_lossy(&clusters.stdout);
    assert!(
        !clusters.contains("web.hidden"),
        "the client's sidecar knows the hidden Service: {clusters}"
    );
}

/// A server outside the mesh (its namespace has no injection) that answers
/// with the address it sees the client at.
const EXTERNAL: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: external}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: external}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: external}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: web\n        image: python\n        command: [python3, -c, \"import http.server\\nclass H(http.server.BaseHTTPRequestHandler):\\n  def do_GET(self):\\n    body = ('seen from ' + self.client_address[0]).encode()\\n    self.send_response(200)\\n    self.send_header('content-length', str(len(body)))\\n    self.end_headers()\\n    self.wfile.write(body)\\nhttp.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\\n\"]\n";

/// An egress gateway deployed as Istio's gateway chart deploys one: a
/// Deployment whose pod asks for the `gateway` injection template and
/// brings its own `istio-proxy` container, and its Service (the pod listens
/// on 80 and 443 themselves, as the chart's).
const EGRESS_GATEWAY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: istio-egressgateway, namespace: istio-system}\nspec:\n  selector: {istio: egressgateway}\n  ports:\n  - {name: http2, port: 80, targetPort: 80}\n  - {name: https, port: 443, targetPort: 443}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: istio-egressgateway, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: egressgateway}}\n  template:\n    metadata:\n      labels: {istio: egressgateway, app: istio-egressgateway, sidecar.istio.io/inject: \"true\"}\n      annotations: {inject.istio.io/templates: gateway}\n    spec:\n      serviceAccountName: istio-egressgateway-service-account\n      containers: [{name: istio-proxy, image: auto}]\n";

/// The egress gateway's subset for the external host, in both of Istio's
/// egress gateway tasks.
const EGRESS_SUBSET: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: egressgateway-for-cnn}\nspec:\n  host: istio-egressgateway.istio-system.svc.cluster.local\n  subsets: [{name: cnn}]\n";

/// Istio's "egress gateway" task for HTTP, with its config (the external
/// host's endpoint is the test's server outside the mesh, where Istio's
/// task reaches edition.cnn.com).
const EGRESS_ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 80, name: http-port, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: web.external.svc.cluster.local, ports: {http-port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [edition.cnn.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: cnn, port: {number: 80}}
      weight: 100
  - match: [{gateways: [istio-egressgateway], port: 80}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 80}}
      weight: 100
"#;

/// Istio's egress gateway task for HTTP: a mesh client's request for an
/// external host goes through the egress gateway (the external server sees
/// the gateway's address, not the client's), the gateway deployed by
/// gateway injection.
#[test]
fn egress_traffic_leaves_through_the_egress_gateway() {
    let mesh = mesh_with_curl(
        "gw-egress",
        vec![
            ("external.yaml", EXTERNAL.to_owned()),
            ("egress.yaml", EGRESS_GATEWAY.to_owned()),
        ],
    );
    let gateway_ip = egress_gateway_address(&mesh);
    mesh.apply("subset.yaml", EGRESS_SUBSET);
    mesh.apply("routes.yaml", EGRESS_ROUTES);
    // The client's own resolver gave it some address for the host; its
    // sidecar routes by Host.
    let body = mesh.settles_with(
        "curl",
        "GET",
        &format!("http://{SOME_ADDRESS}/politics"),
        Some("Host: edition.cnn.com"),
        "200",
    );
    assert_eq!(body, format!("seen from {gateway_ip}"));
}

/// Istio's "egress TLS origination" task: the app speaks plain HTTP to an
/// external host's port 80, and its sidecar opens TLS to the host's server
/// (which speaks nothing else) as the DestinationRule says, checking the
/// server's certificate against the rule's CA.
#[test]
fn sidecars_originate_tls_for_plain_http_apps() {
    let (certs, server) = external_tls_server("gw-origination");
    let mesh = mesh_with_curl("gw-origination", server);
    mesh.apply(
        "origination.yaml",
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: edition-cnn-com}}
spec:
  hosts: [edition.cnn.com]
  ports: [{{number: 80, name: http-port, protocol: HTTP}}]
  resolution: DNS
  endpoints: [{{address: web-tls.external.svc.cluster.local, ports: {{http-port: 443}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: edition-cnn-com}}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, sni: edition.cnn.com, caCertificates: {}}}
"#,
            certs.path("ca.crt").display()
        ),
    );
    let body = mesh.settles_with(
        "curl",
        "GET",
        &format!("http://{SOME_ADDRESS}/politics"),
        Some("Host: edition.cnn.com"),
        "200",
    );
    assert!(
        body.starts_with("served by the app over its own TLS"),
        "{body}"
    );
    // The external host is the destination in the client's metrics.
    let metrics = mesh.metrics("curl");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total")
                && l.contains("destination_service=\"edition.cnn.com\"")
                && l.contains("response_code=\"200\"")),
        "{metrics}"
    );
}

/// Istio's "egress gateway for HTTPS traffic" task: the app's own TLS to an
/// external host goes, by SNI, to the egress gateway and on through its
/// PASSTHROUGH server, untouched (the app verifies the external server's
/// certificate, and the server sees the gateway's address).
#[test]
fn https_egress_passes_through_the_egress_gateway() {
    let (certs, mut manifests) = external_tls_server("gw-egress-tls");
    manifests.push(("egress.yaml", EGRESS_GATEWAY.to_owned()));
    let mesh = mesh_with_curl("gw-egress-tls", manifests);
    let gateway_ip = egress_gateway_address(&mesh);
    mesh.apply("subset.yaml", EGRESS_SUBSET);
    mesh.apply("routes.yaml", EGRESS_TLS_ROUTES);
    let ca = certs.path("ca.crt").to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let out = mesh.run(
            "curl",
            &[
                "curl",
                "-s",
                "-m",
                "5",
                "--cacert",
                &ca,
                "--resolve",
                &format!("edition.cnn.com:443:{SOME_ADDRESS}"),
                "https://edition.cnn.com/politics",
            ],
        );
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.starts_with("served by the app over its own TLS") {
            break body;
        }
        assert!(Instant::now() < deadline, "never passed through: {body:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        body,
        format!("served by the app over its own TLS to {gateway_ip}")
    );
}

/// The egress gateway pod's address.
fn egress_gateway_address(mesh: &Mesh) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(["exec", "--mesh", &mesh.path(), "-n", "istio-system"])
        .args([
            "deploy/istio-egressgateway",
            "--",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ])
        .output()
        .expect("oxmesh exec");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address for the egress gateway: {text}"))
        .to_owned()
}

/// Istio's config for HTTPS through the egress gateway (the external host's
/// endpoint is the test's server outside the mesh).
const EGRESS_TLS_ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  endpoints: [{address: web-tls.external.svc.cluster.local}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [edition.cnn.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway}
spec:
  hosts: [edition.cnn.com]
  gateways: [mesh, istio-egressgateway]
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: [edition.cnn.com]}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: cnn, port: {number: 443}}
  - match: [{gateways: [istio-egressgateway], port: 443, sniHosts: [edition.cnn.com]}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 443}}
      weight: 100
"#;

/// Istio's secure gateway task (SIMPLE TLS at the ingress gateway with the
/// certificate in a Secret), reached from the host as the task reaches it,
/// through `oxmesh up --ingress-https-port`: curl on the host verifies the
/// gateway's certificate against the test's CA; the server's
/// `minProtocolVersion` keeps TLS 1.2 clients out.
#[test]
fn the_secure_gateway_is_reached_from_the_host() {
    let certs = certificates("gw-secure-host", "httpbin.example.com");
    let https_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let httpbin = sample("httpbin.yaml");
    let secret = tls_secret(
        &certs,
        "httpbin.example.com",
        "istio-system",
        "httpbin-credential",
    );
    let config = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential, minProtocolVersion: TLSV1_3}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  gateways: [mygateway]
  http:
  - match: [{uri: {prefix: /status}}]
    route:
    - destination: {host: httpbin, port: {number: 8000}}
"#;
    let port = https_port.to_string();
    let mesh = mesh_with_args(
        "gw-secure-host",
        &[
            ("httpbin.yaml", httpbin),
            ("secret.yaml", secret),
            ("gateway.yaml", config.to_owned()),
        ],
        &["--ingress-https-port", &port],
    );
    let ca = certs.path("ca.crt");
    let resolve = format!("httpbin.example.com:{port}:127.0.0.1");
    let url = format!("https://httpbin.example.com:{port}/status/418");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
            ])
            .arg(&ca)
            .args(["--resolve", &resolve, &url])
            .output()
            .expect("curl");
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        if status == "418" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served from the host: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // minProtocolVersion TLSV1_3: a client that stops at TLS 1.2 is refused
    // in the handshake (curl's 35).
    let old_client = Command::new("curl")
        .args(["-s", "-m", "5", "--tls-max", "1.2", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &resolve, &url])
        .status()
        .expect("curl");
    assert_eq!(
        old_client.code(),
        Some(35),
        "TLS 1.2 is below the server's minimum"
    );
    drop(mesh);
}

/// Istio's east-west gateway server: AUTO_PASSTHROUGH on 15443 for every
/// `*.local` host.
const CROSS_NETWORK_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
"#;

/// AUTO_PASSTHROUGH, as another network's sidecar uses it: a TLS client
/// naming `outbound_.8000_._.httpbin.default.svc.cluster.local` in its SNI
/// reaches httpbin's own sidecar through the gateway, untouched (the
/// certificate it sees is httpbin's mesh identity), and one naming no
/// cluster is closed.
#[test]
fn auto_passthrough_sends_tls_to_the_cluster_its_sni_names() {
    let httpbin = sample("httpbin.yaml");
    let mesh = mesh_with(
        "gw-auto-passthrough",
        &[
            ("httpbin.yaml", httpbin),
            ("east-west.yaml", CROSS_NETWORK_GATEWAY.to_owned()),
        ],
    );
    let ingress = ingress_address(&mesh);
    let peer = |sni: &str| {
        let script = format!(
            "openssl s_client -connect {ingress}:15443 -servername {sni} -alpn istio </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName 2>/dev/null"
        );
        let out = mesh.run("outside", &["sh", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let sni = "outbound_.8000_._.httpbin.default.svc.cluster.local";
    loop {
        let seen = peer(sni);
        if seen.contains("URI:spiffe://cluster.local/ns/default/sa/httpbin") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reached httpbin's sidecar: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        peer("outbound_.8000_._.nothing.default.svc.cluster.local"),
        "",
        "an SNI that names no cluster goes nowhere"
    );
}
