//! `oxmesh ca` as an operator runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("oxmesh-cli-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        .args([
            "-keyout",
            &dir.path("key.pem"),
            "-out",
            &dir.path("req.pem"),
        ])
        .args(["-addext", &format!("subjectAltName=URI:{identity}")])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.path("req.pem")
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
    std::fs::write(dir.path("leaf.pem"), &chain[..leaf_end]).expect("write");
    std::fs::write(dir.path("chain.pem"), &chain[leaf_end..]).expect("write");
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            &certs().join("root-cert.pem").display().to_string(),
        ])
        .args(["-untrusted", &dir.path("chain.pem"), &dir.path("leaf.pem")])
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    let inspect = oxmesh(&["ca", "inspect", &dir.path("leaf.pem")]);
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

    std::fs::write(dir.path("junk.pem"), "junk").expect("write");
    let junk = oxmesh(&[
        "ca",
        "sign",
        "--ca-dir",
        &ca_dir,
        "--csr",
        &dir.path("junk.pem"),
        "--identity",
        "spiffe://cluster.local/ns/foo/sa/bar",
    ]);
    assert_eq!(junk.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&junk.stderr).contains("not a PEM certificate signing request")
    );

    let root = oxmesh(&["ca", "root", "--state-dir", &dir.path("nothing-here")]);
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
