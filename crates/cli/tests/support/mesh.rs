//! A mesh run by `oxmesh up` for the end-to-end tests: config applied and
//! deleted with `oxmesh apply`/`delete`, requests and TCP lines sent from its
//! pods, the control plane's debug port and the sidecars' metrics read.

use std::process::Command;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;

use super::up::Up;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

/// A mesh `oxmesh up` runs, and its pods in one namespace.
pub struct Mesh {
    pub dir: TempDir,
    _up: Up,
    namespace: String,
}

impl Mesh {
    /// Namespace `default` with injection and Istio's httpbin and curl
    /// samples, up; and the ingress gateway's port on the host.
    pub fn istio_samples(name: &str) -> (Self, u16) {
        let dir = TempDir::new(name);
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/conformance/istio/samples");
        for sample in ["httpbin.yaml", "curl.yaml"] {
            let text = std::fs::read_to_string(samples.join(sample)).expect("Istio's sample");
            dir.write(sample, &text);
        }
        dir.write(
            "namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
        );
        let (up, ingress) = super::up::start_up(&dir);
        (Self::new(dir, up, "default"), ingress)
    }

    pub fn new(dir: TempDir, up: Up, namespace: &str) -> Self {
        Self {
            dir,
            _up: up,
            namespace: namespace.to_owned(),
        }
    }

    pub fn path(&self) -> String {
        self.dir.0.to_string_lossy().into_owned()
    }

    pub fn apply(&self, name: &str, text: &str) {
        self.dir.write(name, text);
        let out = Command::new(BIN)
            .args(["apply", "--mesh", &self.path(), "-f"])
            .arg(self.dir.path(name))
            .output()
            .expect("oxmesh apply");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn delete(&self, name: &str) {
        let out = Command::new(BIN)
            .args(["delete", "--mesh", &self.path(), "-f"])
            .arg(self.dir.path(name))
            .output()
            .expect("oxmesh delete");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What `container` of `deployment` in `namespace` printed so far
    /// (`oxmesh logs`).
    pub fn logs(&self, namespace: &str, deployment: &str, container: &str) -> String {
        let out = Command::new(BIN)
            .args([
                "logs",
                "--mesh",
                &self.path(),
                "-n",
                namespace,
                "-c",
                container,
            ])
            .arg(format!("deploy/{deployment}"))
            .output()
            .expect("oxmesh logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command run in `from`'s pod.
    pub fn run(&self, from: &str, command: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["exec", "--mesh", &self.path(), "-n", &self.namespace])
            .arg(format!("deploy/{from}"))
            .arg("--")
            .args(command)
            .output()
            .expect("oxmesh exec")
    }

    /// `curl` from a pod: the status and the body.
    pub fn http(&self, from: &str, method: &str, url: &str) -> (String, String) {
        self.http_with(from, method, url, None)
    }

    /// `curl` from a pod with one more request header (`Name: value`).
    pub fn http_with(
        &self,
        from: &str,
        method: &str,
        url: &str,
        header: Option<&str>,
    ) -> (String, String) {
        let out = Command::new(BIN)
            .args(["exec", "--mesh", &self.path(), "-n", &self.namespace])
            .arg(format!("deploy/{from}"))
            .args(["--", "curl", "-s", "-m", "5", "-X", method])
            .args(header.iter().flat_map(|h| ["-H", h]))
            .args(["-w", "\n%{http_code}", url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.to_owned(), body.to_owned())
    }

    /// Polls until `from`'s request gets `status` (policies take a push).
    pub fn settles(&self, from: &str, method: &str, url: &str, status: &str) -> String {
        self.settles_with(from, method, url, None, status)
    }

    pub fn settles_with(
        &self,
        from: &str,
        method: &str,
        url: &str,
        header: Option<&str>,
        status: &str,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (got, body) = self.http_with(from, method, url, header);
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{from} {method} {url}: {got} {body:?}, never {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A line through tcp-echo from `from`: echoed, or nothing (closed).
    pub fn tcp(&self, from: &str) -> String {
        let script = "import socket\ns=socket.create_connection(('tcp-echo',9000),timeout=3)\ns.sendall(b'hi\\n')\ntry:\n  print(s.recv(100).decode().strip())\nexcept Exception as e:\n  print('closed')\n";
        let out = Command::new(BIN)
            .args(["exec", "--mesh", &self.path(), "-n", &self.namespace])
            .arg(format!("deploy/{from}"))
            .args(["--", "python3", "-c", script])
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if text.is_empty() {
            "closed".to_owned()
        } else {
            text
        }
    }

    /// `connections` connections from `from` to `host:port`, one line each;
    /// how many tcp-echo v1 and v2 answered (by their `one` and `two`
    /// prefixes). A connection that fails counts for neither.
    pub fn tcp_echo_versions(
        &self,
        from: &str,
        (host, port): (&str, u16),
        connections: u32,
    ) -> (usize, usize) {
        let script = format!(
            "import socket\nfor i in range({connections}):\n  try:\n    s=socket.create_connection(('{host}',{port}),timeout=2)\n    s.sendall(b'hi\\n')\n    print(s.recv(100).decode().strip())\n    s.close()\n  except Exception:\n    print('closed')\n"
        );
        let out = self.run(from, &["python3", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            text.lines().filter(|l| l.starts_with("one ")).count(),
            text.lines().filter(|l| l.starts_with("two ")).count(),
        )
    }

    pub fn tcp_settles(&self, from: &str, want: impl Fn(&str) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.tcp(from);
            if want(&got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{from} over TCP: {got:?}, never {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An `oxmesh` command run beside the control plane (its debug port is
    /// on its own loopback).
    pub fn in_istiod(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args([
                "exec",
                "--mesh",
                &self.path(),
                "-n",
                "istio-system",
                "istiod",
                "--",
                BIN,
            ])
            .args(args)
            .args(["--control-plane", "127.0.0.1:15014"])
            .output()
            .expect("oxmesh in istiod");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The metrics of `deployment`'s sidecar.
    pub fn metrics(&self, deployment: &str) -> String {
        let out = Command::new(BIN)
            .args(["exec", "--mesh", &self.path(), "-n", &self.namespace])
            .arg(format!("deploy/{deployment}"))
            .arg("--")
            .args(["curl", "-s", "http://127.0.0.1:15090/stats/prometheus"])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
