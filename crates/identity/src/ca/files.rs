//! The CA's files, in Istio's layout (`cacerts` / `istio-ca-secret`).

use std::fs;
use std::path::Path;

use rustls_pki_types::CertificateDer;

use super::CaError;
use crate::certificate::{pem_certificates, to_pem};

pub const NAMES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// The signing certificate and key, the chain above it and the roots.
pub struct CaFiles {
    pub cert: CertificateDer<'static>,
    pub key_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl CaFiles {
    /// Reads the four files; `Ok(None)` when none exists (a CA may be created), an
    /// error when only some do or one is unreadable.
    pub fn read(dir: &Path) -> Result<Option<Self>, CaError> {
        let present: Vec<&'static str> = NAMES
            .iter()
            .copied()
            .filter(|n| dir.join(n).exists())
            .collect();
        if present.is_empty() {
            return Ok(None);
        }
        // cert-chain.pem may be empty (a self-signed root has no chain) but must exist.
        if present.len() < NAMES.len() {
            let missing = NAMES
                .iter()
                .copied()
                .filter(|n| !present.contains(n))
                .collect();
            return Err(CaError::Incomplete {
                dir: dir.display().to_string(),
                found: present,
                missing,
            });
        }
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).map_err(|e| CaError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let certs =
            |name: &str, allow_empty: bool| -> Result<Vec<CertificateDer<'static>>, CaError> {
                let bytes = read(name)?;
                if allow_empty && bytes.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Vec::new());
                }
                pem_certificates(&bytes).map_err(|e| CaError::File {
                    path: dir.join(name).display().to_string(),
                    reason: e.to_string(),
                })
            };
        let cert = certs("ca-cert.pem", false)?.swap_remove(0);
        let key_pem = String::from_utf8(read("ca-key.pem")?).map_err(|_| CaError::File {
            path: dir.join("ca-key.pem").display().to_string(),
            reason: "not PEM text".to_owned(),
        })?;
        Ok(Some(Self {
            cert,
            key_pem,
            chain: certs("cert-chain.pem", true)?,
            roots: certs("root-cert.pem", false)?,
        }))
    }

    /// Writes the four files, the key readable by its owner only. Each file is
    /// written to a temporary name first, so a crash never leaves half a file.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        let fail = |path: &Path, e: std::io::Error| CaError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        let contents = [
            (
                "ca-cert.pem",
                to_pem(std::slice::from_ref(&self.cert)),
                false,
            ),
            ("ca-key.pem", self.key_pem.clone(), true),
            ("cert-chain.pem", to_pem(&self.chain), false),
            ("root-cert.pem", to_pem(&self.roots), false),
        ];
        for (name, text, secret) in contents {
            let path = dir.join(name);
            let mode = if secret { 0o600 } else { 0o644 };
            crate::file::write_atomically(&path, text.as_bytes(), mode)
                .map_err(|e| fail(&path, e))?;
        }
        Ok(())
    }
}
