//! How long a route change takes to reach traffic: `oxmesh up` with echo v1 and
//! v2 behind a VirtualService and a client pod sending 200 requests/s over
//! four keep-alive connections (`oxmesh demo load`, which notes when each
//! connection first sees the other version). The route flips `FLIPS` times, a
//! second apart; for each flip the time from `oxmesh apply` starting to the
//! first request served by the new version, and to the last connection to
//! follow.
//!
//! `cargo bench -p oxmesh --bench propagation -- [FLIPS]` (release; root).
//! Bounded: the load lasts FLIPS + 6 seconds; the mesh is torn down at the end.
//! Writes bench/results/propagation.md.

use std::process::{Command, Stdio};
use std::time::Duration;

use oxmesh_testkit::TempDir;

#[path = "common/up.rs"]
mod up;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

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
  selector: {matchLabels: {app: echo, version: v1}}
  template:
    metadata: {labels: {app: echo, version: v1}}
    spec: {containers: [{name: echo, image: echo}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2}
spec:
  selector: {matchLabels: {app: echo, version: v2}}
  template:
    metadata: {labels: {app: echo, version: v2}}
    spec: {containers: [{name: echo, image: echo}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec: {containers: [{name: client, image: curl, command: [sleep, "3600"]}]}
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

fn route_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo}}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo, subset: {subset}}}\n"
    )
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn main() {
    let flips: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("bench-propagation");
    dir.write("mesh.yaml", MESH);
    dir.write("route.yaml", &route_to("v1"));
    let mesh = dir.0.to_string_lossy().into_owned();
    let mesh_up = up::start(&dir);

    let seconds = flips + 6;
    let load = Command::new(BIN)
        .args([
            "exec",
            "--mesh",
            &mesh,
            "deploy/client",
            "--",
            BIN,
            "demo",
            "load",
        ])
        .args(["http://echo/", "--rate", "200", "--connections", "4"])
        .args(["--marker", "server", "--duration", &format!("{seconds}s")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("oxmesh demo load");
    std::thread::sleep(Duration::from_secs(3));
    let mut applied = Vec::new();
    for flip in 0..flips {
        let subset = if flip % 2 == 0 { "v2" } else { "v1" };
        dir.write("route.yaml", &route_to(subset));
        applied.push((unix_ms(), subset));
        let out = Command::new(BIN)
            .args(["apply", "--mesh", &mesh, "-f"])
            .arg(dir.path("route.yaml"))
            .output()
            .expect("oxmesh apply");
        assert!(out.status.success(), "apply failed");
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = load.wait_with_output().expect("the load ran");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a load report");
    drop(mesh_up);

    let changes: Vec<(u64, usize, String)> = report["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["atUnixMs"].as_u64()?,
                usize::try_from(c["connection"].as_u64()?).ok()?,
                c["to"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let connections = 4;
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for (i, (at, subset)) in applied.iter().enumerate() {
        let until = applied.get(i + 1).map_or(u64::MAX, |(next, _)| *next);
        let prefix = format!("echo-{subset}-");
        let seen: Vec<(u64, usize)> = changes
            .iter()
            .filter(|(t, _, to)| *t >= *at && *t < until && to.starts_with(&prefix))
            .map(|(t, c, _)| (*t - at, *c))
            .collect();
        if let Some(earliest) = seen.iter().map(|(d, _)| *d).min() {
            first.push(earliest);
        }
        let mut per_connection = vec![None; connections];
        for (delay, c) in &seen {
            if let Some(slot) = per_connection.get_mut(*c) {
                slot.get_or_insert(*delay);
            }
        }
        if per_connection.iter().all(Option::is_some) {
            all.push(per_connection.iter().flatten().copied().max().unwrap_or(0));
        }
    }
    let stat = |v: &mut Vec<u64>| {
        v.sort_unstable();
        let at = |p: f64| {
            v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
        };
        format!(
            "p50 {} ms, p90 {} ms, max {} ms ({} of {flips} flips)",
            at(0.5).unwrap_or(0),
            at(0.9).unwrap_or(0),
            v.last().copied().unwrap_or(0),
            v.len()
        )
    };
    let failed = report["failed"].as_u64().unwrap_or(0);
    let text = format!(
        "## Route change → traffic: `cargo bench -p oxmesh --bench propagation -- {flips}`\n\n\
         `oxmesh apply` of a VirtualService flipping v1/v2 on `oxmesh up`, a client at 200 req/s over 4 keep-alive connections through its sidecar.\n\n\
         | What | Figure |\n|---|---|\n\
         | apply → first request on the new route | {} |\n\
         | apply → every connection on the new route | {} |\n\
         | requests failed during the flips | {failed} of {} (statuses {}, errors {}, first failures {}) |\n",
        stat(&mut first),
        stat(&mut all),
        report["requests"],
        report["statuses"],
        report["errors"],
        serde_json::json!(
            report["failures"]
                .as_array()
                .map(|f| f.iter().take(3).collect::<Vec<_>>())
        ),
    );
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results");
    let _ = std::fs::create_dir_all(&results);
    let _ = std::fs::write(results.join("propagation.md"), &text);
    print!("{text}");
}
