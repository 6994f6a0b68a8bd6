//! The trust bundle: the roots a peer's chain must lead to. During a root rotation
//! it holds the old and the new root, so both generations of certificates verify.

use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::certificate::{CertificateError, pem_certificates, to_pem};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("trust bundle: {0}")]
    Pem(#[from] CertificateError),
    #[error("trust bundle: root {index} cannot be a trust anchor: {reason}")]
    Anchor { index: usize, reason: String },
}

#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| BundleError::Anchor {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { roots, anchors })
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, BundleError> {
        Self::new(pem_certificates(pem)?)
    }

    /// A bundle that trusts nothing: every peer fails until roots arrive.
    pub fn empty() -> Self {
        Self {
            roots: Vec::new(),
            anchors: Vec::new(),
        }
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn to_pem(&self) -> String {
        to_pem(&self.roots)
    }

    /// This bundle plus the roots of `other` it lacks (old and new during a rotation).
    pub fn merged(&self, other: &TrustBundle) -> TrustBundle {
        let mut merged = self.clone();
        for (root, anchor) in other.roots.iter().zip(&other.anchors) {
            if !merged.roots.contains(root) {
                merged.roots.push(root.clone());
                merged.anchors.push(anchor.clone());
            }
        }
        merged
    }
}
