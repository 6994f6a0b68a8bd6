//! Ambient mode on `oxmesh up`: a namespace labelled
//! `istio.io/dataplane-mode: ambient` runs without sidecars, its pods
//! enrolled by the node agent (Istio's in-pod rules) and served by the node
//! proxy pod in shared mode. Checked as Istio's ambient guide checks it:
//! mTLS between ambient pods (the node proxy's metrics show `mutual_tls` and
//! the caller's principal), the app seeing the caller's own address, an L4
//! AuthorizationPolicy refusing a principal, the node proxy's access log, STRICT refusing a plaintext
//! caller outside the mesh, a sidecar reaching an ambient pod in HBONE, and
//! labels applied to a running mesh enrolling and releasing running pods
//! without restarting them. Needs root,
//! iproute2, iptables and curl.

use std::process::Command;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use serde_json::Value;
use support::mesh::Mesh;
use support::up::start_up;
use support::ztunnel::mtls_opened;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

const NAMESPACES: &str = "apiVersion: v1
kind: Namespace
metadata: {name: amb, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Namespace
metadata: {name: side, labels: {istio-injection: enabled}}
";

const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: amb}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-callers, namespace: amb}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/amb/sa/curl, cluster.local/ns/legacy/sa/curl, cluster.local/ns/side/sa/curl]}}]
"#;

/// A Deployment `name` in `namespace` running `image` as service account
/// `name`.
fn deployment(namespace: &str, name: &str, image: &str, container: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      serviceAccountName: {name}\n      containers: [{{name: {name}, image: {image}{container}}}]\n"
    )
}

fn mesh() -> String {
    let sleep = r#", command: [sleep, "3600"]"#;
    [
        NAMESPACES.to_owned(),
        POLICIES.to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: amb}\nspec:\n  selector: {app: httpbin}\n  ports: [{name: http, port: 8000, targetPort: 8080}]\n".to_owned(),
        deployment("amb", "httpbin", "echo", ""),
        deployment("amb", "curl", "curl", sleep),
        deployment("amb", "intruder", "curl", sleep),
        // An app listening on IPv6 too (the demo apps take IPv4 only).
        deployment(
            "amb",
            "web6",
            "curl",
            r#", command: [python3, -m, http.server, "8081", --bind, "::"]"#,
        ),
        deployment("legacy", "curl", "curl", sleep),
        deployment("side", "curl", "curl", sleep),
    ]
    .join("---\n")
}

const HTTPBIN: &str = "http://httpbin.amb:8000/ip";

struct Ambient {
    mesh: Mesh,
}

impl Ambient {
    fn path(&self) -> String {
        self.mesh.path()
    }

    fn pods(&self) -> Vec<Value> {
        std::fs::read_to_string(self.mesh.dir.path(".oxmesh/pods.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["pods"].as_array().cloned())
            .unwrap_or_default()
    }

    fn pod(&self, namespace: &str, prefix: &str) -> Value {
        self.pods()
            .into_iter()
            .find(|p| {
                p["namespace"] == namespace
                    && p["name"].as_str().is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no pod {namespace}/{prefix}…: {:#?}", self.pods()))
    }

    /// `oxmesh exec` in `pod` (a pod name, or `deploy/NAME`) of `namespace`.
    fn exec(&self, namespace: &str, pod: &str, command: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["exec", "--mesh", &self.path(), "-n", namespace, pod, "--"])
            .args(command)
            .output()
            .expect("oxmesh exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// curl from `namespace`'s `deployment`: the status (`000` when the
    /// connection is refused or reset) and the body.
    fn get(&self, namespace: &str, deployment: &str, url: &str) -> (String, String) {
        let text = self.exec(
            namespace,
            &format!("deploy/{deployment}"),
            &["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url],
        );
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.to_owned(), body.to_owned())
    }

    fn settles(&self, namespace: &str, deployment: &str, status: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (got, body) = self.get(namespace, deployment, HTTPBIN);
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{namespace}/{deployment} → {HTTPBIN}: {got} {body:?}, never {status}\n{}",
                self.node_proxy_log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn node_proxy(&self) -> String {
        self.pod("istio-system", "ztunnel-")["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn node_proxy_get(&self, url: &str) -> String {
        self.exec("istio-system", &self.node_proxy(), &["curl", "-s", url])
    }

    fn node_proxy_log(&self) -> String {
        std::fs::read_to_string(self.mesh.dir.path(&format!(
            ".oxmesh/logs/istio-system/{}/istio-proxy.log",
            self.node_proxy()
        )))
        .unwrap_or_default()
    }

    /// The identities whose certificates the node proxy holds.
    fn certificates(&self) -> Vec<String> {
        let dump: Value =
            serde_json::from_str(&self.node_proxy_get("http://127.0.0.1:15000/config_dump"))
                .unwrap_or_default();
        let mut held: Vec<String> = dump["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["identity"].as_str().map(str::to_owned))
            .collect();
        held.sort();
        held
    }
}

#[test]
fn ambient_namespaces_run_on_the_node_proxy_with_mtls_policy_and_live_enrollment() {
    let dir = TempDir::new("ambient-e2e");
    dir.write("mesh.yaml", &mesh());
    let (up, _) = start_up(&dir);
    let mesh = Ambient {
        mesh: Mesh::new(dir, up, "amb"),
    };

    // No sidecars: each ambient pod is served by the node proxy, in HBONE
    // under mTLS, and the app sees its caller's own address.
    let curl = mesh.pod("amb", "curl-");
    assert_eq!(curl["sidecar"], false, "{curl:#}");
    assert_eq!(curl["ambient"], true, "{curl:#}");
    let body = mesh.settles("amb", "curl", "200");
    let origin: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        origin["origin"], curl["ip"],
        "httpbin sees curl's own address"
    );
    let metrics = mesh.node_proxy_get("http://127.0.0.1:15020/metrics");
    assert!(
        mtls_opened(&metrics, "destination", "source_principal", ("amb", "curl"))
            .any(|l| l.contains(r#"destination_workload="httpbin""#)),
        "the node proxy counted curl's mTLS call:\n{metrics}"
    );

    // And its access log says so, as ztunnel's does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged = |log: &str| {
        log.lines().any(|l| {
            l.contains("connection complete")
                && l.contains("src.identity=spiffe://cluster.local/ns/amb/sa/curl")
                && l.contains("dst.workload=httpbin")
                && l.contains(r#"direction="inbound""#)
        })
    };
    while !logged(&mesh.node_proxy_log()) {
        assert!(
            Instant::now() < deadline,
            "no access log line:\n{}",
            mesh.node_proxy_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // L4 policy: intruder is no principal httpbin takes.
    let (status, _) = mesh.get("amb", "intruder", HTTPBIN);
    assert_eq!(status, "000", "intruder is refused");
    // STRICT: legacy's curl is outside the mesh, its plaintext refused.
    let (status, _) = mesh.get("legacy", "curl", HTTPBIN);
    assert_eq!(status, "000", "plaintext from outside the mesh is refused");
    // Nor does IPv6 pass by the node proxy: the pod's IPv6 is captured too.
    let web6: std::net::Ipv4Addr = mesh.pod("amb", "web6-")["ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("web6's address");
    let v6 = format!("http://[{}]:8081/", oxmesh_testbed::ipv6_of(web6));
    let (status, body) = mesh.get("legacy", "curl", &v6);
    assert_eq!(status, "000", "plaintext over IPv6 is refused too: {body}");

    // A sidecar reaches the ambient pod in HBONE (STRICT would refuse its
    // plaintext), the node proxy seeing the sidecar's identity.
    mesh.settles("side", "curl", "200");
    let metrics = mesh.node_proxy_get("http://127.0.0.1:15020/metrics");
    assert!(
        mtls_opened(
            &metrics,
            "destination",
            "source_principal",
            ("side", "curl")
        )
        .next()
        .is_some(),
        "the node proxy counted the sidecar's tunnel:\n{metrics}"
    );

    // Labelling legacy ambient enrolls its running pod, as it is.
    let legacy = mesh.pod("legacy", "curl-");
    mesh.mesh.apply(
        "legacy.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy, labels: {istio.io/dataplane-mode: ambient}}\n",
    );
    mesh.settles("legacy", "curl", "200");
    assert_eq!(
        mesh.pod("legacy", "curl-")["name"],
        legacy["name"],
        "not restarted"
    );
    assert!(
        mesh.certificates()
            .contains(&"spiffe://cluster.local/ns/legacy/sa/curl".to_owned()),
        "{:?}",
        mesh.certificates()
    );

    // And taking the label off releases it: the node proxy lets it go.
    mesh.mesh.apply(
        "legacy.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while mesh
        .certificates()
        .contains(&"spiffe://cluster.local/ns/legacy/sa/curl".to_owned())
    {
        assert!(Instant::now() < deadline, "legacy/curl never released");
        std::thread::sleep(Duration::from_millis(300));
    }
    mesh.settles("legacy", "curl", "000");
}
