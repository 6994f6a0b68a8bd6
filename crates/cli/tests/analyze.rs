//! `oxmesh analyze` as a CI pipeline runs it: output lines and exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bookinfo(file: &str) -> String {
    std::env::var_os("OXMESH_CONFORMANCE_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio"),
            PathBuf::from,
        )
        .join("bookinfo")
        .join(file)
        .display()
        .to_string()
}

fn oxmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(args)
        .output()
        .expect("run oxmesh")
}

#[test]
fn bookinfo_with_its_destination_rules_is_clean() {
    let out = oxmesh(&[
        "analyze",
        &bookinfo("bookinfo.yaml"),
        &bookinfo("networking/destination-rule-all.yaml"),
        &bookinfo("networking/virtual-service-all-v1.yaml"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No validation issues found"));
}

#[test]
fn a_route_to_an_undefined_subset_is_ist0101_and_exits_79() {
    let out = oxmesh(&[
        "analyze",
        &bookinfo("bookinfo.yaml"),
        &bookinfo("networking/virtual-service-reviews-v3.yaml"),
    ]);
    assert_eq!(out.status.code(), Some(79));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Error [IST0101] (VirtualService default/reviews ")
            && stdout.contains("virtual-service-reviews-v3.yaml:11) Referenced host+subset in destinationrule not found: \"reviews+v3\""),
        "{stdout}"
    );

    let suppressed = oxmesh(&[
        "analyze",
        "--suppress",
        "IST0101=VirtualService default/*",
        &bookinfo("bookinfo.yaml"),
        &bookinfo("networking/virtual-service-reviews-v3.yaml"),
    ]);
    assert_eq!(suppressed.status.code(), Some(0));

    let json = oxmesh(&[
        "analyze",
        "-o",
        "json",
        &bookinfo("bookinfo.yaml"),
        &bookinfo("networking/virtual-service-reviews-v3.yaml"),
    ]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON output");
    assert_eq!(parsed[0]["code"], "IST0101");
    assert_eq!(parsed[0]["level"], "Error");
    assert_eq!(parsed[0]["origin"], "VirtualService default/reviews");
    assert!(
        parsed[0]["documentationUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("/ist0101/"))
    );
}

#[test]
fn thresholds_and_unusable_input() {
    // Only a warning (an unreachable rule): fails at Warning, passes at Error.
    let details = bookinfo("networking/fault-injection-details-v1.yaml");
    let services = bookinfo("bookinfo.yaml");
    let rules = bookinfo("networking/destination-rule-all.yaml");
    assert_eq!(
        oxmesh(&["analyze", &services, &rules, &details])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        oxmesh(&[
            "analyze",
            "--failure-threshold",
            "Warning",
            &services,
            &rules,
            &details
        ])
        .status
        .code(),
        Some(79)
    );
    let missing = oxmesh(&["analyze", "/nonexistent/mesh.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
    assert_eq!(
        oxmesh(&["analyze", "--suppress", "nonsense", &services])
            .status
            .code(),
        Some(2)
    );
}
