//! End to end through real sidecars: a control plane, pods in network namespaces
//! with iptables interception, `oxmesh proxy` as uid 1337, and applications that
//! know nothing of the mesh (curl, a Python echo server). Needs root, iproute2,
//! iptables, curl and python3 (`.ci/run` installs them).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testbed::{Netns, Network};
use oxmesh_testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");
const ISTIOD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SLEEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const ECHO: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const LEGACY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const INGRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 6);
const ECHO_VIP: &str = "198.19.0.10";

/// The mesh as a cluster would report it: services, accounts and running pods.
const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  clusterIP: 198.19.0.10
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp-echo, port: 9000, targetPort: 9000}
  - {name: grpc, port: 7070, targetPort: 7070}
  - {name: web, port: 8000, targetPort: 8080}
  - {name: mail, port: 2525, targetPort: 2525}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-7d4b9c8f6-x2x4b
  namespace: default
  labels: {app: echo, version: v1, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: echo
  containers: [{name: echo, image: echo}]
status:
  phase: Running
  podIP: 198.18.0.4
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: sleep-6c9f8d7b5-abcde
  namespace: default
  labels: {app: sleep, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: sleep
  containers: [{name: sleep, image: curl}]
status:
  phase: Running
  podIP: 198.18.0.3
  conditions: [{type: Ready, status: "True"}]
"#;

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"#;

struct ProxySpec<'a> {
    pod: &'a str,
    pod_name: &'a str,
    namespace: &'a str,
    account: &'a str,
    labels: &'a str,
    ip: Ipv4Addr,
    mode: &'a str,
}

struct Mesh {
    children: Vec<Child>,
    pods: Network,
    dir: TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for log in ["control", "sleep-proxy", "echo-proxy", "ingress-proxy"] {
                let text = std::fs::read_to_string(self.dir.path(&format!("{log}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!(
                    "--- {log}.log (last lines, newest first)\n{}",
                    tail.join("\n")
                );
            }
        }
    }
}

fn log_file(dir: &TempDir, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.path(&format!("{name}.log"))).expect("log file"))
}

fn oxmesh(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run oxmesh");
    assert!(
        out.status.success(),
        "oxmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

impl Mesh {
    fn pods_named(&self, name: &str) -> &Netns {
        self.pods
            .pod(name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// A mesh whose control plane runs with `outbound_policy`; `tag` keeps
    /// concurrent tests' namespaces apart.
    fn start(tag: &str, outbound_policy: &str) -> Self {
        let dir = TempDir::new(&format!("sidecar-{tag}"));
        dir.write("config/mesh.yaml", CONFIG);
        let mut pods = Network::new(tag).expect("testbed network");
        for (name, ip) in [
            ("istiod", ISTIOD),
            ("sleep", SLEEP),
            ("echo", ECHO),
            ("legacy", LEGACY),
            ("ingress", INGRESS),
        ] {
            pods.add_pod(name, ip).expect("pod");
        }
        let mut mesh = Self {
            children: Vec::new(),
            pods,
            dir,
        };
        mesh.start_control_plane(outbound_policy);
        mesh.start_app("echo");
        mesh.start_app("legacy");
        mesh.start_ipv6_app("echo");
        for pod in ["echo", "legacy"] {
            mesh.wait_app(pod);
        }
        mesh.start_sidecar(
            "sleep",
            "sleep-6c9f8d7b5-abcde",
            "sleep",
            r#"{"app":"sleep"}"#,
        );
        mesh.start_sidecar(
            "echo",
            "echo-7d4b9c8f6-x2x4b",
            "echo",
            r#"{"app":"echo","version":"v1"}"#,
        );
        for pod in ["sleep", "echo"] {
            mesh.wait_ready(pod);
        }
        mesh
    }

    fn start_control_plane(&mut self, outbound_policy: &str) {
        let state = self.dir.path("state");
        let child = self
            .pods_named("istiod")
            .command(BIN)
            .args([
                "control",
                "--outbound-traffic-policy",
                outbound_policy,
                "--state-dir",
            ])
            .arg(&state)
            .arg("--config-dir")
            .arg(self.dir.path("config"))
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, "control"))
            .spawn()
            .expect("start the control plane");
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let state_arg = state.to_string_lossy().into_owned();
        loop {
            let out = Command::new(BIN)
                .args(["ca", "root", "--state-dir", &state_arg])
                .output()
                .expect("oxmesh ca root");
            if out.status.success() {
                std::fs::write(self.dir.path("root-cert.pem"), &out.stdout).expect("root");
                break;
            }
            assert!(Instant::now() < deadline, "the control plane made no CA");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_app(&mut self, pod: &str) {
        let child = self
            .pods_named(pod)
            .command("python3")
            .arg(script("echo.py"))
            .args(["8080", "9000", pod, "2525"])
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, &format!("{pod}-app")))
            .spawn()
            .expect("start the app");
        self.children.push(child);
        let child = self
            .pods_named(pod)
            .command(&python_with_grpc())
            .arg(script("grpc_echo.py"))
            .args(["7070", pod])
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, &format!("{pod}-grpc")))
            .spawn()
            .expect("start the gRPC app");
        self.children.push(child);
    }

    fn start_sidecar(&mut self, pod: &str, pod_name: &str, account: &str, labels: &str) {
        let ip = match pod {
            "sleep" => SLEEP,
            _ => ECHO,
        };
        self.pods_named(pod)
            .run(BIN, &["iptables"])
            .expect("interception rules");
        self.start_proxy(&ProxySpec {
            pod,
            pod_name,
            namespace: "default",
            account,
            labels,
            ip,
            mode: "sidecar",
        });
    }

    /// `oxmesh proxy` in `spec.pod` as uid 1337, with a token for its account.
    fn start_proxy(&mut self, spec: &ProxySpec<'_>) {
        let state = self.dir.path("state").to_string_lossy().into_owned();
        let token = oxmesh(&[
            "ca",
            "token",
            "--state-dir",
            &state,
            "-n",
            spec.namespace,
            "--service-account",
            spec.account,
        ]);
        let token_file = self.dir.path(&format!("{}.token", spec.pod));
        std::fs::write(&token_file, token.trim()).expect("token");
        let child = self
            .pods_named(spec.pod)
            .command("setpriv")
            .args([
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                BIN,
                "proxy",
            ])
            .args(["--mode", spec.mode])
            .args(["--discovery-address", &format!("{ISTIOD}:15012")])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--root-cert")
            .arg(self.dir.path("root-cert.pem"))
            .env("POD_NAME", spec.pod_name)
            .env("POD_NAMESPACE", spec.namespace)
            .env("INSTANCE_IP", spec.ip.to_string())
            .env("SERVICE_ACCOUNT", spec.account)
            .env("ISTIO_METAJSON_LABELS", spec.labels)
            .env("RUST_LOG", "info,oxmesh_proxy=debug")
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, &format!("{}-proxy", spec.pod)))
            .spawn()
            .expect("start the proxy");
        self.children.push(child);
    }

    fn wait_ready(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.curl(
                pod,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
            );
            if status == "200" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pod}'s proxy never became ready ({status})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain HTTP server on port 8081 listening on IPv6 too.
    fn start_ipv6_app(&mut self, pod: &str) {
        let child = self
            .pods_named(pod)
            .command("python3")
            .args(["-m", "http.server", "8081", "--bind", "::"])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, &format!("{pod}-ipv6")))
            .spawn()
            .expect("start the IPv6 app");
        self.children.push(child);
    }

    fn wait_app(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.curl(pod, &["http://127.0.0.1:8080/ready"]).is_empty() {
            assert!(Instant::now() < deadline, "{pod}'s app never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// curl's standard output (empty when curl failed).
    fn curl(&self, pod: &str, args: &[&str]) -> String {
        let out = self
            .pods_named(pod)
            .output("curl", &[&["-s", "-m", "5"], args].concat())
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn echo_json(&self, pod: &str, args: &[&str]) -> serde_json::Value {
        let body = self.curl(pod, args);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{pod} curl {args:?}: {e}: {body:?}"))
    }

    fn metrics(&self, pod: &str) -> String {
        self.curl(pod, &["http://127.0.0.1:15090/stats/prometheus"])
    }
}

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sidecar")
        .join(name)
}

/// A Python with grpcio (`.ci/run` makes one under target/ and exports it).
fn python_with_grpc() -> String {
    std::env::var("OXMESH_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn find_metric<'a>(text: &'a str, name: &str, labels: &[(&str, &str)]) -> Option<&'a str> {
    text.lines().find(|line| {
        line.starts_with(&format!("{name}{{"))
            && labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
    })
}

#[test]
fn sidecars_carry_http_and_tcp_with_mutual_tls() {
    let mesh = Mesh::start("sc", "ALLOW_ANY");

    // HTTP through both sidecars: the app sees the client's identity in XFCC,
    // and a forged XFCC from the client app does not survive.
    let reply = mesh.echo_json(
        "sleep",
        &[
            "-H",
            "x-forwarded-client-cert: By=forged",
            &format!("http://{ECHO_VIP}/hello?x=1"),
        ],
    );
    assert_eq!(reply["server"], "echo");
    assert_eq!(reply["path"], "/hello?x=1");
    let xfcc = reply["headers"]["x-forwarded-client-cert"]
        .as_str()
        .expect("XFCC reaches the app");
    assert!(!xfcc.contains("forged"), "{xfcc}");
    assert!(
        xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/echo;Hash="),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sleep"),
        "{xfcc}"
    );
    assert!(reply["headers"].get("x-envoy-peer-metadata").is_none());

    // The Host forms a client may use all route: name, name:port, FQDN.
    for host in [
        "echo",
        "echo:80",
        "echo.default",
        "echo.default.svc.cluster.local:80",
    ] {
        let r = mesh.echo_json(
            "sleep",
            &[
                "-H",
                &format!("Host: {host}"),
                &format!("http://{ECHO_VIP}/"),
            ],
        );
        assert_eq!(r["server"], "echo", "Host: {host}");
    }

    // Opaque TCP through both sidecars.
    let out = mesh
        .pods_named("sleep")
        .output(
            "python3",
            &["-c", &format!("import socket; s=socket.create_connection(('{ECHO_VIP}', 9000), 5); s.sendall(b'ping over tcp'); s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())")],
        )
        .expect("tcp client");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping over tcp");

    // A port whose protocol is not declared: HTTP is recognised (the client's
    // sidecar adds a request id, which only HTTP handling does)...
    let r = mesh.echo_json("sleep", &[&format!("http://{ECHO_VIP}:8000/sniffed")]);
    assert_eq!(r["server"], "echo");
    assert!(r["headers"].get("x-request-id").is_some(), "{r}");
    assert!(r["headers"].get("x-forwarded-client-cert").is_some(), "{r}");
    // ...and a server-first protocol is not held waiting for the client to speak.
    let out = mesh
        .pods_named("sleep")
        .output(
            "python3",
            &["-c", &format!("import socket; s=socket.create_connection(('{ECHO_VIP}', 2525), 5); s.settimeout(5); print(s.recv(100).decode().strip())")],
        )
        .expect("banner client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "220 echo ready"
    );

    // IPv6: out of one sidecar and into the other, both captured by ip6tables.
    let v6 = oxmesh_testbed::ipv6_of(ECHO);
    let code = mesh.curl(
        "sleep",
        &[
            "-g",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://[{v6}]:8081/"),
        ],
    );
    assert_eq!(code, "200", "IPv6 through both sidecars");
    let text = mesh.metrics("sleep");
    assert!(
        find_metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[("destination_service", &v6.to_string())]
        )
        .is_some(),
        "the client's sidecar carried the IPv6 connection:\n{text}"
    );
    let text = mesh.metrics("echo");
    assert!(
        find_metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("destination_service_name", "InboundPassthroughCluster")
            ]
        )
        .is_some(),
        "the server's sidecar took it in:\n{text}"
    );

    // A host the mesh does not know: ALLOW_ANY sends it straight through.
    let r = mesh.echo_json("sleep", &[&format!("http://{LEGACY}:8080/outside")]);
    assert_eq!(r["server"], "legacy");
    assert!(r["headers"].get("x-forwarded-client-cert").is_none());

    // The destination's sidecar reports the request with the client's workload.
    let text = mesh.metrics("echo");
    let line = find_metric(
        &text,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("source_workload", "sleep"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/sleep",
            ),
            ("destination_workload", "echo"),
            ("destination_service_name", "echo"),
            ("response_code", "200"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert!(
        line.is_some(),
        "no destination-reported request in:\n{text}"
    );
    // TCP too names the client's workload: the sidecars swapped metadata at
    // the start of the stream (ALPN istio-peer-exchange).
    assert!(
        find_metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "sleep"),
                ("destination_workload", "echo"),
                ("destination_service_name", "echo"),
            ]
        )
        .is_some(),
        "no TCP metrics naming the client's workload in:\n{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("istio_tcp_received_bytes_total{")
                && line.contains("source_workload=\"sleep\"")
                && line.ends_with(" 13")),
        "the 13 bytes the client sent, without the metadata frames:\n{text}"
    );
    let text = mesh.metrics("sleep");
    assert!(
        find_metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("source_workload", "sleep"),
                ("destination_workload", "echo"),
                ("destination_app", "echo"),
                (
                    "destination_principal",
                    "spiffe://cluster.local/ns/default/sa/echo"
                ),
            ]
        )
        .is_some(),
        "the client's sidecar names the server's workload for TCP:\n{text}"
    );
    let text = mesh.metrics("sleep");
    let line = find_metric(
        &text,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("source_workload", "sleep"),
            ("destination_workload", "echo"),
            ("destination_service", "echo.default.svc.cluster.local"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/default/sa/echo",
            ),
        ],
    );
    assert!(line.is_some(), "no source-reported request in:\n{text}");

    // What the client's sidecar holds, read from its admin port in the pod.
    let out = mesh
        .pods_named("sleep")
        .output(
            BIN,
            &["proxy-config", "clusters", "--admin", "127.0.0.1:15000"],
        )
        .expect("proxy-config");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("echo.default.svc.cluster.local") && table.contains("PassthroughCluster"),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mesh
        .pods_named("sleep")
        .output(
            BIN,
            &[
                "proxy-config",
                "secrets",
                "--admin",
                "127.0.0.1:15000",
                "-o",
                "json",
            ],
        )
        .expect("proxy-config");
    let secrets = String::from_utf8_lossy(&out.stdout);
    assert!(
        secrets.contains("ROOTCA") && secrets.contains("[redacted]"),
        "{secrets}"
    );
    assert!(
        !secrets.contains("PRIVATE KEY"),
        "the key never leaves the proxy"
    );

    // PERMISSIVE (the default) lets a pod without a sidecar in, in plaintext.
    let plain = format!("http://{ECHO}:8080/plain");
    let r = mesh.echo_json(
        "legacy",
        &["-H", "x-forwarded-client-cert: By=forged", &plain],
    );
    assert_eq!(r["server"], "echo");
    assert!(r["headers"].get("x-forwarded-client-cert").is_none(), "{r}");

    // STRICT refuses it; mesh clients still get through.
    mesh.dir.write("config/strict.yaml", STRICT);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !mesh.curl("legacy", &[&plain]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "plaintext still accepted under STRICT"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = mesh.echo_json("sleep", &[&format!("http://{ECHO_VIP}/after-strict")]);
    assert_eq!(r["server"], "echo");

    // TLS without a client certificate, and with one that claims the sleep
    // identity but is not the mesh's: both refused under STRICT.
    let tls = format!("https://{ECHO}:8080/");
    assert!(
        mesh.curl("legacy", &["-k", &tls]).is_empty(),
        "no client certificate"
    );
    let forged = mesh.dir.path("forged");
    std::fs::create_dir_all(&forged).expect("dir");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/O=cluster.local",
        ])
        .args([
            "-addext",
            "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/sleep",
        ])
        .arg("-keyout")
        .arg(forged.join("key.pem"))
        .arg("-out")
        .arg(forged.join("cert.pem"))
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl made the forged certificate");
    let cert = forged.join("cert.pem").to_string_lossy().into_owned();
    let key = forged.join("key.pem").to_string_lossy().into_owned();
    assert!(
        mesh.curl("legacy", &["-k", "--cert", &cert, "--key", &key, &tls])
            .is_empty(),
        "a self-made certificate with a mesh identity got in"
    );

    // A rule the proxy cannot honour yet is NACKed, visibly, and the cluster's
    // last good version keeps serving.
    mesh.dir.write("config/outlier.yaml", OUTLIER);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let syncz = mesh.curl("istiod", &["http://127.0.0.1:15014/debug/syncz"]);
        if syncz.contains("outlier detection is not supported yet") {
            break;
        }
        assert!(Instant::now() < deadline, "no NACK in {syncz}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = mesh.echo_json("sleep", &[&format!("http://{ECHO_VIP}/after-nack")]);
    assert_eq!(r["server"], "echo");
}

const OUTLIER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo.default.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s}
"#;

#[test]
fn registry_only_blocks_unknown_hosts() {
    let mesh = Mesh::start("ro", "REGISTRY_ONLY");
    // Known services still work.
    let r = mesh.echo_json("sleep", &[&format!("http://{ECHO_VIP}/")]);
    assert_eq!(r["server"], "echo");
    // An unknown host on an HTTP port the mesh uses gets the proxy's own 502;
    // on any other port (here the legacy app's 8080) the connection is closed.
    let status = |url: &str| mesh.curl("sleep", &["-o", "/dev/null", "-w", "%{http_code}", url]);
    assert_eq!(status(&format!("http://{LEGACY}:80/")), "502");
    assert_eq!(status(&format!("http://{LEGACY}:8080/")), "000");
    let out = mesh
        .pods_named("sleep")
        .output(
            "python3",
            &["-c", &format!("import socket; s=socket.create_connection(('{LEGACY}', 9000), 5); s.sendall(b'x'); print(repr(s.recv(10)))")],
        )
        .expect("tcp client");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        !seen.contains("b'x'"),
        "TCP reached an unknown host: {seen}"
    );
    let text = mesh.metrics("sleep");
    assert!(
        find_metric(
            &text,
            "istio_requests_total",
            &[("response_code", "502"), ("reporter", "source")]
        )
        .is_some(),
        "the blocked request is counted:\n{text}"
    );
}

#[test]
fn http2_and_grpc_streams_through_sidecars() {
    let mesh = Mesh::start("h2", "ALLOW_ANY");
    // h2c from the client app; the server app speaks HTTP/1.1 and still answers.
    let r = mesh.echo_json(
        "sleep",
        &["--http2-prior-knowledge", &format!("http://{ECHO_VIP}/h2c")],
    );
    assert_eq!(r["server"], "echo");
    assert_eq!(r["path"], "/h2c");
    // gRPC: unary with trailers, a bidirectional stream, and a status from the
    // server (UNIMPLEMENTED) carried back intact.
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = mesh
            .pods_named("sleep")
            .output(
                &python_with_grpc(),
                &[
                    &script("grpc_call.py").to_string_lossy(),
                    &format!("{ECHO_VIP}:7070"),
                ],
            )
            .expect("gRPC client");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let reply: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let unary = reply["unary"].as_str().expect("unary reply");
    assert!(
        unary.starts_with("echo: hello | xfcc=By=spiffe://cluster.local/ns/default/sa/echo"),
        "{unary}"
    );
    assert!(
        unary.ends_with("URI=spiffe://cluster.local/ns/default/sa/sleep"),
        "{unary}"
    );
    assert_eq!(
        reply["stream"],
        serde_json::json!(["echo one", "echo two", "echo three"])
    );
    assert_eq!(reply["missing"], "UNIMPLEMENTED");
    let metrics = mesh.metrics("echo");
    assert!(
        find_metric(
            &metrics,
            "istio_requests_total",
            &[("request_protocol", "grpc"), ("reporter", "destination")]
        )
        .is_some(),
        "gRPC requests are counted as grpc:\n{metrics}"
    );
    for status in ["0", "12"] {
        assert!(
            find_metric(
                &metrics,
                "istio_requests_total",
                &[
                    ("request_protocol", "grpc"),
                    ("grpc_response_status", status)
                ]
            )
            .is_some(),
            "no grpc_response_status {status}:\n{metrics}"
        );
    }
}

/// The ingress gateway as Istio installs it (Service 80 → 8080, 443 → 8443), a
/// Gateway with an HTTP server and an HTTPS one terminating with files, and a
/// VirtualService bound to it.
const GATEWAY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-5c9d8f7b6-gw1
  namespace: istio-system
  labels: {istio: ingressgateway, app: istio-ingressgateway}
spec:
  serviceAccountName: istio-ingressgateway-service-account
  containers: [{name: istio-proxy, image: proxy}]
status:
  phase: Running
  podIP: 198.18.0.6
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [echo.example.com]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, serverCertificate: CERT, privateKey: KEY}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: [echo.example.com, secure.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: echo, port: {number: 80}}
"#;

#[test]
fn ingress_gateway_routes_into_the_mesh() {
    let mut mesh = Mesh::start("gw", "ALLOW_ANY");
    let certs = mesh.dir.path("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let openssl = |script: &str| {
        let ok = Command::new("sh")
            .args(["-c", script])
            .current_dir(&certs)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{script}");
    };
    openssl(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=edge-ca -keyout ca.key -out ca.crt 2>/dev/null",
    );
    openssl(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=secure.example.com -addext subjectAltName=DNS:secure.example.com -keyout tls.key -out tls.csr 2>/dev/null && openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out tls.crt 2>/dev/null && chmod 644 tls.key",
    );
    let gateway = GATEWAY
        .replace("CERT", &certs.join("tls.crt").to_string_lossy())
        .replace("KEY", &certs.join("tls.key").to_string_lossy());
    mesh.dir.write("config/gateway.yaml", &gateway);
    mesh.start_proxy(&ProxySpec {
        pod: "ingress",
        pod_name: "istio-ingressgateway-5c9d8f7b6-gw1",
        namespace: "istio-system",
        account: "istio-ingressgateway-service-account",
        labels: r#"{"istio":"ingressgateway","app":"istio-ingressgateway"}"#,
        ip: INGRESS,
        mode: "gateway",
    });
    mesh.wait_ready("ingress");

    // HTTP from outside the mesh (a pod without a sidecar), by Host.
    let url = format!("http://{INGRESS}:8080/from-outside");
    let deadline = Instant::now() + Duration::from_secs(15);
    let reply = loop {
        let body = mesh.curl("legacy", &["-H", "Host: echo.example.com", &url]);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never routed: {body:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(reply["server"], "echo");
    assert_eq!(reply["path"], "/from-outside");
    let xfcc = reply["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.ends_with(
            "URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        ),
        "the gateway reaches the mesh over mTLS: {xfcc}"
    );
    assert_eq!(reply["headers"]["x-forwarded-for"], LEGACY.to_string());
    // An unknown host gets 404 (NR).
    let status = mesh.curl(
        "legacy",
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: nobody.example.com",
            &url,
        ],
    );
    assert_eq!(status, "404");

    // HTTPS terminated with the Gateway's certificate, chosen by SNI (the test
    // dials the gateway pod's 8443 directly, where clients use the Service's 443).
    let reply = mesh.echo_json(
        "legacy",
        &[
            "--cacert",
            &certs.join("ca.crt").to_string_lossy(),
            "--resolve",
            &format!("secure.example.com:8443:{INGRESS}"),
            // As through the Service's port 443: no port in the authority.
            "-H",
            "Host: secure.example.com",
            "https://secure.example.com:8443/secure",
        ],
    );
    assert_eq!(reply["server"], "echo");
    assert_eq!(reply["headers"]["x-forwarded-proto"], "https");
}
