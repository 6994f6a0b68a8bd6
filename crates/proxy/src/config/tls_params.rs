//! `tls_params` of a gateway server's TLS: the protocol versions and TLS 1.2
//! cipher suites it takes (a Gateway server's `minProtocolVersion`,
//! `maxProtocolVersion` and `cipherSuites`). rustls speaks TLS 1.2 and 1.3
//! only, and of TLS 1.2 only the ECDHE AEAD suites; TLS 1.3's suites are not
//! configurable, as in Envoy.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsParameters;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use rustls::crypto::ring::cipher_suite;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// What a server chain allows.
#[derive(Clone, Debug, Default)]
pub struct TlsParams {
    /// The versions; empty: rustls' defaults (1.3 and 1.2).
    pub versions: Vec<&'static SupportedProtocolVersion>,
    /// TLS 1.2 suites, in the order given; `None`: rustls' defaults.
    pub tls12_suites: Option<Vec<SupportedCipherSuite>>,
}

/// A TLS 1.2 suite by the name Envoy (BoringSSL) gives it.
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => {
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "ECDHE-RSA-CHACHA20-POLY1305" => cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// The suite names of an entry: one, or BoringSSL's equal-preference group
/// `[A|B]`.
fn names(entry: &str) -> impl Iterator<Item = &str> {
    let inner = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    inner.split('|').map(str::trim)
}

impl TlsParams {
    /// From Envoy's `tls_params`. Versions rustls cannot speak are left out
    /// (a minimum of TLS 1.0 serves 1.2 and up); a range that leaves none,
    /// or cipher suites of which none can serve TLS 1.2 when 1.2 is allowed,
    /// is refused. Suites rustls lacks are skipped with a warning, as a
    /// server offering fewer suites still serves.
    pub fn from_envoy(params: Option<&TlsParameters>) -> Result<Self, String> {
        let Some(params) = params else {
            return Ok(Self::default());
        };
        let version = |v: i32| TlsProtocol::try_from(v).unwrap_or(TlsProtocol::TlsAuto);
        let (min, max) = (
            version(params.tls_minimum_protocol_version),
            version(params.tls_maximum_protocol_version),
        );
        let tls12 = min <= TlsProtocol::TlSv12
            && matches!(
                max,
                TlsProtocol::TlsAuto | TlsProtocol::TlSv12 | TlsProtocol::TlSv13
            );
        let tls13 = matches!(max, TlsProtocol::TlsAuto | TlsProtocol::TlSv13);
        let mut versions = Vec::new();
        if tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if tls12 {
            versions.push(&rustls::version::TLS12);
        }
        if versions.is_empty() {
            return Err(format!(
                "TLS versions {min:?} to {max:?}: only TLS 1.2 and 1.3 are spoken"
            ));
        }
        let tls12_suites = if params.cipher_suites.is_empty() {
            None
        } else {
            let mut known = Vec::new();
            for name in params.cipher_suites.iter().flat_map(|e| names(e)) {
                match tls12_suite(name) {
                    Some(suite) => known.push(suite),
                    None => {
                        tracing::warn!(suite = %name, "TLS 1.2 cipher suite not supported; skipped")
                    }
                }
            }
            if known.is_empty() && tls12 {
                return Err(format!(
                    "none of the cipher suites {:?} is supported (ECDHE with AES-GCM or ChaCha20-Poly1305)",
                    params.cipher_suites
                ));
            }
            Some(known)
        };
        Ok(Self {
            versions,
            tls12_suites,
        })
    }

    /// The ring provider narrowed to the allowed TLS 1.2 suites (TLS 1.3's
    /// all kept).
    pub fn provider(&self) -> rustls::crypto::CryptoProvider {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suites) = &self.tls12_suites {
            provider
                .cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13);
            provider.cipher_suites.extend(suites.iter().copied());
        }
        provider
    }

    /// The versions to build with.
    pub fn versions(&self) -> &[&'static SupportedProtocolVersion] {
        if self.versions.is_empty() {
            rustls::DEFAULT_VERSIONS
        } else {
            &self.versions
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(min: TlsProtocol, max: TlsProtocol, suites: &[&str]) -> Result<TlsParams, String> {
        TlsParams::from_envoy(Some(&TlsParameters {
            tls_minimum_protocol_version: min as i32,
            tls_maximum_protocol_version: max as i32,
            cipher_suites: suites.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }))
    }

    #[test]
    fn versions_are_narrowed_to_what_rustls_speaks() {
        let only13 = params(TlsProtocol::TlSv13, TlsProtocol::TlsAuto, &[]).expect("1.3");
        assert_eq!(only13.versions, [&rustls::version::TLS13]);
        let only12 = params(TlsProtocol::TlsAuto, TlsProtocol::TlSv12, &[]).expect("1.2");
        assert_eq!(only12.versions, [&rustls::version::TLS12]);
        let from10 = params(TlsProtocol::TlSv10, TlsProtocol::TlsAuto, &[]).expect("1.0+");
        assert_eq!(from10.versions.len(), 2);
        assert!(params(TlsProtocol::TlSv10, TlsProtocol::TlSv11, &[]).is_err());
    }

    #[test]
    fn cipher_suites_narrow_tls12_only() {
        let p = params(
            TlsProtocol::TlsAuto,
            TlsProtocol::TlsAuto,
            &[
                "ECDHE-RSA-AES256-GCM-SHA384",
                "AES128-SHA",
                "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
            ],
        )
        .expect("one known suite");
        let provider = p.provider();
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            [
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        );
        assert!(
            params(TlsProtocol::TlsAuto, TlsProtocol::TlsAuto, &["AES128-SHA"]).is_err(),
            "nothing left for TLS 1.2"
        );
    }
}
