//! The JWKS resolver: the public keys of the issuers RequestAuthentications
//! name by `jwksUri` (or by issuer, through OIDC discovery), fetched by the
//! control plane and sent to proxies inline, as istiod does by default.
//!
//! A key set is fetched the first time a push needs it (bounded by the rule's
//! `timeout`), cached, and refreshed in the background; a changed key set
//! triggers a push, so a rotation reaches proxies without a restart. A URI
//! that cannot be fetched gets [`FAIL_CLOSED_JWKS`]: a token of that issuer
//! is refused, a request without one is left to authorization.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Uri;
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A key set no token verifies against: one RSA "key" whose modulus is even
/// (2^2047), which no private key can belong to and every verifier refuses.
/// Sent instead of a key set that could not be fetched, so a token of that
/// issuer gets 401 `Jwt verification fails`, as with Istio's fallback key.
pub const FAIL_CLOSED_JWKS: &str = concat!(
    r#"{"keys":[{"kty":"RSA","e":"AQAB","n":""#,
    "gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    r#""}]}"#
);
/// Istio's default time allowed for one fetch (a rule's `timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Istio's default refresh period (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(20 * 60);
/// After a failed round the next comes this soon, then twice as late each
/// time, up to [`MAX_RETRY`] (Istio's back-off).
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(60 * 60);
/// A key set larger than this is refused.
const MAX_BODY: usize = 1024 * 1024;
const ACCEPT: &str = "application/json";
/// The longest a push waits for one fetch, whatever the rule's `timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// Which keys: the issuer, and the URI (empty: the issuer's OIDC discovery
/// document names it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JwksSource {
    pub issuer: String,
    pub uri: String,
}

/// The key sets fetched so far, as a push uses them.
#[derive(Debug, Default)]
pub struct JwtKeys {
    keys: HashMap<JwksSource, Arc<str>>,
}

impl JwtKeys {
    /// The key set of `source`, or [`FAIL_CLOSED_JWKS`] when it has not
    /// been fetched.
    pub fn get(&self, source: &JwksSource) -> &str {
        self.keys
            .get(source)
            .map(|k| &**k)
            .unwrap_or(FAIL_CLOSED_JWKS)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not an http or https URI")]
    Uri(String),
    #[error("{uri}: {reason}")]
    Failed { uri: String, reason: String },
    #[error("{uri}: timed out after {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
}

/// How the control plane fetches key sets.
#[derive(Clone, Debug)]
pub struct Settings {
    /// PEM certificates trusted beside the system's roots (Istio's
    /// `/cacerts/extra.pem`).
    pub extra_roots: Option<std::path::PathBuf>,
    pub refresh: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            extra_roots: None,
            refresh: DEFAULT_REFRESH,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("JWKS roots {path}: {reason}")]
pub struct RootsError {
    path: String,
    reason: String,
}

pub struct JwksResolver {
    cache: Mutex<HashMap<JwksSource, Arc<str>>>,
    /// Sources whose last fetch failed: later pushes do not wait for them
    /// again (they get the fail-closed set); the refresh retries them.
    failed: Mutex<std::collections::HashSet<JwksSource>>,
    /// What the last push needed: what the refresh fetches.
    wanted: Mutex<Vec<(JwksSource, Duration)>>,
    tls: Arc<rustls::ClientConfig>,
    changed: watch::Sender<u64>,
    refresh: Duration,
}

impl JwksResolver {
    /// A resolver as `settings` say; an extra roots file that cannot be read
    /// is an error, not silently ignored.
    pub fn from_settings(settings: &Settings) -> Result<Arc<Self>, RootsError> {
        let mut extra = Vec::new();
        if let Some(path) = &settings.extra_roots {
            let error = |reason: String| RootsError {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
            for block in pem::parse_many(&text).map_err(|e| error(e.to_string()))? {
                extra.push(CertificateDer::from(block.into_contents()));
            }
        }
        Ok(Self::new(extra, settings.refresh))
    }

    /// Trusts the system's roots and `extra_roots`; refreshes every `refresh`.
    pub fn new(extra_roots: Vec<CertificateDer<'static>>, refresh: Duration) -> Arc<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for cert in extra_roots {
            if let Err(e) = roots.add(cert) {
                tracing::warn!("an extra JWKS root is not a usable certificate: {e}");
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| unreachable_versions());
        Arc::new(Self {
            cache: Mutex::default(),
            failed: Mutex::default(),
            wanted: Mutex::default(),
            tls: Arc::new(tls),
            changed: watch::Sender::new(0),
            refresh,
        })
    }

    /// Signalled when a refresh changed a key set.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The key sets of `wanted`: cached ones at once, the others fetched now,
    /// together, each within its timeout. Key sets no longer wanted are
    /// forgotten, and the refresh keeps the wanted ones current.
    pub async fn resolve(
        self: &Arc<Self>,
        wanted: impl IntoIterator<Item = (JwksSource, Duration)>,
    ) -> Arc<JwtKeys> {
        let mut wanted: Vec<(JwksSource, Duration)> = wanted.into_iter().collect();
        wanted.sort();
        wanted.dedup_by(|a, b| a.0 == b.0);
        let mut fetches = tokio::task::JoinSet::new();
        {
            let mut cache = self.lock();
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            let is_wanted = |source: &JwksSource| wanted.iter().any(|(s, _)| s == source);
            cache.retain(|source, _| is_wanted(source));
            failed.retain(is_wanted);
            let missing = wanted
                .iter()
                .filter(|(s, _)| !cache.contains_key(s) && !failed.contains(s));
            for (source, timeout) in missing {
                let timeout = (*timeout).min(MAX_TIMEOUT);
                let (resolver, source) = (self.clone(), source.clone());
                fetches.spawn(async move {
                    let fetched = resolver.fetch(&source, timeout).await;
                    (source, fetched)
                });
            }
        }
        *self.wanted.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
        while let Some(Ok((source, fetched))) = fetches.join_next().await {
            match fetched {
                Ok(keys) => {
                    self.lock().insert(source, keys.into());
                }
                Err(e) => {
                    tracing::warn!(issuer = %source.issuer, "cannot fetch the JWKS, tokens of this issuer are refused until it can be: {e}");
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(source);
                }
            }
        }
        self.snapshot()
    }

    fn snapshot(&self) -> Arc<JwtKeys> {
        Arc::new(JwtKeys {
            keys: self.lock().clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JwksSource, Arc<str>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refetches every wanted key set each period, and retries sooner (one
    /// minute, doubling up to an hour) while some could not be fetched.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let resolver = self.clone();
        tokio::spawn(async move {
            let mut wait = resolver.refresh;
            loop {
                // A source a push could not fetch is retried within a minute.
                let pending = !resolver
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if pending && wait == resolver.refresh {
                    wait = FIRST_RETRY.min(resolver.refresh);
                }
                tokio::time::sleep(wait).await;
                let sources = resolver
                    .wanted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let failed = resolver.refresh_round(sources).await;
                wait = match failed {
                    false => resolver.refresh,
                    true if wait >= resolver.refresh => FIRST_RETRY.min(resolver.refresh),
                    true => (wait * 2).min(MAX_RETRY),
                };
            }
        })
    }

    /// One refresh of `sources`; whether any fetch failed.
    async fn refresh_round(&self, sources: Vec<(JwksSource, Duration)>) -> bool {
        let mut failed = false;
        let mut changed = false;
        for (source, timeout) in sources {
            match self.fetch(&source, timeout.min(MAX_TIMEOUT)).await {
                Ok(keys) => {
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&source);
                    let keys: Arc<str> = keys.into();
                    let old = self.lock().insert(source.clone(), keys.clone());
                    if old.is_none_or(|old| !same_keys(&old, &keys)) {
                        tracing::info!(issuer = %source.issuer, "JWKS changed");
                        changed = true;
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(issuer = %source.issuer, "JWKS refresh failed, keeping the last keys: {e}");
                }
            }
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        failed
    }

    async fn fetch(&self, source: &JwksSource, timeout: Duration) -> Result<String, FetchError> {
        let uri = if source.uri.is_empty() {
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                source.issuer.trim_end_matches('/')
            );
            let body = self.get(&discovery, timeout).await?;
            let document: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| failed(&discovery, e))?;
            match document.get("jwks_uri").and_then(|u| u.as_str()) {
                Some(uri) => uri.to_owned(),
                None => {
                    return Err(failed(
                        &discovery,
                        "no \"jwks_uri\" in the discovery document",
                    ));
                }
            }
        } else {
            source.uri.clone()
        };
        let body = self.get(&uri, timeout).await?;
        let text = String::from_utf8(body.to_vec()).map_err(|e| failed(&uri, e))?;
        let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|e| failed(&uri, e))?;
        if !parsed.get("keys").is_some_and(|k| k.is_array()) {
            return Err(failed(
                &uri,
                "the body is not a JSON object with a \"keys\" list",
            ));
        }
        Ok(text)
    }

    /// One GET, no keep-alive, no redirects.
    async fn get(&self, uri: &str, timeout: Duration) -> Result<Bytes, FetchError> {
        let parsed: Uri = uri.parse().map_err(|_| FetchError::Uri(uri.to_owned()))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Uri(uri.to_owned())),
        };
        let host = parsed
            .host()
            .ok_or_else(|| FetchError::Uri(uri.to_owned()))?;
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let request = async {
            let tcp = connect(host, port).await.map_err(|e| failed(uri, e))?;
            if https {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| failed(uri, e))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| failed(uri, e))?;
                crate::http_get::get(tls, &parsed, ACCEPT, MAX_BODY).await
            } else {
                crate::http_get::get(tcp, &parsed, ACCEPT, MAX_BODY).await
            }
            .map_err(|e| failed(uri, e))
        };
        tokio::time::timeout(timeout, request)
            .await
            .map_err(|_| FetchError::Timeout {
                uri: uri.to_owned(),
                timeout,
            })?
    }
}

fn failed(uri: &str, reason: impl std::fmt::Display) -> FetchError {
    FetchError::Failed {
        uri: uri.to_owned(),
        reason: reason.to_string(),
    }
}

#[cold]
fn unreachable_versions() -> rustls::ClientConfig {
    // ring supports TLS 1.2 and 1.3, so the safe defaults always build.
    panic!("rustls with ring lacks the default protocol versions")
}

/// Dials `host:port`, refusing link-local addresses (cloud metadata
/// services live there), as istiod's JWKS client does.
async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let host = host.trim_matches(['[', ']']);
    let addrs = tokio::net::lookup_host((host, port)).await?;
    let mut last = std::io::Error::other("no address");
    for addr in addrs {
        if is_link_local(addr.ip()) {
            last = std::io::Error::other(format!("{} is link-local, refused", addr.ip()));
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// Whether two key sets hold the same keys, whatever their order.
fn same_keys(a: &str, b: &str) -> bool {
    let keys = |text: &str| {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let mut keys: Vec<String> = value["keys"]
            .as_array()
            .map(|keys| keys.iter().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    keys(a) == keys(b)
}
