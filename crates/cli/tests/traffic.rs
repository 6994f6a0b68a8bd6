//! Istio's traffic-management tasks end to end on `oxmesh up`, with Istio's
//! own sample manifests (httpbin, curl) and the task's config. Needs root,
//! iproute2, iptables and curl.

use std::path::Path;

use oxmesh_testkit::TempDir;
use serde_json::Value;
use support::mesh::Mesh;
use support::up::start_up;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

/// Namespace `default` with injection, and Istio's httpbin and curl samples.
fn samples(name: &str) -> Mesh {
    Mesh::istio_samples(name).0
}

/// `fortio load -qps 0 -c CONNECTIONS -n REQUESTS URL` from the curl pod.
fn fortio(mesh: &Mesh, connections: u32, requests: u32, url: &str) -> Value {
    load(mesh, "curl", connections, requests, url, &[])
}

/// `oxmesh demo load` without pause from `from`'s pod, with `extra`
/// arguments; its JSON report.
fn load(
    mesh: &Mesh,
    from: &str,
    connections: u32,
    requests: u32,
    url: &str,
    extra: &[&str],
) -> Value {
    let (connections, requests) = (connections.to_string(), requests.to_string());
    let mut args = vec![
        BIN,
        "demo",
        "load",
        url,
        "--rate",
        "0",
        "--connections",
        &connections,
        "--requests",
        &requests,
        "--duration",
        "60s",
    ];
    args.extend_from_slice(extra);
    let out = mesh.run(from, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "no load report ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The value of the first sample of `name` whose line holds every label.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Istio's circuit-breaking task: one connection, one pending request, one
/// request per connection to httpbin; three clients without pause get some
/// 503 `UO` from their own sidecar, the rest 200.
#[test]
fn circuit_breaking_follows_istios_task() {
    let mesh = samples("traffic-breaker");
    let url = "http://httpbin:8000/get";
    mesh.settles("curl", "GET", url, "200");
    mesh.apply(
        "breaker.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
"#,
    );
    // The rule takes a push; then three clients overflow it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let report = loop {
        let report = fortio(&mesh, 3, 30, url);
        if report["statuses"]["503"].as_u64().unwrap_or(0) > 0
            || std::time::Instant::now() > deadline
        {
            break report;
        }
    };
    eprintln!("three clients: {}", report["statuses"]);
    let ok = report["statuses"]["200"].as_u64().unwrap_or(0);
    let overflowed = report["statuses"]["503"].as_u64().unwrap_or(0);
    assert!(ok > 0 && overflowed > 0, "{report:#}");
    assert_eq!(ok + overflowed, 30, "only 200 and 503: {report:#}");
    // The caller's sidecar says why: flag UO, and Envoy's overflow counter.
    let metrics = mesh.metrics("curl");
    let uo = sample(
        &metrics,
        "istio_requests_total",
        &[
            "reporter=\"source\"",
            "response_code=\"503\"",
            "response_flags=\"UO\"",
        ],
    );
    assert!(uo.is_some_and(|n| n > 0.0), "{metrics}");
    let pending = sample(
        &metrics,
        "envoy_cluster_upstream_rq_pending_overflow",
        &["cluster_name=\"outbound|8000||httpbin.default.svc.cluster.local\""],
    );
    assert!(pending.is_some_and(|n| n > 0.0), "{metrics}");
    // The overflows never reached httpbin, so outlier detection (one 5xx
    // ejects) never ejected it: one client at a time still gets through.
    let report = fortio(&mesh, 1, 10, url);
    assert_eq!(report["statuses"]["200"], 10, "{report:#}");
}

/// A VirtualService's `headers` on httpbin: the app sees the request's set,
/// added and removed headers; the caller sees the response's.
#[test]
fn header_manipulation_reaches_the_app_and_the_caller() {
    let mesh = samples("traffic-headers");
    let url = "http://httpbin:8000/headers";
    mesh.settles("curl", "GET", url, "200");
    mesh.apply(
        "headers.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - headers:
      request:
        set: {x-set: by-mesh}
        add: {x-added: by-mesh}
        remove: [x-secret]
      response:
        set: {x-served-through: oxmesh}
    route:
    - destination: {host: httpbin}
"#,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = mesh.run(
            "curl",
            &[
                "curl",
                "-s",
                "-D",
                "-",
                "-H",
                "x-secret: s3cr3t",
                "-H",
                "x-added: by-client",
                url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        if text.contains("x-served-through: oxmesh") {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
            let seen: Value = serde_json::from_str(body).unwrap_or_default();
            let headers = &seen["headers"];
            assert_eq!(headers["x-set"], "by-mesh", "{text}");
            assert_eq!(headers["x-added"], "by-client,by-mesh", "{text}");
            assert!(headers.get("x-secret").is_none(), "{text}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never applied: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Istio's mirroring task: httpbin v1 and v2, all traffic to v1 and a copy
/// of each request to v2. The caller only ever hears from v1; v2's sidecar
/// counts the copies.
#[test]
fn mirroring_follows_istios_task() {
    let dir = TempDir::new("traffic-mirror");
    let deployment = |version: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: httpbin-{version}}}\nspec:\n  selector: {{matchLabels: {{app: httpbin, version: {version}}}}}\n  template:\n    metadata: {{labels: {{app: httpbin, version: {version}}}}}\n    spec:\n      containers: [{{name: httpbin, image: docker.io/mccutchen/go-httpbin:v2.15.0, ports: [{{containerPort: 8080}}]}}]\n"
        )
    };
    let manifests = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n".to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, labels: {app: httpbin}}\nspec:\n  ports: [{name: http, port: 8000, targetPort: 8080}]\n  selector: {app: httpbin}\n".to_owned(),
        deployment("v1"),
        deployment("v2"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: curl}\nspec:\n  selector: {matchLabels: {app: curl}}\n  template:\n    metadata: {labels: {app: curl}}\n    spec:\n      containers: [{name: curl, image: curl, command: [sleep, \"3600\"]}]\n".to_owned(),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: httpbin}\nspec:\n  host: httpbin\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n".to_owned(),
    ];
    dir.write("mesh.yaml", &manifests.join("---\n"));
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "default");
    mesh.settles("curl", "GET", "http://httpbin:8000/headers", "200");
    mesh.apply(
        "mirror.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin, subset: v1}
      weight: 100
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 100.0}
"#,
    );
    let copies = || {
        sample(
            &mesh.metrics("httpbin-v2"),
            "istio_requests_total",
            &["reporter=\"destination\"", "response_code=\"200\""],
        )
        .unwrap_or(0.0)
    };
    // Once the route is in place, every answer comes from v1 and v2 gets
    // a copy of each request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, body) = mesh.http("curl", "GET", "http://httpbin:8000/anything");
        // The warm-up's copy lands before the count starts.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let before = copies();
        let mut from_v1 = 0;
        for _ in 0..5 {
            let (status, body) = mesh.http("curl", "GET", "http://httpbin:8000/anything");
            assert_eq!(status, "200", "{body}");
            if body.contains("httpbin-v1") {
                from_v1 += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mirrored = copies() - before;
        // The route is in place; a clean batch now: every answer from v1,
        // each request copied once.
        if from_v1 == 5 && mirrored > 0.0 {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let before = copies();
            for _ in 0..5 {
                let (status, body) = mesh.http("curl", "GET", "http://httpbin:8000/anything");
                assert!(
                    status == "200" && body.contains("httpbin-v1"),
                    "{status} {body}"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            assert_eq!(copies() - before, 5.0, "one copy per request");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "v1 answered {from_v1} of 5, v2 saw {mirrored} copies; last: {body}"
        );
    }
}

/// A VirtualService's `corsPolicy` on httpbin, checked with curl as a
/// browser would ask: the caller's sidecar answers the preflight itself and
/// marks answers to the allowed origin.
#[test]
fn cors_preflights_are_answered_by_the_callers_sidecar() {
    let mesh = samples("traffic-cors");
    let url = "http://httpbin:8000/headers";
    mesh.settles("curl", "GET", url, "200");
    mesh.apply(
        "cors.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
    route:
    - destination: {host: httpbin}
"#,
    );
    let preflight = |origin: &str| {
        let out = mesh.run(
            "curl",
            &[
                "curl",
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: POST",
                url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answered = loop {
        let answer = preflight("https://app.example.com");
        if answer.contains("access-control-allow-origin") {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never applied: {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(answered.starts_with("http/1.1 200"), "{answered}");
    assert!(
        answered.contains("access-control-allow-origin: https://app.example.com"),
        "{answered}"
    );
    assert!(
        answered.contains("access-control-allow-methods: get,post"),
        "{answered}"
    );
    assert!(
        answered.contains("access-control-allow-headers: x-custom"),
        "{answered}"
    );
    assert!(
        answered.contains("access-control-max-age: 86400"),
        "{answered}"
    );
    assert!(
        answered.contains("access-control-allow-credentials: true"),
        "{answered}"
    );
    // Another origin gets no permission.
    let refused = preflight("https://evil.example.com");
    assert!(
        !refused.contains("access-control-allow-origin"),
        "{refused}"
    );
    // A simple request from the allowed origin is marked on its way back.
    let out = mesh.run(
        "curl",
        &[
            "curl",
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Origin: https://app.example.com",
            url,
        ],
    );
    let simple = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        simple.contains("access-control-expose-headers: x-trace"),
        "{simple}"
    );
}

/// Namespace `default` with injection, Istio's tcp-echo sample (v1 answers
/// `one …`, v2 `two …`), a curl pod, and `extra` manifests, up.
fn tcp_echo_mesh(name: &str, extra: &str) -> Mesh {
    let dir = TempDir::new(name);
    let samples =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio/samples");
    let services = std::fs::read_to_string(samples.join("tcp-echo-tcp-echo-services.yaml"))
        .expect("Istio's sample");
    dir.write("tcp-echo.yaml", &services);
    dir.write(
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
    );
    dir.write(
        "client.yaml",
        &format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: curl}}\nspec:\n  selector: {{matchLabels: {{app: curl}}}}\n  template:\n    metadata: {{labels: {{app: curl}}}}\n    spec:\n      containers: [{{name: curl, image: curl, command: [sleep, \"3600\"]}}]\n{extra}"),
    );
    let (up, _) = start_up(&dir);
    Mesh::new(dir, up, "default")
}

/// Istio's TCP traffic-shifting task, inside the mesh: tcp-echo v1 and v2
/// (Istio's own manifests), all connections to v1, then 80/20. Each line
/// comes back with the answering version's prefix.
#[test]
fn tcp_traffic_shifting_follows_istios_task() {
    let mesh = tcp_echo_mesh("traffic-tcp", "");
    let subsets = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: tcp-echo-destination}\nspec:\n  host: tcp-echo\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";
    let route = |v1: u32, v2: u32| {
        format!(
            "{subsets}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-echo}}\nspec:\n  hosts: [tcp-echo]\n  tcp:\n  - match: [{{port: 9000}}]\n    route:\n    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}\n      weight: {v1}\n    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}\n      weight: {v2}\n"
        )
    };
    // Twenty connections, one line each: which versions answered.
    let answers = || mesh.tcp_echo_versions("curl", ("tcp-echo", 9000), 20);
    mesh.apply("route.yaml", &route(100, 0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (one, two) = answers();
        if one == 20 && two == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "all to v1: {one} v1, {two} v2"
        );
    }
    mesh.apply("route.yaml", &route(80, 20));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut one, mut two) = (0, 0);
    let deadline = deadline + std::time::Duration::from_secs(60);
    while one + two < 200 {
        let (a, b) = answers();
        one += a;
        two += b;
        // Connections from before the push went to v1 only.
        if two == 0 {
            one = 0;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "200 answers never came: {one} v1, {two} v2"
        );
    }
    // 20 % of 200 is 40; a binomial spread of ±4 sigma is about ±23.
    assert!((17..=63).contains(&two), "{one} to v1, {two} to v2");
}

/// `connectionPool.tcp.idleTimeout` on tcp-echo: a connection that talks
/// every second stays open past it; one silent for longer is closed by the
/// client's sidecar (the peer sees the end of the stream).
#[test]
fn tcp_idle_timeout_closes_silent_connections() {
    let mesh = tcp_echo_mesh("traffic-tcp-idle", "");
    mesh.tcp_settles(
        "curl",
        |l| l.starts_with("one ") || l.starts_with("two "),
        "tcp-echo answers",
    );
    mesh.apply(
        "idle.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: tcp-echo}\nspec:\n  host: tcp-echo\n  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 2s}}}\n",
    );
    // One connection chats every second for five seconds, then goes quiet
    // for four: what each step saw.
    let script = "import socket, time\ns = socket.create_connection(('tcp-echo', 9000), timeout=10)\nfor i in range(5):\n  s.sendall(b'hi\\n')\n  print('answer' if s.recv(100) else 'closed')\n  time.sleep(1)\ntime.sleep(4)\ntry:\n  s.sendall(b'hi\\n')\n  print('answer' if s.recv(100) else 'closed')\nexcept OSError:\n  print('closed')\n";
    let want = "answer\nanswer\nanswer\nanswer\nanswer\nclosed";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = mesh.run("curl", &["python3", "-c", script]);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if got == want {
            break;
        }
        // Before the push the quiet connection is not closed.
        assert!(std::time::Instant::now() < deadline, "{got}");
    }
}

/// Istio's locality tasks on one testbed: helloworld in four localities
/// (`istio-locality` on the pods), a client in region1/zone1/subzone1.
const LOCALITIES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: helloworld}
spec:
  selector: {app: helloworld}
  ports: [{name: http, port: 5000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client, istio-locality: region1.zone1.subzone1}}
    spec:
      containers: [{name: client, image: curl, command: [sleep, "3600"]}]
"#;

fn helloworld(locality: &str) -> String {
    let name = locality.replace('.', "-");
    format!(
        r#"---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: helloworld-{name}}}
spec:
  selector: {{matchLabels: {{app: helloworld, istio-locality: {locality}}}}}
  template:
    metadata: {{labels: {{app: helloworld, istio-locality: {locality}}}}}
    spec:
      containers: [{{name: helloworld, image: echo, ports: [{{containerPort: 5000}}]}}]
"#
    )
}

/// Answers to `requests` sequential requests from the client, by which
/// helloworld deployment (`region1-zone1-subzone1`, ...) gave them.
fn answered_by(mesh: &Mesh, requests: u32) -> std::collections::BTreeMap<String, u64> {
    let url = "http://helloworld:5000/";
    let report = load(mesh, "client", 1, requests, url, &["--marker", "server"]);
    let mut by = std::collections::BTreeMap::new();
    for (pod, n) in report["markers"].as_object().into_iter().flatten() {
        let deployment = pod
            .strip_prefix("helloworld-")
            .and_then(|rest| rest.split("-subzone").next())
            .unwrap_or(pod);
        *by.entry(deployment.to_owned()).or_default() += n.as_u64().unwrap_or(0);
    }
    by
}

/// Polls until `requests` answers all come from `locality` (pushes and
/// ejections take a moment), or fails showing where they went.
fn all_answered_by(mesh: &Mesh, locality: &str, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let by = answered_by(mesh, 20);
        if by.len() == 1 && by.get(locality) == Some(&20) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{why}: {by:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Istio's locality load balancing tasks. `distribute` sends 70 % to the
/// client's zone and 30 % to region2, none elsewhere. `failover` (with
/// outlier detection) keeps traffic in the client's own locality; when its
/// sidecar is drained (as the task does), traffic moves to the same region's
/// other zone; when that one is drained too, to region2 (the failover
/// rule's), never to region3.
#[test]
fn locality_distribute_and_failover_follow_istios_tasks() {
    let dir = TempDir::new("traffic-locality");
    let mut manifests = LOCALITIES.to_owned();
    for locality in [
        "region1.zone1.subzone1",
        "region1.zone2.subzone1",
        "region2.zone3.subzone1",
        "region3.zone4.subzone1",
    ] {
        manifests.push_str(&helloworld(locality));
    }
    dir.write("mesh.yaml", &manifests);
    let (up, _) = start_up(&dir);
    let mesh = Mesh::new(dir, up, "default");
    mesh.settles("client", "GET", "http://helloworld:5000/", "200");

    mesh.apply(
        "distribute.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld}
spec:
  host: helloworld.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        distribute:
        - from: region1/zone1/*
          to: {"region1/zone1/*": 70, "region2/zone3/*": 30}
"#,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let by = loop {
        let by = answered_by(&mesh, 200);
        let elsewhere = by.get("region1-zone2").copied().unwrap_or(0)
            + by.get("region3-zone4").copied().unwrap_or(0);
        if elsewhere == 0 || std::time::Instant::now() > deadline {
            break by;
        }
    };
    let zone1 = by.get("region1-zone1").copied().unwrap_or(0);
    let region2 = by.get("region2-zone3").copied().unwrap_or(0);
    // 70 % of 200 is 140; ±4 sigma of the binomial is about ±26.
    assert!(
        zone1 + region2 == 200 && (114..=166).contains(&zone1),
        "{by:?}"
    );

    mesh.apply(
        "distribute.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld}
spec:
  host: helloworld.default.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http: {maxRequestsPerConnection: 1}
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover: [{from: region1, to: region2}]
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 1m
      maxEjectionPercent: 100
"#,
    );
    all_answered_by(
        &mesh,
        "region1-zone1",
        "traffic stays in the client's locality",
    );
    // The pod's inbound refuses connections (iptables resets what is sent to
    // its sidecar's inbound port) while it stays ready and listed: only
    // outlier detection can move traffic away.
    let refuse = |deployment: &str| {
        let out = mesh.run(
            deployment,
            &[
                "iptables",
                "-I",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                "15006",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ],
        );
        assert!(out.status.success(), "{out:?}");
    };
    refuse("helloworld-region1-zone1-subzone1");
    all_answered_by(&mesh, "region1-zone2", "failover within region1");
    refuse("helloworld-region1-zone2-subzone1");
    all_answered_by(
        &mesh,
        "region2-zone3",
        "failover to region2, as the rule says",
    );
    // The client's sidecar still lists all four, two of them ejected, each at
    // its priority.
    let out = mesh.run("client", &["curl", "-s", "http://localhost:15000/clusters"]);
    let clusters = String::from_utf8_lossy(&out.stdout);
    let helloworld: Vec<&str> = clusters
        .lines()
        .filter(|l| l.starts_with("outbound|5000||helloworld."))
        .collect();
    let count = |suffix: &str| helloworld.iter().filter(|l| l.ends_with(suffix)).count();
    assert_eq!(count("::/failed_outlier_check"), 2, "{clusters}");
    assert_eq!(count("::healthy"), 2, "{clusters}");
    for priority in 0..4 {
        assert_eq!(count(&format!("::priority::{priority}")), 1, "{clusters}");
    }
}

/// Delegate VirtualServices on httpbin, as Istio merges them: the root hands
/// `/headers` to a delegate whose first rule (narrowed by a header) sets its
/// own header and whose second inherits the root's; everything else takes
/// the root's next rule (an abort).
#[test]
fn delegate_virtual_services_route_as_istio_merges_them() {
    let mesh = samples("traffic-delegate");
    let url = "http://httpbin:8000/headers";
    mesh.settles("curl", "GET", url, "200");
    mesh.apply(
        "delegate.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - match: [{uri: {prefix: /headers}}]
    headers: {request: {set: {x-root: "yes"}}}
    delegate: {name: httpbin-team}
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: httpbin}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-team}
spec:
  http:
  - match: [{headers: {x-team: {exact: a}}}]
    headers: {request: {set: {x-delegate: a}}}
    route: [{destination: {host: httpbin}}]
  - route: [{destination: {host: httpbin}}]
"#,
    );
    mesh.settles("curl", "GET", "http://httpbin:8000/get", "418");
    let (status, body) = mesh.http_with("curl", "GET", url, Some("x-team: a"));
    assert_eq!(status, "200", "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains("x-delegate") && !lower.contains("x-root"),
        "{body}"
    );
    let (status, body) = mesh.http("curl", "GET", url);
    assert_eq!(status, "200", "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains("x-root") && !lower.contains("x-delegate"),
        "{body}"
    );
}

/// A TLS ClientHello naming `sni` (a fixed, newline-free random), then a
/// line, sent to `tls-echo:443` from the curl pod; what answered (tcp-echo's
/// version prefix), or `closed`.
const SNI_CLIENT: &str = r#"
import socket, struct, sys
def hello(sni):
    name = sni.encode()
    ext = struct.pack('!HHHBH', 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = b'\x03\x03' + b'\x01' * 32 + b'\x00' + struct.pack('!H', 2) + b'\x13\x01' + b'\x01\x00'
    body += struct.pack('!H', len(ext)) + ext
    handshake = b'\x01' + struct.pack('!I', len(body))[1:] + body
    return b'\x16\x03\x01' + struct.pack('!H', len(handshake)) + handshake
for sni in sys.argv[1:]:
    try:
        s = socket.create_connection(('tls-echo', 443), timeout=3)
        s.sendall(hello(sni) + b'hi\n')
        words = s.recv(4096).split(b' ', 1)
        print(sni, words[0].decode(errors='replace') if words[0] else 'closed')
        s.close()
    except Exception:
        print(sni, 'closed')
"#;

/// TLS routing by SNI in the sidecar, as istiod builds it: a TLS service
/// port whose VirtualService's `tls` rules send `one.example.com` to
/// tcp-echo v1 and `two.example.com` to v2; the client's sidecar reads the
/// SNI from the ClientHello and picks the chain (the bytes pass through
/// untouched, so tcp-echo answers the line after them).
#[test]
fn tls_routes_pick_destinations_by_sni() {
    let mesh = tcp_echo_mesh(
        "traffic-sni",
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: tls-echo}\nspec:\n  selector: {app: tcp-echo}\n  ports: [{name: tls, port: 443, targetPort: 9000}]\n",
    );
    mesh.apply(
        "sni.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo-destination}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls-echo}
spec:
  hosts: [tls-echo, "*.example.com"]
  tls:
  - match: [{port: 443, sniHosts: [one.example.com]}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}, subset: v1}}]
  - match: [{port: 443, sniHosts: [two.example.com]}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}, subset: v2}}]
"#,
    );
    // Sixteen connections alternating: by chance (random balancing) this
    // order would come once in 65,536 tries.
    let snis: Vec<&str> = ["one.example.com", "two.example.com"].repeat(8);
    let want: Vec<String> = snis
        .iter()
        .map(|sni| format!("{sni} {}", &sni[..3]))
        .collect();
    let want = want.join("\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut args = vec!["python3", "-c", SNI_CLIENT];
        args.extend(&snis);
        let out = mesh.run("curl", &args);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if got == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// A ServiceEntry with `resolution: DNS`: the caller's sidecar resolves the
/// endpoint's name itself (in the background, never per request) and sends
/// the external host's requests there. The endpoint is httpbin's pod by its
/// pod DNS name; the caller reaches `httpbin.external.test` at an address
/// that is no Service's, as an app whose own resolver gave it one.
#[test]
fn dns_service_entries_send_to_what_their_endpoints_resolve_to() {
    let mesh = samples("traffic-dns");
    mesh.settles("curl", "GET", "http://httpbin:8000/get", "200");
    let out = mesh.run("httpbin", &["ip", "-4", "-o", "addr", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let ip = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address for httpbin: {text}"))
        .to_owned();
    mesh.apply(
        "external.yaml",
        &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-external}}
spec:
  hosts: [httpbin.external.test]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints:
  - address: {}.default.pod.cluster.local
    ports: {{http: 8080}}
"#,
            ip.replace('.', "-")
        ),
    );
    let body = mesh.settles_with(
        "curl",
        "GET",
        "http://198.19.255.254/headers",
        Some("Host: httpbin.external.test"),
        "200",
    );
    assert!(body.contains("httpbin.external.test"), "{body}");
    // The cluster is resolved by DNS, to httpbin's pod.
    let clusters = mesh.run("curl", &["curl", "-s", "localhost:15000/clusters"]);
    let clusters = String::from_utf8_lossy(&clusters.stdout);
    assert!(
        clusters
            .lines()
            .any(|l| l.starts_with("outbound|80||httpbin.external.test::")
                && l.contains(&format!("{ip}:8080"))),
        "{clusters}"
    );
}
