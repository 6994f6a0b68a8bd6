//! A stock gRPC client (Python's grpcio) dials `xds:///echo.default.svc.cluster.local:9080`
//! and reaches its backends through oxmesh's xDS alone, following a
//! VirtualService's header match and its later edit.
//!
//! Needs Python with grpcio: `OXMESH_PYTHON` names the interpreter (`.ci/run`
//! makes a virtualenv with it); by default `python3`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Backend {
    child: Child,
    port: u16,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("OXMESH_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

fn backend(name: &str) -> Backend {
    let mut child = Command::new(python())
        .arg(script("backend.py"))
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python backend (is grpcio installed? see OXMESH_PYTHON)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port line");
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!("backend {name} printed {line:?}, not a port; is grpcio installed?")
    });
    Backend { child, port }
}

/// The bootstrap `oxmesh grpc-bootstrap` writes for an injected pod.
fn bootstrap(xds: std::net::SocketAddr) -> String {
    let node = oxmesh_control::inject::GrpcNode {
        pod_name: "grpc-client-1",
        namespace: "default",
        ip: "127.0.0.1",
    };
    oxmesh_control::inject::grpc_bootstrap(&node, &xds.to_string(), None).to_string()
}

/// Runs the client for `calls` calls and returns the backends that answered.
fn call(xds: std::net::SocketAddr, calls: u32, header: Option<&str>) -> Vec<String> {
    let mut command = Command::new(python());
    command
        .arg(script("client.py"))
        .arg("xds:///echo.default.svc.cluster.local:9080")
        .arg(calls.to_string())
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap(xds));
    if let Some(header) = header {
        command.arg(header);
    }
    let output = command.output().expect("run the Python client");
    assert!(
        output.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn mesh(v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: grpc, protocol: GRPC}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{grpc: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{grpc: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: echo.default.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"#
    )
}

fn routes(default_subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: echo.default.svc.cluster.local, subset: v2}}}}]
  - route: [{{destination: {{host: echo.default.svc.cluster.local, subset: {default_subset}}}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_follows_virtual_service_routes() {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let (cp, _state, config) = support::control_plane("proxyless-grpc").await;
    config.write("mesh.yaml", &mesh(v1.port, v2.port));
    config.write("routes.yaml", &routes("v1"));
    support::services_read(&cp, 1).await;
    let xds = cp.xds_addr;

    let plain = tokio::task::spawn_blocking(move || call(xds, 4, None))
        .await
        .expect("client");
    assert_eq!(
        plain, ["v1"; 4],
        "without the header: the default route, subset v1"
    );
    let jason = tokio::task::spawn_blocking(move || call(xds, 4, Some("end-user=jason")))
        .await
        .expect("client");
    assert_eq!(jason, ["v2"; 4], "end-user: jason goes to v2");

    let before = cp.discovery.current().version;
    config.write("routes.yaml", &routes("v2"));
    let mut changes = oxmesh_xds::ads::Generator::changes(&*cp.discovery);
    changes
        .wait_for(|v| *v != before)
        .await
        .expect("the edit was applied");
    let after = tokio::task::spawn_blocking(move || call(xds, 4, None))
        .await
        .expect("client");
    assert_eq!(after, ["v2"; 4], "the edited default route");
    cp.shutdown().await;
}
