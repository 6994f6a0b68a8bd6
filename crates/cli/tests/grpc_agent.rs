//! `oxmesh grpc-agent` as the grpc-agent template runs it beside a proxyless
//! gRPC app: against a running control plane it writes the app's bootstrap and
//! keeps the app's certificate in files, and reports ready once they are there.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use oxmesh_identity::bundle::TrustBundle;
use oxmesh_identity::certificate::pem_certificates;
use oxmesh_identity::credentials::Credentials;
use oxmesh_testkit::TempDir;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use support::{Process as Agent, WAIT, oxmesh, start};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn status_of(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().next().map(str::to_owned)
}

#[test]
fn the_agent_writes_the_bootstrap_and_the_apps_certificate() {
    let (state, config, pod) = (
        TempDir::new("agent-state"),
        TempDir::new("agent-config"),
        TempDir::new("agent-pod"),
    );
    let cp = start(&state, &["--config-dir".as_ref(), config.0.as_os_str()]);
    let state_dir = state.0.display().to_string();
    let token = oxmesh(&[
        "ca",
        "token",
        "--state-dir",
        &state_dir,
        "-n",
        "default",
        "--service-account",
        "grpc",
    ]);
    pod.write("token", token.trim());
    let root = oxmesh(&["ca", "root", "--state-dir", &state_dir]);
    pod.write("root-cert.pem", &root);
    let (health, status) = (free_port(), free_port());
    let secure_port = cp.secure.rsplit_once(':').expect("port").1.to_owned();
    let _agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_oxmesh"))
            .args(["grpc-agent", "--discovery-address"])
            .arg(format!("127.0.0.1:{secure_port}"))
            .args(["--control-plane-name", "istiod.istio-system.svc"])
            .args(["--xds-address", &cp.xds])
            .arg("--token-file")
            .arg(pod.path("token"))
            .arg("--root-cert")
            .arg(pod.path("root-cert.pem"))
            .arg("--bootstrap")
            .arg(pod.path("xds/grpc-bootstrap.json"))
            .arg("--certificates")
            .arg(pod.path("data"))
            .args(["--health-port", &health.to_string()])
            .args(["--status-port", &status.to_string()])
            .env("POD_NAME", "grpc-7d4b9c8f6-x2x4b")
            .env("POD_NAMESPACE", "default")
            .env("INSTANCE_IP", "127.0.0.1")
            .env("SERVICE_ACCOUNT", "grpc")
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent"),
    );

    let deadline = std::time::Instant::now() + WAIT;
    while status_of(health, "/healthz/ready").as_deref() != Some("HTTP/1.1 200 OK") {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never got ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let bootstrap: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(pod.path("xds/grpc-bootstrap.json")).expect("bootstrap"),
    )
    .expect("JSON");
    assert_eq!(bootstrap["xds_servers"][0]["server_uri"], cp.xds.as_str());
    assert_eq!(bootstrap["node"]["metadata"]["GENERATOR"], "grpc");
    let watcher = &bootstrap["certificate_providers"]["default"];
    assert_eq!(watcher["plugin_name"], "file_watcher");
    let file = |key: &str| watcher["config"][key].as_str().expect(key).to_owned();
    assert_eq!(
        file("certificate_file"),
        pod.path("data/cert-chain.pem").display().to_string()
    );

    // The files hold the app's own identity, its key, and the mesh root.
    let chain = pem_certificates(&std::fs::read(file("certificate_file")).expect("chain"))
        .expect("PEM chain");
    let key = PrivateKeyDer::from_pem_file(file("private_key_file")).expect("PEM key");
    let roots = std::fs::read(file("ca_certificate_file")).expect("roots");
    assert_eq!(String::from_utf8_lossy(&roots).trim(), root.trim());
    let identity = "spiffe://cluster.local/ns/default/sa/grpc"
        .parse()
        .expect("id");
    Credentials::new(identity)
        .install(chain, key, TrustBundle::from_pem(&roots).expect("bundle"))
        .expect("the certificate is the app's and matches the key");
    assert_eq!(
        status_of(status, "/app-health/grpc/readyz").as_deref(),
        Some("HTTP/1.1 400 Bad Request"),
        "no probe was handed over for it"
    );
}
