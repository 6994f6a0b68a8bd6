//! Ambient's in-pod mode on one simulated node: a node network namespace
//! routing between two pod namespaces. oxmesh's node agent installs Istio's
//! CNI rules inside each pod and hands the pods over ZDS (a Unix socket,
//! each pod's namespace passed as a descriptor) to a node proxy in shared
//! mode — oxmesh's, and in a second test Istio's own ztunnel — which serves
//! each pod from inside its namespace with the pod's own certificate, got by
//! impersonation. Checked: HBONE with mTLS between the pods, the app seeing
//! its caller's own address, L4 policy by principal, STRICT refusing a
//! plaintext caller outside the mesh, metrics, and (oxmesh) the agent's
//! snapshot after a restart dropping a pod that is gone.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use oxmesh_testbed::{Netns, istio_ztunnel};
use oxmesh_testkit::TempDir;
use support::ztunnel::{
    self, ambient_pod_on, counts_mtls, curl, echo, get, token, wait_until as wait_for,
};
use support::{Process, oxmesh};

const NODE: &str = "node-1";

/// The node and its two pods, `a` (the caller) and `b`, each linked to the
/// node by a veth: `NET.1`–`NET.2` for `a`, `NET.5`–`NET.6` for `b`.
struct Node {
    net: &'static str,
    // Processes go before the namespaces they run in.
    node: Netns,
    a: Netns,
    b: Netns,
}

impl Node {
    fn create(tag: &str, net: &'static str) -> Self {
        let n = std::process::id();
        let node = Netns::create(&format!("ox{tag}n-{n}")).expect("netns (root)");
        let a = Netns::create(&format!("ox{tag}a-{n}")).expect("netns");
        let b = Netns::create(&format!("ox{tag}b-{n}")).expect("netns");
        node.run("ip", &["link", "set", "lo", "up"]).expect("lo");
        node.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .expect("forwarding");
        for (pod, host, end) in [(&a, 1, 2), (&b, 5, 6)] {
            let outside = format!("pod{end}");
            let inside = "eth0";
            node.link(&outside, pod, inside).expect("veth");
            node.run(
                "ip",
                &["addr", "add", &format!("{net}.{host}/30"), "dev", &outside],
            )
            .expect("node address");
            node.run("ip", &["link", "set", &outside, "up"])
                .expect("up");
            for args in [
                vec!["addr", "add", &format!("{net}.{end}/30"), "dev", inside],
                vec!["link", "set", inside, "up"],
                vec!["link", "set", "lo", "up"],
                vec!["route", "add", "default", "via", &format!("{net}.{host}")],
            ] {
                pod.run("ip", &args).expect("pod network");
            }
        }
        Self { net, node, a, b }
    }

    fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    /// Both pods on this node, `b` taking calls from `a` on 9000 only, and
    /// STRICT mTLS mesh-wide.
    fn mesh(&self) -> String {
        ambient_pod_on("a", &self.ip(2), Some(NODE))
            + &ambient_pod_on("b", &self.ip(6), Some(NODE))
            + POLICY
    }

    /// `oxmesh node-agent` serving `socket`, with `pods` of `a`, `b`.
    fn agent(&self, socket: &Path, pods: &[(&str, &Netns)], log: &Path) -> Process {
        let mut command = self.node.command(env!("CARGO_BIN_EXE_oxmesh"));
        command.arg("node-agent").arg("--socket").arg(socket);
        for (name, netns) in pods {
            command.args([
                "--pod",
                &format!("default/{name}/{name}=/run/netns/{}", netns.name()),
            ]);
        }
        let log = std::fs::File::create(log).expect("log");
        Process(
            command
                .env("RUST_LOG", "info")
                .stderr(log)
                .spawn()
                .expect("node agent"),
        )
    }
}

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a-to-9000, namespace: default}
spec:
  selector: {matchLabels: {app: b}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/a]}}]
    to: [{operation: {ports: ["9000"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

fn read_logs(paths: &[&PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            format!(
                "--- {}:\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

/// A node with its control plane (on the node's address), its apps (`b`
/// answers on 9000 and 9001) and the node agent enrolling both pods.
struct Bed {
    _apps: (Process, Process),
    agent: Option<Process>,
    _cp: support::ControlPlane,
    secure: String,
    socket: PathBuf,
    agent_log: PathBuf,
    state: TempDir,
    _config: TempDir,
    node: Node,
}

fn bed(tag: &str, net: &'static str, with_agent: bool) -> Bed {
    let node = Node::create(tag, net);
    let state = TempDir::new(&format!("inpod-{tag}-state"));
    let config = TempDir::new(&format!("inpod-{tag}-config"));
    std::fs::write(config.path("mesh.yaml"), node.mesh()).expect("write config");
    let cp = support::start_with(
        node.node.command(env!("CARGO_BIN_EXE_oxmesh")),
        &node.ip(1),
        &state,
        &["--config-dir".as_ref(), config.0.as_os_str()],
    );
    let apps = (echo(&node.b, 9000), echo(&node.b, 9001));
    let socket = state.path("ztunnel.sock");
    let agent_log = state.path("node-agent.log");
    let agent =
        with_agent.then(|| node.agent(&socket, &[("a", &node.a), ("b", &node.b)], &agent_log));
    Bed {
        _apps: apps,
        agent,
        secure: cp.secure.clone(),
        _cp: cp,
        socket,
        agent_log,
        state,
        _config: config,
        node,
    }
}

/// What every node proxy must do for the two pods, whoever built it.
fn carries_pod_traffic_under_policy(bed: &Bed, logs: &dyn Fn() -> String) {
    let node = &bed.node;
    // a → b: captured in a, HBONE from a's own address to b, delivered to
    // the app from a's address.
    let (ok, answer) = curl(&node.a, &format!("http://{}:9000/ip", node.ip(6)));
    assert!(ok, "{answer}\n{}", logs());
    let origin: serde_json::Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(origin["origin"], node.ip(2), "b's app sees a's own address");

    let (ok, answer) = curl(&node.a, &format!("http://{}:9001/ip", node.ip(6)));
    assert!(!ok, "the policy admits 9000 only: {answer}\n{}", logs());

    // The node is outside the mesh: STRICT refuses its plaintext.
    let (ok, answer) = curl(&node.node, &format!("http://{}:9000/ip", node.ip(6)));
    assert!(!ok, "STRICT refuses plaintext: {answer}\n{}", logs());

    let metrics = ztunnel::metrics(&node.node);
    assert!(
        counts_mtls(&metrics, "destination", "source_principal", "a"),
        "b's side saw a's identity under mTLS:\n{metrics}"
    );
}

/// oxmesh's node proxy in shared mode on the bed's node.
fn node_proxy(bed: &Bed, log: &Path) -> Process {
    let state_dir = bed.state.0.to_string_lossy().into_owned();
    let root = bed.state.path("root-cert.pem");
    std::fs::write(&root, oxmesh(&["ca", "root", "--state-dir", &state_dir])).expect("root");
    let token = token(&bed.state, "istio-system", "ztunnel", Some(NODE));
    Process(
        bed.node
            .node
            .command(env!("CARGO_BIN_EXE_oxmesh"))
            .args([
                "ztunnel",
                "--mode",
                "shared",
                "--pod",
                "istio-system/ztunnel-1/ztunnel",
            ])
            .arg("--zds-socket")
            .arg(&bed.socket)
            .args(["--discovery-address", &bed.secure])
            .arg("--token-file")
            .arg(&token)
            .arg("--root-cert")
            .arg(&root)
            .args(["--instance-ip", &bed.node.ip(1)])
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("oxmesh ztunnel"),
    )
}

#[test]
fn oxmesh_node_proxy_serves_each_pod_from_inside_its_namespace() {
    let mut bed = bed("i", "198.18.252", true);
    let node = &bed.node;
    let proxy_log = bed.state.path("node-proxy.log");
    let _proxy = node_proxy(&bed, &proxy_log);
    let logs = || read_logs(&[&proxy_log, &bed.agent_log]);
    let ready = || ztunnel::ready(&node.node);
    wait_for("ready", &logs, ready);

    carries_pod_traffic_under_policy(&bed, &logs);

    // Each pod's certificate is its own, got by impersonation.
    let identities = || -> Vec<String> {
        get(&node.node, "http://127.0.0.1:15000/config_dump")
            .and_then(|d| d["certificates"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|c| c["state"] == "Available")
            .filter_map(|c| c["identity"].as_str().map(str::to_owned))
            .collect()
    };
    let mut held = identities();
    held.sort();
    assert_eq!(
        held,
        [
            "spiffe://cluster.local/ns/default/sa/a",
            "spiffe://cluster.local/ns/default/sa/b"
        ],
        "{}",
        logs()
    );

    // The agent restarts knowing only a: its snapshot ends b's service.
    drop(bed.agent.take());
    let _agent = node.agent(&bed.socket, &[("a", &node.a)], &bed.agent_log);
    wait_for("b released", &logs, || {
        identities() == ["spiffe://cluster.local/ns/default/sa/a"]
    });
    assert!(ready(), "ready again after the snapshot:\n{}", logs());
}

#[test]
fn istios_ztunnel_serves_pods_handed_over_by_oxmeshs_node_agent() {
    let Some(binary) = istio_ztunnel::binary() else {
        eprintln!("{}", istio_ztunnel::ABSENT);
        return;
    };
    let bed = bed("s", "198.18.251", true);
    let node = &bed.node;
    let token = token(&bed.state, "istio-system", "ztunnel", Some(NODE));
    // ztunnel::start points INPOD_UDS at the state dir's ztunnel.sock,
    // where the agent listens.
    let (_ztunnel, ztunnel_log) = ztunnel::start(
        &binary,
        &node.node,
        &bed.state,
        &bed.secure,
        &token,
        &[
            ("POD_NAME", "ztunnel-1"),
            ("POD_NAMESPACE", "istio-system"),
            ("SERVICE_ACCOUNT", "ztunnel"),
            ("NODE_NAME", NODE),
            ("INSTANCE_IP", &node.ip(1)),
        ],
    );
    let logs = || read_logs(&[&ztunnel_log, &bed.agent_log]);
    wait_for("ready (Istio's ztunnel)", &logs, || {
        ztunnel::ready(&node.node)
    });
    carries_pod_traffic_under_policy(&bed, &logs);
}

/// Plays the node agent to oxmesh's node proxy, sending what it cannot act
/// on: each is refused in its Ack with a reason naming the pod, and a good
/// pod sent after is served as if nothing had happened.
#[test]
fn a_node_proxy_refuses_zds_requests_it_cannot_act_on() {
    use oxmesh_xds::zds::{
        AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest,
        WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
    };
    use oxmesh_ztunnel::zds::{Channel, listen};
    use std::os::fd::{AsFd, OwnedFd};

    let bed = bed("z", "198.18.250", false);
    let proxy_log = bed.state.path("node-proxy.log");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime
        .block_on(async { listen(&bed.socket) })
        .expect("ZDS socket");
    let _proxy = node_proxy(&bed, &proxy_log);
    let logs = || read_logs(&[&proxy_log]);
    let add = |uid: &str, name: &str| {
        Payload::Add(AddWorkload {
            uid: uid.to_owned(),
            workload_info: Some(WorkloadInfo {
                name: name.to_owned(),
                namespace: "default".to_owned(),
                service_account: name.to_owned(),
            }),
        })
    };
    let not_a_namespace: OwnedFd = std::fs::File::open("/dev/null").expect("file").into();
    let pod_a: OwnedFd = std::fs::File::open(format!("/run/netns/{}", bed.node.a.name()))
        .expect("a's namespace")
        .into();
    // The connection is held open while the pod is checked, so the proxy's
    // view stays as the snapshot left it.
    let (answers, _channel) = runtime.block_on(async {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .expect("the node proxy connects")
            .expect("accept");
        let channel = Channel::from(stream);
        let (_hello, _) = channel
            .recv::<ZdsHello>()
            .await
            .expect("hello")
            .expect("hello");
        let requests = [
            (add("u-x", "x"), Some(not_a_namespace.as_fd())),
            (add("u-y", "y"), None),
            (Payload::Keep(KeepWorkload { uid: "u-z".into() }), None),
            (Payload::Del(DelWorkload { uid: "u-z".into() }), None),
            (add("u-a", "a"), Some(pod_a.as_fd())),
            (Payload::SnapshotSent(SnapshotSent {}), None),
        ];
        let mut answers = Vec::new();
        for (payload, fd) in requests {
            let request = WorkloadRequest {
                payload: Some(payload),
            };
            channel.send(&request, fd).await.expect("send");
            let (response, _) = channel
                .recv::<WorkloadResponse>()
                .await
                .expect("ack")
                .expect("ack");
            let Some(workload_response::Payload::Ack(ack)) = response.payload else {
                panic!("not an Ack: {response:?}");
            };
            answers.push(ack.error);
        }
        (answers, channel)
    });
    let expect = |i: usize, parts: &[&str]| {
        assert!(
            parts.iter().all(|p| answers[i].contains(p)),
            "answer {i} names {parts:?}: {answers:#?}\n{}",
            logs()
        );
    };
    expect(0, &["default/x", "u-x", "network namespace"]);
    expect(1, &["u-y", "no network namespace descriptor"]);
    expect(2, &["u-z", "no such pod"]);
    expect(3, &["u-z", "no such pod"]);
    assert_eq!(answers[4], "", "a good pod is served: {}", logs());
    assert_eq!(answers[5], "", "the snapshot is taken: {}", logs());
    wait_for("ready with pod a", &logs, || ztunnel::ready(&bed.node.node));
    let held = get(&bed.node.node, "http://127.0.0.1:15000/config_dump")
        .map(|d| d["certificates"].clone())
        .unwrap_or_default();
    let identities: Vec<&str> = held
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["identity"].as_str())
        .collect();
    assert_eq!(
        identities,
        ["spiffe://cluster.local/ns/default/sa/a"],
        "{}",
        logs()
    );
}

#[test]
fn the_node_agent_names_a_pod_whose_namespace_it_cannot_open() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(["node-agent", "--socket", "/tmp/oxmesh-never.sock"])
        .args([
            "--pod",
            "default/ghost/ghost=/run/netns/oxmesh-no-such-namespace",
        ])
        .output()
        .expect("oxmesh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pod default/ghost")
            && stderr.contains("/run/netns/oxmesh-no-such-namespace")
            && stderr.contains("No such file"),
        "{stderr}"
    );
}
