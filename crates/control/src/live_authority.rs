//! The CA as the control plane holds it. A plug-in CA's files are watched: when the
//! operator replaces them (a new intermediate, a root bundle with old and new roots
//! during a rotation) the new CA is checked and swapped in, and certificates signed
//! from then on carry it. Files that fail the checks leave the current CA serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use oxmesh_identity::SpiffeId;
use oxmesh_identity::ca::{Authority, IssuedChain, Lifetimes, SignError, Signer};
use oxmesh_identity::csr::SigningRequest;
use rustls::pki_types::CertificateDer;

pub struct LiveAuthority {
    current: ArcSwap<Authority>,
    /// Bumped when the roots change, so the trust bundle is re-served.
    roots_changed: tokio::sync::watch::Sender<u64>,
}

impl LiveAuthority {
    pub fn new(authority: Authority) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(authority),
            roots_changed: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn roots_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.roots_changed.subscribe()
    }

    pub fn roots_pem(&self) -> String {
        self.current.load().roots_pem()
    }

    pub fn current(&self) -> Arc<Authority> {
        self.current.load_full()
    }

    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().roots().to_vec()
    }

    /// Re-reads `dir` every `every`; swaps in the CA when its files change and pass
    /// the checks.
    pub fn watch(
        self: Arc<Self>,
        dir: PathBuf,
        lifetimes: Lifetimes,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut seen = fingerprint(&dir);
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let now = fingerprint(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
                match Authority::plug_in(&dir, lifetimes) {
                    Ok(authority) => {
                        let roots_changed = authority.roots() != self.current.load().roots();
                        self.current.store(Arc::new(authority));
                        if roots_changed {
                            self.roots_changed.send_modify(|n| *n += 1);
                        }
                        tracing::info!(dir = %dir.display(), roots_changed, "reloaded the plug-in CA");
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "the plug-in CA's new files are unusable; the current CA keeps signing")
                    }
                }
            }
        })
    }
}

/// The four files' contents, hashed: cheap for a handful of small files.
fn fingerprint(dir: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for name in oxmesh_identity::ca::files::NAMES {
        std::fs::read(dir.join(name)).ok().hash(&mut hasher);
    }
    hasher.finish()
}

impl Signer for LiveAuthority {
    async fn issue(
        &self,
        request: &SigningRequest,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedChain, SignError> {
        self.current().sign(request, identity, ttl)
    }
}
