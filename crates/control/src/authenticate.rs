//! Who is calling: the CA signs only for the identity the caller proves. Locally
//! the proof is a token the control plane itself signed; on Kubernetes it is a
//! service-account JWT checked with a TokenReview (`token_review`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use oxmesh_identity::SpiffeId;
use oxmesh_identity::token::{Bearer, CA_AUDIENCE, TokenAuthority};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the `authorization` header")]
    NoToken,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// Proves who holds a token: its identity, and the node it is bound to
/// when it is a pod's (Kubernetes) or a node proxy's (the testbed).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Bearer, AuthError>> + Send;
}

/// Tokens minted by this control plane (`oxmesh ca token`, the local testbed).
#[derive(Clone)]
pub struct LocalTokens(pub Arc<TokenAuthority>);

impl Authenticator for LocalTokens {
    async fn authenticate(&self, token: &str) -> Result<Bearer, AuthError> {
        self.0
            .verify_bearer(token, CA_AUDIENCE)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

/// The token in `authorization: Bearer <token>`.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::NoToken)?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::NoToken)
}

/// ADS callers on 15012 prove themselves as CA callers do, with their token.
pub struct XdsCallers<A>(pub A);

impl<A: Authenticator + Clone> oxmesh_xds::ads::Authenticate for XdsCallers<A> {
    fn caller(
        &self,
        authorization: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Result<SpiffeId, tonic::Status>> + Send>> {
        let authenticator = self.0.clone();
        Box::pin(async move {
            let token = authorization
                .as_deref()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(AuthError::NoToken)
                .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
            authenticator
                .authenticate(token)
                .await
                .map(|bearer| bearer.identity)
                .map_err(|e| tonic::Status::unauthenticated(e.to_string()))
        })
    }
}
