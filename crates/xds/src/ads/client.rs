//! The client side of state-of-the-world ADS: a proxy's stream to the control
//! plane. Used by the sidecar's xDS agent, the CLI's end-to-end checks and tests.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the control plane at {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the control plane refused the stream: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
    #[error("cannot set up the connection: {0}")]
    Setup(String),
}

/// One ADS stream. The node goes with the first request only, as Envoy sends it.
pub struct SotwClient {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

/// `google.rpc.Code.INVALID_ARGUMENT`: what a NACK carries.
const INVALID_ARGUMENT: i32 = 3;

impl SotwClient {
    /// Opens a stream to `address` (`host:port`, plaintext).
    pub async fn connect(address: &str, node: Node) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            address: address.to_owned(),
            source,
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(connect_error)?
            .connect()
            .await
            .map_err(connect_error)?;
        Self::over(channel, node, None).await
    }

    /// Opens a stream to the control plane's TLS port at `address`, whose
    /// certificate must be for `server_name` and lead to one of `roots`,
    /// proving the caller with `authorization` (`Bearer <token>`).
    pub async fn connect_tls(
        address: &str,
        server_name: &str,
        roots: &[rustls::pki_types::CertificateDer<'static>],
        node: Node,
        authorization: Option<&str>,
    ) -> Result<Self, ClientError> {
        let setup = |e: String| ClientError::Setup(format!("TLS to {address}: {e}"));
        let config =
            crate::tls_connector::control_plane_config(roots).map_err(|e| setup(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|_| setup(format!("{server_name:?} is not a server name")))?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| setup(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_with_connector(crate::tls_connector::connector(
                std::sync::Arc::new(config),
                name,
            ))
            .await
            .map_err(|source| ClientError::Connect {
                address: address.to_owned(),
                source,
            })?;
        Self::over(channel, node, authorization).await
    }

    /// Opens a stream over `channel` (plaintext or TLS, already set up), with
    /// `authorization` (`Bearer <token>`) when the server asks who calls.
    pub async fn over(
        channel: tonic::transport::Channel,
        node: Node,
        authorization: Option<&str>,
    ) -> Result<Self, ClientError> {
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(super::MAX_RESPONSE_BYTES);
        let (requests, receiver) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        if let Some(value) = authorization {
            let value = value.parse().map_err(|_| {
                ClientError::Setup("the token is not a valid header value".to_owned())
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let responses = client
            .stream_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(Self {
            requests,
            responses,
            node: Some(node),
        })
    }

    async fn send(&mut self, request: DiscoveryRequest) -> Result<(), ClientError> {
        let request = DiscoveryRequest {
            node: self.node.take(),
            ..request
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Asks for `names` of `type_url` (none: everything, for clusters and listeners).
    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) -> Result<(), ClientError> {
        self.send(DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .await
    }

    /// Accepts `response`, keeping the subscription to `names`.
    pub async fn ack(
        &mut self,
        response: &DiscoveryResponse,
        names: &[&str],
    ) -> Result<(), ClientError> {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
    }

    /// Rejects `response`; `last_accepted` is the version the proxy keeps.
    pub async fn nack(
        &mut self,
        response: &DiscoveryResponse,
        names: &[&str],
        last_accepted: &str,
        reason: &str,
    ) -> Result<(), ClientError> {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            version_info: last_accepted.to_owned(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: INVALID_ARGUMENT,
                message: reason.to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await
    }

    /// The next response.
    pub async fn recv(&mut self) -> Result<DiscoveryResponse, ClientError> {
        self.responses.message().await?.ok_or(ClientError::Closed)
    }
}
