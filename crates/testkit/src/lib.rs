//! What the workspace's tests share. Test code only: it panics on any failure.

pub mod api_server;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A fresh directory under the system's temporary directory, named for the test
/// and the process, removed when dropped (also when the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("oxmesh-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a file (and its parent directories) with a modification time no
    /// earlier write had, so a watcher sees every change even within one mtime tick.
    pub fn write(&self, name: &str, text: &str) {
        static BUMP: AtomicU64 = AtomicU64::new(1);
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        std::fs::write(&path, text).expect("write");
        let later = SystemTime::now() + Duration::from_secs(BUMP.fetch_add(1, Ordering::SeqCst));
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_modified(later).expect("set mtime");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
