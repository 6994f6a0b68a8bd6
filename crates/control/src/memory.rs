//! Handing memory a config reload freed back to the system. glibc keeps freed
//! pages in its per-thread arenas, so after a few reloads of a large config the
//! control plane's RSS ran at twice its live heap; trimming once the old push
//! context is gone returns them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after a new push context the previous one is expected to be gone
/// (its pushes written and dropped).
const AFTER_PUSH: Duration = Duration::from_secs(2);

/// A trim is already waiting: pushes in a burst share it.
static PENDING: AtomicBool = AtomicBool::new(false);

/// Trims the allocator's free memory a little after a push, off the runtime's
/// workers (a trim walks the whole heap).
pub fn trim_after_push() {
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(AFTER_PUSH).await;
        PENDING.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own heap structures under its
    // locks; it takes no pointers from us and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
