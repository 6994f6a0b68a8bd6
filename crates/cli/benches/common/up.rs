//! `oxmesh up` for a bench: started on a directory, waited for until ready,
//! and stopped (SIGTERM: it removes the mesh) when dropped, also when the
//! bench panics. Shared by the bench targets through `#[path]`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use oxmesh_testkit::TempDir;

pub struct Mesh(Child);

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Runs the manifests in `dir`; returns once every pod is ready.
pub fn start(dir: &TempDir) -> Mesh {
    let mut up = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .arg("up")
        .arg(&dir.0)
        .args(["--ingress-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("oxmesh up");
    let stdout = up.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mesh = Mesh(up);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("oxmesh up became ready")
        .starts_with("ready")
    {}
    mesh
}
