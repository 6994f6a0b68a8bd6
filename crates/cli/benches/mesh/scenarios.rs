//! The data-plane scenarios. Each one runs its no-mesh baseline in the same
//! run, stays within two minutes, and returns its tables.

use std::time::Duration;

use serde_json::{Value, json};

use crate::bed::{self, APP_PORT, Bed, DIRECT_SERVER, GRPC_PORT, H2C_PORT, HTTP_PORT, IPERF_PORT};
use crate::bed::{PLAIN_VIP, VIP};
use crate::measure;
use crate::reference::{self, Kind};
use crate::report::{Baseline, Table, added_ms, ms, thousands};
use crate::tools;

/// How long and how hard: `quick` keeps the whole run under five minutes.
pub struct Settings {
    pub seconds: u64,
    /// Per run in the saturation scenario, which has the most runs.
    pub saturation_seconds: u64,
    pub warmup: u64,
    pub rps: u64,
    pub connections: usize,
    pub full: bool,
}

/// One way from a client to the server: where the load runs, what it dials,
/// and the proxies in between (pids) whose CPU and memory count.
pub struct Path {
    name: String,
    pub pod: &'static str,
    pub url: String,
    proxies: Vec<u32>,
}

fn direct(port: u16) -> Path {
    Path {
        name: "direct (no proxy)".into(),
        pod: "direct-client",
        url: format!("http://{DIRECT_SERVER}:{port}/"),
        proxies: Vec::new(),
    }
}

fn mesh(bed: &Bed, name: &str, vip: &str, port: u16) -> Path {
    Path {
        name: name.into(),
        pod: "client",
        url: format!("http://{vip}:{port}/"),
        proxies: vec![bed.client_proxy, bed.server_proxy],
    }
}

/// HTTP/1.1 through the two mTLS sidecars.
pub fn mesh_path(bed: &Bed) -> Path {
    mesh(bed, "mTLS sidecars", VIP, HTTP_PORT)
}

fn references(bed: &Bed, tls_only: bool) -> Vec<Path> {
    let mut paths = Vec::new();
    for &kind in &bed.references {
        let client = match kind {
            Kind::Nginx => "nginx-client",
            Kind::Haproxy => "haproxy-client",
        };
        let server = match kind {
            Kind::Nginx => "nginx-server",
            Kind::Haproxy => "haproxy-server",
        };
        let mut proxies = bed.pids_named(client, kind.name());
        proxies.extend(bed.pids_named(server, kind.name()));
        let mut variants = vec![("mTLS between", reference::TLS_URL)];
        if !tls_only {
            variants.insert(0, ("plaintext", reference::PLAIN_URL));
        }
        for (how, url) in variants {
            paths.push(Path {
                name: format!("{} pair ({how})", kind.name()),
                pod: client,
                url: url.into(),
                proxies: proxies.clone(),
            });
        }
    }
    paths
}

fn cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| measure::cpu_seconds(p)).sum()
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// A fixed-rate run at the settings' rate after its warm-up: the load's
/// result and the CPU seconds `proxies` spent per 1,000 of its requests.
/// `between` runs after the warm-up, before the measured run starts.
pub fn costed_run(
    pod: &oxmesh_testbed::Netns,
    url: &str,
    s: &Settings,
    headers: &[String],
    proxies: &[u32],
    between: impl FnOnce(),
) -> (Value, f64) {
    let cpu = || {
        proxies
            .iter()
            .map(|p| measure::cpu_seconds(*p))
            .sum::<f64>()
    };
    tools::fixed_rate_with(pod, url, s.rps, s.connections, s.warmup, headers);
    between();
    let before = cpu();
    let r = tools::fixed_rate_with(pod, url, s.rps, s.connections, s.seconds, headers);
    let used = cpu() - before;
    let per_thousand = used / (f(&r, "count").max(1.0) / 1000.0);
    (r, per_thousand)
}

/// The cells a feature's cost row starts with: the case, p50 and p99, the
/// CPU per 1,000 requests and what it adds over `base`.
pub fn cost_cells(case: &str, r: &Value, cost: f64, base: f64) -> Vec<String> {
    vec![
        case.to_owned(),
        ms(f(r, "p50")),
        ms(f(r, "p99")),
        format!("{cost:.4}"),
        format!("{:+.1} %", added_percent(cost, base)),
    ]
}

/// How much more `cost` is than `base`, in percent (0 without a base).
pub fn added_percent(cost: f64, base: f64) -> f64 {
    if base > 0.0 {
        (cost - base) / base * 100.0
    } else {
        0.0
    }
}

/// Fixed rate: HTTP/1.1, 1 KiB, the configured rps over 16 connections; the
/// latency each path adds to direct, and CPU and memory per proxy.
pub fn latency(bed: &Bed, s: &Settings) -> Vec<Table> {
    let mut paths = vec![
        direct(APP_PORT),
        mesh(bed, "two oxmesh sidecars (plaintext)", PLAIN_VIP, HTTP_PORT),
        mesh(bed, "two oxmesh sidecars (mTLS)", VIP, HTTP_PORT),
    ];
    paths.extend(references(bed, false));
    let mut results = Vec::new();
    for path in &paths {
        let pod = bed.pod(path.pod);
        tools::fixed_rate(pod, &path.url, s.rps, s.connections, s.warmup);
        let before = cpu(&path.proxies);
        let result = tools::fixed_rate(pod, &path.url, s.rps, s.connections, s.seconds);
        let used = cpu(&path.proxies) - before;
        let rss: Vec<f64> = path.proxies.iter().map(|&p| measure::rss_mib(p)).collect();
        results.push((result, used, rss));
    }
    let title = format!(
        "Fixed rate: HTTP/1.1, {} B responses, {} rps, {} connections, {} s (oha, latency corrected), {} workers per proxy",
        crate::app::BODY,
        s.rps,
        s.connections,
        s.seconds,
        bed::concurrency()
    );
    let mut latency = Table::new(
        title,
        &[
            "path",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "added p50",
            "added p90",
            "added p99",
            "added p99.9",
            "errors",
        ],
    );
    let base = &results[0].0;
    for (path, (r, _, _)) in paths.iter().zip(&results) {
        let keys = ["p50", "p90", "p99", "p999"];
        let mut cells = vec![path.name.clone()];
        cells.extend(keys.iter().map(|k| ms(f(r, k))));
        cells.extend(keys.iter().map(|k| added_ms(f(r, k) - f(base, k))));
        cells.push(format!("{}", f(r, "errors")));
        latency.row(cells, r.clone());
    }
    let mut cost = Table::new(
        format!("Cost per proxy at {} rps", s.rps),
        &[
            "path",
            "processes",
            "CPU s per 1,000 requests, each side",
            "RSS MiB, each side",
        ],
    );
    for (path, (r, used, rss)) in paths.iter().zip(&results).skip(1) {
        // nginx and HAProxy run several processes a side: CPU is per side.
        let n = if path.proxies.len() == 2 || path.proxies.is_empty() {
            path.proxies.len().max(1) as f64
        } else {
            2.0
        };
        let per_thousand = used / n / (f(r, "count").max(1.0) / 1000.0);
        let rss_text = if path.proxies.len() == 2 {
            format!("{:.1} / {:.1}", rss[0], rss[1])
        } else {
            format!(
                "{:.1} (average of the sides)",
                rss.iter().sum::<f64>() / 2.0
            )
        };
        cost.row(
            vec![
                path.name.clone(),
                format!("{}", path.proxies.len()),
                format!("{per_thousand:.4}"),
                rss_text,
            ],
            json!({"cpu_s_per_1000": per_thousand, "rss_mib": rss}),
        );
    }
    cost.note("CPU is the proxies' user + system time during the measured run, halved between the client side and the server side; at 1,000 rps it equals the vCPU each side uses. nginx runs a master and workers per side: its RSS is per side, summed over them.");
    vec![latency, cost]
}

/// Saturation: HTTP/1.1 (wrk) and HTTP/2 (h2load) requests per second, and
/// bulk TCP (iperf3).
pub fn saturation(bed: &Bed, s: &Settings) -> Vec<Table> {
    let mut http1 = Table::new(
        format!(
            "Saturation, HTTP/1.1: wrk, 1 thread, {} connections, {} s",
            s.connections, s.saturation_seconds
        ),
        &[
            "path",
            "requests/s",
            "vs direct",
            "p50 ms",
            "p99 ms",
            "errors",
        ],
    );
    let mut paths = vec![direct(APP_PORT)];
    if s.full {
        paths.push(mesh(
            bed,
            "two oxmesh sidecars (plaintext)",
            PLAIN_VIP,
            HTTP_PORT,
        ));
    }
    paths.push(mesh(bed, "two oxmesh sidecars (mTLS)", VIP, HTTP_PORT));
    paths.extend(references(bed, !s.full));
    let mut base = Baseline::default();
    for path in &paths {
        let profile = profile(path, s.saturation_seconds);
        let r = tools::http1_saturation(
            bed.pod(path.pod),
            &path.url,
            s.connections,
            s.saturation_seconds,
        );
        if let Some(mut perf) = profile {
            let _ = perf.wait();
        }
        http1.row(
            vec![
                path.name.clone(),
                thousands(f(&r, "rps")),
                base.ratio(f(&r, "rps")),
                ms(f(&r, "p50")),
                ms(f(&r, "p99")),
                format!("{}", f(&r, "errors")),
            ],
            r,
        );
    }
    let (connections, streams) = (4, 16);
    let mut http2 = Table::new(
        format!(
            "Saturation, HTTP/2 (h2c): h2load, {connections} connections × {streams} streams, {} s",
            s.saturation_seconds
        ),
        &["path", "requests/s", "vs direct", "succeeded", "errors"],
    );
    let mut base = Baseline::default();
    for path in [
        direct(APP_PORT),
        mesh(bed, "two oxmesh sidecars (mTLS)", VIP, H2C_PORT),
    ] {
        let r = tools::http2_saturation(
            bed.pod(path.pod),
            &path.url,
            connections,
            streams,
            s.saturation_seconds,
        );
        http2.row(
            vec![
                path.name.clone(),
                thousands(f(&r, "rps")),
                base.ratio(f(&r, "rps")),
                format!("{}", f(&r, "succeeded")),
                format!("{}", f(&r, "errors")),
            ],
            r,
        );
    }
    http2.note("nginx and HAProxy are left out here: nginx cannot speak HTTP/2 to its upstream.");
    let mut bulk = Table::new(
        format!("Bulk TCP: iperf3, one stream, {} s", s.saturation_seconds),
        &["path", "MB/s", "vs direct"],
    );
    let mut paths = vec![
        (
            "direct (no proxy)",
            "direct-client",
            DIRECT_SERVER.to_string(),
            IPERF_PORT,
        ),
        (
            "two oxmesh sidecars (mTLS)",
            "client",
            VIP.to_owned(),
            IPERF_PORT,
        ),
    ];
    if bed.references.contains(&Kind::Haproxy) {
        let port = reference::BULK_PORT;
        paths.push((
            "haproxy pair (mTLS between)",
            "haproxy-client",
            "127.0.0.1".into(),
            port,
        ));
    }
    let mut base = Baseline::default();
    for (name, pod, host, port) in paths {
        let r = tools::bulk(bed.pod(pod), &host, port, s.saturation_seconds);
        bulk.row(
            vec![
                name.into(),
                thousands(f(&r, "mb_per_s")),
                base.ratio(f(&r, "mb_per_s")),
            ],
            r,
        );
    }
    vec![http1, http2, bulk]
}

/// With `OXMESH_BENCH_PROFILE=DIR`, runs perf on the proxies of `path` while
/// the load runs, into `DIR/<path>.perf.data`: `OXMESH_BENCH_PERF` holds the
/// perf subcommand and its options, by default call-graph sampling
/// (`record -F 999 -g`); `stat -e raw_syscalls:sys_enter,context-switches`
/// counts system calls and context switches instead.
fn profile(path: &Path, seconds: u64) -> Option<std::process::Child> {
    let dir = std::env::var("OXMESH_BENCH_PROFILE").ok()?;
    if path.proxies.is_empty() {
        return None;
    }
    let pids: Vec<String> = path.proxies.iter().map(u32::to_string).collect();
    let file: String = path
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let perf = std::env::var("OXMESH_BENCH_PERF").unwrap_or_else(|_| "record -F 999 -g".into());
    std::process::Command::new("perf")
        .args(perf.split_whitespace())
        .arg("-o")
        .arg(format!("{dir}/{file}.perf.data"))
        .args(["-p", &pids.join(","), "--", "sleep"])
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

/// gRPC through sidecars: unary calls and bidirectional streaming messages.
pub fn grpc(bed: &Bed, s: &Settings) -> Vec<Table> {
    let me = std::env::current_exe().expect("bench binary");
    let me = me.to_string_lossy().into_owned();
    let (connections, streams) = (2, 8);
    let mut table = Table::new(
        format!(
            "gRPC: {} B messages, {connections} connections × {streams} concurrent callers, {} s (the bench's own h2 client; Debian has no gRPC load tool)",
            crate::app::MESSAGE,
            s.seconds
        ),
        &[
            "kind",
            "path",
            "calls or messages/s",
            "vs direct",
            "p50 ms",
            "p99 ms",
            "errors",
        ],
    );
    for mode in ["unary", "stream"] {
        let mut base = Baseline::default();
        for (name, pod, address) in [
            (
                "direct (no proxy)",
                "direct-client",
                format!("{DIRECT_SERVER}:{APP_PORT}"),
            ),
            (
                "two oxmesh sidecars (mTLS)",
                "client",
                format!("{VIP}:{GRPC_PORT}"),
            ),
        ] {
            let out = bed
                .pod(pod)
                .command("timeout")
                .args([
                    "--kill-after=5",
                    &(s.seconds + 30).to_string(),
                    &me,
                    "--grpc",
                    &address,
                    mode,
                ])
                .args([
                    connections.to_string(),
                    streams.to_string(),
                    s.seconds.to_string(),
                ])
                .output()
                .expect("grpc load");
            let r: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            table.row(
                vec![
                    mode.into(),
                    name.into(),
                    thousands(f(&r, "rps")),
                    base.ratio(f(&r, "rps")),
                    ms(f(&r, "p50")),
                    ms(f(&r, "p99")),
                    format!("{}", f(&r, "errors")),
                ],
                json!({"mode": mode, "path": name, "result": r}),
            );
        }
    }
    vec![table]
}

/// Footprint: the resident memory of one idle sidecar whose mesh holds 10,
/// 100 and 1,000 services of 10 endpoints, with no Sidecar resource and with
/// one that scopes its egress to the namespace it talks to.
pub fn footprint(bed: &mut Bed, _s: &Settings) -> Vec<Table> {
    let mut table = Table::new(
        "Footprint: one idle sidecar (2 workers), RSS after its config arrived",
        &[
            "services in the mesh",
            "Sidecar scoping",
            "clusters held",
            "endpoints held",
            "RSS MiB",
        ],
    );
    let scoping = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: lean}\nspec:\n  egress: [{hosts: [\"default/*\"]}]\n";
    std::fs::write(bed.config_file("sidecar.yaml"), scoping).expect("sidecar.yaml");
    for services in [10, 100, 1000] {
        write_services(&bed.config_file("footprint.yaml"), services, 10);
        // The control plane polls the directory every 200 ms and debounces.
        std::thread::sleep(Duration::from_millis(1500));
        for (namespace, scoped) in [("wide", "none"), ("lean", "egress: default/*")] {
            let pid = bed.sidecar("idle", "idle-5f8d9c7b6-q2w3e", namespace, "idle");
            bed.wait_ready("idle");
            std::thread::sleep(Duration::from_secs(2));
            let (_, dump) = bed.curl("idle", "http://127.0.0.1:15000/clusters");
            // Two lines per endpoint: `<cluster>::<address>::health_flags::...` is one.
            let mut clusters: Vec<&str> = dump
                .lines()
                .filter(|l| l.contains("::health_flags::"))
                .filter_map(|l| l.split("::").next())
                .collect();
            let endpoints = clusters.len();
            clusters.dedup();
            let rss = measure::rss_mib(pid);
            table.row(
                vec![
                    thousands(services as f64),
                    scoped.into(),
                    thousands(clusters.len() as f64),
                    thousands(endpoints as f64),
                    format!("{rss:.1}"),
                ],
                json!({"services": services, "scoped": scoped != "none", "clusters": clusters.len(), "endpoints": endpoints, "rss_mib": rss}),
            );
            bed.stop(pid);
        }
    }
    let _ = std::fs::remove_file(bed.config_file("footprint.yaml"));
    table.note("Clusters and endpoints as the proxy's admin `/clusters` lists them (clusters with endpoints only).");
    vec![table]
}

/// N Services in namespace `fp`, each with `endpoints` ready pods.
fn write_services(path: &std::path::Path, services: usize, endpoints: usize) {
    let mut text = String::new();
    for s in 0..services {
        let vip = 10 * 256 + s;
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: fp}}\nspec:\n  clusterIP: 198.19.{}.{}\n  selector: {{app: svc-{s}}}\n  ports: [{{name: http, port: 8080}}]\n",
            vip >> 8,
            vip & 0xff
        ));
        for e in 0..endpoints {
            let ip = 100 * 256 + s * endpoints + e;
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-{e}\n  namespace: fp\n  labels: {{app: svc-{s}, security.istio.io/tlsMode: istio}}\nspec:\n  containers: [{{name: app, image: app}}]\nstatus: {{phase: Running, podIP: 198.18.{}.{}, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
                ip >> 8,
                ip & 0xff
            ));
        }
    }
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).expect("write services");
    std::fs::rename(&temp, path).expect("rename");
}

/// What the server's sidecar is asked to check in the policy scenario.
struct PolicyCase {
    name: &'static str,
    /// The config file's content; empty: no policy.
    config: String,
    /// A request from the client (method, with or without the token's
    /// headers) and the status it gets once the case is in place.
    probe: (&'static str, bool, &'static str),
    headers: Vec<String>,
}

/// Policies are namespace-wide: the bed's sidecars report no labels.
///
/// `n` ALLOW rules no request matches (other callers, other paths), and
/// after them, in Envoy's name order, the rule that allows the client's
/// `methods` (which tell the cases apart).
fn rules_policy(n: usize, methods: &str) -> String {
    let mut rules = String::new();
    for i in 0..n {
        rules.push_str(&format!(
            "  - from: [{{source: {{principals: [cluster.local/ns/other-{i}/sa/caller]}}}}]\n    to: [{{operation: {{methods: [GET, POST], paths: [\"/api/{i}/*\"]}}}}]\n"
        ));
    }
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bench-rules-{n}, namespace: default}}\nspec:\n  rules:\n{rules}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: zz-client, namespace: default}}\nspec:\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/default/sa/client]}}}}]\n    to: [{{operation: {{methods: [{methods}], paths: [\"/*\"]}}}}]\n"
    )
}

fn jwt_case() -> PolicyCase {
    let issuer = oxmesh_demo::jwt::Issuer::demo().expect("demo key");
    let token = issuer
        .token(&json!({"exp": 4_000_000_000u64}))
        .expect("token");
    let config = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: bench-jwt, namespace: default}}\nspec:\n  jwtRules:\n  - issuer: {iss}\n    jwks: '{jwks}'\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bench-require-jwt, namespace: default}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"{iss}/{iss}\"]}}}}]\n",
        iss = issuer.issuer,
        jwks = issuer.jwks()
    );
    PolicyCase {
        name: "RequestAuthentication (RS256) + requestPrincipals",
        config,
        probe: ("GET", false, "403"),
        headers: vec![format!("Authorization: Bearer {token}")],
    }
}

/// Waits until the server's sidecar holds the case's config: its probe
/// request gets the status the case gives it.
fn wait_for_policy(bed: &Bed, url: &str, case: &PolicyCase) {
    let (method, with_headers, want) = case.probe;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
            "-w",
            "%{http_code}",
            "-X",
            method,
        ];
        if with_headers {
            for h in &case.headers {
                args.extend(["-H", h.as_str()]);
            }
        }
        args.push(url);
        let out = bed.pod("client").output("curl", &args).expect("curl");
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server's sidecar never got {}: {method} answered {got}, not {want}",
            case.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What authorization costs: the latency scenario's fixed rate through two
/// mTLS sidecars with no policy, 10 and 100 ALLOW rules in front of the one
/// that allows the client, and a JWT checked on every request; CPU is the
/// server's sidecar's, where the policies are evaluated.
pub fn policy(bed: &Bed, s: &Settings) -> Vec<Table> {
    let path = mesh_path(bed);
    let cases = [
        PolicyCase {
            name: "no policy",
            config: String::new(),
            probe: ("POST", false, "200"),
            headers: Vec::new(),
        },
        PolicyCase {
            name: "10 ALLOW rules, then the client's",
            config: rules_policy(10, "GET"),
            probe: ("POST", false, "403"),
            headers: Vec::new(),
        },
        PolicyCase {
            name: "100 ALLOW rules, then the client's",
            config: rules_policy(100, "GET, PUT"),
            probe: ("PUT", false, "200"),
            headers: Vec::new(),
        },
        jwt_case(),
    ];
    let file = bed.config_file("policy.yaml");
    let pod = bed.pod(path.pod);
    let mut results = Vec::new();
    for case in &cases {
        if case.config.is_empty() {
            let _ = std::fs::remove_file(&file);
        } else {
            std::fs::write(&file, &case.config).expect("policy.yaml");
        }
        wait_for_policy(bed, &path.url, case);
        let proxies = [bed.server_proxy];
        results.push(costed_run(
            pod,
            &path.url,
            s,
            &case.headers,
            &proxies,
            || {},
        ));
    }
    let _ = std::fs::remove_file(&file);
    let mut table = Table::new(
        format!(
            "Authorization cost at the server's sidecar: HTTP/1.1 through two mTLS sidecars, {} rps, {} connections, {} s",
            s.rps, s.connections, s.seconds
        ),
        &[
            "policy",
            "p50 ms",
            "p99 ms",
            "server sidecar CPU s per 1,000 requests",
            "CPU added",
            "non-200",
        ],
    );
    let base = results[0].1;
    for (case, (r, cost)) in cases.iter().zip(&results) {
        let added = added_percent(*cost, base);
        let mut cells = cost_cells(case.name, r, *cost, base);
        cells.push(format!("{}", f(r, "errors")));
        table.row(
            cells,
            json!({"case": case.name, "cpu_s_per_1000": cost, "added_percent": added, "result": r}),
        );
    }
    table.note("Each case replaces the last in the control plane's config; the run starts once the server's sidecar holds it. The allowing rule is last in Envoy's name order, so every request is checked against all the others first. JWT: Istio's RequestAuthentication with the key inline, one RS256 token on every request (each worker verifies its signature once, then its cache holds it; time, issuer and audience are checked every time).");
    vec![table]
}

/// One traffic-management configuration: a VirtualService for the bench
/// service (empty: plain routing), and how to tell the client's sidecar
/// holds it (a response header it adds, or none).
struct TrafficCase {
    name: &'static str,
    config: String,
    marker: Option<&'static str>,
}

fn traffic_vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bench, namespace: default}}\nspec:\n  hosts: [bench.default.svc.cluster.local]\n  http:\n  - {http}\n    route:\n    - destination: {{host: bench.default.svc.cluster.local}}\n"
    )
}

/// A local rate limit in every outbound connection manager of namespace
/// `default` (the client's sidecar), with a bucket the run never empties:
/// each request takes a token, none is refused.
const BENCH_LOCAL_RATE_LIMIT: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: bench-ratelimit, namespace: default}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        filterChain:
          filter: {name: envoy.filters.network.http_connection_manager}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: bench
          token_bucket: {max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s}
          filter_enabled: {runtime_key: e, default_value: {numerator: 100, denominator: HUNDRED}}
          filter_enforced: {runtime_key: f, default_value: {numerator: 100, denominator: HUNDRED}}
"#;

const BENCH_HEADERS: &str = "headers:\n      request: {set: {x-bench-set: one}, add: {x-bench-add: two}, remove: [x-bench-gone]}\n      response: {set: {x-bench-route: headers}, remove: [x-bench-none]}";

/// Added latency and client-sidecar CPU of route features against plain
/// routing, in one run: header mutations, then headers with every request
/// mirrored (to the same service, so the server also answers the copies),
/// then those with a local rate limit in the client's sidecar.
pub fn traffic(bed: &Bed, s: &Settings) -> Vec<Table> {
    let path = mesh(bed, "mTLS sidecars", VIP, HTTP_PORT);
    let cases = [
        TrafficCase {
            name: "plain routing",
            config: String::new(),
            marker: None,
        },
        TrafficCase {
            name: "request and response header mutations",
            config: traffic_vs(BENCH_HEADERS),
            marker: Some("x-bench-route: headers"),
        },
        TrafficCase {
            name: "headers + mirror every request",
            config: traffic_vs(&format!(
                "{}\n    mirror: {{host: bench.default.svc.cluster.local}}\n    mirrorPercentage: {{value: 100}}",
                BENCH_HEADERS.replace("x-bench-route: headers", "x-bench-route: mirror")
            )),
            marker: Some("x-bench-route: mirror"),
        },
        TrafficCase {
            name: "headers + mirror + local rate limit",
            config: format!(
                "{}---\n{BENCH_LOCAL_RATE_LIMIT}",
                traffic_vs(&format!(
                    "{}\n    mirror: {{host: bench.default.svc.cluster.local}}\n    mirrorPercentage: {{value: 100}}",
                    BENCH_HEADERS.replace("x-bench-route: headers", "x-bench-route: ratelimit")
                ))
            ),
            marker: Some("x-bench-route: ratelimit"),
        },
    ];
    let file = bed.config_file("traffic.yaml");
    let pod = bed.pod(path.pod);
    let mut results = Vec::new();
    for case in &cases {
        if case.config.is_empty() {
            let _ = std::fs::remove_file(&file);
        } else {
            std::fs::write(&file, &case.config).expect("traffic.yaml");
        }
        wait_for_route(bed, &path.url, case.marker);
        tools::fixed_rate(pod, &path.url, s.rps, s.connections, s.warmup);
        let client_before = measure::cpu_seconds(bed.client_proxy);
        let server_before = measure::cpu_seconds(bed.server_proxy);
        let tokens_before = rate_limit_tokens_taken(bed);
        let r = tools::fixed_rate(pod, &path.url, s.rps, s.connections, s.seconds);
        let client = measure::cpu_seconds(bed.client_proxy) - client_before;
        let server = measure::cpu_seconds(bed.server_proxy) - server_before;
        let tokens = rate_limit_tokens_taken(bed) - tokens_before;
        results.push((r, client, server, tokens));
    }
    let _ = std::fs::remove_file(&file);
    let mut table = Table::new(
        format!(
            "Route features at the client's sidecar: HTTP/1.1 through two mTLS sidecars, {} rps, {} connections, {} s",
            s.rps, s.connections, s.seconds
        ),
        &[
            "route",
            "p50 ms",
            "p99 ms",
            "client sidecar CPU s per 1,000 requests",
            "CPU added",
            "server sidecar CPU s per 1,000 requests",
            "non-200",
            "rate-limit tokens taken",
        ],
    );
    let per_thousand = |r: &Value, used: f64| used / (f(r, "count").max(1.0) / 1000.0);
    let base = per_thousand(&results[0].0, results[0].1);
    for (case, (r, client, server, tokens)) in cases.iter().zip(&results) {
        let cost = per_thousand(r, *client);
        let added = if base > 0.0 {
            (cost - base) / base * 100.0
        } else {
            0.0
        };
        table.row(
            vec![
                case.name.to_owned(),
                ms(f(r, "p50")),
                ms(f(r, "p99")),
                format!("{cost:.4}"),
                format!("{added:+.1} %"),
                format!("{:.4}", per_thousand(r, *server)),
                format!("{}", f(r, "errors")),
                format!("{tokens}"),
            ],
            json!({"case": case.name, "client_cpu_s_per_1000": cost, "added_percent": added, "server_cpu_s_per_1000": per_thousand(r, *server), "rate_limit_tokens_taken": tokens, "result": r}),
        );
    }
    table.note("Each case replaces the last VirtualService in the control plane's config; the run starts once the client's sidecar answers with the case's response header (plain: none). Header mutations: one set, one add and one removal on the request, one set and one removal on the response. Mirroring copies each request, body and all, to the same service from a task of its own, so the server's sidecar answers twice as many requests. The local rate limit is an EnvoyFilter inserting Envoy's local_ratelimit filter in the client's outbound connection managers, with a bucket the run never empties: every request takes a token (one compare-and-swap) and two counters are bumped; the filter finds the request's route first, as Envoy's does. The last column is what the client's sidecar counted as granted tokens during the run: the filter ran on every request of its case.");
    vec![table]
}

/// What the client's sidecar counted as `envoy_http_local_rate_limit_ok`:
/// proof that the rate-limit case ran its filter (0 before it exists).
fn rate_limit_tokens_taken(bed: &Bed) -> u64 {
    let out = bed
        .pod("client")
        .output(
            "curl",
            &["-s", "-m", "5", "http://127.0.0.1:15090/stats/prometheus"],
        )
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("envoy_http_local_rate_limit_ok_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Polls the client's view until the route carries `marker` (or, for
/// `None`, no `x-bench-route` at all).
fn wait_for_route(bed: &Bed, url: &str, marker: Option<&str>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = bed
            .pod("client")
            .output(
                "curl",
                &["-s", "-m", "5", "-D", "-", "-o", "/dev/null", url],
            )
            .expect("curl");
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let holds = match marker {
            Some(m) => head.contains(m),
            None => head.starts_with("http/1.1 200") && !head.contains("x-bench-route"),
        };
        if holds {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client's sidecar never held the route ({marker:?}): {head}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
