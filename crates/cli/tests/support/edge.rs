//! What the edge tests (Istio's gateway tasks, the Gateway API) share: a
//! mesh with a client outside it, Istio's samples, and test certificates.

use std::path::Path;
use std::process::Command;

use oxmesh_testkit::TempDir;

use super::mesh::Mesh;
use super::up::start_up;

pub fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio/samples")
}

/// A client outside the mesh: a pod the injector leaves alone.
pub const OUTSIDE: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: outside}\nspec:\n  selector: {matchLabels: {app: outside}}\n  template:\n    metadata: {labels: {app: outside}, annotations: {sidecar.istio.io/inject: \"false\"}}\n    spec:\n      containers: [{name: outside, image: curl, command: [sleep, \"3600\"]}]\n";

/// Namespace `default` with injection, the given manifests, and the client.
pub fn mesh_with(name: &str, manifests: &[(&str, String)]) -> Mesh {
    let dir = TempDir::new(name);
    dir.write(
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
    );
    dir.write("outside.yaml", OUTSIDE);
    for (file, text) in manifests {
        dir.write(file, text);
    }
    let (up, _) = start_up(&dir);
    Mesh::new(dir, up, "default")
}

/// `mesh_with`, plus Istio's curl sample as the client inside the mesh.
pub fn mesh_with_curl(name: &str, mut manifests: Vec<(&str, String)>) -> Mesh {
    let curl = std::fs::read_to_string(samples().join("curl.yaml")).expect("Istio's sample");
    manifests.push(("curl.yaml", curl));
    mesh_with(name, &manifests)
}

/// A CA and a certificate it signed for `name`, made with openssl in a new
/// directory of the test `test` (tests run at once in one process):
/// `ca.crt`, `<name>.crt`, `<name>.key`.
pub fn certificates(test: &str, name: &str) -> TempDir {
    let dir = TempDir::new(&format!("{test}-certs"));
    let run = |script: &str| {
        let ok = Command::new("sh")
            .args(["-c", script])
            .current_dir(&dir.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{script}");
    };
    run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=example-ca -keyout ca.key -out ca.crt 2>/dev/null",
    );
    run(&format!(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN={name} -addext subjectAltName=DNS:{name} -keyout {name}.key -out {name}.csr 2>/dev/null && openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out {name}.crt 2>/dev/null && chmod 644 {name}.key"
    ));
    dir
}
