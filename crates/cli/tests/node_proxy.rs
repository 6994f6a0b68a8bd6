//! oxmesh's node proxy (`oxmesh ztunnel`, dedicated mode) beside a pod,
//! against Istio's own ztunnel beside another: each pod's traffic is
//! captured by real iptables rules in its own network namespace, crosses
//! between the two in HBONE with each side's identity checked, and each
//! side enforces oxmesh's AuthorizationPolicy. Skipped, saying so, without
//! Istio's ztunnel.

mod support;

use oxmesh_testbed::{Netns, istio_ztunnel};
use oxmesh_testkit::TempDir;
use support::ztunnel::{self, counts_mtls, curl, echo, find, get, token, wait_until as wait_for};
use support::{Process, oxmesh};

const CLIENT_IP: &str = "198.18.253.1";
const SERVER_IP: &str = "198.18.253.2";

/// The client pod, behind oxmesh's node proxy; the server pod, behind
/// Istio's. The client's app takes calls on 9000 from the server only.
fn pods() -> String {
    ztunnel::ambient_pod("client", CLIENT_IP) + &ztunnel::ambient_pod("server", SERVER_IP) + POLICY
}

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-to-9000, namespace: default}
spec:
  selector: {matchLabels: {app: client}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/server]}}]
    to: [{operation: {ports: ["9000"]}}]
"#;

fn read(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn oxmesh_and_istios_node_proxies_carry_each_others_traffic_under_policy() {
    let Some(binary) = istio_ztunnel::binary() else {
        eprintln!("{}", istio_ztunnel::ABSENT);
        return;
    };
    let n = std::process::id();
    let client_ns = Netns::create(&format!("oxna-{n}")).expect("netns (root)");
    let server_ns = Netns::create(&format!("oxnb-{n}")).expect("netns (root)");
    client_ns
        .link(&format!("oxna{n}"), &server_ns, &format!("oxnb{n}"))
        .expect("veth");
    for (netns, ip, device) in [
        (&client_ns, CLIENT_IP, format!("oxna{n}")),
        (&server_ns, SERVER_IP, format!("oxnb{n}")),
    ] {
        for args in [
            vec!["addr", "add", &format!("{ip}/30"), "dev", &device],
            vec!["link", "set", &device, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            netns.run("ip", &args).expect("pod network");
        }
    }

    let state = TempDir::new("node-proxy-state");
    let config = TempDir::new("node-proxy-config");
    std::fs::write(config.path("pods.yaml"), pods()).expect("write config");
    // The control plane runs in the client pod's namespace, on its address.
    let cp = support::start_with(
        client_ns.command(env!("CARGO_BIN_EXE_oxmesh")),
        CLIENT_IP,
        &state,
        &["--config-dir".as_ref(), config.0.as_os_str()],
    );
    let control_port = cp.secure.rsplit_once(':').expect("port").1.to_owned();

    // The client pod: its apps, its capture (the control plane's port left
    // alone both ways: it shares the pod's address here) and oxmesh's node
    // proxy as the proxy's uid.
    let _apps = (echo(&client_ns, 9000), echo(&client_ns, 9001));
    let capture = client_ns
        .output(
            env!("CARGO_BIN_EXE_oxmesh"),
            &["iptables", "-d", &control_port, "-o", &control_port],
        )
        .expect("iptables");
    assert!(
        capture.status.success(),
        "{}",
        String::from_utf8_lossy(&capture.stderr)
    );
    let state_dir = state.0.to_string_lossy().into_owned();
    let root = state.path("root-cert.pem");
    std::fs::write(&root, oxmesh(&["ca", "root", "--state-dir", &state_dir])).expect("root");
    let client_token = token(&state, "default", "client", None);
    let ours_log = state.path("oxmesh-ztunnel.log");
    let ours_file = std::fs::File::create(&ours_log).expect("log");
    let _ours = Process(
        client_ns
            .command("setpriv")
            .args(["--reuid=1337", "--regid=1337", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_oxmesh"))
            .args(["ztunnel", "--workload", "default/client/client"])
            .args(["--discovery-address", &cp.secure])
            .arg("--token-file")
            .arg(&client_token)
            .arg("--root-cert")
            .arg(&root)
            .args(["--instance-ip", CLIENT_IP])
            .env("RUST_LOG", "info")
            .stderr(ours_file)
            .spawn()
            .expect("oxmesh ztunnel"),
    );
    wait_for("ready", &|| read(&ours_log), || ztunnel::ready(&client_ns));

    // The server pod: its app, capture by mark as Istio's in-pod rules do,
    // and Istio's ztunnel.
    let _server_app = echo(&server_ns, 8080);
    let rules = format!(
        "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -o lo -j RETURN\n-A OUTPUT -p tcp -m mark --mark 0x539/0xfff -j RETURN\n-A OUTPUT -p tcp --dport {control_port} -j RETURN\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n"
    );
    std::fs::write(state.path("server-rules"), rules).expect("rules");
    server_ns
        .run(
            "iptables-restore",
            &[
                "-w",
                "5",
                "--noflush",
                &state.path("server-rules").to_string_lossy(),
            ],
        )
        .expect("server capture");
    let server_token = token(&state, "default", "server", None);
    let (_istio, istio_log) = ztunnel::start(
        &binary,
        &server_ns,
        &state,
        &cp.secure,
        &server_token,
        &[
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "default/server/server"),
            ("POD_NAME", "server"),
            ("POD_NAMESPACE", "default"),
            ("SERVICE_ACCOUNT", "server"),
            ("INSTANCE_IP", SERVER_IP),
            ("ENABLE_ORIG_SRC", "false"),
            ("PACKET_MARK", "1337"),
        ],
    );
    wait_for("synced (Istio's ztunnel)", &|| read(&istio_log), || {
        get(&server_ns, "http://127.0.0.1:15000/config_dump")
            .is_some_and(|d| find(&d["workloads"], "name", "client").is_some())
    });
    let logs = || {
        format!(
            "oxmesh's node proxy:\n{}\nIstio's ztunnel:\n{}",
            std::fs::read_to_string(&ours_log).unwrap_or_default(),
            std::fs::read_to_string(&istio_log).unwrap_or_default()
        )
    };

    // Client → server: out through oxmesh's node proxy, in HBONE to Istio's,
    // which counts the client's identity under mutual TLS.
    let (ok, answer) = curl(&client_ns, &format!("http://{SERVER_IP}:8080/hello"));
    assert!(ok && answer.contains("/hello"), "{answer}\n{}", logs());
    let metrics = ztunnel::metrics(&server_ns);
    assert!(
        counts_mtls(&metrics, "destination", "source_principal", "client"),
        "Istio's ztunnel saw the client's identity:\n{metrics}"
    );

    // Server → client: out through Istio's ztunnel, in HBONE to oxmesh's,
    // which admits the server on 9000 only, as the policy says.
    let (ok, answer) = curl(&server_ns, &format!("http://{CLIENT_IP}:9000/allowed"));
    assert!(ok && answer.contains("/allowed"), "{answer}\n{}", logs());
    let (ok, answer) = curl(&server_ns, &format!("http://{CLIENT_IP}:9001/denied"));
    assert!(
        !ok && !answer.contains("/denied"),
        "the policy admits 9000 only: {answer}\n{}",
        logs()
    );
    let ours = std::fs::read_to_string(&ours_log).unwrap_or_default();
    assert!(ours.contains("no ALLOW policy matches"), "{}", logs());

    // Its config dump reads as ztunnel's.
    let dump = get(&client_ns, "http://127.0.0.1:15000/config_dump").expect("config dump");
    let client = find(&dump["workloads"], "name", "client").expect("its own workload");
    assert_eq!(client["protocol"], "HBONE", "{dump:#}");
    assert_eq!(client["workloadIps"][0], CLIENT_IP);
    assert_eq!(client["authorizationPolicies"][0], "default/server-to-9000");
    assert!(
        find(&dump["policies"], "name", "server-to-9000").is_some(),
        "{dump:#}"
    );
    let certificate = find(
        &dump["certificates"],
        "identity",
        "spiffe://cluster.local/ns/default/sa/client",
    )
    .expect("its certificate");
    assert_eq!(certificate["state"], "Available");

    // oxmesh's node proxy reports both directions as Istio's does.
    let metrics = ztunnel::metrics(&client_ns);
    let counted = |reporter, label, account| counts_mtls(&metrics, reporter, label, account);
    assert!(
        counted("source", "destination_principal", "server"),
        "the client's call, as its source:\n{metrics}"
    );
    assert!(
        counted("destination", "source_principal", "server"),
        "the server's call, as its destination:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_received_bytes_total")
                && l.contains(r#"reporter="destination""#)
                && !l.ends_with(" 0")),
        "bytes counted:\n{metrics}"
    );
}
