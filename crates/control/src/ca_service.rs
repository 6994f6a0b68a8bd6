//! Istio's `CreateCertificate`: authenticate the caller, check that the CSR names
//! exactly the caller's identity (or, for a node proxy asking for a pod on its
//! node, the `ImpersonatedIdentity` it names), sign. A bounded number of requests are in
//! hand at once; past that a request is refused at once with
//! RESOURCE_EXHAUSTED, which proxies retry with back-off, so a storm of CSRs
//! cannot pile up work or starve xDS.

use std::sync::Arc;
use std::time::Duration;

use oxmesh_identity::SpiffeId;
use oxmesh_identity::ca::{SignError, Signer};
use oxmesh_identity::csr::{CsrError, SigningRequest};
use oxmesh_xds::istio_ca::istio_certificate_service_server::IstioCertificateService;
use oxmesh_xds::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::authenticate::{Authenticator, bearer};
use crate::node_authorizer::NodeAuthorizer;

/// The request metadata a node proxy names the pod's identity in.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Certificate requests in hand at once, by default.
pub const DEFAULT_IN_FLIGHT: usize = 256;

pub struct CaService<S, A> {
    signer: S,
    authenticator: A,
    in_flight: Arc<Semaphore>,
    /// Who may ask for others' certificates; nobody without it.
    node_authorizer: Option<NodeAuthorizer>,
}

impl<S: Signer, A: Authenticator> CaService<S, A> {
    pub fn new(signer: S, authenticator: A) -> Self {
        Self {
            signer,
            authenticator,
            in_flight: Arc::new(Semaphore::new(DEFAULT_IN_FLIGHT)),
            node_authorizer: None,
        }
    }

    /// Node proxies `authorizer` trusts may ask for their pods' certificates.
    pub fn with_node_authorizer(mut self, authorizer: NodeAuthorizer) -> Self {
        self.node_authorizer = Some(authorizer);
        self
    }

    /// The identity to sign for: the caller's own, or the one it may
    /// impersonate. Istio answers every refusal with the same words; the
    /// reason is added here, so the node proxy's log says what to fix.
    fn identity_for(
        &self,
        caller: oxmesh_identity::token::Bearer,
        metadata: Option<&prost_types::Struct>,
    ) -> Result<SpiffeId, Status> {
        let wanted = metadata
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
            .filter(|s| !s.is_empty());
        let Some(wanted) = wanted else {
            return Ok(caller.identity);
        };
        let refuse = |reason: String| {
            tracing::warn!(caller = %caller.identity, impersonated = wanted, %reason, "certificate request refused");
            Status::unauthenticated(format!(
                "request impersonation authentication failure: {reason}"
            ))
        };
        let target: SpiffeId = wanted
            .parse()
            .map_err(|e| refuse(format!("{wanted:?} is not a SPIFFE id: {e}")))?;
        let authorizer = self.node_authorizer.as_ref().ok_or_else(|| {
            refuse("no node proxy may impersonate: the CA trusts no node accounts".to_owned())
        })?;
        authorizer
            .check(&caller, &target)
            .map_err(|e| refuse(e.to_string()))?;
        Ok(target)
    }

    /// At most `requests` in hand at once.
    pub fn with_limit(mut self, requests: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(requests));
        self
    }
}

#[tonic::async_trait]
impl<S: Signer, A: Authenticator> IstioCertificateService for CaService<S, A> {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let Ok(_permit) = self.in_flight.try_acquire() else {
            tracing::warn!(%peer, "certificate request refused: the CA is at its limit");
            return Err(Status::resource_exhausted(
                "the CA has its limit of certificate requests in hand; retry with back-off",
            ));
        };
        let token = bearer(request.metadata()).map_err(|e| {
            tracing::warn!(%peer, error = %e, "certificate request refused");
            Status::unauthenticated(format!("request authenticate failure: {e}"))
        })?;
        let bearer = self.authenticator.authenticate(token).await.map_err(|e| {
            tracing::warn!(%peer, error = %e, "certificate request refused");
            Status::unauthenticated(format!("request authenticate failure: {e}"))
        })?;
        let body = request.into_inner();
        let caller = self.identity_for(bearer, body.metadata.as_ref())?;
        let csr = SigningRequest::from_pem(&body.csr)
            .map_err(|e| Status::invalid_argument(format!("CSR signing error ({e})")))?;
        if let Err(e) = csr.check_identity(&caller) {
            tracing::warn!(%peer, %caller, error = %e, "certificate request for another identity refused");
            return Err(match e {
                CsrError::IdentityMismatch { .. } => {
                    Status::permission_denied(format!("CSR signing error ({e})"))
                }
                other => Status::invalid_argument(format!("CSR signing error ({other})")),
            });
        }
        let ttl = u64::try_from(body.validity_duration)
            .map(Duration::from_secs)
            .map_err(|_| {
                Status::invalid_argument("CSR signing error (validity_duration is negative)")
            })?;
        let chain = self
            .signer
            .issue(&csr, &caller, Some(ttl))
            .await
            .map_err(|e| match e {
                SignError::TtlTooLong { .. } => {
                    Status::invalid_argument(format!("CSR signing error ({e})"))
                }
                other => Status::internal(format!("CSR signing error ({other})")),
            })?;
        tracing::info!(identity = %caller, %peer, "issued a workload certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.to_pem_elements(),
        }))
    }
}
