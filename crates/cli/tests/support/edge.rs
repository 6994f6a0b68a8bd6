//! What the edge tests (Istio's gateway tasks, the Gateway API) share: a
//! mesh with a client outside it, Istio's samples, and test certificates.

use std::path::Path;
use std::process::Command;

use oxmesh_testkit::TempDir;

use super::mesh::Mesh;
use super::up::start_up_with;

pub fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio/samples")
}

/// One of Istio's samples, as text.
pub fn sample(file: &str) -> String {
    std::fs::read_to_string(samples().join(file)).expect("Istio's sample")
}

/// A client outside the mesh: a pod the injector leaves alone.
pub const OUTSIDE: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: outside}\nspec:\n  selector: {matchLabels: {app: outside}}\n  template:\n    metadata: {labels: {app: outside}, annotations: {sidecar.istio.io/inject: \"false\"}}\n    spec:\n      containers: [{name: outside, image: curl, command: [sleep, \"3600\"]}]\n";

/// Namespace `default` with injection, the given manifests, and the client.
pub fn mesh_with(name: &str, manifests: &[(&str, String)]) -> Mesh {
    mesh_with_args(name, manifests, &[])
}

/// `mesh_with`, with more arguments for `oxmesh up`.
pub fn mesh_with_args(name: &str, manifests: &[(&str, String)], up_args: &[&str]) -> Mesh {
    let dir = TempDir::new(name);
    dir.write(
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
    );
    dir.write("outside.yaml", OUTSIDE);
    for (file, text) in manifests {
        dir.write(file, text);
    }
    let (up, _) = start_up_with(&dir, up_args);
    Mesh::new(dir, up, "default")
}

/// `mesh_with`, plus Istio's curl sample as the client inside the mesh.
pub fn mesh_with_curl(name: &str, mut manifests: Vec<(&str, String)>) -> Mesh {
    let curl = sample("curl.yaml");
    manifests.push(("curl.yaml", curl));
    mesh_with(name, &manifests)
}

/// Runs the shell `script` (openssl making certificates) in `dir`; it must
/// succeed.
pub fn run_in(dir: &TempDir, script: &str) {
    let ok = Command::new("sh")
        .args(["-c", script])
        .current_dir(&dir.0)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{script}");
}

/// A CA and a certificate it signed for `name`, made with openssl in a new
/// directory of the test `test` (tests run at once in one process):
/// `ca.crt`, `<name>.crt`, `<name>.key`.
pub fn certificates(test: &str, name: &str) -> TempDir {
    let dir = TempDir::new(&format!("{test}-certs"));
    let run = |script: &str| run_in(&dir, script);
    run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=example-ca -keyout ca.key -out ca.crt 2>/dev/null",
    );
    run(&format!(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN={name} -addext subjectAltName=DNS:{name} -keyout {name}.key -out {name}.csr 2>/dev/null && openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out {name}.crt 2>/dev/null && chmod 644 {name}.key"
    ));
    dir
}

/// Service `service` in `namespace` (port 443 `https`): a TLS server
/// (Python's, with `name`'s certificate from `certs`) answering every GET
/// with the address it sees the client at.
pub fn tls_server(service: &str, namespace: &str, certs: &TempDir, name: &str) -> String {
    let (cert, key) = (
        certs.path(&format!("{name}.crt")),
        certs.path(&format!("{name}.key")),
    );
    let script = format!(
        "import http.server, ssl\nclass H(http.server.BaseHTTPRequestHandler):\n  def do_GET(self):\n    body = ('served by the app over its own TLS to ' + self.client_address[0]).encode()\n    self.send_response(200)\n    self.send_header('content-length', str(len(body)))\n    self.end_headers()\n    self.wfile.write(body)\nserver = http.server.ThreadingHTTPServer(('0.0.0.0', 8443), H)\ncontext = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\ncontext.load_cert_chain('{}', '{}')\nserver.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)\nserver.serve_forever()\n",
        cert.display(),
        key.display()
    );
    let command = serde_json::to_string(&["python3", "-c", &script]).expect("json");
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {namespace}, labels: {{run: {service}}}}}\nspec:\n  ports: [{{port: 443, targetPort: 8443, protocol: TCP, name: https}}]\n  selector: {{run: {service}}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {service}, namespace: {namespace}}}\nspec:\n  selector: {{matchLabels: {{run: {service}}}}}\n  template:\n    metadata: {{labels: {{run: {service}}}}}\n    spec:\n      containers:\n      - name: {service}\n        image: python\n        command: {command}\n        ports: [{{containerPort: 8443}}]\n"
    )
}

/// A `kubernetes.io/tls` Secret `secret` in `namespace` holding `name`'s
/// certificate and key from `certs`.
pub fn tls_secret(certs: &TempDir, name: &str, namespace: &str, secret: &str) -> String {
    let indent = |file: &str| {
        std::fs::read_to_string(certs.path(file))
            .expect("pem")
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: {namespace}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&format!("{name}.crt")),
        indent(&format!("{name}.key"))
    )
}

/// curl in pod `from` for `https://<host><path>` as Istio's docs run it:
/// `--resolve` gives `host` the address `address`, `--cacert` the roots
/// `ca`; `extra` arguments go before the URL.
pub fn curl_https(
    mesh: &Mesh,
    from: &str,
    ca: &str,
    (host, address): (&str, &str),
    path: &str,
    extra: &[&str],
) -> std::process::Output {
    let resolve = format!("{host}:443:{address}");
    let url = format!("https://{host}{path}");
    let mut args = vec![
        "curl",
        "-s",
        "-m",
        "5",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    mesh.run(from, &args)
}

/// What `-w` prints instead of the body: the status code.
pub const STATUS_ONLY: [&str; 4] = ["-o", "/dev/null", "-w", "%{http_code}"];

/// Istio's passthrough check, through a gateway at `address` from outside
/// the mesh: nginx.example.com reaches the app's own TLS (curl verifies its
/// certificate against `certs`' CA), and another SNI is closed (curl's exit
/// 35, an SSL connect error, rather than an answer or a hang).
pub fn passes_tls_through(mesh: &Mesh, certs: &TempDir, address: &str) {
    let ca = certs.path("ca.crt").to_string_lossy().into_owned();
    let curl = |name: &str, insecure: bool| {
        let extra: &[&str] = if insecure { &["-k"] } else { &[] };
        let out = curl_https(mesh, "outside", &ca, (name, address), "/", extra);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, body) = curl("nginx.example.com", false);
        if body.starts_with("served by the app over its own TLS") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never passed through: {body:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let (code, body) = curl("other.example.com", true);
    assert_eq!(
        (code, body.as_str()),
        (Some(35), ""),
        "an SNI no route takes is closed"
    );
}

/// A Service's address as a client outside the mesh gets it from DNS.
pub fn service_address(mesh: &Mesh, fqdn: &str) -> String {
    let out = mesh.run("outside", &["getent", "hosts", fqdn]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no address for {fqdn}: {text:?}"))
        .to_owned()
}
