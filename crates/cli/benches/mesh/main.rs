//! The whole-mesh benchmark: data-plane scenarios on the local testbed (network
//! namespaces, iptables interception, real processes), each against its no-mesh
//! baseline and beside nginx and HAProxy pairs, driven by standard load tools.
//!
//! `cargo bench -p oxmesh --bench mesh -- quick|full|latency|saturation|grpc|policy|traffic|footprint|ambient`
//! (`bench/run` installs the tools and runs it). Writes `mesh-<what>.md` and
//! `.json` into `bench/results/` (`OXMESH_BENCH_OUT` elsewhere) and prints the
//! Markdown. Needs root. Every tool run is bounded by `timeout`; the testbed is
//! removed at the end, also when a scenario panics.
//!
//! The same binary plays the app server (`--serve PORT...`) and the gRPC load
//! generator (`--grpc ADDRESS unary|stream CONNECTIONS STREAMS SECONDS`) inside
//! the pods.

mod access_log;
mod ambient;
mod app;
mod bed;
#[path = "../common/measure.rs"]
mod measure;
mod metrics;
mod reference;
mod report;
mod scenarios;
mod tools;
mod tracing;

use scenarios::Settings;
use serde_json::json;

const SCENARIOS: [&str; 10] = [
    "latency",
    "saturation",
    "grpc",
    "policy",
    "traffic",
    "access-log",
    "tracing",
    "metrics",
    "footprint",
    "ambient",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => app::serve(
            &args[1..]
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<_>>(),
        ),
        Some("--grpc") if args.len() == 6 => app::grpc(
            &args[1],
            &args[2],
            number(&args[3]) as usize,
            number(&args[4]) as usize,
            number(&args[5]),
        ),
        _ => orchestrate(&args),
    }
}

fn number(text: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|_| panic!("not a number: {text}"))
}

fn orchestrate(args: &[String]) {
    // cargo passes `--bench` to every bench binary; what we want is the rest.
    let what = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("quick", String::as_str);
    let (settings, scenarios): (Settings, Vec<&str>) = match what {
        "quick" => (settings(false), SCENARIOS.to_vec()),
        "full" => (settings(true), SCENARIOS.to_vec()),
        one if SCENARIOS.contains(&one) => (settings(true), vec![one]),
        other => {
            eprintln!("unknown scenario {other:?}: quick, full or one of {SCENARIOS:?}");
            std::process::exit(1);
        }
    };
    let mut bed = bed::Bed::up();
    let mut tables = Vec::new();
    for scenario in scenarios {
        eprintln!("== {scenario}");
        tables.extend(match scenario {
            "latency" => scenarios::latency(&bed, &settings),
            "saturation" => scenarios::saturation(&bed, &settings),
            "grpc" => scenarios::grpc(&bed, &settings),
            "policy" => scenarios::policy(&bed, &settings),
            "traffic" => scenarios::traffic(&bed, &settings),
            "access-log" => access_log::access_log(&bed, &settings),
            "tracing" => tracing::tracing(&bed, &settings),
            "metrics" => metrics::metrics(&bed, &settings),
            "ambient" => ambient::ambient(&settings),
            _ => scenarios::footprint(&mut bed, &settings),
        });
    }
    drop(bed);
    write(what, &tables);
}

fn settings(full: bool) -> Settings {
    Settings {
        seconds: if full { 12 } else { 5 },
        saturation_seconds: if full { 7 } else { 4 },
        warmup: 2,
        rps: 1000,
        connections: 16,
        full,
    }
}

/// The machine, date and commit every result file starts with.
fn provenance() -> (String, serde_json::Value) {
    let sh = |script: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let cores = sh("nproc");
    let memory = sh("free -g | awk '/Mem:/ {print $2}'");
    let kernel = sh("uname -r");
    let date = sh("date -u +%Y-%m-%dT%H:%MZ");
    let commit = sh(&format!(
        "git -C {} describe --always --dirty",
        env!("CARGO_MANIFEST_DIR")
    ));
    let text = format!(
        "Machine: {cores} vCPU {}, {memory} GiB, Linux {kernel}. Date: {date}. Commit: `{commit}`.",
        cpu.trim()
    );
    let value = json!({"cpu": cpu.trim(), "vcpus": cores, "memory_gib": memory, "kernel": kernel, "date": date, "commit": commit});
    (text, value)
}

fn write(what: &str, tables: &[report::Table]) {
    let out = measure::results_dir();
    std::fs::create_dir_all(&out).expect("results directory");
    let (machine, provenance) = provenance();
    let mut markdown = format!(
        "## Whole mesh: `bench/run {what}`\n\n{machine}\nLoad tools, servers and proxies share the machine.\n\n"
    );
    for t in tables {
        markdown.push_str(&t.markdown());
    }
    let json = json!({
        "run": what,
        "provenance": provenance,
        "tables": tables.iter().map(report::Table::json).collect::<Vec<_>>(),
    });
    let md_path = out.join(format!("mesh-{what}.md"));
    let json_path = out.join(format!("mesh-{what}.json"));
    std::fs::write(&md_path, &markdown).expect("write markdown");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .expect("write json");
    println!("{markdown}");
    eprintln!("written: {} and {}", md_path.display(), json_path.display());
}
