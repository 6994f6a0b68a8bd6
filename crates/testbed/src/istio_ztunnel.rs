//! Istio's own ztunnel as the tests and benchmarks run it, the reference
//! peer for ambient mode: where its binary is, and the command that points
//! it at an oxmesh control plane as a Kubernetes pod's environment would.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Netns;

/// Says why a test (or a bench row) does not run.
pub const ABSENT: &str =
    "skipped: Istio's ztunnel is not at ../shared/peers/ztunnel/ztunnel (or OXMESH_ZTUNNEL)";

/// `OXMESH_ZTUNNEL`, else `../shared/peers/ztunnel/ztunnel` beside the
/// checkout; `None` when it is not there.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("OXMESH_ZTUNNEL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/ztunnel/ztunnel"),
        PathBuf::from,
    );
    path.is_file().then_some(path)
}

/// What ztunnel needs of the mesh: the control plane's 15012 (`host:port`),
/// the mesh root, its token, and the node agent's ZDS socket.
pub struct Mesh<'a> {
    pub secure: &'a str,
    pub root: &'a Path,
    pub token: &'a Path,
    pub zds_socket: &'a Path,
}

/// `binary` in `netns`, with only the environment `mesh` gives it (add the
/// pod's own, `RUST_LOG` and the mode with `envs`).
pub fn command(binary: &Path, netns: &Netns, mesh: &Mesh<'_>) -> Command {
    let control = format!("https://{}", mesh.secure);
    let mut command = netns.command(&binary.to_string_lossy());
    command
        .env_clear()
        .envs([("XDS_ADDRESS", &control), ("CA_ADDRESS", &control)])
        // oxmesh serves 15012 under istiod's Service name.
        .envs([
            ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
            ("ALT_CA_HOSTNAME", "istiod.istio-system.svc"),
        ])
        .envs([("XDS_ROOT_CA", mesh.root), ("CA_ROOT_CA", mesh.root)])
        .env("AUTH_TOKEN", mesh.token)
        .env("INPOD_UDS", mesh.zds_socket);
    command
}
