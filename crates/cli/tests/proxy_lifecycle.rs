//! The proxy's lifecycle as a process: `oxmesh proxy wait` returns once it is
//! ready, `/quitquitquit` ends it (so Jobs complete), and SIGTERM drains: new
//! connections are refused while open ones finish, bounded by the drain duration,
//! and the proxy stays at least the minimum drain even with none open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Running {
    child: Child,
    health: u16,
    admin: u16,
    front: SocketAddr,
    out: SocketAddr,
    backend: TcpListener,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy from a bootstrap: TCP listeners in front of `backend`, `front`
/// inbound and `out` outbound (a sidecar's drain stops only its inbound ones).
fn start(dir: &TempDir, drain: &str, minimum: &str) -> Running {
    let backend = TcpListener::bind("127.0.0.1:0").expect("backend");
    let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let out = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let back = backend.local_addr().expect("address");
    dir.write(
        "bootstrap.yaml",
        &format!(
            r#"
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}
    traffic_direction: INBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: front
          cluster: back
  - name: out
    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: out
          cluster: back
  clusters:
  - name: back
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: back
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
            front.port(),
            out.port(),
            back.port()
        ),
    );
    let (admin, health, metrics) = (free_port(), free_port(), free_port());
    let child = Command::new(BIN)
        .args(["proxy", "--bootstrap"])
        .arg(dir.path("bootstrap.yaml"))
        .args(["--admin-port", &admin.to_string()])
        .args(["--health-port", &health.to_string()])
        .args(["--metrics-ports", &metrics.to_string()])
        .args(["--status-port", "0"])
        .args(["--drain-duration", drain])
        .args(["--minimum-drain-duration", minimum])
        .env("POD_NAME", "job-x2x4b")
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the proxy");
    Running {
        child,
        health,
        admin,
        front,
        out,
        backend,
    }
}

fn wait_ready(health: u16) {
    let status = Command::new(BIN)
        .args([
            "proxy",
            "wait",
            "--timeout",
            "20s",
            "--health-port",
            &health.to_string(),
        ])
        .status()
        .expect("oxmesh proxy wait");
    assert!(status.success(), "oxmesh proxy wait failed");
}

fn post(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("admin");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get_status(port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn exits_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn quitquitquit_ends_the_proxy() {
    let dir = TempDir::new("proxy-quit");
    let mut proxy = start(&dir, "5s", "5s");
    wait_ready(proxy.health);
    assert!(post(proxy.admin, "/quitquitquit").starts_with("HTTP/1.1 200"));
    let status = exits_within(&mut proxy.child, Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_drains_open_connections() {
    let dir = TempDir::new("proxy-drain");
    let mut proxy = start(&dir, "30s", "0s");
    wait_ready(proxy.health);
    // A connection open through the proxy when SIGTERM arrives...
    let mut client = TcpStream::connect(proxy.front).expect("connect");
    let (mut server, _) = proxy.backend.accept().expect("proxied connection");
    client.write_all(b"before").expect("write");
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).expect("read");
    let pid = proxy.child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    // ...readiness turns off and new connections are refused (probing only
    // once readiness says so: a probe the proxy still accepted would stay open,
    // half closed, towards a backend that never accepts it)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_status(proxy.health, "/healthz/ready") == 200 {
        assert!(Instant::now() < deadline, "still ready while draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(proxy.front).is_err(),
        "still accepting while draining"
    );
    // ...while the app's own calls out still go (Istio drains inbound only)...
    let outbound = TcpStream::connect(proxy.out).expect("outbound still accepts");
    let (carried, _) = proxy.backend.accept().expect("carried to the backend");
    drop((outbound, carried));
    // ...the open one still carries data, and the proxy stays until it closes.
    client.write_all(b"during").expect("write");
    server.read_exact(&mut buf).expect("read during the drain");
    assert_eq!(&buf, b"during");
    assert!(
        proxy.child.try_wait().expect("status").is_none(),
        "exited mid-drain"
    );
    drop(client);
    drop(server);
    let status =
        exits_within(&mut proxy.child, Duration::from_secs(5)).expect("exits after the drain");
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_with_nothing_open_still_waits_the_minimum_drain() {
    let dir = TempDir::new("proxy-minimum-drain");
    let mut proxy = start(&dir, "30s", "2s");
    wait_ready(proxy.health);
    let sent = Instant::now();
    Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .expect("kill");
    // Refusing at once, so late callers retry elsewhere (probed once
    // readiness is off: a connection accepted before would stay open)...
    let deadline = Instant::now() + Duration::from_secs(1);
    while get_status(proxy.health, "/healthz/ready") == 200 {
        assert!(Instant::now() < deadline, "still ready while draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(proxy.front).is_err(),
        "still accepting while draining"
    );
    // ...but alive for the minimum, though no connection is open.
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(sent.elapsed()));
    assert!(
        proxy.child.try_wait().expect("status").is_none(),
        "exited before the minimum drain"
    );
    let status = exits_within(&mut proxy.child, Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn drain_listeners_inboundonly_keeps_outbound_accepting() {
    let dir = TempDir::new("proxy-drain-inbound");
    let mut proxy = start(&dir, "30s", "0s");
    wait_ready(proxy.health);
    assert!(post(proxy.admin, "/drain_listeners?inboundonly").starts_with("HTTP/1.1 200"));
    // As Istio's agent asks it: inbound refused, outbound still carried.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(proxy.front).is_ok() {
        assert!(Instant::now() < deadline, "inbound still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    let outbound = TcpStream::connect(proxy.out).expect("outbound still accepts");
    let (carried, _) = proxy.backend.accept().expect("carried to the backend");
    drop((outbound, carried));
    assert!(
        proxy.child.try_wait().expect("status").is_none(),
        "a drain is not an exit"
    );
}
