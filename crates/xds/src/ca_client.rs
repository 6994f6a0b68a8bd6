//! Istio's `CreateCertificate`, called over TLS with a bearer token: how every proxy
//! gets its certificate from the control plane (port 15012).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oxmesh_identity::manager::{CaClient, CaClientError};
use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::istio_ca::IstioCertificateRequest;
use crate::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::tls_connector;

/// Where the bearer token comes from. A file is read at every call, because the
/// platform rotates it on disk.
#[derive(Clone, Debug)]
pub enum Token {
    File(PathBuf),
    Value(String),
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum CaClientSetupError {
    #[error("invalid CA address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("invalid CA server name {0:?}")]
    ServerName(String),
    #[error("cannot use the root certificates: {0}")]
    Roots(rustls::Error),
}

#[derive(Clone, Debug)]
pub struct GrpcCaClient {
    channel: Channel,
    token: Token,
    address: String,
    /// A node proxy asks for a pod's certificate with its own token.
    impersonating: Option<oxmesh_identity::SpiffeId>,
}

impl GrpcCaClient {
    /// A client for the CA at `address` (`host:port`), whose certificate must be for
    /// `server_name` and lead to one of `roots`. Connects lazily, and reconnects.
    pub fn new(
        address: &str,
        server_name: &str,
        roots: &[CertificateDer<'static>],
        token: Token,
    ) -> Result<Self, CaClientSetupError> {
        let config =
            tls_connector::control_plane_config(roots).map_err(CaClientSetupError::Roots)?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| CaClientSetupError::ServerName(server_name.to_owned()))?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| CaClientSetupError::Address {
                address: address.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let channel =
            endpoint.connect_with_connector_lazy(tls_connector::connector(Arc::new(config), name));
        Ok(Self {
            channel,
            token,
            address: address.to_owned(),
            impersonating: None,
        })
    }

    /// The same client asking for `identity`'s certificates, as a node proxy
    /// asks for its pods' (Istio's `ImpersonatedIdentity`).
    pub fn impersonating(&self, identity: oxmesh_identity::SpiffeId) -> Self {
        Self {
            impersonating: Some(identity),
            ..self.clone()
        }
    }

    fn bearer(&self) -> Result<Option<String>, CaClientError> {
        self.token.bearer().map_err(CaClientError::Refused)
    }
}

impl Token {
    /// The `authorization` header value, `Bearer <token>`; none for no token.
    pub fn bearer(&self) -> Result<Option<String>, String> {
        let token = match self {
            Token::None => return Ok(None),
            Token::Value(v) => v.clone(),
            Token::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?,
        };
        let token = token.trim();
        if token.is_empty() {
            return Err("the token is empty".to_owned());
        }
        Ok(Some(format!("Bearer {token}")))
    }
}

impl CaClient for GrpcCaClient {
    async fn create_certificate(
        &self,
        csr_pem: String,
        ttl: Duration,
    ) -> Result<Vec<String>, CaClientError> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: self.impersonating.as_ref().map(impersonation),
        });
        if let Some(bearer) = self.bearer()? {
            let value = bearer.parse().map_err(|_| {
                CaClientError::Refused("the token is not a valid header value".to_owned())
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = IstioCertificateServiceClient::new(self.channel.clone());
        match client.create_certificate(request).await {
            Ok(response) => Ok(response.into_inner().cert_chain),
            Err(status) => Err(classify(&self.address, status)),
        }
    }
}

/// The request metadata naming the identity a node proxy asks for.
fn impersonation(identity: &oxmesh_identity::SpiffeId) -> prost_types::Struct {
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
    };
    prost_types::Struct {
        fields: [("ImpersonatedIdentity".to_owned(), value)].into(),
    }
}

/// Transport trouble is worth retrying soon; a refusal needs someone to act.
fn classify(address: &str, status: tonic::Status) -> CaClientError {
    use tonic::Code;
    let detail = format!("{address}: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted => CaClientError::Unavailable(detail),
        _ => CaClientError::Refused(detail),
    }
}
