//! The CA: self-signed root persistence, plug-in CAs, and what it signs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use oxmesh_identity::ca::{Authority, CaError, Lifetimes, SignError};
use oxmesh_identity::certificate::{CertificateInfo, KeyKind, pem_certificates, to_pem};
use oxmesh_identity::csr::{self, CsrError, SigningRequest};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_testkit::TempDir;

fn certs_dir() -> PathBuf {
    std::env::var_os("OXMESH_CONFORMANCE_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio"),
            PathBuf::from,
        )
        .join("certs")
}

fn id(s: &str) -> SpiffeId {
    s.parse().expect("valid SPIFFE id")
}

fn openssl_verify(dir: &Path, roots_pem: &str, chain: &[String]) -> (bool, String) {
    let roots = dir.join("roots.pem");
    let leaf = dir.join("leaf.pem");
    let untrusted = dir.join("untrusted.pem");
    std::fs::write(&roots, roots_pem).expect("write");
    std::fs::write(&leaf, &chain[0]).expect("write");
    // Intermediates only: the last element holds the roots.
    std::fs::write(&untrusted, chain[1..chain.len() - 1].concat() + "\n").expect("write");
    let mut command = Command::new("openssl");
    command.arg("verify").arg("-CAfile").arg(&roots);
    if chain.len() > 2 {
        command.arg("-untrusted").arg(&untrusted);
    }
    let out = command
        .arg("-purpose")
        .arg("sslclient")
        .arg(&leaf)
        .output()
        .expect("openssl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_certificate_for_foo_bar_carries_exactly_that_identity() {
    let dir = TempDir::new("issue");
    let ca = Authority::self_signed(&dir.0, &TrustDomain::cluster_local(), Lifetimes::default())
        .expect("CA");
    let me = id("spiffe://cluster.local/ns/foo/sa/bar");
    let (pem, _key) = csr::generate(&me).expect("csr");
    let request = SigningRequest::from_pem(&pem).expect("parse");
    request.check_identity(&me).expect("names its identity");
    let chain = ca.sign(&request, &me, None).expect("signed");
    let leaf = CertificateInfo::parse(chain.leaf.as_ref()).expect("leaf");
    assert_eq!(leaf.uri_sans, vec!["spiffe://cluster.local/ns/foo/sa/bar"]);
    assert!(leaf.dns_sans.is_empty());
    assert!(!leaf.is_ca);
    assert_eq!(leaf.subject, "");
    let lifetime = leaf.lifetime().as_secs();
    assert!(
        (24 * 3600..=24 * 3600 + 120).contains(&lifetime),
        "{lifetime}"
    );
    let root = CertificateInfo::parse(ca.roots()[0].as_ref()).expect("root");
    assert_eq!(root.subject, "O=cluster.local");
    assert_eq!(root.key, KeyKind::EcdsaP256);
    assert!(root.is_ca);
    let (ok, output) = openssl_verify(&dir.0, &ca.roots_pem(), &chain.to_pem_elements());
    assert!(ok, "{output}");
}

#[test]
fn the_self_signed_root_survives_a_restart_and_is_never_replaced() {
    let dir = TempDir::new("persist");
    let td = TrustDomain::cluster_local();
    let first = Authority::self_signed(&dir.0, &td, Lifetimes::default()).expect("create");
    let again = Authority::self_signed(&dir.0, &td, Lifetimes::default()).expect("load");
    assert_eq!(first.roots(), again.roots());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.0.join("ca/ca-key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }
    std::fs::remove_file(dir.0.join("ca/ca-cert.pem")).expect("remove");
    let err = Authority::self_signed(&dir.0, &td, Lifetimes::default()).expect_err("incomplete");
    assert!(matches!(err, CaError::Incomplete { .. }), "{err}");
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");
    assert!(
        !dir.0.join("ca/ca-cert.pem").exists(),
        "nothing was regenerated"
    );
}

#[test]
fn a_request_for_another_identity_is_refused() {
    let (pem, _) = csr::generate(&id("spiffe://cluster.local/ns/foo/sa/admin")).expect("csr");
    let request = SigningRequest::from_pem(&pem).expect("parse");
    let err = request
        .check_identity(&id("spiffe://cluster.local/ns/foo/sa/bar"))
        .expect_err("mismatch");
    assert!(matches!(err, CsrError::IdentityMismatch { .. }));
    assert!(err.to_string().contains("ns/foo/sa/admin"), "{err}");
}

#[test]
fn lifetimes_are_bounded() {
    let dir = TempDir::new("ttl");
    let ca = Authority::self_signed(&dir.0, &TrustDomain::cluster_local(), Lifetimes::default())
        .expect("CA");
    let me = id("spiffe://cluster.local/ns/a/sa/b");
    let request = SigningRequest::from_pem(&csr::generate(&me).expect("csr").0).expect("parse");
    let err = ca
        .sign(&request, &me, Some(Duration::from_secs(91 * 24 * 3600)))
        .expect_err("too long");
    assert!(matches!(err, SignError::TtlTooLong { .. }), "{err}");
    let hour = ca
        .sign(&request, &me, Some(Duration::from_secs(3600)))
        .expect("1h");
    let info = CertificateInfo::parse(hour.leaf.as_ref()).expect("leaf");
    assert!(info.lifetime() <= Duration::from_secs(3600 + 120));
    let capped = Lifetimes::new(
        Duration::from_secs(3600),
        Duration::from_secs(365 * 24 * 3600),
    );
    assert_eq!(capped.max_ttl, Duration::from_secs(90 * 24 * 3600));
}

#[test]
fn the_plug_in_ca_issues_chains_openssl_accepts() {
    let dir = TempDir::new("plugin");
    let ca = Authority::plug_in(&certs_dir(), Lifetimes::default()).expect("plug-in CA");
    let me = id("spiffe://cluster.local/ns/foo/sa/bar");
    let request = SigningRequest::from_pem(&csr::generate(&me).expect("csr").0).expect("parse");
    let chain = ca.sign(&request, &me, None).expect("signed");
    let elements = chain.to_pem_elements();
    assert_eq!(elements.len(), 3, "leaf, intermediate, root");
    let root_pem = std::fs::read_to_string(certs_dir().join("root-cert.pem")).expect("root");
    let (ok, output) = openssl_verify(&dir.0, &root_pem, &elements);
    assert!(ok, "{output}");
    let issued = pem_certificates(elements[1].as_bytes()).expect("intermediate");
    let info = CertificateInfo::parse(issued[0].as_ref()).expect("parse");
    assert!(info.subject.contains("CN=Istio CA"), "{}", info.subject);
}

#[test]
fn an_rsa_2048_request_from_openssl_is_signed() {
    let dir = TempDir::new("rsa");
    let ca = Authority::plug_in(&certs_dir(), Lifetimes::default()).expect("plug-in CA");
    let me = id("spiffe://cluster.local/ns/legacy/sa/app");
    let csr_path = dir.0.join("req.pem");
    let status = Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=", "-keyout",
        ])
        .arg(dir.0.join("key.pem"))
        .args(["-addext", &format!("subjectAltName=URI:{me}"), "-out"])
        .arg(&csr_path)
        .output()
        .expect("openssl runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let request =
        SigningRequest::from_pem(&std::fs::read_to_string(&csr_path).expect("csr")).expect("parse");
    assert_eq!(request.key(), KeyKind::Rsa(2048));
    request.check_identity(&me).expect("identity");
    let chain = ca.sign(&request, &me, None).expect("signed");
    let root_pem = std::fs::read_to_string(certs_dir().join("root-cert.pem")).expect("root");
    let (ok, output) = openssl_verify(&dir.0, &root_pem, &chain.to_pem_elements());
    assert!(ok, "{output}");
}

#[test]
fn broken_plug_in_cas_are_refused() {
    let dir = TempDir::new("broken");
    let copy = |from: &str, to: &str| {
        std::fs::copy(certs_dir().join(from), dir.0.join(to))
            .map(drop)
            .expect("copy")
    };
    copy("ca-cert.pem", "ca-cert.pem");
    copy("cert-chain.pem", "cert-chain.pem");
    copy("root-cert.pem", "root-cert.pem");
    // A key that is not the certificate's.
    std::fs::write(
        dir.0.join("ca-key.pem"),
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let err = Authority::plug_in(&dir.0, Lifetimes::default()).expect_err("key mismatch");
    assert!(matches!(err, CaError::KeyMismatch(_)), "{err}");

    // A chain that does not reach the root: a root of our own making.
    copy("ca-key.pem", "ca-key.pem");
    let other = TempDir::new("other-root");
    let stranger = Authority::self_signed(
        &other.0,
        &TrustDomain::cluster_local(),
        Lifetimes::default(),
    )
    .expect("CA");
    std::fs::write(dir.0.join("root-cert.pem"), to_pem(stranger.roots())).expect("write");
    let err = Authority::plug_in(&dir.0, Lifetimes::default()).expect_err("broken chain");
    assert!(matches!(err, CaError::BrokenChain(_)), "{err}");

    std::fs::write(dir.0.join("root-cert.pem"), "garbage").expect("write");
    let err = Authority::plug_in(&dir.0, Lifetimes::default()).expect_err("unreadable");
    assert!(err.to_string().contains("root-cert.pem"), "{err}");
}
