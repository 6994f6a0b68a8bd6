//! A pod's network namespace, held open by descriptor (the node agent's
//! gift over ZDS), and the one thing done in it: making sockets. A socket
//! belongs to the namespace its thread was in when it was made, and keeps
//! it wherever it is used after; so the calling thread steps in, makes the
//! socket and steps straight back, with no await in between.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

#[derive(Clone, Debug)]
pub struct NetNs {
    fd: Arc<OwnedFd>,
}

impl NetNs {
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd: Arc::new(fd) }
    }

    /// Opens a namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_fd(std::fs::File::open(path)?.into()))
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Runs `make` inside this namespace. Fails, touching nothing, when the
    /// descriptor is no network namespace (or the process may not enter it).
    pub fn run<T>(&self, make: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        let home = home()?;
        move_into_link_name_space(self.fd.as_fd(), Some(LinkNameSpaceType::Network))?;
        let made = make();
        if let Err(e) = move_into_link_name_space(home.as_fd(), Some(LinkNameSpaceType::Network)) {
            // A worker thread left in a pod's namespace would make every
            // later socket there: stopping is the only safe answer.
            tracing::error!(error = %e, "cannot return to the node proxy's network namespace");
            std::process::abort();
        }
        made
    }
}

/// The process's own network namespace, opened once (before any thread
/// has left it).
fn home() -> std::io::Result<&'static OwnedFd> {
    static HOME: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = HOME.get() {
        return Ok(fd);
    }
    let fd: OwnedFd = std::fs::File::open("/proc/self/ns/net")?.into();
    Ok(HOME.get_or_init(|| fd))
}

/// Opens the home namespace now, so [`NetNs::run`] never does it first from
/// a thread that might be elsewhere.
pub fn remember_home() -> std::io::Result<()> {
    home().map(|_| ())
}
