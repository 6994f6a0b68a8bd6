//! `oxmesh up` end to end: manifests become pods in network namespaces with the
//! control plane, cluster DNS, sidecars where the namespace asks for injection
//! and VIP routing where it does not; SIGTERM removes it all. Needs root,
//! iproute2, iptables, curl and python3.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use support::up::start_up;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

fn manifests(echo_py: &Path) -> String {
    let echo = echo_py.to_string_lossy();
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: plain}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: demo}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo, version: v1}}}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        image: echo
        command: [python3, "{echo}", "8080", "9000", "$(POD_NAME)", "2525"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /ready, port: http}}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: sleep, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: sleep}}}}
  template:
    metadata: {{labels: {{app: sleep}}}}
    spec:
      containers: [{{name: sleep, image: curl, command: [sleep, "3600"]}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: demo}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [echo.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: demo}}
spec:
  hosts: [echo.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {{host: echo}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client, namespace: plain}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      containers: [{{name: client, image: curl, command: [sleep, "3600"]}}]
"#
    )
}

/// GETs `path` from the host through the ingress, retrying while routes arrive.
fn from_host(port: u16, path: &str, host: &str, want: &str) -> String {
    let url = format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-H", &format!("Host: {host}"), &url])
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains(want) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: never got {want:?}; last: {body:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn netns_of(dir: &TempDir, workload: &str) -> String {
    pod_field(dir, workload, "netns")
}

/// A field of the first pod of `workload` in `up`'s pods.json.
fn pod_field(dir: &TempDir, workload: &str, field: &str) -> String {
    let text = std::fs::read_to_string(dir.path(".oxmesh/pods.json")).expect("pods.json");
    let pods: serde_json::Value = serde_json::from_str(&text).expect("json");
    pods["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{workload}-")))
        })
        .and_then(|p| p[field].as_str())
        .unwrap_or_else(|| panic!("the {workload} pod's {field}"))
        .to_owned()
}

fn curl(netns: &str, url: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "curl", "-s", "-m", "5", url])
            .output()
            .expect("curl");
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{url} from {netns}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn up_runs_manifests_with_sidecars_dns_and_vips() {
    let dir = TempDir::new("up-e2e");
    let echo_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sidecar/echo.py");
    dir.write("app.yaml", &manifests(&echo_py));
    let (up, ingress_port) = start_up(&dir);
    let sleep = netns_of(&dir, "sleep");
    let client = netns_of(&dir, "client");

    // A short name resolves through the pod's search list; the sidecars carry
    // the request over mTLS and the app sees the caller's identity.
    let reply = curl(&sleep, "http://echo/hello");
    assert!(
        reply["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("echo-")),
        "{reply}"
    );
    let xfcc = reply["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.ends_with("URI=spiffe://cluster.local/ns/demo/sa/default"),
        "{xfcc}"
    );
    assert_eq!(
        curl(&sleep, "http://echo.demo.svc.cluster.local/")["path"],
        "/"
    );

    // Both replicas serve.
    let servers: std::collections::BTreeSet<String> = (0..20)
        .map(|_| {
            curl(&sleep, "http://echo.demo/")
                .get("server")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(servers.len(), 2, "{servers:?}");

    // A pod without a sidecar reaches the Service by its VIP, in plaintext.
    let reply = curl(&client, "http://echo.demo/plain");
    assert_eq!(reply["path"], "/plain");
    assert!(
        reply["headers"].get("x-forwarded-client-cert").is_none(),
        "{reply}"
    );

    // The host reaches the ingress gateway on its one port, and only there.
    let body = from_host(
        ingress_port,
        "/from-the-host",
        "echo.example.com",
        "from-the-host",
    );
    let reply: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reply["path"], "/from-the-host");
    let xfcc = reply["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.ends_with(
            "URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        ),
        "{xfcc}"
    );

    // SIGTERM tears everything down.
    drop(up);
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&sleep) && !left.contains(&client),
        "left behind: {left}"
    );
    assert!(!Path::new("/etc/netns").join(&sleep).exists());
}

/// Echo twice in an injected namespace, one with Istio's TPROXY annotation;
/// a sleep pod with a sidecar and a client without one call both.
fn tproxy_manifests(echo_py: &Path) -> String {
    let echo = echo_py.to_string_lossy();
    let deployment = |name: &str, annotations: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: tcp, port: 9000, targetPort: 9000}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations: {{{annotations}}}
    spec:
      containers:
      - name: echo
        image: echo
        command: [python3, "{echo}", "8080", "9000", "$(POD_NAME)", "2525"]
---"#
        )
    };
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: plain}}
---{}{}
apiVersion: apps/v1
kind: Deployment
metadata: {{name: sleep, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: sleep}}}}
  template:
    metadata: {{labels: {{app: sleep}}}}
    spec:
      containers: [{{name: sleep, image: curl, command: [sleep, "3600"]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client, namespace: plain}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      containers: [{{name: client, image: curl, command: [sleep, "3600"]}}]
"#,
        deployment(
            "transparent",
            r#""sidecar.istio.io/interceptionMode": TPROXY"#
        ),
        deployment("redirected", ""),
    )
}

/// `sidecar.istio.io/interceptionMode: TPROXY`: the app behind the sidecar sees
/// the caller's own address (REDIRECT shows it 127.0.0.6), over mTLS from a
/// sidecar and in plaintext from a pod without one; and TCP connections from
/// the caller's address get their replies back through the proxy.
#[test]
fn tproxy_shows_the_app_its_callers_address() {
    let dir = TempDir::new("up-tproxy");
    let echo_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sidecar/echo.py");
    dir.write("app.yaml", &tproxy_manifests(&echo_py));
    let (up, _) = start_up(&dir);
    let sleep = netns_of(&dir, "sleep");
    let client = netns_of(&dir, "client");
    let sleep_ip = pod_field(&dir, "sleep", "ip");
    let client_ip = pod_field(&dir, "client", "ip");

    let reply = curl(&sleep, "http://transparent/from-sleep");
    assert_eq!(reply["client"], sleep_ip.as_str(), "{reply}");
    assert!(
        reply["headers"]["x-forwarded-client-cert"]
            .as_str()
            .is_some_and(|x| x.ends_with("URI=spiffe://cluster.local/ns/demo/sa/default")),
        "still mTLS between the sidecars: {reply}"
    );
    let reply = curl(&client, "http://transparent.demo/from-client");
    assert_eq!(reply["client"], client_ip.as_str(), "{reply}");
    let reply = curl(&sleep, "http://redirected/from-sleep");
    assert_eq!(reply["client"], "127.0.0.6", "{reply}");

    // Opaque TCP through the transparent sidecar, both ways, many times over
    // (each connection's replies must find their way back to the proxy).
    let out = Command::new("ip")
        .args(["netns", "exec", &sleep, "python3", "-c"])
        .arg(
            "import socket\n\
             for i in range(20):\n\
             \x20   s = socket.create_connection(('transparent', 9000), 5)\n\
             \x20   s.sendall(b'ping %d' % i)\n\
             \x20   s.shutdown(socket.SHUT_WR)\n\
             \x20   got = b''\n\
             \x20   while True:\n\
             \x20       part = s.recv(100)\n\
             \x20       if not part: break\n\
             \x20       got += part\n\
             \x20   assert got == b'ping %d' % i, got\n\
             print('ok')",
        )
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(up);
}

/// Istio's own bookinfo manifests and networking samples, unchanged, run by
/// `oxmesh up` with the built-in bookinfo apps.
#[test]
fn up_runs_istios_bookinfo() {
    let dir = TempDir::new("up-bookinfo");
    support::up::write_istio_bookinfo(&dir);
    let (_up, port) = start_up(&dir);
    let page = from_host(port, "/productpage", "bookinfo.example.com", "Book Reviews");
    assert!(
        page.contains("Book Details") && page.contains("Reviews served by:"),
        "{page}"
    );
    assert!(
        page.contains("reviews-v1-"),
        "everyone but jason gets v1 (no stars): {page}"
    );
    assert!(!page.contains("★"), "{page}");
    // jason is routed to v2 by the end-user header the product page passes on.
    let page = from_host(
        port,
        "/productpage?u=jason",
        "bookinfo.example.com",
        "Book Reviews",
    );
    assert!(page.contains("reviews-v2-"), "{page}");
    assert!(
        page.contains("<font color=\"black\">★★★★★</font>"),
        "{page}"
    );
}

fn oxmesh(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("oxmesh");
    assert!(
        out.status.success(),
        "oxmesh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which reviews version served a product page.
fn reviews_version(page: &str) -> Option<&'static str> {
    ["v1", "v2", "v3"]
        .into_iter()
        .find(|v| page.contains(&format!("<u>reviews-{v}-")))
}

/// Product pages until `n` in a row satisfy `ok` (routes take a moment to reach
/// the proxies), within 20 s.
fn settles(port: u16, path: &str, n: usize, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut streak = 0;
    while streak < n {
        let page = from_host(port, path, "bookinfo.local", "Book Reviews");
        streak = if ok(&page) { streak + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "{path} did not settle; last: {page}"
        );
    }
}

/// The issue's walk-through: examples/bookinfo up (detached), traffic shifting
/// and user routing with Istio's own samples applied while it runs, then down.
#[test]
fn bookinfo_example_follows_istios_routing_samples() {
    let dir = TempDir::new("up-example");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bookinfo");
    for file in ["bookinfo.yaml", "gateway.yaml"] {
        dir.write(
            file,
            &std::fs::read_to_string(example.join(file)).expect("example"),
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mesh = dir.0.to_string_lossy().into_owned();
    let printed = oxmesh(&["up", &mesh, "--detach", "--ingress-port", &port.to_string()]);
    assert!(printed.contains("productpage-v1-"), "{printed}");
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(BIN).args(["down", "--mesh", &self.0]).status();
        }
    }
    let down = Down(mesh.clone());

    // 30 pages: reviews v1, v2 and v3 all answer.
    let seen: std::collections::BTreeSet<&str> = (0..30)
        .filter_map(|_| {
            reviews_version(&from_host(
                port,
                "/productpage",
                "bookinfo.local",
                "Book Reviews",
            ))
        })
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");

    let samples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/istio/bookinfo/networking");
    let sample = |name: &str| samples.join(name).to_string_lossy().into_owned();
    let applied = oxmesh(&[
        "apply",
        "--mesh",
        &mesh,
        "-f",
        &sample("destination-rule-all.yaml"),
        "-f",
        &sample("virtual-service-all-v1.yaml"),
    ]);
    assert!(
        applied.contains("VirtualService/default.reviews configured"),
        "{applied}"
    );
    settles(port, "/productpage", 10, |p| {
        reviews_version(p) == Some("v1")
    });

    oxmesh(&[
        "apply",
        "--mesh",
        &mesh,
        "-f",
        &sample("virtual-service-reviews-jason-v2-v3.yaml"),
    ]);
    settles(port, "/productpage?u=jason", 5, |p| {
        reviews_version(p) == Some("v2")
    });
    settles(port, "/productpage", 5, |p| {
        reviews_version(p) == Some("v3")
    });
    // Signing in with bookinfo's form makes the session jason's too.
    let jar = dir.path("cookies").to_string_lossy().into_owned();
    let login = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-c", &jar])
        .args([
            "-H",
            "Host: bookinfo.local",
            "-d",
            "username=jason&passwd=secret",
        ])
        .arg(format!("http://127.0.0.1:{port}/login"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&login.stdout), "302");
    let page = Command::new("curl")
        .args(["-s", "-b", &jar, "-H", "Host: bookinfo.local"])
        .arg(format!("http://127.0.0.1:{port}/productpage"))
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.contains("Signed in as jason"), "{page}");
    assert_eq!(reviews_version(&page), Some("v2"), "{page}");

    // Fault injection: ratings aborts with 500 for jason, as Istio's task shows.
    oxmesh(&[
        "apply",
        "--mesh",
        &mesh,
        "-f",
        &sample("virtual-service-ratings-test-abort.yaml"),
    ]);
    settles(port, "/productpage?u=jason", 3, |p| {
        p.contains("Ratings service is currently unavailable")
    });
    settles(port, "/productpage", 3, |p| {
        p.contains("<font color=\"red\">★★★★★</font>")
    });

    // The other commands on the running mesh.
    let pods = oxmesh(&["get", "pods", "-A", "--mesh", &mesh]);
    assert!(
        pods.contains("reviews-v3-") && pods.contains("istio-ingressgateway-"),
        "{pods}"
    );
    let answer = oxmesh(&[
        "exec",
        "--mesh",
        &mesh,
        "deploy/ratings-v1",
        "--",
        "curl",
        "-s",
        "http://details:9080/details/0",
    ]);
    assert!(answer.contains("William Shakespeare"), "{answer}");
    // Workloads and Services change while the mesh runs, too.
    dir.write(
        "more/httpbin.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin}\nspec:\n  selector: {app: httpbin}\n  ports: [{name: http, port: 8000, targetPort: 8080}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: httpbin}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  template:\n    metadata: {labels: {app: httpbin}}\n    spec:\n      containers: [{name: httpbin, image: docker.io/kennethreitz/httpbin}]\n",
    );
    let more = dir.path("more/httpbin.yaml").to_string_lossy().into_owned();
    let applied = oxmesh(&["apply", "--mesh", &mesh, "-f", &more]);
    assert!(
        applied.contains("Deployment/default.httpbin configured"),
        "{applied}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(BIN)
            .args([
                "exec",
                "--mesh",
                &mesh,
                "deploy/ratings-v1",
                "--",
                "curl",
                "-s",
                "-m",
                "3",
                "http://httpbin:8000/headers",
            ])
            .output()
            .expect("oxmesh exec");
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("x-forwarded-client-cert") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new service never answered: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deleted = oxmesh(&["delete", "--mesh", &mesh, "-f", &more]);
    assert!(
        deleted.contains("Deployment/default.httpbin deleted"),
        "{deleted}"
    );
    // Its pod terminates (out of the endpoints, SIGTERM, grace period), then goes.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let pods = oxmesh(&["get", "pods", "-A", "--mesh", &mesh]);
        if !pods.contains("httpbin-") {
            break;
        }
        assert!(pods.contains("Terminating"), "{pods}");
        assert!(Instant::now() < deadline, "the pod never went: {pods}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let netns: Vec<String> = {
        let text = std::fs::read_to_string(dir.path(".oxmesh/pods.json")).expect("pods.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["netns"].as_str().map(str::to_owned))
            .collect()
    };
    drop(down);
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let left = String::from_utf8_lossy(&left.stdout);
    for ns in &netns {
        assert!(!left.contains(ns.as_str()), "{ns} left behind");
    }
}

/// Namespaces made by the `up` process `pid` that still exist.
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("oxm-") && n.contains(&format!("-{pid}-")))
        .map(str::to_owned)
        .collect()
}

/// Runs `oxmesh up` to its end; its status, stderr and pid.
fn up_fails(args: &[&str]) -> (bool, String, u32) {
    let child = Command::new(BIN)
        .arg("up")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oxmesh up");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    )
}

#[test]
fn up_refuses_bad_input_and_leaves_nothing_behind() {
    let dir = TempDir::new("up-bad");
    let echo_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sidecar/echo.py");
    dir.write("app.yaml", &manifests(&echo_py));
    let mesh = dir.0.to_string_lossy().into_owned();

    // A host port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let (ok, stderr, pid) = up_fails(&[&mesh, "--ingress-port", &port]);
    assert!(!ok && stderr.contains("--ingress-port"), "{stderr}");
    assert!(namespaces_of(pid).is_empty());

    // A container with neither a command nor a known image.
    let bad = TempDir::new("up-bad-image");
    bad.write(
        "app.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx}]\n",
    );
    let (ok, stderr, pid) = up_fails(&[&bad.0.to_string_lossy(), "--ingress-port", "0"]);
    assert!(
        !ok && stderr.contains("\"nginx\" is not a built-in demo"),
        "{stderr}"
    );
    assert!(namespaces_of(pid).is_empty());

    // Ctrl-C while pods start: what was started goes away.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
        .to_string();
    let child = Command::new(BIN)
        .args(["up", &mesh, "--ingress-port", &free])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oxmesh up");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while namespaces_of(pid).len() < 3 {
        assert!(Instant::now() < deadline, "start-up never began");
        std::thread::sleep(Duration::from_millis(10));
    }
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        namespaces_of(pid).is_empty(),
        "left behind: {:?}",
        namespaces_of(pid)
    );

    // A second up on a running DIR is refused; the first keeps running.
    oxmesh(&["up", &mesh, "--detach", "--ingress-port", &free]);
    let (ok, stderr, _) = up_fails(&[&mesh, "--ingress-port", "0"]);
    assert!(!ok && stderr.contains("already running"), "{stderr}");
    oxmesh(&["down", "--mesh", &mesh]);
    // And down with nothing up says so.
    let said = oxmesh(&["down", "--mesh", &mesh]);
    assert!(said.contains("no mesh is running"), "{said}");
}

#[test]
fn a_crashing_container_is_restarted_and_a_missing_tool_is_named() {
    // No iptables (nor anything else) on PATH: refused up front, by name.
    let dir = TempDir::new("up-crash");
    let out = Command::new(BIN)
        .args(["up"])
        .arg(&dir.0)
        .env("PATH", "/nonexistent")
        .output()
        .expect("oxmesh up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("iptables (package iptables)"),
        "{stderr}"
    );

    // A container that exits at once is started again, with back-off, and the
    // mesh stays up.
    dir.write(
        "crash.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: crash}\nspec:\n  selector: {matchLabels: {app: crash}}\n  template:\n    metadata: {labels: {app: crash}}\n    spec:\n      containers: [{name: crash, image: busybox, command: [sh, -c, \"echo boom; exit 1\"]}]\n",
    );
    let (up, _) = start_up(&dir);
    let mesh = dir.0.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = oxmesh(&["logs", "--mesh", &mesh, "deploy/crash"]);
        if log.matches("boom").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never restarted: {log:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Applying a route to a subset nobody defined: the analyzers say so at once.
    dir.write(
        "networking/dangling.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: crash}\nspec:\n  hosts: [crash]\n  http:\n  - route:\n    - destination: {host: crash, subset: v9}\n",
    );
    let said = oxmesh(&[
        "apply",
        "--mesh",
        &mesh,
        "-f",
        &dir.path("networking/dangling.yaml").to_string_lossy(),
    ]);
    assert!(
        said.contains("VirtualService/default.crash configured"),
        "{said}"
    );
    assert!(said.contains("IST0101"), "{said}");
    drop(up);
}
