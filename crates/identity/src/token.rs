//! Bearer tokens for the CA when there is no Kubernetes: the control plane signs a
//! JWT (ES256) bound to a namespace and service account, for an audience, with an
//! expiry, and checks it when the workload asks for a certificate. On Kubernetes the
//! same check is made by a TokenReview of the pod's service-account token instead.

use std::path::Path;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::spiffe::{SpiffeId, TrustDomain};

/// The audience Istio's CA expects tokens for.
pub const CA_AUDIENCE: &str = "istio-ca";
const ISSUER: &str = "oxmesh";
const KEY_FILE: &str = "token-signing-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot sign the token: {0}")]
    Sign(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is for audience {found:?}, not {expected:?}")]
    Audience {
        expected: String,
        found: Vec<String>,
    },
    #[error("the token's signature is not the control plane's")]
    Signature,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token names {0:?}, not system:serviceaccount:<namespace>:<name>")]
    Subject(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    iat: u64,
    exp: u64,
    /// The node the bearer runs on, as a Kubernetes pod-bound token names it:
    /// a node proxy may ask for certificates of the pods on its node only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

/// What a valid token proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bearer {
    pub identity: SpiffeId,
    /// The node the token is bound to, if any.
    pub node: Option<String>,
}

/// Signs and checks tokens with one key kept in the state directory.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    trust_domain: TrustDomain,
}

impl TokenAuthority {
    /// Loads `state_dir/token-signing-key.pem`, creating it on first use.
    pub fn load_or_create(state_dir: &Path, trust_domain: TrustDomain) -> Result<Self, TokenError> {
        let path = state_dir.join(KEY_FILE);
        let fail = |reason: String| TokenError::Key {
            path: path.display().to_string(),
            reason,
        };
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| fail(e.to_string()))?;
                write_private(state_dir, &path, &key.serialize_pem())
                    .map_err(|e| fail(e.to_string()))?;
                key.serialize_pem()
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| fail(e.to_string()))?,
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
                .map_err(|e| fail(e.to_string()))?,
            trust_domain,
        })
    }

    /// A token for `namespace/service_account`, valid for `ttl`.
    pub fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        self.mint_on_node(namespace, service_account, audience, ttl, None)
    }

    /// A token as [`TokenAuthority::mint`], bound to `node` when given (the
    /// node proxy's, as the testbed's node proxies carry).
    pub fn mint_on_node(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        ttl: Duration,
        node: Option<&str>,
    ) -> Result<String, TokenError> {
        let now = unix_now();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            aud: vec![audience.to_owned()],
            iat: now,
            exp: now + ttl.as_secs(),
            node: node.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// The identity a token proves, if it is ours, current and for `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Result<SpiffeId, TokenError> {
        self.verify_bearer(token, audience).map(|b| b.identity)
    }

    /// The identity and node a token proves, as [`TokenAuthority::verify`].
    pub fn verify_bearer(&self, token: &str, audience: &str) -> Result<Bearer, TokenError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[ISSUER]);
        validation.validate_aud = false;
        validation.leeway = 30;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => {
                        TokenError::Signature
                    }
                    _ => TokenError::Malformed(e.to_string()),
                }
            })?;
        let claims = data.claims;
        if !claims.aud.iter().any(|a| a == audience) {
            return Err(TokenError::Audience {
                expected: audience.to_owned(),
                found: claims.aud,
            });
        }
        let parts: Vec<&str> = claims.sub.split(':').collect();
        let ["system", "serviceaccount", namespace, account] = parts.as_slice() else {
            return Err(TokenError::Subject(claims.sub));
        };
        let identity = SpiffeId::new(self.trust_domain.clone(), namespace, account)
            .map_err(|_| TokenError::Subject(claims.sub.clone()))?;
        Ok(Bearer {
            identity,
            node: claims.node,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_private(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(name: &str) -> (TokenAuthority, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("oxmesh-token-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (
            TokenAuthority::load_or_create(&dir, TrustDomain::cluster_local()).expect("authority"),
            dir,
        )
    }

    #[test]
    fn a_token_proves_its_service_account() {
        let (authority, dir) = authority("ok");
        let token = authority
            .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
            .expect("mint");
        let id = authority.verify(&token, CA_AUDIENCE).expect("verify");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/bar");
        // The key persists: a restarted control plane still accepts old tokens.
        let again =
            TokenAuthority::load_or_create(&dir, TrustDomain::cluster_local()).expect("reload");
        assert!(again.verify(&token, CA_AUDIENCE).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_token_may_name_its_node() {
        let (authority, dir) = authority("node");
        let token = authority
            .mint_on_node(
                "istio-system",
                "ztunnel",
                CA_AUDIENCE,
                Duration::from_secs(600),
                Some("node-a"),
            )
            .expect("mint");
        let bearer = authority
            .verify_bearer(&token, CA_AUDIENCE)
            .expect("verify");
        assert_eq!(bearer.node.as_deref(), Some("node-a"));
        let plain = authority
            .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
            .expect("mint");
        let bearer = authority
            .verify_bearer(&plain, CA_AUDIENCE)
            .expect("verify");
        assert_eq!(bearer.node, None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn refuses_wrong_audience_expired_and_foreign_tokens() {
        let (authority, dir) = authority("bad");
        let token = authority
            .mint("foo", "bar", "other", Duration::from_secs(600))
            .expect("mint");
        assert!(matches!(
            authority.verify(&token, CA_AUDIENCE),
            Err(TokenError::Audience { .. })
        ));
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:a:b".into(),
            aud: vec![CA_AUDIENCE.into()],
            iat: 1,
            exp: 2,
            node: None,
        };
        let old =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &authority.encoding)
                .expect("encode");
        assert!(matches!(
            authority.verify(&old, CA_AUDIENCE),
            Err(TokenError::Expired)
        ));
        let (stranger, other_dir) = self::authority("stranger");
        let forged = stranger
            .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
            .expect("mint");
        assert!(matches!(
            authority.verify(&forged, CA_AUDIENCE),
            Err(TokenError::Signature)
        ));
        assert!(matches!(
            authority.verify("not.a.jwt", CA_AUDIENCE),
            Err(TokenError::Malformed(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(other_dir);
    }
}
