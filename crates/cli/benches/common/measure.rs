//! What the benches read of a process from /proc, and where they write
//! results. Shared by the bench targets through `#[path]`.

// Each bench uses what it needs of this.
#![allow(dead_code)]

use std::path::PathBuf;

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name, utime and stime are the 12th and 13th fields.
    fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|t| t.parse::<f64>().ok()).sum::<f64>() / 100.0
    })
}

/// A `/proc/<pid>/status` memory figure (`VmRSS`, `VmHWM`) in MiB.
pub fn memory_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Resident memory in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    memory_mib(pid, "VmRSS")
}

/// Where results go: `OXMESH_BENCH_OUT`, else the repository's `bench/results`.
pub fn results_dir() -> PathBuf {
    std::env::var_os("OXMESH_BENCH_OUT").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/results")),
        PathBuf::from,
    )
}
