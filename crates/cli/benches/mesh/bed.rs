//! The testbed every data-plane scenario shares: pods on one bridge, a real
//! control plane, sidecars with iptables interception and mTLS between them,
//! the app server in every server pod, and the reference proxies.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testbed::{Netns, Network};
use oxmesh_testkit::TempDir;

use crate::reference;

pub const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");
const ISTIOD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const DIRECT_SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 6);
/// The Service `bench` (mutual TLS between the sidecars) and `bench-plain`
/// (the same server pod, plaintext between the sidecars).
pub const VIP: &str = "198.19.0.20";
pub const PLAIN_VIP: &str = "198.19.0.21";
/// Ports of Service `bench`: HTTP/1.1, h2c, gRPC, iperf3; the app's port.
pub const HTTP_PORT: u16 = 80;
pub const H2C_PORT: u16 = 81;
pub const GRPC_PORT: u16 = 82;
pub const IPERF_PORT: u16 = 5201;
pub const APP_PORT: u16 = 8080;

/// Pods and their addresses. The server-side pods run the app.
const PODS: [(&str, [u8; 4]); 11] = [
    ("istiod", [198, 18, 0, 2]),
    ("client", [198, 18, 0, 3]),
    ("server", [198, 18, 0, 4]),
    ("direct-client", [198, 18, 0, 5]),
    ("direct-server", [198, 18, 0, 6]),
    ("nginx-client", [198, 18, 0, 7]),
    ("nginx-server", [198, 18, 0, 8]),
    ("haproxy-client", [198, 18, 0, 9]),
    ("haproxy-server", [198, 18, 0, 10]),
    ("idle", [198, 18, 0, 11]),
    ("otel-collector", [198, 18, 0, 12]),
];

/// Service `otel-collector` (no sidecar): where the tracing scenario's spans go.
pub const COLLECTOR_HOST: &str = "otel-collector.default.svc.cluster.local";

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec:
  clusterIP: 198.19.0.20
  selector: {app: bench}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: http2-h2c, port: 81, targetPort: 8081}
  - {name: grpc, port: 82, targetPort: 8082}
  - {name: tcp-iperf, port: 5201, targetPort: 5201}
---
apiVersion: v1
kind: Service
metadata: {name: bench-plain, namespace: default}
spec:
  clusterIP: 198.19.0.21
  selector: {app: bench}
  ports:
  - {name: http, port: 80, targetPort: 8090}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench-plain, namespace: default}
spec:
  host: bench-plain.default.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bench, namespace: default}
spec:
  selector: {matchLabels: {app: bench}}
  portLevelMtls: {"8090": {mode: DISABLE}}
---
apiVersion: v1
kind: Pod
metadata:
  name: bench-7d4b9c8f6-x2x4b
  namespace: default
  labels: {app: bench, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: bench
  containers: [{name: bench, image: bench}]
status:
  phase: Running
  podIP: 198.18.0.4
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: default}
spec:
  clusterIP: 198.19.0.22
  selector: {app: otel-collector}
  ports: [{name: grpc-otlp, port: 4317, targetPort: 4317}]
---
apiVersion: v1
kind: Pod
metadata:
  name: otel-collector-5b8f9d6c7-q8r2t
  namespace: default
  labels: {app: otel-collector}
spec:
  containers: [{name: otel-collector, image: otel-collector}]
status:
  phase: Running
  podIP: 198.18.0.12
  conditions: [{type: Ready, status: "True"}]
"#;

/// The labels a pod's proxy reports, as the injector passes them.
fn pod_labels(pod: &str) -> &'static str {
    match pod {
        "server" => r#"{"app":"bench","security.istio.io/tlsMode":"istio"}"#,
        _ => r#"{"app":"client","security.istio.io/tlsMode":"istio"}"#,
    }
}

/// A process the bed started, killed when the bed goes.
struct Started {
    child: Child,
}

pub struct Bed {
    children: Vec<Started>,
    net: Network,
    pub dir: TempDir,
    pub client_proxy: u32,
    pub server_proxy: u32,
    /// The reference pairs that started.
    pub references: Vec<reference::Kind>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for s in &mut self.children {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

/// Worker threads per proxy: `OXMESH_BENCH_CONCURRENCY`, else Istio's default 2.
pub fn concurrency() -> usize {
    std::env::var("OXMESH_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

impl Bed {
    /// Builds the whole bed and waits until both sidecars are ready.
    pub fn up() -> Self {
        let dir = TempDir::new("bench-mesh");
        dir.write("config/mesh.yaml", CONFIG);
        let mut net = Network::new("bm").expect("testbed");
        for (name, ip) in PODS {
            net.add_pod(name, Ipv4Addr::from(ip)).expect("pod");
        }
        let mut bed = Bed {
            children: Vec::new(),
            net,
            dir,
            client_proxy: 0,
            server_proxy: 0,
            references: Vec::new(),
        };
        let state = bed.path("state");
        let config = bed.path("config");
        bed.spawn(
            "istiod",
            BIN,
            &["control", "--state-dir", &state, "--config-dir", &config],
        );
        let root = wait_for_root(&state);
        std::fs::write(bed.dir.path("root-cert.pem"), root).expect("root");
        let me = std::env::current_exe().expect("bench binary");
        let me = me.to_string_lossy().into_owned();
        for pod in ["server", "direct-server", "nginx-server", "haproxy-server"] {
            bed.spawn(pod, &me, &["--serve", "8080", "8081", "8082", "8090"]);
        }
        for pod in ["server", "direct-server", "haproxy-server"] {
            bed.spawn(pod, "iperf3", &["-s", "-p", "5201"]);
        }
        bed.spawn("otel-collector", BIN, &["demo", "otel-collector"]);
        bed.client_proxy = bed.sidecar("client", "client-6c9f8d7b5-abcde", "default", "client");
        bed.server_proxy = bed.sidecar("server", "bench-7d4b9c8f6-x2x4b", "default", "bench");
        for pod in ["client", "server"] {
            bed.wait_ready(pod);
        }
        bed.start_references();
        std::thread::sleep(Duration::from_millis(500));
        bed
    }

    pub fn pod(&self, name: &str) -> &Netns {
        self.net.pod(name).expect("pod")
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path(name).to_string_lossy().into_owned()
    }

    pub fn config_file(&self, name: &str) -> PathBuf {
        self.dir.path("config").join(name)
    }

    fn spawn(&mut self, pod: &str, program: &str, args: &[&str]) -> u32 {
        let child = self
            .pod(pod)
            .command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        self.children.push(Started { child });
        pid
    }

    fn start_references(&mut self) {
        let dir = self.dir.path("reference");
        reference::certificates(&dir);
        for kind in [reference::Kind::Nginx, reference::Kind::Haproxy] {
            if !kind.installed() {
                eprintln!("{} is not installed: no reference row for it", kind.name());
                continue;
            }
            let server = self.ip(&format!("{}-server", kind.name()));
            let [client_cmd, server_cmd] = kind.commands(&dir, concurrency(), server);
            for (side, cmd) in [("server", server_cmd), ("client", client_cmd)] {
                let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
                self.spawn(&format!("{}-{side}", kind.name()), &cmd[0], &args);
            }
            self.references.push(kind);
        }
    }

    /// Mints a token, installs interception and starts `oxmesh proxy` as uid
    /// 1337 in `pod`, as the sidecar injector would. Returns the proxy's pid.
    pub fn sidecar(&mut self, pod: &str, pod_name: &str, namespace: &str, account: &str) -> u32 {
        let ip = self.ip(pod);
        let token_file = self.token(pod, namespace, account);
        if pod != "idle" {
            self.pod(pod).run(BIN, &["iptables"]).expect("iptables");
        }
        let child = self
            .pod(pod)
            .command("setpriv")
            .args([
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                BIN,
                "proxy",
            ])
            .args(["--discovery-address", &format!("{ISTIOD}:15012")])
            .args(["--concurrency", &concurrency().to_string()])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--root-cert")
            .arg(self.dir.path("root-cert.pem"))
            .env("POD_NAME", pod_name)
            .env("POD_NAMESPACE", namespace)
            .env("INSTANCE_IP", ip.to_string())
            .env("SERVICE_ACCOUNT", account)
            // The injector's labels: the server's select it into Service
            // `bench`, so its inbound chains are the service's HTTP ones.
            .env("ISTIO_METAJSON_LABELS", pod_labels(pod))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("proxy");
        let pid = child.id();
        self.children.push(Started { child });
        pid
    }

    /// Stops a process the bed started.
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|s| s.child.id() == pid) {
            let mut s = self.children.swap_remove(i);
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    fn ip(&self, pod: &str) -> Ipv4Addr {
        PODS.iter()
            .find(|(n, _)| *n == pod)
            .map(|(_, ip)| Ipv4Addr::from(*ip))
            .expect("known pod")
    }

    fn token(&self, pod: &str, namespace: &str, account: &str) -> PathBuf {
        let state = self.path("state");
        let token = std::process::Command::new(BIN)
            .args(["ca", "token", "--state-dir", &state, "-n", namespace])
            .args(["--service-account", account])
            .output()
            .expect("token");
        let file = self.dir.path(&format!("{pod}-{namespace}.token"));
        std::fs::write(&file, String::from_utf8_lossy(&token.stdout).trim()).expect("token file");
        file
    }

    /// Waits for the sidecar in `pod` to report ready on 15021.
    pub fn wait_ready(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.curl(pod, "http://127.0.0.1:15021/healthz/ready").0 != "200" {
            assert!(Instant::now() < deadline, "the proxy in {pod} is not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (status code, body) of a GET from inside `pod`.
    pub fn curl(&self, pod: &str, url: &str) -> (String, String) {
        let out = self
            .pod(pod)
            .output("curl", &["-s", "-m", "5", "-w", "\n%{http_code}", url])
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_owned(), body.to_owned())
    }

    /// Every process running in `pod` whose command name is `name`.
    pub fn pids_named(&self, pod: &str, name: &str) -> Vec<u32> {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", self.pod(pod).name()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
            })
            .collect()
    }
}

fn wait_for_root(state: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(BIN)
            .args(["ca", "root", "--state-dir", state])
            .output()
            .expect("oxmesh ca root");
        if out.status.success() {
            return out.stdout;
        }
        assert!(Instant::now() < deadline, "no CA");
        std::thread::sleep(Duration::from_millis(100));
    }
}
