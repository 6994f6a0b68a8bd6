//! `oxmesh validate` as a user runs it: output lines and exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn conformance() -> PathBuf {
    std::env::var_os("OXMESH_CONFORMANCE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio"),
        PathBuf::from,
    )
}

fn oxmesh(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oxmesh"));
    command.args(args);
    match stdin {
        None => command.output().expect("run oxmesh"),
        Some(text) => {
            use std::io::Write;
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn oxmesh");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
            child.wait_with_output().expect("wait")
        }
    }
}

#[test]
fn bookinfo_and_samples_are_valid() {
    let root = conformance();
    let bookinfo = root.join("bookinfo");
    let samples = root.join("samples");
    let out = oxmesh(
        &[
            "validate",
            "-q",
            bookinfo.to_str().unwrap_or_default(),
            samples.to_str().unwrap_or_default(),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("error:"), "{stdout}");
}

#[test]
fn errors_exit_1_with_one_line_each() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - name: v1
  - name: v1
    labels: {version: v2}
";
    let out = oxmesh(&["validate", "-"], Some(yaml));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim_end(),
        "error: <stdin>:8: DestinationRule shop/reviews: spec.subsets[1].name: duplicate subset names: v1"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 valid objects, 1 errors"));
}

#[test]
fn unreadable_paths_are_errors() {
    let out = oxmesh(&["validate", "/nonexistent/oxmesh.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("error: /nonexistent/oxmesh.yaml: cannot read")
    );
}
