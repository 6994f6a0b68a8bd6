//! Nothing lost: clients at a steady rate through real sidecars on `oxmesh up`
//! while routes flip, subsets come and go, workloads scale and roll out, and
//! the control plane dies or is scaled away. Each load (`oxmesh demo load`,
//! run in a client pod) reports every failure; a test fails on a single one.
//! Needs root, iproute2, iptables and curl. The tests take turns: each runs a
//! whole mesh under load on the machine's two cores.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;
use serde_json::Value;
use support::up::start_up;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

/// One mesh under load at a time.
static TURN: Mutex<()> = Mutex::new(());

fn oxmesh(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("oxmesh runs");
    assert!(
        out.status.success(),
        "oxmesh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A load from the client pod, running until its duration is over.
struct Load {
    child: Child,
    what: String,
}

impl Load {
    fn start(mesh: &str, mode: &str, rate: u32, seconds: u32, connections: u32) -> Self {
        let child = Command::new(BIN)
            .args([
                "exec",
                "--mesh",
                mesh,
                "deploy/client",
                "--",
                BIN,
                "demo",
                "load",
            ])
            .arg("http://echo/")
            .args(["--mode", mode, "--marker", "server"])
            .args(["--rate", &rate.to_string()])
            .args(["--duration", &format!("{seconds}s")])
            .args(["--connections", &connections.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("oxmesh demo load");
        Self {
            child,
            what: mode.to_owned(),
        }
    }

    /// The report, once the load has run its course.
    fn report(self) -> Value {
        let out = self.child.wait_with_output().expect("the load ran");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{} load: no report ({e}): {text}{}",
                self.what,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// Every request answered 200.
fn assert_nothing_lost(report: &Value) {
    let requests = report["requests"].as_u64().unwrap_or(0);
    assert!(requests > 0, "no requests were made: {report:#}");
    assert_eq!(
        report["failed"].as_u64(),
        Some(0),
        "{} of {requests} requests failed: {report:#}",
        report["failed"]
    );
}

/// How many answers came from pods whose name starts with `prefix`.
fn served_by(report: &Value, prefix: &str) -> u64 {
    report["markers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(pod, _)| pod.starts_with(prefix))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v1}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo, version: v1}}
  template:
    metadata: {labels: {app: echo, version: v1}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: echo
        image: echo
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2}
spec:
  selector: {matchLabels: {app: echo, version: v2}}
  template:
    metadata: {labels: {app: echo, version: v2}}
    spec:
      containers: [{name: echo, image: echo}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: client, image: curl, command: [sleep, "3600"]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// The VirtualService sending everything to `subset`.
fn route_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo}}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo, subset: {subset}}}\n"
    )
}

/// The DestinationRule with, when `with_v3`, a third subset nothing routes to.
fn subsets(with_v3: bool) -> String {
    let v3 = if with_v3 {
        "  - {name: v3, labels: {version: v3}}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo}}\nspec:\n  host: echo\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n{v3}"
    )
}

fn apply(dir: &TempDir, mesh: &str, name: &str, text: &str) {
    dir.write(name, text);
    oxmesh(&[
        "apply",
        "--mesh",
        mesh,
        "-f",
        &dir.path(name).to_string_lossy(),
    ]);
}

/// Waits (bounded) until requests from the client pod reach `prefix` pods.
fn settle_on(mesh: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(BIN)
            .args(["exec", "--mesh", mesh, "deploy/client", "--"])
            .args(["curl", "-s", "-m", "2", "http://echo/"])
            .output()
            .expect("curl");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if body["server"]
            .as_str()
            .is_some_and(|s| s.starts_with(prefix))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "requests never reached {prefix}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn route_flips_subset_changes_and_scaling_lose_no_request() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("reliability-churn");
    dir.write("mesh.yaml", MESH);
    dir.write("route.yaml", &route_to("v1"));
    let (_up, _) = start_up(&dir);
    let mesh = dir.0.to_string_lossy().into_owned();
    settle_on(&mesh, "echo-v1-");

    // Phase 1, 12 s: the route flips every 250 ms while three clients run,
    // over keep-alive connections, a connection per request, and HTTP/2.
    let seconds = 12;
    let loads = [
        Load::start(&mesh, "keepalive", 100, seconds, 4),
        Load::start(&mesh, "new-connection", 50, seconds, 2),
        Load::start(&mesh, "http2", 100, seconds, 2),
    ];
    let started = Instant::now();
    let mut flips = 0;
    while started.elapsed() < Duration::from_secs(u64::from(seconds) - 1) {
        let subset = if flips % 2 == 0 { "v2" } else { "v1" };
        apply(&dir, &mesh, "route.yaml", &route_to(subset));
        flips += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    for load in loads {
        let report = load.report();
        assert_nothing_lost(&report);
        assert!(
            served_by(&report, "echo-v1-") > 0 && served_by(&report, "echo-v2-") > 0,
            "both versions answered: {report:#}"
        );
        // Open connections follow the flips: each saw the version change
        // many times, not once per connection.
        for switches in report["switchesPerConnection"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(
                switches.as_u64().unwrap_or(0) >= 5,
                "{flips} flips, a connection saw only {switches}: {report:#}"
            );
        }
    }

    // Phase 2, 8 s: each flip routes to a subset made in the same change (and
    // drops the one made before), which Envoy answers with 503s until the new
    // subset's endpoints arrive; the proxy waits for them instead.
    let seconds = 8;
    let loads = [
        Load::start(&mesh, "keepalive", 100, seconds, 4),
        Load::start(&mesh, "http2", 50, seconds, 2),
    ];
    let started = Instant::now();
    let mut flip = 0;
    while started.elapsed() < Duration::from_secs(u64::from(seconds) - 1) {
        let version = if flip % 2 == 0 { "v2" } else { "v1" };
        let subset = format!("s{flip}");
        let change = format!(
            "{}  - {{name: {subset}, labels: {{version: {version}}}}}\n---\n{}",
            subsets(false),
            route_to(&subset)
        );
        apply(&dir, &mesh, "together.yaml", &change);
        flip += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    for load in loads {
        let report = load.report();
        assert_nothing_lost(&report);
        assert!(
            served_by(&report, "echo-v1-") > 0 && served_by(&report, "echo-v2-") > 0,
            "both versions answered: {report:#}"
        );
    }

    // Phase 3: subsets added and removed, then v1 scaled 3 → 1 → 3, under load.
    apply(&dir, &mesh, "route.yaml", &route_to("v1"));
    settle_on(&mesh, "echo-v1-");
    let loads = [
        Load::start(&mesh, "keepalive", 100, 40, 4),
        Load::start(&mesh, "http2", 50, 40, 2),
    ];
    for round in 0..6 {
        apply(&dir, &mesh, "subsets.yaml", &subsets(round % 2 == 0));
        std::thread::sleep(Duration::from_millis(400));
    }
    oxmesh(&[
        "scale",
        "--mesh",
        &mesh,
        "deploy/echo-v1",
        "--replicas",
        "1",
    ]);
    oxmesh(&["rollout", "status", "--mesh", &mesh, "deploy/echo-v1"]);
    oxmesh(&[
        "scale",
        "--mesh",
        &mesh,
        "deploy/echo-v1",
        "--replicas",
        "3",
    ]);
    oxmesh(&["rollout", "status", "--mesh", &mesh, "deploy/echo-v1"]);
    // And every pod replaced by a rolling update.
    oxmesh(&["rollout", "restart", "--mesh", &mesh, "deploy/echo-v1"]);
    oxmesh(&["rollout", "status", "--mesh", &mesh, "deploy/echo-v1"]);
    for load in loads {
        let report = load.report();
        assert_nothing_lost(&report);
        let pods = report["markers"].as_object().map_or(0, |m| m.len());
        assert!(
            pods > 3,
            "old and new v1 pods answered, {pods} in all: {report:#}"
        );
    }
}

#[test]
fn the_control_plane_killed_or_scaled_away_loses_no_request() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("reliability-istiod");
    dir.write("mesh.yaml", MESH);
    dir.write("route.yaml", &route_to("v1"));
    let (_up, _) = start_up(&dir);
    let mesh = dir.0.to_string_lossy().into_owned();
    settle_on(&mesh, "echo-v1-");
    let loads = [
        Load::start(&mesh, "keepalive", 100, 35, 4),
        Load::start(&mesh, "new-connection", 50, 35, 2),
    ];

    // Killed: the testbed restarts it as a crashed container.
    let pids = Command::new("pgrep")
        .args(["-f", &format!("control --state-dir {mesh}/.oxmesh/state")])
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&pids.stdout).into_owned();
    assert!(!pids.trim().is_empty(), "the control plane runs");
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    std::thread::sleep(Duration::from_secs(5));
    // Scaled to 0 for 15 s, then back.
    oxmesh(&[
        "scale",
        "--mesh",
        &mesh,
        "-n",
        "istio-system",
        "deploy/istiod",
        "--replicas",
        "0",
    ]);
    std::thread::sleep(Duration::from_secs(15));
    oxmesh(&[
        "scale",
        "--mesh",
        &mesh,
        "-n",
        "istio-system",
        "deploy/istiod",
        "--replicas",
        "1",
    ]);
    let back = Instant::now();
    // Every proxy is back in sync soon after: five sidecars and the ingress
    // gateway. 15014 answers inside the control plane's pod (the testbed is
    // not routed to the host).
    let synced = loop {
        let proxies = proxies_of(&mesh, "istiod");
        if proxies.len() >= 6 {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "proxies never resynced: {proxies:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("every proxy SYNCED {synced:?} after the control plane came back");
    for load in loads {
        assert_nothing_lost(&load.report());
    }
}

/// The proxies a revision's control plane serves in sync (neither STALE nor
/// NACKed), by pod name: the rows of `proxy-status` (`<pod>.<namespace>`) run
/// in its pod.
fn proxies_of(mesh: &str, istiod: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["exec", "--mesh", mesh, "-n", "istio-system", istiod, "--"])
        .args([BIN, "proxy-status", "--control-plane", "127.0.0.1:15014"])
        .output()
        .expect("proxy-status");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.contains("STALE") && !l.contains("NACK"))
        .filter_map(|l| l.split_whitespace().next()?.split('.').next())
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) until `istiod` serves, in sync, at least `count` proxies
/// of pods named `prefix…` for each `(prefix, count)`.
fn serves_all(mesh: &str, istiod: &str, prefixes: &[(&str, usize)]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let proxies = proxies_of(mesh, istiod);
        let count = |p: &str| proxies.iter().filter(|name| name.starts_with(p)).count();
        if prefixes.iter().all(|(p, n)| count(p) >= *n) {
            return proxies;
        }
        assert!(
            Instant::now() < deadline,
            "{istiod} never served {prefixes:?}: {proxies:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Istio's canary upgrade: a second control plane (`IstioOperator` with
/// `revision: canary`) beside the first, the namespace relabelled
/// `istio.io/rev=canary`, its workloads restarted; under load, nothing lost,
/// and each proxy served by the revision that injected it.
#[test]
fn a_canary_control_plane_takes_a_namespace_over_losing_no_request() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("reliability-revisions");
    dir.write("mesh.yaml", MESH);
    dir.write("route.yaml", &route_to("v1"));
    let (_up, _) = start_up(&dir);
    let mesh = dir.0.to_string_lossy().into_owned();
    settle_on(&mesh, "echo-v1-");
    let loads = [
        Load::start(&mesh, "keepalive", 100, 40, 4),
        Load::start(&mesh, "new-connection", 50, 40, 2),
        Load::start(&mesh, "http2", 50, 40, 2),
    ];
    let old_pods = serves_all(&mesh, "istiod", &[("echo-v1-", 3), ("client-", 1)]);

    apply(
        &dir,
        &mesh,
        "canary.yaml",
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: canary, namespace: istio-system}\nspec: {revision: canary}\n",
    );
    // Injection by the canary from now on; pods keep their proxies until
    // they are restarted.
    apply(
        &dir,
        &mesh,
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio.io/rev: canary}}\n",
    );
    oxmesh(&["rollout", "restart", "--mesh", &mesh, "deploy/echo-v1"]);
    oxmesh(&[
        "rollout",
        "status",
        "--mesh",
        &mesh,
        "deploy/echo-v1",
        "--timeout",
        "60s",
    ]);
    let canary = serves_all(&mesh, "istiod-canary", &[("echo-v1-", 3)]);
    let moved: Vec<&String> = canary
        .iter()
        .filter(|p| p.starts_with("echo-v1-"))
        .collect();
    assert_eq!(
        moved.len(),
        3,
        "three new echo-v1 pods on the canary: {canary:?}"
    );
    assert!(
        moved.iter().all(|p| !old_pods.contains(p)),
        "they are new pods: {canary:?} (before: {old_pods:?})"
    );
    assert!(
        !canary.iter().any(|p| p.starts_with("client-")),
        "the client, not restarted, stays on the old revision: {canary:?}"
    );
    // Old pods may still be draining on the old revision; the new ones are
    // not there.
    let old = serves_all(&mesh, "istiod", &[("client-", 1)]);
    assert!(!moved.iter().any(|p| old.contains(p)), "{old:?}");
    for load in loads {
        let report = load.report();
        assert_nothing_lost(&report);
        // Old-revision client to canary-revision servers: mTLS across the
        // two, on one root.
        assert!(
            moved.iter().any(|p| served_by(&report, p) > 0),
            "the new pods served: {report:#}"
        );
    }
}

#[test]
fn deployments_of_one_name_in_two_namespaces_are_two_pods() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("reliability-namespaces");
    let client = |ns: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: client, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: client}}}}\n  template:\n    metadata: {{labels: {{app: client}}}}\n    spec:\n      containers: [{{name: client, image: sh, command: [sh, -c, 'echo I am in {ns}; sleep 3600']}}]\n"
        )
    };
    dir.write("foo.yaml", &client("foo"));
    dir.write("bar.yaml", &client("bar"));
    let (_up, _) = start_up(&dir);
    let mesh = dir.0.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(dir.path(".oxmesh/pods.json")).expect("pods.json");
    let pods: Value = serde_json::from_str(&text).expect("json");
    let ip_of = |ns: &str| {
        pods["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["namespace"] == ns && p["workload"] == "client")
            .and_then(|p| p["ip"].as_str())
            .unwrap_or_else(|| panic!("a client pod in {ns}: {pods:#}"))
            .to_owned()
    };
    let (foo, bar) = (ip_of("foo"), ip_of("bar"));
    assert_ne!(foo, bar, "two pods, two addresses");
    for (ns, ip) in [("foo", &foo), ("bar", &bar)] {
        let addresses = oxmesh(&[
            "exec",
            "--mesh",
            &mesh,
            "-n",
            ns,
            "deploy/client",
            "--",
            "ip",
            "-4",
            "addr",
            "show",
            "eth0",
        ]);
        assert!(
            addresses.contains(&format!("{ip}/")),
            "exec -n {ns} ran in {addresses}"
        );
        let log = oxmesh(&["logs", "--mesh", &mesh, "-n", ns, "deploy/client"]);
        assert_eq!(log.trim(), format!("I am in {ns}"));
    }
    // Without -n, as kubectl: the name is in two namespaces, so it is refused.
    let out = Command::new(BIN)
        .args(["exec", "--mesh", &mesh, "deploy/client", "--", "true"])
        .output()
        .expect("oxmesh exec");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bar, foo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
