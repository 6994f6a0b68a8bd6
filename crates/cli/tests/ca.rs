//! `oxmesh ca` as an operator runs it.

use oxmesh_testkit::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A file in `dir`, as the argument a command line takes.
fn at(dir: &TempDir, name: &str) -> String {
    dir.path(name).display().to_string()
}

fn certs() -> PathBuf {
    std::env::var_os("OXMESH_CONFORMANCE_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio"),
            PathBuf::from,
        )
        .join("certs")
}

fn oxmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(args)
        .output()
        .expect("run oxmesh")
}

fn csr(dir: &TempDir, identity: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/",
        ])
        .args(["-keyout", &at(dir, "key.pem"), "-out", &at(dir, "req.pem")])
        .args(["-addext", &format!("subjectAltName=URI:{identity}")])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    at(dir, "req.pem")
}

#[test]
fn signs_offline_and_openssl_verifies_the_chain() {
    let dir = TempDir::new("sign");
    let ca_dir = certs().display().to_string();
    let request = csr(&dir, "spiffe://cluster.local/ns/foo/sa/bar");
    let out = oxmesh(&[
        "ca",
        "sign",
        "--ca-dir",
        &ca_dir,
        "--csr",
        &request,
        "--identity",
        "spiffe://cluster.local/ns/foo/sa/bar",
        "--ttl",
        "2h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chain = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        3,
        "leaf, intermediate, root"
    );
    let leaf_end = chain.find("-----END CERTIFICATE-----").expect("leaf") + 26;
    std::fs::write(at(&dir, "leaf.pem"), &chain[..leaf_end]).expect("write");
    std::fs::write(at(&dir, "chain.pem"), &chain[leaf_end..]).expect("write");
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            &certs().join("root-cert.pem").display().to_string(),
        ])
        .args(["-untrusted", &at(&dir, "chain.pem"), &at(&dir, "leaf.pem")])
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    let inspect = oxmesh(&["ca", "inspect", &at(&dir, "leaf.pem")]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/foo/sa/bar"),
        "{text}"
    );
    assert!(text.contains("Key:       ECDSA P-256"), "{text}");
    assert!(text.contains("CA:        no"), "{text}");
}

#[test]
fn refuses_another_identity_too_long_a_ttl_and_garbage() {
    let dir = TempDir::new("refuse");
    let ca_dir = certs().display().to_string();
    let request = csr(&dir, "spiffe://cluster.local/ns/foo/sa/bar");
    let other = oxmesh(&[
        "ca",
        "sign",
        "--ca-dir",
        &ca_dir,
        "--csr",
        &request,
        "--identity",
        "spiffe://cluster.local/ns/foo/sa/admin",
    ]);
    assert_eq!(other.status.code(), Some(1));
    assert!(other.stdout.is_empty(), "nothing is signed");
    assert!(
        String::from_utf8_lossy(&other.stderr)
            .contains("may only name spiffe://cluster.local/ns/foo/sa/admin")
    );

    let long = oxmesh(&[
        "ca",
        "sign",
        "--ca-dir",
        &ca_dir,
        "--csr",
        &request,
        "--identity",
        "spiffe://cluster.local/ns/foo/sa/bar",
        "--ttl",
        "2400h",
    ]);
    assert_eq!(long.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&long.stderr).contains("greater than the max allowed TTL"));

    std::fs::write(at(&dir, "junk.pem"), "junk").expect("write");
    let junk = oxmesh(&[
        "ca",
        "sign",
        "--ca-dir",
        &ca_dir,
        "--csr",
        &at(&dir, "junk.pem"),
        "--identity",
        "spiffe://cluster.local/ns/foo/sa/bar",
    ]);
    assert_eq!(junk.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&junk.stderr).contains("not a PEM certificate signing request")
    );

    let root = oxmesh(&["ca", "root", "--state-dir", &at(&dir, "nothing-here")]);
    assert_eq!(root.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&root.stderr)
            .contains("has `oxmesh control --state-dir` run there?")
    );
}

#[test]
fn prints_the_plug_in_root() {
    let out = oxmesh(&["ca", "root", "--ca-dir", &certs().display().to_string()]);
    assert!(out.status.success());
    let expected = std::fs::read_to_string(certs().join("root-cert.pem")).expect("root");
    let printed = String::from_utf8_lossy(&out.stdout);
    let body = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    };
    assert_eq!(body(&printed), body(&expected));
}
