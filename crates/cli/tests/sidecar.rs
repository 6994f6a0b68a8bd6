//! End to end through real sidecars on the `oxmesh up` testbed: manifests make
//! pods in network namespaces with iptables interception and `oxmesh proxy` as
//! uid 1337, and the applications know nothing of the mesh (curl, a Python
//! echo server, grpcio). Needs root, iproute2, iptables, curl and python3
//! (`.ci/run` installs them).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

/// The mesh: an injected `default` namespace with echo (HTTP, TCP, a
/// server-first port, gRPC, and IPv6 on 8081) and sleep, and `legacy`, a pod
/// without a sidecar that no Service names. `outbound_policy` goes where Istio
/// keeps it, the `istio` ConfigMap.
fn manifests(outbound_policy: &str) -> String {
    let echo = script("echo.py").to_string_lossy().into_owned();
    let grpc = script("grpc_echo.py").to_string_lossy().into_owned();
    let python = python_with_grpc();
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: default, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: {outbound_policy}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  selector: {{app: echo}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: tcp-echo, port: 9000, targetPort: 9000}}
  - {{name: grpc, port: 7070, targetPort: 7070}}
  - {{name: rpc, port: 7071, targetPort: 7070}}
  - {{name: web, port: 8000, targetPort: 8080}}
  - {{name: mail, port: 2525, targetPort: 2525}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo, version: v1}}}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        image: echo
        command: [python3, "{echo}", "8080", "9000", echo, "2525"]
        readinessProbe:
          httpGet: {{path: /ready, port: 8080}}
          periodSeconds: 1
      - name: grpc
        image: grpc
        command: ["{python}", "{grpc}", "7070", echo]
      - name: ipv6
        image: python
        command: [python3, -m, http.server, "8081", --bind, "::", --directory, /]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: sleep, namespace: default}}
spec:
  selector: {{matchLabels: {{app: sleep}}}}
  template:
    metadata: {{labels: {{app: sleep}}}}
    spec:
      serviceAccountName: sleep
      containers: [{{name: sleep, image: curl, command: [sleep, "3600"]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: legacy, namespace: default}}
spec:
  selector: {{matchLabels: {{app: legacy}}}}
  template:
    metadata: {{labels: {{app: legacy, sidecar.istio.io/inject: "false"}}}}
    spec:
      containers:
      - name: legacy
        image: echo
        command: [python3, "{echo}", "8080", "9000", legacy, "2525"]
"#
    )
}

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"#;

/// A pod of the running mesh.
struct Pod {
    netns: String,
    ip: Ipv4Addr,
}

impl Pod {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> std::io::Result<Output> {
        self.command(program).args(args).output()
    }
}

struct Mesh {
    up: Child,
    /// The manifests; `up` keeps its state and logs under `.oxmesh/`.
    dir: TempDir,
    /// By workload (`sleep`, `istiod`, `istio-ingressgateway`, ...).
    pods: HashMap<String, Pod>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.up.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.up.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.up.kill();
        let _ = self.up.wait();
    }
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
    fn pods_named(&self, workload: &str) -> &Pod {
        self.pods
            .get(workload)
            .unwrap_or_else(|| panic!("no pod of {workload}"))
    }

    fn ip_of(&self, workload: &str) -> Ipv4Addr {
        self.pods_named(workload).ip
    }

    /// A Service's cluster IP, as `up` assigned it.
    fn vip(&self, service: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path(".oxmesh/pods.json")).expect("pods.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == service)
            .and_then(|s| s["vip"].as_str())
            .unwrap_or_else(|| panic!("no Service {service}"))
            .to_owned()
    }

    /// `oxmesh up` on the manifests; returns once it says `ready`.
    fn start(tag: &str, outbound_policy: &str) -> Self {
        let dir = TempDir::new(&format!("sidecar-{tag}"));
        dir.write("mesh.yaml", &manifests(outbound_policy));
        let ingress_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut up = Command::new(BIN)
            .arg("up")
            .arg(&dir.0)
            .args(["--ingress-port", &ingress_port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("oxmesh up");
        let stdout = up.stdout.take().expect("stdout");
        let mut mesh = Self {
            up,
            dir,
            pods: HashMap::new(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("oxmesh up printed `ready`");
            if line.starts_with("ready") {
                break;
            }
        }
        mesh.pods = pods_of(&mesh.dir);
        mesh.wait_serving();
        mesh
    }

    /// `up` is ready when the proxies are; echo's endpoint follows its
    /// readiness probe.
    fn wait_serving(&self) {
        let url = format!("http://{}/ready", self.vip("echo"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let code = self.curl("sleep", &["-o", "/dev/null", "-w", "%{http_code}", &url]);
            if code == "200" {
                return;
            }
            assert!(Instant::now() < deadline, "echo never served ({code})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Applies `yaml` to the running mesh, as `kubectl apply` would.
    fn apply(&self, name: &str, yaml: &str) {
        self.dir.write(&format!("applied/{name}"), yaml);
        let file = self.dir.path(&format!("applied/{name}"));
        oxmesh(&[
            "apply",
            "--mesh",
            &self.dir.0.to_string_lossy(),
            "-f",
            &file.to_string_lossy(),
        ]);
    }

    fn print_logs(&self) {
        // logs/<namespace>/<pod>/<container>.log
        let logs = self.dir.path(".oxmesh/logs");
        let pods = std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten());
        for entry in pods {
            let pod = entry.file_name().to_string_lossy().into_owned();
            for container in ["istio-proxy", "discovery"] {
                let text = std::fs::read_to_string(entry.path().join(format!("{container}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                if !tail.is_empty() {
                    eprintln!(
                        "--- {pod}/{container} (last lines, newest first)\n{}",
                        tail.join("\n")
                    );
                }
            }
        }
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

/// The pods `up` wrote down, by workload: a Deployment's pod `echo-<hash>-<x>`
/// is `echo`; `istiod` and `kube-dns` are themselves.
fn pods_of(dir: &TempDir) -> HashMap<String, Pod> {
    let text = std::fs::read_to_string(dir.path(".oxmesh/pods.json")).expect("pods.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            let workload = match name.rsplitn(3, '-').collect::<Vec<_>>().as_slice() {
                [_, _, workload] => (*workload).to_owned(),
                _ => name.to_owned(),
            };
            let pod = Pod {
                netns: p["netns"].as_str()?.to_owned(),
                ip: p["ip"].as_str()?.parse().ok()?,
            };
            Some((workload, pod))
        })
        .collect()
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
    let echo_vip = mesh.vip("echo");
    let echo_ip = mesh.ip_of("echo");
    let legacy_ip = mesh.ip_of("legacy");

    // HTTP through both sidecars: the app sees the client's identity in XFCC,
    // and a forged XFCC from the client app does not survive.
    let reply = mesh.echo_json(
        "sleep",
        &[
            "-H",
            "x-forwarded-client-cert: By=forged",
            &format!("http://{echo_vip}/hello?x=1"),
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
                &format!("http://{echo_vip}/"),
            ],
        );
        assert_eq!(r["server"], "echo", "Host: {host}");
    }

    // Opaque TCP through both sidecars.
    let out = mesh
        .pods_named("sleep")
        .output(
            "python3",
            &["-c", &format!("import socket; s=socket.create_connection(('{echo_vip}', 9000), 5); s.sendall(b'ping over tcp'); s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())")],
        )
        .expect("tcp client");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping over tcp");

    // A port whose protocol is not declared: HTTP is recognised (the client's
    // sidecar adds a request id, which only HTTP handling does)...
    let r = mesh.echo_json("sleep", &[&format!("http://{echo_vip}:8000/sniffed")]);
    assert_eq!(r["server"], "echo");
    assert!(r["headers"].get("x-request-id").is_some(), "{r}");
    assert!(r["headers"].get("x-forwarded-client-cert").is_some(), "{r}");
    // ...and a server-first protocol is not held waiting for the client to speak.
    let out = mesh
        .pods_named("sleep")
        .output(
            "python3",
            &["-c", &format!("import socket; s=socket.create_connection(('{echo_vip}', 2525), 5); s.settimeout(5); print(s.recv(100).decode().strip())")],
        )
        .expect("banner client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "220 echo ready"
    );

    // IPv6: out of one sidecar and into the other, both captured by ip6tables.
    let v6 = oxmesh_testbed::ipv6_of(echo_ip);
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
    let r = mesh.echo_json("sleep", &[&format!("http://{legacy_ip}:8080/outside")]);
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
    let plain = format!("http://{echo_ip}:8080/plain");
    let r = mesh.echo_json(
        "legacy",
        &["-H", "x-forwarded-client-cert: By=forged", &plain],
    );
    assert_eq!(r["server"], "echo");
    assert!(r["headers"].get("x-forwarded-client-cert").is_none(), "{r}");

    // STRICT refuses it; mesh clients still get through.
    mesh.apply("strict.yaml", STRICT);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !mesh.curl("legacy", &[&plain]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "plaintext still accepted under STRICT"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = mesh.echo_json("sleep", &[&format!("http://{echo_vip}/after-strict")]);
    assert_eq!(r["server"], "echo");

    // TLS without a client certificate, and with one that claims the sleep
    // identity but is not the mesh's: both refused under STRICT.
    let tls = format!("https://{echo_ip}:8080/");
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

    // A cluster the proxy cannot honour is NACKed, visibly, and the rest of
    // the push keeps serving.
    mesh.apply("limited.yaml", support::HEALTH_CHECKED);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let syncz = mesh.curl("istiod", &["http://127.0.0.1:15014/debug/syncz"]);
        if syncz.contains("active health checks are not supported") {
            break;
        }
        assert!(Instant::now() < deadline, "no NACK in {syncz}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = mesh.echo_json("sleep", &[&format!("http://{echo_vip}/after-nack")]);
    assert_eq!(r["server"], "echo");
}

#[test]
fn registry_only_blocks_unknown_hosts() {
    let mesh = Mesh::start("ro", "REGISTRY_ONLY");
    let echo_vip = mesh.vip("echo");
    let legacy_ip = mesh.ip_of("legacy");
    // Known services still work.
    let r = mesh.echo_json("sleep", &[&format!("http://{echo_vip}/")]);
    assert_eq!(r["server"], "echo");
    // An unknown host on an HTTP port the mesh uses gets the proxy's own 502;
    // on any other port (here the legacy app's 8080) the connection is closed.
    let status = |url: &str| mesh.curl("sleep", &["-o", "/dev/null", "-w", "%{http_code}", url]);
    assert_eq!(status(&format!("http://{legacy_ip}:80/")), "502");
    assert_eq!(status(&format!("http://{legacy_ip}:8080/")), "000");
    let out = mesh
        .pods_named("sleep")
        .output(
            "python3",
            &["-c", &format!("import socket; s=socket.create_connection(('{legacy_ip}', 9000), 5); s.sendall(b'x'); print(repr(s.recv(10)))")],
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
    let echo_vip = mesh.vip("echo");
    // h2c from the client app; the server app speaks HTTP/1.1 and still answers.
    let r = mesh.echo_json(
        "sleep",
        &["--http2-prior-knowledge", &format!("http://{echo_vip}/h2c")],
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
                    &format!("{echo_vip}:7070"),
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
    // The same service on a port whose name declares no protocol: both
    // sidecars detect HTTP/2 and, as istiod's clusters say, keep the
    // client's protocol upstream (HTTP/1.1 would lose gRPC's trailers).
    let out = mesh
        .pods_named("sleep")
        .output(
            &python_with_grpc(),
            &[
                &script("grpc_call.py").to_string_lossy(),
                &format!("{echo_vip}:7071"),
            ],
        )
        .expect("gRPC client");
    let text = String::from_utf8_lossy(&out.stdout);
    let reply: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        reply["stream"],
        serde_json::json!(["echo one", "echo two", "echo three"]),
        "{reply}"
    );
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

/// For the ingress gateway `up` installs as Istio does (Service 80 → 8080,
/// 443 → 8443): a Gateway with an HTTP server and an HTTPS one terminating
/// with files, and a VirtualService bound to it.
const GATEWAY: &str = r#"
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
  - port: {number: 443, name: https-vault, protocol: HTTPS}
    hosts: [vault.example.com]
    tls: {mode: SIMPLE, credentialName: vault-cert}
  - port: {number: 443, name: https-pinned, protocol: HTTPS}
    hosts: [pinned.example.com]
    tls: {mode: MUTUAL, serverCertificate: PINNED_CERT, privateKey: PINNED_KEY, caCertificates: CA, subjectAltNames: [good-client]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: [echo.example.com, secure.example.com, vault.example.com, pinned.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: echo, port: {number: 80}}
"#;

#[test]
fn ingress_gateway_routes_into_the_mesh() {
    let mesh = Mesh::start("gw", "ALLOW_ANY");
    let legacy_ip = mesh.ip_of("legacy");
    let ingress_ip = mesh.ip_of("istio-ingressgateway");
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
    // MUTUAL with subjectAltNames: the server's certificate, and two clients
    // from the same CA of which only one has the name the Gateway lists.
    for (name, ext) in [
        ("pinned", "DNS:pinned.example.com"),
        ("good", "DNS:good-client"),
        ("bad", "DNS:bad-client"),
    ] {
        openssl(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN={name} -addext subjectAltName={ext} -keyout {name}.key -out {name}.csr 2>/dev/null && openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out {name}.crt 2>/dev/null && chmod 644 {name}.key"
        ));
    }
    let path = |file: &str| certs.join(file).to_string_lossy().into_owned();
    let gateway = GATEWAY
        .replace("PINNED_CERT", &path("pinned.crt"))
        .replace("PINNED_KEY", &path("pinned.key"))
        .replace("CA", &path("ca.crt"))
        .replace("CERT", &path("tls.crt"))
        .replace("KEY", &path("tls.key"));
    mesh.apply("gateway.yaml", &gateway);
    mesh.wait_ready("istio-ingressgateway");

    // HTTP from outside the mesh (a pod without a sidecar), by Host.
    let url = format!("http://{ingress_ip}:8080/from-outside");
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
    assert_eq!(reply["headers"]["x-forwarded-for"], legacy_ip.to_string());
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
            &format!("secure.example.com:8443:{ingress_ip}"),
            // As through the Service's port 443: no port in the authority.
            "-H",
            "Host: secure.example.com",
            "https://secure.example.com:8443/secure",
        ],
    );
    assert_eq!(reply["server"], "echo");
    assert_eq!(reply["headers"]["x-forwarded-proto"], "https");

    // MUTUAL with subjectAltNames: the CA admits both clients, the name only one.
    let pinned = |client: &str| {
        mesh.curl(
            "legacy",
            &[
                "--cacert",
                &path("ca.crt"),
                "--cert",
                &path(&format!("{client}.crt")),
                "--key",
                &path(&format!("{client}.key")),
                "--resolve",
                &format!("pinned.example.com:8443:{ingress_ip}"),
                "-H",
                "Host: pinned.example.com",
                "https://pinned.example.com:8443/pinned",
            ],
        )
    };
    let reply: serde_json::Value = serde_json::from_str(&pinned("good")).expect("good client");
    assert_eq!(reply["path"], "/pinned");
    assert_eq!(pinned("bad"), "", "a client without the listed name got in");

    // credentialName: the certificate is a Secret in the gateway's namespace,
    // which the control plane serves to the gateway (proven by its token) over
    // SDS; applied after the Gateway, it is picked up when it arrives.
    openssl(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=vault.example.com -addext subjectAltName=DNS:vault.example.com -keyout vault.key -out vault.csr 2>/dev/null && openssl x509 -req -in vault.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out vault.crt 2>/dev/null",
    );
    let indent = |pem: &Path| {
        std::fs::read_to_string(pem)
            .expect("pem")
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    mesh.apply(
        "vault-cert.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: vault-cert, namespace: istio-system}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&certs.join("vault.crt")),
            indent(&certs.join("vault.key"))
        ),
    );
    let vault = |path: &str| {
        mesh.curl(
            "legacy",
            &[
                "--cacert",
                &certs.join("ca.crt").to_string_lossy(),
                "--resolve",
                &format!("vault.example.com:8443:{ingress_ip}"),
                "-H",
                "Host: vault.example.com",
                &format!("https://vault.example.com:8443{path}"),
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let reply = loop {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&vault("/vault")) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never served the Secret's certificate"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(reply["server"], "echo");
    assert_eq!(reply["path"], "/vault");
    // The gateway's config dump shows the Secret, never its key.
    let dump = mesh
        .pods_named("istio-ingressgateway")
        .output("curl", &["-s", "http://127.0.0.1:15000/config_dump"])
        .expect("config dump");
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("json");
    let secret = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_active_secrets"].as_array().into_iter().flatten())
        .find(|s| s["name"] == "kubernetes://vault-cert")
        .unwrap_or_else(|| panic!("no vault-cert in {dump}"));
    assert_eq!(
        secret["secret"]["tlsCertificate"]["privateKey"]["inlineString"], "[redacted]",
        "{secret}"
    );
    let key = std::fs::read_to_string(certs.join("vault.key")).expect("key");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let text = dump.to_string();
    // Inline bytes show as base64 in the dump: "-----BEGIN PRIVATE" is
    // "LS0tLS1CRUdJTiBQUklWQVRF".
    assert!(
        !text.contains(&body[..32])
            && !text.contains("PRIVATE KEY")
            && !text.contains("LS0tLS1CRUdJTiBQUklWQVRF"),
        "the key is in the dump"
    );
}
