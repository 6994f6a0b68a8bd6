//! Istio's own ztunnel, built from its source, against oxmesh: it connects
//! to oxmesh's control plane on 15012 with its node-bound token, takes
//! workloads, services and L4 policies from oxmesh's workload API over delta
//! ADS, and gets the certificates of the pods on its node from oxmesh's CA
//! by impersonation; and HBONE between it and oxmesh carries traffic both
//! ways, each side checking the other's identity and ztunnel enforcing
//! oxmesh's policy. Skipped, saying so, when the binary is absent.

mod support;

use support::ztunnel::{self, find, get, token};
use support::{Process, oxmesh};

use std::path::Path;
use std::time::{Duration, Instant};

use oxmesh_testbed::{Netns, istio_ztunnel};
use oxmesh_testkit::TempDir;
use serde_json::Value;

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

#[test]
fn istios_ztunnel_takes_workloads_policies_and_certificates_from_oxmesh() {
    let Some(ztunnel) = istio_ztunnel::binary() else {
        eprintln!("{}", istio_ztunnel::ABSENT);
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
        "127.0.0.1",
        &state,
        &["--config-dir".as_ref(), config.0.as_os_str()],
    );

    let token = token(&state, "istio-system", "ztunnel", Some("node-a"));
    let (_ztunnel, log) = ztunnel::start(
        &ztunnel,
        &netns,
        &state,
        &cp.secure,
        &token,
        &[
            ("POD_NAME", "ztunnel-a"),
            ("POD_NAMESPACE", "istio-system"),
            ("SERVICE_ACCOUNT", "ztunnel"),
            ("NODE_NAME", "node-a"),
            ("INSTANCE_IP", "127.0.0.1"),
        ],
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

/// The server pod, behind Istio's ztunnel in its own network namespace
/// (dedicated mode, as ztunnel runs beside one workload), and the client
/// pod, whose address is the host's end of the link, served by oxmesh's
/// HBONE client and server in this test. Only `client` may call `server`.
fn pair() -> String {
    ztunnel::ambient_pod("server", POD_END) + &ztunnel::ambient_pod("client", HOST_END) + POLICY
}

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
"#;

const HOST_END: &str = "198.18.254.1";
const POD_END: &str = "198.18.254.2";

/// Credentials for `namespace/account` from the control plane's CA at
/// `secure`, as a workload gets them.
async fn workload_credentials(
    state: &TempDir,
    secure: &str,
    namespace: &str,
    account: &str,
) -> std::sync::Arc<oxmesh_identity::credentials::Credentials> {
    use oxmesh_identity::credentials::Credentials;
    use oxmesh_identity::manager::{CertificateManager, Rotation};
    use oxmesh_xds::ca_client::{GrpcCaClient, Token};
    let state_dir = state.0.to_string_lossy().into_owned();
    let root = oxmesh(&["ca", "root", "--state-dir", &state_dir]);
    let roots = oxmesh_identity::certificate::pem_certificates(root.as_bytes()).expect("roots");
    let token = token(state, namespace, account, None);
    let client = GrpcCaClient::new(
        secure,
        "istiod.istio-system.svc",
        &roots,
        Token::File(token),
    )
    .expect("CA client");
    let identity = format!("spiffe://cluster.local/ns/{namespace}/sa/{account}");
    let credentials = Credentials::new(identity.parse().expect("id"));
    let manager = CertificateManager::new(client, credentials, Rotation::default());
    manager
        .refresh()
        .await
        .expect("certificate from oxmesh's CA");
    manager.credentials().clone()
}

/// What oxmesh's HBONE server was asked for, and by whom.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<oxmesh_proxy::hbone::server::Inbound>>);

impl oxmesh_proxy::hbone::server::Upstream for Seen {
    type Stream = tokio::net::TcpStream;

    async fn open(
        &self,
        inbound: oxmesh_proxy::hbone::server::Inbound,
    ) -> Result<tokio::net::TcpStream, oxmesh_proxy::hbone::server::Refusal> {
        self.0.lock().expect("lock").push(inbound.clone());
        oxmesh_proxy::hbone::server::Direct.open(inbound).await
    }
}

/// An HTTP/1.1 server that answers every request with `text`.
async fn answering(addr: &str, text: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind app");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = tcp.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
}

/// Sends a GET through `tunnel` and returns the answer.
async fn get_through(mut tunnel: oxmesh_proxy::hbone::client::Tunnel, host: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tunnel.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    tunnel.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_between_istios_ztunnel_and_oxmesh_carries_traffic_both_ways() {
    use oxmesh_proxy::hbone::client::{Client, Target};
    use oxmesh_proxy::hbone::{HboneError, server};
    let Some(ztunnel) = istio_ztunnel::binary() else {
        eprintln!("{}", istio_ztunnel::ABSENT);
        return;
    };
    let n = std::process::id();
    let netns = Netns::create(&format!("oxzh-{n}")).expect("netns (root)");
    // A link from this host's namespace into the server pod's: the host's
    // end is the client pod. Deleting the namespace deletes both ends.
    let host_end = format!("oxzh{n}");
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "link",
        "add",
        &host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns.name(),
    ]);
    ip(&["addr", "add", &format!("{HOST_END}/30"), "dev", &host_end]);
    ip(&["link", "set", &host_end, "up"]);
    for args in [
        vec!["addr", "add", "198.18.254.2/30", "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        netns.run("ip", &args).expect("pod network");
    }

    let state = TempDir::new("ztunnel-hbone-state");
    let config = TempDir::new("ztunnel-hbone-config");
    std::fs::write(config.path("mesh.yaml"), pair()).expect("write config");
    let cp = support::start_with(
        std::process::Command::new(env!("CARGO_BIN_EXE_oxmesh")),
        HOST_END,
        &state,
        &["--config-dir".as_ref(), config.0.as_os_str()],
    );
    let control_port = cp.secure.rsplit_once(':').expect("port").1.to_owned();

    // The server pod: its app, and ztunnel capturing what the pod sends
    // (its own connections carry mark 1337, and the control plane is
    // reached directly), as Istio's in-pod rules do.
    let _app = Process(
        netns
            .command(env!("CARGO_BIN_EXE_oxmesh"))
            .args(["demo", "echo", "--port", "8080"])
            .spawn()
            .expect("app"),
    );
    netns
        .run(
            "iptables-restore",
            &["-w", "5", "--noflush", &{
                let rules = format!(
                    "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -o lo -j RETURN\n-A OUTPUT -p tcp -m mark --mark 0x539/0xfff -j RETURN\n-A OUTPUT -p tcp --dport {control_port} -j RETURN\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n"
                );
                let file = state.path("rules");
                std::fs::write(&file, rules).expect("rules");
                file.to_string_lossy().into_owned()
            }],
        )
        .expect("capture");
    let server_token = token(&state, "default", "server", None);
    let (_ztunnel, log) = ztunnel::start(
        &ztunnel,
        &netns,
        &state,
        &cp.secure,
        &server_token,
        &[
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "default/server/server"),
            ("POD_NAME", "server"),
            ("POD_NAMESPACE", "default"),
            ("SERVICE_ACCOUNT", "server"),
            ("INSTANCE_IP", POD_END),
            // The app's answers go back through ztunnel only if it keeps
            // its own address; in-pod, Istio's rules route them.
            ("ENABLE_ORIG_SRC", "false"),
            // Its own connections carry this mark, which the rules let pass.
            ("PACKET_MARK", "1337"),
        ],
    );
    let ready = || {
        get(&netns, "http://127.0.0.1:15000/config_dump").is_some_and(|d| {
            find(&d["workloads"], "name", "server").is_some()
                && find(&d["policies"], "name", "only-client").is_some()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "ztunnel never took its workload: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // oxmesh → Istio's ztunnel: the client pod's tunnel to the server pod's
    // app, checked against the server's identity; ztunnel's policy admits
    // the client and its metrics name it.
    let client = Client::new(workload_credentials(&state, &cp.secure, "default", "client").await);
    let server_id: oxmesh_identity::SpiffeId = "spiffe://cluster.local/ns/default/sa/server"
        .parse()
        .expect("id");
    let to_app = |peer: &str| Target {
        peer: format!("{peer}:15008").parse().expect("peer"),
        identities: vec![server_id.clone()],
        authority: format!("{POD_END}:8080").parse().expect("authority"),
        headers: http::HeaderMap::new(),
    };
    let tunnel = client.open(&to_app(POD_END)).await.unwrap_or_else(|e| {
        panic!(
            "{e}\nztunnel's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let answer = get_through(tunnel, "server").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = ztunnel::metrics(&netns);
    assert!(
        ztunnel::counts_mtls(&metrics, "destination", "source_principal", "client"),
        "ztunnel counted the client's mTLS connection:\n{metrics}"
    );

    // An identity the policy does not name is refused by ztunnel (401).
    let intruder =
        Client::new(workload_credentials(&state, &cp.secure, "default", "intruder").await);
    match intruder.open(&to_app(POD_END)).await {
        Err(HboneError::Refused { status, .. }) => {
            assert_eq!(status, http::StatusCode::UNAUTHORIZED)
        }
        other => panic!(
            "expected ztunnel to refuse the intruder, got {:?}",
            other.map(|_| ())
        ),
    }

    // Istio's ztunnel → oxmesh: what the server pod sends to the client
    // pod is captured, tunnelled to this host's HBONE server, which sees
    // the server's identity and hands the stream to the client pod's app.
    answering(&format!("{HOST_END}:9000"), "hello from oxmesh").await;
    let seen = std::sync::Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind(format!("{HOST_END}:15008"))
        .await
        .expect("bind HBONE");
    let credentials = workload_credentials(&state, &cp.secure, "default", "client").await;
    tokio::spawn(server::serve(listener, credentials, seen.clone()));
    // Awaited, not blocked on: this test's runtime serves the tunnel.
    let out = tokio::process::Command::from(netns.command("curl"))
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{HOST_END}:9000/"),
        ])
        .output()
        .await
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    let rules = netns
        .output("iptables", &["-t", "nat", "-S"])
        .expect("rules");
    assert_eq!(
        body,
        "hello from oxmesh",
        "curl: {}\nrules: {}\nztunnel's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&rules.stdout),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let seen = seen.0.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "one tunnel: {seen:?}");
    assert_eq!(
        seen[0].peer, server_id,
        "the caller proved it is the server pod"
    );
    assert_eq!(seen[0].authority.to_string(), format!("{HOST_END}:9000"));
    let forwarded = seen[0]
        .headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        forwarded.starts_with(&format!("for=\"{POD_END}:")),
        "ztunnel names the caller: {:?}",
        seen[0].headers
    );
}
