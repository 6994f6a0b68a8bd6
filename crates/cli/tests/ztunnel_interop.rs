//! Istio's own ztunnel, built from its source, against oxmesh's control
//! plane: it connects to 15012 with its node-bound token, takes workloads,
//! services and L4 policies from oxmesh's workload API over delta ADS, and
//! gets the certificates of the pods on its node from oxmesh's CA by
//! impersonation. Skipped, saying so, when the binary is absent.

mod support;

use support::{Process, oxmesh};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oxmesh_testbed::Netns;
use oxmesh_testkit::TempDir;
use serde_json::Value;

/// `../shared/peers/ztunnel/ztunnel`, or `OXMESH_ZTUNNEL`.
fn ztunnel_binary() -> Option<PathBuf> {
    let path = std::env::var_os("OXMESH_ZTUNNEL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/ztunnel/ztunnel"),
        PathBuf::from,
    );
    path.is_file().then_some(path)
}

/// Two ambient pods (captured, as Istio's CNI marks them) on two nodes, a
/// plain pod, their Service, a policy and mesh-wide STRICT mTLS.
const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: app-1
  namespace: default
  labels: {app: app}
  annotations: {ambient.istio.io/redirection: enabled}
spec: {serviceAccountName: app, nodeName: node-a, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 198.18.0.11, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: other-1
  namespace: default
  labels: {app: other}
  annotations: {ambient.istio.io/redirection: enabled}
spec: {serviceAccountName: other, nodeName: node-b, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 198.18.0.12, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain-1, namespace: default, labels: {app: plain}}
spec: {serviceAccountName: plain, nodeName: node-a, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 198.18.0.13, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: default}
spec:
  clusterIP: 198.19.0.10
  selector: {app: app}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-other, namespace: default}
spec:
  selector: {matchLabels: {app: app}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/other]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

/// GETs a loopback URL inside the namespace.
fn get(netns: &Netns, url: &str) -> Option<Value> {
    let out = netns
        .output("curl", &["-sf", "--max-time", "5", url])
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until `ready` holds of ztunnel's config dump, and returns it.
fn config_dump_when(
    netns: &Netns,
    ready: impl Fn(&Value) -> bool,
    what: &str,
    log: &Path,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(dump) = get(netns, "http://127.0.0.1:15000/config_dump") {
            if ready(&dump) {
                return dump;
            }
            last = dump;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("ztunnel never showed {what}.\nlast config dump: {last:#}\nztunnel's log:\n{log}");
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v[key] == value)
}

#[test]
fn istios_ztunnel_takes_workloads_policies_and_certificates_from_oxmesh() {
    let Some(ztunnel) = ztunnel_binary() else {
        eprintln!(
            "skipped: Istio's ztunnel is not at ../shared/peers/ztunnel/ztunnel (or OXMESH_ZTUNNEL)"
        );
        return;
    };
    let netns = Netns::create(&format!("oxzt-{}", std::process::id())).expect("netns (root)");
    netns
        .run("ip", &["link", "set", "lo", "up"])
        .expect("loopback up");
    let state = TempDir::new("ztunnel-interop-state");
    let config = TempDir::new("ztunnel-interop-config");
    std::fs::write(config.path("mesh.yaml"), MESH).expect("write config");
    let cp = support::start_with(
        netns.command(env!("CARGO_BIN_EXE_oxmesh")),
        &state,
        &["--config-dir".as_ref(), config.0.as_os_str()],
    );

    // What Kubernetes would mount into ztunnel's pod: its projected token
    // (bound to its node) and the mesh's root certificate.
    let state_dir = state.0.to_string_lossy().into_owned();
    let token = oxmesh(&[
        "ca",
        "token",
        "--state-dir",
        &state_dir,
        "-n",
        "istio-system",
        "--service-account",
        "ztunnel",
        "--node",
        "node-a",
    ]);
    std::fs::write(state.path("istio-token"), token.trim()).expect("write token");
    let root = oxmesh(&["ca", "root", "--state-dir", &state_dir]);
    std::fs::write(state.path("root-cert.pem"), root).expect("write root");

    let control = format!("https://{}", cp.secure);
    let log = state.path("ztunnel.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let path = |name: &str| state.path(name).to_string_lossy().into_owned();
    let _ztunnel = Process(
        netns
            .command(&ztunnel.to_string_lossy())
            .env_clear()
            .envs([
                ("XDS_ADDRESS", control.as_str()),
                ("CA_ADDRESS", control.as_str()),
                // oxmesh serves 15012 under istiod's Service name.
                ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
                ("ALT_CA_HOSTNAME", "istiod.istio-system.svc"),
                ("XDS_ROOT_CA", &path("root-cert.pem")),
                ("CA_ROOT_CA", &path("root-cert.pem")),
                ("AUTH_TOKEN", &path("istio-token")),
                ("POD_NAME", "ztunnel-a"),
                ("POD_NAMESPACE", "istio-system"),
                ("SERVICE_ACCOUNT", "ztunnel"),
                ("NODE_NAME", "node-a"),
                ("INSTANCE_IP", "127.0.0.1"),
                ("INPOD_UDS", &path("ztunnel.sock")),
                ("RUST_LOG", "info"),
            ])
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start ztunnel"),
    );

    let app_identity = "spiffe://cluster.local/ns/default/sa/app";
    let dump = config_dump_when(
        &netns,
        |d| {
            find(&d["certificates"], "identity", app_identity)
                .is_some_and(|c| c["state"] == "Available")
                && d["workloads"].as_array().is_some_and(|w| w.len() == 3)
                && find(&d["policies"], "name", "allow-other").is_some()
        },
        "its workloads, policies and app's certificate",
        &log,
    );

    let workloads = &dump["workloads"];
    let app = find(workloads, "uid", "Kubernetes//Pod/default/app-1").expect("app-1");
    assert_eq!(app["protocol"], "HBONE", "captured by ambient: {app:#}");
    assert_eq!(app["node"], "node-a");
    assert_eq!(app["workloadIps"][0], "198.18.0.11");
    assert_eq!(app["serviceAccount"], "app");
    assert_eq!(
        app["authorizationPolicies"],
        serde_json::json!([
            "default/allow-other",
            "istio-system/istio_converted_static_strict"
        ])
    );
    let plain = find(workloads, "uid", "Kubernetes//Pod/default/plain-1").expect("plain-1");
    assert_eq!(plain["protocol"], "TCP", "not in ambient: {plain:#}");

    let service = find(
        &dump["services"],
        "hostname",
        "app.default.svc.cluster.local",
    )
    .expect("the app Service");
    assert_eq!(service["vips"], serde_json::json!(["/198.19.0.10"]));
    assert_eq!(service["ports"]["80"], 8080);
    assert!(
        service["endpoints"]
            .get("Kubernetes//Pod/default/app-1")
            .is_some(),
        "{service:#}"
    );

    let strict = find(&dump["policies"], "name", "istio_converted_static_strict")
        .expect("STRICT mTLS as a policy");
    assert_eq!(strict["action"], "Deny");

    // The certificate came by impersonation: only for the pod on its node.
    let certificates = dump["certificates"].as_array().expect("certificates");
    assert!(
        !certificates
            .iter()
            .any(|c| c["identity"] == "spiffe://cluster.local/ns/default/sa/other"),
        "other-1 runs on node-b: {certificates:#?}"
    );

    // oxmesh sees a node proxy that holds (ACKed) both types.
    let syncz = get(&netns, &format!("http://{}/debug/syncz", cp.monitoring)).expect("syncz");
    let ours = find(&syncz["proxies"], "proxy", "ztunnel-a.istio-system")
        .unwrap_or_else(|| panic!("ztunnel in syncz: {syncz:#}"));
    assert_eq!(ours["types"]["wds"]["state"], "SYNCED", "{ours:#}");
    assert_eq!(ours["types"]["wads"]["state"], "SYNCED", "{ours:#}");
    assert_eq!(ours["types"]["cds"]["state"], "NOT SENT", "{ours:#}");
}
