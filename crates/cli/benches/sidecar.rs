//! Two sidecars with mTLS against the same client and server without a mesh, on
//! the local testbed (network namespaces, iptables interception, real processes).
//! Reports, in bench/RESULTS.md's terms:
//!
//! - added latency (p50/p90/p99/p99.9) at a fixed 1,000 rps of HTTP/1.1 with 1 KiB
//!   responses over 16 keep-alive connections, measured from each request's send,
//!   or from its scheduled start when the connection was still busy (so a stall
//!   counts against every request it delays);
//! - CPU seconds per 1,000 requests and resident memory of each proxy;
//! - bulk TCP throughput through both sidecars against direct.
//!
//! `cargo bench -p oxmesh --bench sidecar -- [rps] [seconds]` (defaults 1000 10).
//! Needs root, iproute2, iptables. The same binary plays the load generator
//! (`--load`), the server (`--serve`) and the bulk client (`--push`) inside
//! the pods. Every phase is bounded; the testbed is removed at the end.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxmesh_testbed::{Netns, Network};
use oxmesh_testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");
const ISTIOD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const DIRECT_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const DIRECT_SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 6);
const NGINX_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
const NGINX_SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 8);
const VIP: &str = "198.19.0.20";
const CONNECTIONS: usize = 16;
const BODY: usize = 1024;
const BULK_BYTES: u64 = 512 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => serve(&args[2], &args[3]),
        Some("--load") => load(&args[2], parse(&args[3]), parse(&args[4])),
        Some("--push") => push(&args[2], parse(&args[3])),
        _ => orchestrate(&args),
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
}

// ---- roles played inside the pods ----

/// HTTP on `http_port` answering 1 KiB, and a TCP sink on `sink_port` that
/// answers with the byte count once the client closes its side.
fn serve(http_port: &str, sink_port: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http: u16 = parse(http_port);
    let sink: u16 = parse(sink_port);
    runtime.block_on(async move {
        tokio::spawn(sink_loop(sink));
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", http))
            .await
            .expect("bind");
        let body = bytes::Bytes::from(vec![b'x'; BODY]);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn sink_loop(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .expect("bind sink");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total: u64 = 0;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let _ = stream.write_all(format!("{total}\n").as_bytes()).await;
        });
    }
}

/// Fixed-rate HTTP/1.1 load on `CONNECTIONS` keep-alive connections; prints one
/// JSON line of latency percentiles (µs) measured from each scheduled start.
fn load(url: &str, rps: u64, seconds: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let latencies = runtime.block_on(async move {
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let per_connection = rps as f64 / CONNECTIONS as f64;
        let interval = Duration::from_secs_f64(1.0 / per_connection);
        let count = (per_connection * seconds as f64) as u64;
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let address = address.clone();
            // Stagger the connections so requests are spread evenly.
            let offset = interval.mul_f64(c as f64 / CONNECTIONS as f64);
            tasks.push(tokio::spawn(connection(
                address,
                start + offset,
                interval,
                count,
            )));
        }
        let mut all = Vec::new();
        let mut errors = 0u64;
        for t in tasks {
            let (latencies, failed) = t.await.expect("load task");
            all.extend(latencies);
            errors += failed;
        }
        (all, errors)
    });
    let (mut all, errors) = latencies;
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "count": all.len(), "errors": errors,
            "p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "p999": pick(0.999),
            "max": all.last().copied().unwrap_or(0),
        })
    );
}

async fn connection(
    address: String,
    start: tokio::time::Instant,
    interval: Duration,
    count: u64,
) -> (Vec<u64>, u64) {
    use http_body_util::BodyExt;
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let stream = match tokio::net::TcpStream::connect(&address).await {
        Ok(s) => s,
        Err(_) => return (latencies, count),
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return (latencies, count);
    };
    tokio::spawn(conn);
    let mut previous_done = start;
    for i in 0..count {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        // Latency counts from the scheduled start when the connection was still
        // busy with the previous request then (a stall delays every request
        // behind it: coordinated omission), else from the actual send, so the
        // timer's millisecond granularity does not count as latency.
        let from = if previous_done > scheduled {
            scheduled
        } else {
            tokio::time::Instant::now()
        };
        let request = hyper::Request::get("/")
            .header("host", "bench")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let ok = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                response.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        };
        previous_done = tokio::time::Instant::now();
        if ok {
            latencies.push(from.elapsed().as_micros() as u64);
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}

/// Sends `bytes` to the sink at `address`, prints MB/s once the sink confirms.
fn push(address: &str, bytes: u64) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to sink");
    let chunk = vec![b'x'; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        stream.write_all(&chunk).expect("write");
        sent += chunk.len() as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let seconds = started.elapsed().as_secs_f64();
    let received: u64 = answer.trim().parse().unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({"bytes": received, "seconds": seconds, "mb_per_s": received as f64 / seconds / 1e6})
    );
}

// ---- the orchestration ----

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec:
  clusterIP: 198.19.0.20
  selector: {app: bench}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp-sink, port: 5001, targetPort: 5001}
---
apiVersion: v1
kind: Pod
metadata:
  name: bench-7d4b9c8f6-x2x4b
  namespace: default
  labels: {app: bench, security.istio.io/tlsMode: istio}
spec:
  serviceAccountName: bench
  containers: [{name: bench, image: bench}]
status:
  phase: Running
  podIP: 198.18.0.4
  conditions: [{type: Ready, status: "True"}]
"#;

struct Bed {
    children: Vec<Child>,
    net: Network,
    dir: TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Bed {
    fn pod(&self, name: &str) -> &Netns {
        self.net.pod(name).expect("pod")
    }

    fn spawn(&mut self, pod: &str, program: &str, args: &[&str]) -> u32 {
        let child = self
            .pod(pod)
            .command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn run_json(&self, pod: &str, args: &[&str]) -> serde_json::Value {
        let me = std::env::current_exe().expect("bench binary");
        let out = self
            .pod(pod)
            .command(&me.to_string_lossy())
            .args(args)
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{args:?}: {e}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn orchestrate(args: &[String]) {
    let numbers: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rps = numbers.first().copied().unwrap_or(1000);
    let seconds = numbers.get(1).copied().unwrap_or(10);
    let me = std::env::current_exe().expect("bench binary");
    let me = me.to_string_lossy().into_owned();
    let dir = TempDir::new("bench-sidecar");
    dir.write("config/mesh.yaml", CONFIG);
    let mut net = Network::new("bs").expect("testbed");
    for (name, ip) in [
        ("istiod", ISTIOD),
        ("client", CLIENT),
        ("server", SERVER),
        ("direct-client", DIRECT_CLIENT),
        ("direct-server", DIRECT_SERVER),
        ("nginx-client", NGINX_CLIENT),
        ("nginx-server", NGINX_SERVER),
    ] {
        net.add_pod(name, ip).expect("pod");
    }
    let mut bed = Bed {
        children: Vec::new(),
        net,
        dir,
    };
    let state = bed.dir.path("state").to_string_lossy().into_owned();
    let config = bed.dir.path("config").to_string_lossy().into_owned();
    bed.spawn(
        "istiod",
        BIN,
        &["control", "--state-dir", &state, "--config-dir", &config],
    );
    let root = wait_for_root(&state);
    std::fs::write(bed.dir.path("root-cert.pem"), root).expect("root");
    for pod in ["server", "direct-server", "nginx-server"] {
        bed.spawn(pod, &me, &["--serve", "8080", "5001"]);
    }
    let client_proxy = start_sidecar(
        &mut bed,
        "client",
        "client-6c9f8d7b5-abcde",
        "client",
        CLIENT,
    );
    let server_proxy = start_sidecar(&mut bed, "server", "bench-7d4b9c8f6-x2x4b", "bench", SERVER);
    for pod in ["client", "server"] {
        wait_ready(bed.pod(pod));
    }
    std::thread::sleep(Duration::from_millis(500));

    let direct_url = format!("{DIRECT_SERVER}:8080");
    let mesh_url = format!("{VIP}:80");
    let (r, s) = (rps.to_string(), seconds.to_string());
    // Warm both paths: connections, pools, TLS sessions.
    bed.run_json("direct-client", &["--load", &direct_url, &r, "2"]);
    bed.run_json("client", &["--load", &mesh_url, &r, "2"]);

    let nginx = nginx_pair(&mut bed);
    let nginx_url = "127.0.0.1:10000".to_owned();
    if nginx {
        bed.run_json("nginx-client", &["--load", &nginx_url, &r, "2"]);
    }

    let direct = bed.run_json("direct-client", &["--load", &direct_url, &r, &s]);
    let nginx_cpu_before = nginx_cpu(&bed);
    let reference = nginx.then(|| bed.run_json("nginx-client", &["--load", &nginx_url, &r, &s]));
    let nginx_cpu_after = nginx_cpu(&bed);
    let cpu_before = [cpu_seconds(client_proxy), cpu_seconds(server_proxy)];
    let mesh = bed.run_json("client", &["--load", &mesh_url, &r, &s]);
    let cpu_after = [cpu_seconds(client_proxy), cpu_seconds(server_proxy)];
    let rss = [rss_kib(client_proxy), rss_kib(server_proxy)];

    let bulk = BULK_BYTES.to_string();
    let direct_bulk = bed.run_json(
        "direct-client",
        &["--push", &format!("{DIRECT_SERVER}:5001"), &bulk],
    );
    let mesh_bulk = bed.run_json("client", &["--push", &format!("{VIP}:5001"), &bulk]);

    let requests = mesh["count"].as_u64().unwrap_or(0) as f64;
    let per_thousand = |i: usize| (cpu_after[i] - cpu_before[i]) / (requests / 1000.0);
    let ms = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
    println!(
        "\n## Two sidecars with mTLS vs direct: {rps} rps, {seconds} s, HTTP/1.1, {BODY} B responses, {CONNECTIONS} connections, {} workers per proxy\n",
        concurrency()
    );
    println!("| | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |");
    println!("|---|---|---|---|---|---|");
    for (name, v) in [("direct", &direct), ("two sidecars (mTLS)", &mesh)] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            ms(v, "p50"),
            ms(v, "p90"),
            ms(v, "p99"),
            ms(v, "p999"),
            v["errors"]
        );
    }
    println!(
        "| **added** | {:+.3} | {:+.3} | {:+.3} | {:+.3} | |",
        ms(&mesh, "p50") - ms(&direct, "p50"),
        ms(&mesh, "p90") - ms(&direct, "p90"),
        ms(&mesh, "p99") - ms(&direct, "p99"),
        ms(&mesh, "p999") - ms(&direct, "p999"),
    );
    if let Some(reference) = &reference {
        println!(
            "| nginx pair (mTLS between) | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            ms(reference, "p50"),
            ms(reference, "p90"),
            ms(reference, "p99"),
            ms(reference, "p999"),
            reference["errors"]
        );
        println!(
            "| **added by nginx** | {:+.3} | {:+.3} | {:+.3} | {:+.3} | |",
            ms(reference, "p50") - ms(&direct, "p50"),
            ms(reference, "p90") - ms(&direct, "p90"),
            ms(reference, "p99") - ms(&direct, "p99"),
            ms(reference, "p999") - ms(&direct, "p999"),
        );
    } else {
        println!("\n(nginx is not installed: no reference pair; `apt-get install nginx-light`)");
    }
    println!("\n| proxy | CPU s per 1,000 requests | vCPU at {rps} rps | RSS MiB |");
    println!("|---|---|---|---|");
    for (i, name) in ["client sidecar", "server sidecar"].iter().enumerate() {
        println!(
            "| {name} | {:.4} | {:.3} | {:.1} |",
            per_thousand(i),
            per_thousand(i) * rps as f64 / 1000.0,
            rss[i] as f64 / 1024.0
        );
    }
    if let Some(reference) = &reference {
        let requests = reference["count"].as_u64().unwrap_or(0) as f64;
        let per_thousand = (nginx_cpu_after - nginx_cpu_before) / 2.0 / (requests / 1000.0);
        println!(
            "| nginx (each of the pair, average) | {per_thousand:.4} | {:.3} | |",
            per_thousand * rps as f64 / 1000.0
        );
    }
    println!("\n| bulk TCP, {} MiB | MB/s |", BULK_BYTES >> 20);
    println!("|---|---|");
    println!(
        "| direct | {:.0} |",
        direct_bulk["mb_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "| two sidecars (mTLS) | {:.0} |",
        mesh_bulk["mb_per_s"].as_f64().unwrap_or(0.0)
    );
}

/// The reference: nginx in front of the client and of the server, with mTLS
/// between them, the same hops as two sidecars. `false` when nginx is absent.
fn nginx_pair(bed: &mut Bed) -> bool {
    if Command::new("nginx").arg("-v").output().is_err() {
        return false;
    }
    let dir = bed.dir.path("nginx");
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let d = dir.to_string_lossy().into_owned();
    let sh = |script: &str| {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{script}");
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=ca -keyout ca.key -out ca.crt 2>/dev/null",
    );
    for name in ["client", "server"] {
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN={name} -addext subjectAltName=DNS:{name} -keyout {name}.key -out {name}.csr 2>/dev/null && \
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out {name}.crt 2>/dev/null && chmod 644 {name}.key"
        ));
    }
    let workers = concurrency();
    let common =
        format!("worker_processes {workers}; daemon off; events {{ worker_connections 1024; }}");
    std::fs::write(
        dir.join("client.conf"),
        format!(
            "{common} pid {d}/client.pid; error_log {d}/client.err;
http {{ access_log off;
  upstream b {{ server {NGINX_SERVER}:10001; keepalive 32; }}
  server {{ listen 127.0.0.1:10000;
    location / {{ proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_certificate {d}/client.crt; proxy_ssl_certificate_key {d}/client.key;
      proxy_ssl_trusted_certificate {d}/ca.crt; proxy_ssl_verify on; proxy_ssl_name server;
      proxy_ssl_session_reuse on; }} }} }}"
        ),
    )
    .expect("client.conf");
    std::fs::write(
        dir.join("server.conf"),
        format!(
            "{common} pid {d}/server.pid; error_log {d}/server.err;
http {{ access_log off;
  upstream app {{ server 127.0.0.1:8080; keepalive 32; }}
  server {{ listen 10001 ssl; ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key;
    ssl_client_certificate {d}/ca.crt; ssl_verify_client on;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}"
        ),
    )
    .expect("server.conf");
    for (pod, conf) in [
        ("nginx-server", "server.conf"),
        ("nginx-client", "client.conf"),
    ] {
        let conf = format!("{d}/{conf}");
        bed.spawn(pod, "nginx", &["-p", &d, "-c", &conf]);
    }
    std::thread::sleep(Duration::from_millis(500));
    true
}

/// CPU seconds of every nginx process in the reference pods.
fn nginx_cpu(bed: &Bed) -> f64 {
    ["nginx-client", "nginx-server"]
        .iter()
        .flat_map(|pod| {
            let out = Command::new("ip")
                .args(["netns", "pids", bed.pod(pod).name()])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "nginx")
        })
        .map(cpu_seconds)
        .sum()
}

/// Worker threads per proxy: `OXMESH_BENCH_CONCURRENCY`, else Istio's default 2.
fn concurrency() -> usize {
    std::env::var("OXMESH_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn wait_for_root(state: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(BIN)
            .args(["ca", "root", "--state-dir", state])
            .output()
            .expect("oxmesh ca root");
        if out.status.success() {
            return out.stdout;
        }
        assert!(Instant::now() < deadline, "no CA");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_sidecar(bed: &mut Bed, pod: &str, pod_name: &str, account: &str, ip: Ipv4Addr) -> u32 {
    let state = bed.dir.path("state").to_string_lossy().into_owned();
    let token = Command::new(BIN)
        .args([
            "ca",
            "token",
            "--state-dir",
            &state,
            "-n",
            "default",
            "--service-account",
            account,
        ])
        .output()
        .expect("token");
    let token_file = bed.dir.path(&format!("{pod}.token"));
    std::fs::write(&token_file, String::from_utf8_lossy(&token.stdout).trim()).expect("token file");
    bed.pod(pod).run(BIN, &["iptables"]).expect("iptables");
    let child = bed
        .pod(pod)
        .command("setpriv")
        .args([
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            BIN,
            "proxy",
        ])
        .args(["--discovery-address", &format!("{ISTIOD}:15012")])
        .args(["--concurrency", &concurrency().to_string()])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--root-cert")
        .arg(bed.dir.path("root-cert.pem"))
        .env("POD_NAME", pod_name)
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", ip.to_string())
        .env("SERVICE_ACCOUNT", account)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("proxy");
    let pid = child.id();
    bed.children.push(child);
    pid
}

fn wait_ready(pod: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = pod
            .output(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
            )
            .expect("curl");
        if out.stdout == b"200" {
            return;
        }
        assert!(Instant::now() < deadline, "proxy not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
