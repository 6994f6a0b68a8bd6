//! Istio's gateway tasks end to end on `oxmesh up`: TCP servers (the
//! tcp-echo task through the ingress gateway), TLS passthrough by SNI, the
//! secure gateway from the host, MUTUAL servers (two certificates,
//! revocation lists), `bind`, AUTO_PASSTHROUGH, and the egress tasks (HTTP
//! and HTTPS through the egress gateway, TLS origination at the sidecar,
//! mutual TLS origination at the egress gateway, wildcard hosts on a
//! REGISTRY_ONLY mesh), from clients outside the mesh (pods without a
//! sidecar, which reach the gateways' Services through kube-proxy's rules
//! as on a cluster) and inside it. Needs root, iproute2, iptables, openssl,
//! python3 and curl.

use std::process::Command;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use support::edge::{
    STATUS_ONLY, certificates, curl_https, mesh_with, mesh_with_args, mesh_with_curl,
    passes_tls_through, run_in, sample, service_address, tls_secret, tls_server,
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
        let target = ("edition.cnn.com", SOME_ADDRESS);
        let out = curl_https(&mesh, "curl", &ca, target, "/politics", &[]);
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
    gateway_pod_address(mesh, "istio-egressgateway")
}

/// `command` run in the pod of Deployment `deployment` in istio-system.
fn in_gateway_pod(mesh: &Mesh, deployment: &str, command: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(["exec", "--mesh", &mesh.path(), "-n", "istio-system"])
        .arg(format!("deploy/{deployment}"))
        .arg("--")
        .args(command)
        .output()
        .expect("oxmesh exec")
}

/// The address of a gateway Deployment's pod in istio-system.
fn gateway_pod_address(mesh: &Mesh, deployment: &str) -> String {
    eth0_address(in_gateway_pod(mesh, deployment, &ETH0))
}

/// What shows a pod's address.
const ETH0: [&str; 6] = ["ip", "-4", "-o", "addr", "show", "eth0"];

/// The IPv4 address in `ip -o addr` output.
fn eth0_address(out: std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address in {text:?}"))
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

/// Certificates for the MUTUAL test, made with openssl in a new directory:
/// a server CA (`ca.crt`) and, signed by it, an RSA and an ECDSA
/// certificate for each of `dual.example.com`, `files.example.com` and
/// `mtls.example.com`; a client CA (`client-ca.crt`), two clients it signed
/// (`good`, `revoked`), and its revocation list (`client-ca.crl`) naming
/// `revoked`.
fn mutual_certificates(test: &str) -> TempDir {
    let dir = TempDir::new(&format!("{test}-certs"));
    let script = r#"set -e
exec 2>/dev/null
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
rsa="-newkey rsa:2048"
openssl req -x509 $ec -nodes -days 1 -subj /CN=server-ca -keyout ca.key -out ca.crt
for host in dual files mtls; do
  for kind in rsa ec; do
    if [ $kind = rsa ]; then key=$rsa; else key=$ec; fi
    openssl req $key -nodes -subj /CN=$host.example.com -addext subjectAltName=DNS:$host.example.com -keyout $host-$kind.key -out $host-$kind.csr
    openssl x509 -req -in $host-$kind.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out $host-$kind.crt
  done
done
openssl req -x509 $ec -nodes -days 1 -subj /CN=client-ca -keyout client-ca.key -out client-ca.crt
for client in good revoked; do
  openssl req $ec -nodes -subj /CN=$client -addext subjectAltName=DNS:$client-client -keyout $client.key -out $client.csr
  openssl x509 -req -in $client.csr -CA client-ca.crt -CAkey client-ca.key -CAcreateserial -days 1 -copy_extensions copy -out $client.crt
done
touch index.txt
echo 01 > crlnumber
printf '[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\ncrlnumber=crlnumber\ndefault_md=sha256\ndefault_crl_days=1\n' > ca.cnf
openssl ca -config ca.cnf -keyfile client-ca.key -cert client-ca.crt -revoke revoked.crt
openssl ca -config ca.cnf -keyfile client-ca.key -cert client-ca.crt -gencrl -out client-ca.crl
chmod 644 *.key
"#;
    run_in(&dir, script);
    dir
}

/// A Secret `name` in istio-system with `entries` (key, file in `certs`).
fn secret_of(certs: &TempDir, name: &str, entries: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\nstringData:\n"
    );
    for (key, file) in entries {
        yaml.push_str(&format!("  {key}: |\n"));
        for line in std::fs::read_to_string(certs.path(file))
            .expect("pem")
            .lines()
        {
            yaml.push_str(&format!("    {line}\n"));
        }
    }
    yaml
}

/// MUTUAL's remaining server fields at the ingress gateway: an RSA and an
/// ECDSA certificate side by side, from Secrets (`credentialNames`) and
/// from files (`tlsCertificates`), each client getting the one it can
/// verify; clients checked against a CA in a Secret of its own
/// (`caCertCredentialName`) or in files, with its revocation list (the
/// Secret's `ca.crl`, or `caCrl`): a revoked client is refused, an
/// unrevoked one served.
#[test]
fn mutual_servers_take_two_certificates_and_refuse_revoked_clients() {
    let certs = mutual_certificates("gw-mutual");
    let path = |file: &str| certs.path(file).to_string_lossy().into_owned();
    let secrets = [
        secret_of(
            &certs,
            "dual-rsa",
            &[("tls.crt", "dual-rsa.crt"), ("tls.key", "dual-rsa.key")],
        ),
        secret_of(
            &certs,
            "dual-ec",
            &[("tls.crt", "dual-ec.crt"), ("tls.key", "dual-ec.key")],
        ),
        secret_of(
            &certs,
            "mtls",
            &[("tls.crt", "mtls-ec.crt"), ("tls.key", "mtls-ec.key")],
        ),
        secret_of(
            &certs,
            "client-ca",
            &[("ca.crt", "client-ca.crt"), ("ca.crl", "client-ca.crl")],
        ),
    ]
    .join("---\n");
    let gateway = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mutual}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-dual, protocol: HTTPS}}
    hosts: [dual.example.com]
    tls: {{mode: SIMPLE, credentialNames: [dual-rsa, dual-ec]}}
  - port: {{number: 443, name: https-files, protocol: HTTPS}}
    hosts: [files.example.com]
    tls:
      mode: OPTIONAL_MUTUAL
      tlsCertificates:
      - {{serverCertificate: {files_rsa}, privateKey: {files_rsa_key}}}
      - {{serverCertificate: {files_ec}, privateKey: {files_ec_key}}}
      caCertificates: {client_ca}
      caCrl: {client_crl}
  - port: {{number: 443, name: https-mtls, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, credentialName: mtls, caCertCredentialName: client-ca}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [dual.example.com, files.example.com, mtls.example.com]
  gateways: [mutual]
  http:
  - route:
    - destination: {{host: httpbin, port: {{number: 8000}}}}
"#,
        files_rsa = path("files-rsa.crt"),
        files_rsa_key = path("files-rsa.key"),
        files_ec = path("files-ec.crt"),
        files_ec_key = path("files-ec.key"),
        client_ca = path("client-ca.crt"),
        client_crl = path("client-ca.crl"),
    );
    let mesh = mesh_with(
        "gw-mutual",
        &[
            ("httpbin.yaml", sample("httpbin.yaml")),
            ("secrets.yaml", secrets),
            ("gateway.yaml", gateway),
        ],
    );
    let ingress = ingress_address(&mesh);
    let ca = path("ca.crt");
    // The status a client gets from `host`'s /status/200, presenting
    // `client`'s certificate if any ("000": refused in the handshake).
    let status = |host: &str, client: Option<&str>| {
        let files = client.map(|c| (path(&format!("{c}.crt")), path(&format!("{c}.key"))));
        let mut extra = STATUS_ONLY.to_vec();
        if let Some((cert, key)) = &files {
            extra.extend(["--cert", cert, "--key", key]);
        }
        let target = (host, ingress.as_str());
        let out = curl_https(&mesh, "outside", &ca, target, "/status/200", &extra);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status("mtls.example.com", Some("good")) != "200"
        || status("dual.example.com", None) != "200"
    {
        assert!(Instant::now() < deadline, "the gateway never served");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The key type a client that can verify only `sigalg` is served.
    let key_served = |host: &str, sigalg: &str| {
        let script = format!(
            "openssl s_client -connect {ingress}:443 -servername {host} -sigalgs {sigalg} </dev/null 2>/dev/null | openssl x509 -noout -text 2>/dev/null | grep 'Public Key Algorithm'"
        );
        let out = mesh.run("outside", &["sh", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for host in ["dual.example.com", "files.example.com"] {
        assert!(
            key_served(host, "ecdsa_secp256r1_sha256").ends_with("id-ecPublicKey"),
            "{host}: an ECDSA-capable client gets the ECDSA certificate"
        );
        assert!(
            key_served(host, "rsa_pss_rsae_sha256").ends_with("rsaEncryption"),
            "{host}: an RSA-only client gets the RSA certificate"
        );
    }
    // Revocation lists, from the CA's Secret and from files.
    assert_eq!(status("mtls.example.com", Some("revoked")), "000");
    assert_eq!(
        status("mtls.example.com", None),
        "000",
        "MUTUAL needs a certificate"
    );
    assert_eq!(status("files.example.com", Some("good")), "200");
    assert_eq!(status("files.example.com", Some("revoked")), "000");
    assert_eq!(
        status("files.example.com", None),
        "200",
        "OPTIONAL_MUTUAL serves a client without a certificate"
    );
}

/// Service `my-nginx` in `mesh-external` (outside the mesh, and exported to
/// its own namespace only, as Istio's task makes it look external), port
/// 443: a TLS server that requires a client certificate from
/// `client-ca.crt` and answers with the client's subject.
fn mutual_tls_server(certs: &TempDir) -> String {
    let script = format!(
        "import http.server, ssl\nclass H(http.server.BaseHTTPRequestHandler):\n  def do_GET(self):\n    subject = dict(x[0] for x in self.connection.getpeercert()['subject'])\n    body = ('client ' + subject['commonName']).encode()\n    self.send_response(200)\n    self.send_header('content-length', str(len(body)))\n    self.end_headers()\n    self.wfile.write(body)\nserver = http.server.ThreadingHTTPServer(('0.0.0.0', 8443), H)\ncontext = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\ncontext.load_cert_chain('{}', '{}')\ncontext.verify_mode = ssl.CERT_REQUIRED\ncontext.load_verify_locations('{}')\nserver.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)\nserver.serve_forever()\n",
        certs.path("mtls-ec.crt").display(),
        certs.path("mtls-ec.key").display(),
        certs.path("client-ca.crt").display(),
    );
    let command = serde_json::to_string(&["python3", "-c", &script]).expect("json");
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: mesh-external}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: my-nginx, namespace: mesh-external, labels: {{run: my-nginx}}, annotations: {{networking.istio.io/exportTo: \".\"}}}}\nspec:\n  ports: [{{port: 443, targetPort: 8443, protocol: TCP, name: https}}]\n  selector: {{run: my-nginx}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: my-nginx, namespace: mesh-external}}\nspec:\n  selector: {{matchLabels: {{run: my-nginx}}}}\n  template:\n    metadata: {{labels: {{run: my-nginx}}}}\n    spec:\n      containers:\n      - name: my-nginx\n        image: python\n        command: {command}\n"
    )
}

/// Istio's "mutual TLS origination with an egress gateway" task, with its
/// config: a mesh client's plain HTTP goes to the egress gateway over the
/// mesh's mTLS, and the gateway opens mutual TLS to the external server
/// with the client certificate and CA of the Secret the DestinationRule
/// names (`credentialName`); the server sees that certificate.
#[test]
fn egress_gateways_originate_mutual_tls_with_a_secret() {
    let certs = mutual_certificates("gw-egress-mtls");
    let credential = secret_of(
        &certs,
        "client-credential",
        &[
            ("tls.crt", "good.crt"),
            ("tls.key", "good.key"),
            ("ca.crt", "ca.crt"),
        ],
    );
    let mesh = mesh_with_curl(
        "gw-egress-mtls",
        vec![
            ("external.yaml", mutual_tls_server(&certs)),
            ("egress.yaml", EGRESS_GATEWAY.to_owned()),
            ("credential.yaml", credential.clone()),
        ],
    );
    mesh.apply("routes.yaml", EGRESS_MUTUAL_ORIGINATION);
    let body = mesh.settles_with(
        "curl",
        "GET",
        "http://my-nginx.mesh-external.svc.cluster.local/",
        None,
        "200",
    );
    assert_eq!(body, "client good");
    // The Secret's CA is what the server is checked against: renewed with
    // a CA that did not sign the server's certificate, the next connections
    // are refused.
    let wrong_ca = secret_of(
        &certs,
        "client-credential",
        &[
            ("tls.crt", "good.crt"),
            ("tls.key", "good.key"),
            ("ca.crt", "client-ca.crt"),
        ],
    );
    mesh.apply("credential.yaml", &wrong_ca);
    mesh.settles_with(
        "curl",
        "GET",
        "http://my-nginx.mesh-external.svc.cluster.local/",
        None,
        "503",
    );
    // Renewed with the right CA again, it serves again.
    mesh.apply("credential.yaml", &credential);
    mesh.settles_with(
        "curl",
        "GET",
        "http://my-nginx.mesh-external.svc.cluster.local/",
        None,
        "200",
    );
}

/// The task's config; the external server's name and SNI are
/// `mtls.example.com`'s certificate's.
const EGRESS_MUTUAL_ORIGINATION: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: nginx}
spec:
  hosts: [my-nginx.mesh-external.svc.cluster.local]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [my-nginx.mesh-external.svc.cluster.local]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-for-nginx}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: nginx
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      portLevelSettings:
      - port: {number: 443}
        tls: {mode: ISTIO_MUTUAL, sni: my-nginx.mesh-external.svc.cluster.local}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-nginx-through-egress-gateway}
spec:
  hosts: [my-nginx.mesh-external.svc.cluster.local]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: nginx, port: {number: 443}}
      weight: 100
  - match: [{gateways: [istio-egressgateway], port: 443}]
    route:
    - destination: {host: my-nginx.mesh-external.svc.cluster.local, port: {number: 443}}
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate-mtls-for-nginx, namespace: istio-system}
spec:
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, credentialName: client-credential, sni: mtls.example.com}
"#;

/// `bind`: a server bound to the ingress gateway pod's address gets a
/// listener of its own, as in Istio; connections to that address (what the
/// gateway's Service sends) take its routes, and those to another address
/// of the pod take the unbound server's on the same port.
#[test]
fn servers_bound_to_an_address_get_their_own_listener() {
    let mesh = mesh_with("gw-bind", &[("httpbin.yaml", sample("httpbin.yaml"))]);
    let pod = gateway_pod_address(&mesh, "istio-ingressgateway");
    let server = |name: &str, bind: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
    {bind}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: ["*"]
  gateways: [{name}]
  http:
  - headers: {{response: {{set: {{x-served-by: {name}}}}}}}
    route:
    - destination: {{host: httpbin, port: {{number: 8000}}}}
"#
        )
    };
    mesh.apply("any.yaml", &server("any-address", ""));
    mesh.apply("bound.yaml", &server("bound", &format!("bind: {pod}")));
    let served_by = |out: std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("x-served-by: "))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let through_service = || {
        let url = format!("http://{}/status/200", ingress_address(&mesh));
        served_by(mesh.run(
            "outside",
            &["curl", "-s", "-m", "5", "-D", "-", "-o", "/dev/null", &url],
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while through_service() != "bound" {
        assert!(Instant::now() < deadline, "the bound server never served");
        std::thread::sleep(Duration::from_millis(300));
    }
    let loopback = in_gateway_pod(
        &mesh,
        "istio-ingressgateway",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "http://127.0.0.1:8080/status/200",
        ],
    );
    assert_eq!(served_by(loopback), "any-address");
}

/// A CA and, signed by it, `wikipedia.crt` for `*.wikipedia.org`.
fn wildcard_certificates(test: &str) -> TempDir {
    let dir = TempDir::new(&format!("{test}-certs"));
    let script = r#"set -e
exec 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=example-ca -keyout ca.key -out ca.crt
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=*.wikipedia.org" -addext "subjectAltName=DNS:*.wikipedia.org" -keyout wikipedia.key -out wikipedia.csr
openssl x509 -req -in wikipedia.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out wikipedia.crt
chmod 644 wikipedia.key
"#;
    run_in(&dir, script);
    dir
}

/// Mesh config: only what the registry knows leaves the mesh.
const REGISTRY_ONLY: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";

/// Istio's "egress using wildcard hosts" task on a REGISTRY_ONLY mesh, with
/// its config: a ServiceEntry for `*.wikipedia.org` (resolution NONE) lets
/// the app's TLS to any of its hosts out, straight to where the app sent
/// it, while an SNI the registry does not know is closed; then the same
/// hosts through the egress gateway's PASSTHROUGH server to the one server
/// that serves them all (`www.wikipedia.org`), which sees the gateway.
#[test]
fn wildcard_hosts_leave_directly_and_through_the_egress_gateway() {
    let certs = wildcard_certificates("gw-wildcard");
    // Kept out of the mesh's registry, as Istio's tasks make a server look
    // external.
    let server = tls_server("web-tls", "external", &certs, "wikipedia").replacen(
        "labels: {run: web-tls}}",
        "labels: {run: web-tls}, annotations: {networking.istio.io/exportTo: \".\"}}",
        1,
    );
    assert!(server.contains("exportTo"), "{server}");
    let mesh = mesh_with_curl(
        "gw-wildcard",
        vec![
            (
                "external-ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: external}\n".to_owned(),
            ),
            ("external.yaml", server),
            ("egress.yaml", EGRESS_GATEWAY.to_owned()),
            ("registry-only.yaml", REGISTRY_ONLY.to_owned()),
        ],
    );
    let gateway_ip = egress_gateway_address(&mesh);
    let server_ip = service_address(&mesh, "web-tls.external.svc.cluster.local");
    let ca = certs.path("ca.crt").to_string_lossy().into_owned();
    // curl from the app to `host`, its resolver giving `address`: exit code
    // and body.
    let fetch = |host: &str, address: &str| {
        let out = curl_https(&mesh, "curl", &ca, (host, address), "/", &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let settles = |host: &str, address: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = fetch(host, address);
            if body.ends_with(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: never {want:?}, got {body:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // The server is up (a client outside the mesh reaches it), but with
    // REGISTRY_ONLY a mesh client's TLS to it is closed: it is not known yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let target = ("en.wikipedia.org", server_ip.as_str());
        let out = curl_https(&mesh, "outside", &ca, target, "/", &[]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the external server never came up"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, body) = fetch("en.wikipedia.org", &server_ip);
    assert_eq!(
        (code, body.as_str()),
        (Some(35), ""),
        "left the mesh unregistered"
    );

    mesh.apply("wikipedia.yaml", WILDCARD_ENTRY);
    let client_ip = eth0_address(mesh.run("curl", &ETH0));
    for host in ["en.wikipedia.org", "de.wikipedia.org"] {
        settles(
            host,
            &server_ip,
            &format!("over its own TLS to {client_ip}"),
        );
    }
    // The same server under a name the registry does not know.
    let (code, body) = fetch("www.example.org", &server_ip);
    assert_eq!(
        (code, body.as_str()),
        (Some(35), ""),
        "REGISTRY_ONLY closes an unknown SNI"
    );

    mesh.apply("subset.yaml", EGRESS_SUBSET);
    mesh.apply("through-gateway.yaml", WILDCARD_THROUGH_GATEWAY);
    for host in ["en.wikipedia.org", "de.wikipedia.org"] {
        settles(
            host,
            SOME_ADDRESS,
            &format!("over its own TLS to {gateway_ip}"),
        );
    }
}

/// The task's ServiceEntry for every host of the domain.
const WILDCARD_ENTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wikipedia}
spec:
  hosts: ["*.wikipedia.org"]
  ports: [{number: 443, name: https, protocol: HTTPS}]
"#;

/// The task's egress gateway config for a wildcard served by one server
/// (`www.wikipedia.org`, here the test's server outside the mesh).
const WILDCARD_THROUGH_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.wikipedia.org"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-wikipedia-through-egress-gateway}
spec:
  hosts: ["*.wikipedia.org"]
  gateways: [mesh, istio-egressgateway]
  tls:
  - match: [{gateways: [mesh], port: 443, sniHosts: ["*.wikipedia.org"]}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: cnn, port: {number: 443}}
  - match: [{gateways: [istio-egressgateway], port: 443, sniHosts: ["*.wikipedia.org"]}]
    route:
    - destination: {host: www.wikipedia.org, port: {number: 443}}
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: www-wikipedia}
spec:
  hosts: [www.wikipedia.org]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
  endpoints: [{address: web-tls.external.svc.cluster.local}]
"#;
