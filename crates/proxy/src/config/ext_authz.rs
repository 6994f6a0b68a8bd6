//! Envoy's external authorization filters (`envoy.filters.http.ext_authz`,
//! `envoy.filters.network.ext_authz`), as Istio generates them for CUSTOM
//! policies: which authorizer to ask (an HTTP service or the gRPC
//! `envoy.service.auth.v3.Authorization`, by cluster), when (only if the
//! request's metadata says a CUSTOM rule matched), and what to pass on.
//! Converted once here; [`crate::ext_authz`] asks.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as http_authz;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ext_authz::Services;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as network_authz;
use envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher;
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderName, HeaderValue, StatusCode};
use prost::Message;

use super::rbac::{MetadataMatch, metadata};
use super::string_match::Matcher;

pub const HTTP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub const NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";
/// Envoy's timeout when the service sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct ExtAuthz {
    pub service: Service,
    /// Asked only when this matches the request's metadata; `None`: always.
    pub enabled: Option<MetadataMatch>,
    /// An authorizer that fails or does not answer lets the request through.
    pub failure_mode_allow: bool,
    /// The answer when it fails and that is not allowed.
    pub status_on_error: StatusCode,
}

#[derive(Debug)]
pub enum Service {
    Http(HttpService),
    Grpc(GrpcService),
}

#[derive(Debug)]
pub struct HttpService {
    pub cluster: String,
    pub timeout: Duration,
    pub path_prefix: String,
    /// Request headers copied into the check, beside the ones Envoy always
    /// sends (Host, Method, Path, Content-Length, Authorization).
    pub allowed_headers: Vec<Matcher>,
    pub headers_to_add: Vec<(HeaderName, HeaderValue)>,
    /// Check-response headers added to the upstream request on allow.
    pub allowed_upstream_headers: Vec<Matcher>,
    /// Check-response headers sent to the client on deny; `None` (the list
    /// unset): all of them but Host, as Envoy does.
    pub allowed_client_headers: Option<Vec<Matcher>>,
    /// Check-response headers sent to the client on allow.
    pub allowed_client_headers_on_success: Vec<Matcher>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcService {
    pub cluster: String,
    pub authority: String,
    pub timeout: Duration,
}

pub fn http_filter(any: &Any) -> Result<ExtAuthz, String> {
    let config = http_authz::ExtAuthz::decode(any.value.as_slice())
        .map_err(|e| format!("ext_authz: {e}"))?;
    if config.with_request_body.is_some() {
        return Err("ext_authz with_request_body is not supported yet".to_owned());
    }
    let service = match &config.services {
        Some(Services::HttpService(h)) => Service::Http(http_service(h, &config)?),
        Some(Services::GrpcService(g)) => Service::Grpc(grpc_service(g)?),
        None => return Err("ext_authz without a service".to_owned()),
    };
    Ok(ExtAuthz {
        service,
        enabled: enabled(config.filter_enabled_metadata.as_ref())?,
        failure_mode_allow: config.failure_mode_allow,
        status_on_error: status_on_error(config.status_on_error.as_ref().map(|s| s.code))?,
    })
}

pub fn network_filter(any: &Any) -> Result<ExtAuthz, String> {
    let config = network_authz::ExtAuthz::decode(any.value.as_slice())
        .map_err(|e| format!("network ext_authz: {e}"))?;
    let grpc = config
        .grpc_service
        .as_ref()
        .ok_or("network ext_authz without a gRPC service")?;
    Ok(ExtAuthz {
        service: Service::Grpc(grpc_service(grpc)?),
        enabled: enabled(config.filter_enabled_metadata.as_ref())?,
        failure_mode_allow: config.failure_mode_allow,
        status_on_error: StatusCode::FORBIDDEN,
    })
}

fn enabled(
    m: Option<&envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher>,
) -> Result<Option<MetadataMatch>, String> {
    m.map(metadata)
        .transpose()
        .map_err(|e| format!("ext_authz filter_enabled_metadata: {e}"))
}

/// Envoy answers 403 when the authorizer fails, unless told otherwise.
fn status_on_error(code: Option<i32>) -> Result<StatusCode, String> {
    match code {
        None | Some(0) => Ok(StatusCode::FORBIDDEN),
        Some(code) => u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("ext_authz status_on_error {code} is not an HTTP status")),
    }
}

fn duration(d: Option<&envoy_types::pb::google::protobuf::Duration>) -> Duration {
    d.map_or(DEFAULT_TIMEOUT, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    })
}

fn http_service(
    h: &http_authz::HttpService,
    config: &http_authz::ExtAuthz,
) -> Result<HttpService, String> {
    let uri = h
        .server_uri
        .as_ref()
        .ok_or("ext_authz http_service without server_uri")?;
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) => c.clone(),
        None => return Err("ext_authz server_uri without a cluster".to_owned()),
    };
    let request = h.authorization_request.as_ref();
    let response = h.authorization_response.as_ref();
    let headers_to_add = request
        .map(|r| r.headers_to_add.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let name =
                HeaderName::try_from(h.key.as_str()).map_err(|e| format!("{:?}: {e}", h.key))?;
            let value = HeaderValue::from_str(&h.value).map_err(|e| format!("{:?}: {e}", h.key))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(HttpService {
        cluster,
        timeout: duration(uri.timeout.as_ref()),
        path_prefix: h.path_prefix.clone(),
        allowed_headers: list(config.allowed_headers.as_ref())?,
        headers_to_add,
        allowed_upstream_headers: list(response.and_then(|r| r.allowed_upstream_headers.as_ref()))?,
        allowed_client_headers: response
            .and_then(|r| r.allowed_client_headers.as_ref())
            .map(|l| list(Some(l)))
            .transpose()?,
        allowed_client_headers_on_success: list(
            response.and_then(|r| r.allowed_client_headers_on_success.as_ref()),
        )?,
    })
}

pub(crate) fn grpc_service(
    g: &envoy_types::pb::envoy::config::core::v3::GrpcService,
) -> Result<GrpcService, String> {
    match &g.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => Ok(GrpcService {
            cluster: e.cluster_name.clone(),
            authority: if e.authority.is_empty() {
                e.cluster_name.clone()
            } else {
                e.authority.clone()
            },
            timeout: duration(g.timeout.as_ref()),
        }),
        _ => Err("gRPC services must name an Envoy cluster (envoy_grpc)".to_owned()),
    }
}

fn list(l: Option<&ListStringMatcher>) -> Result<Vec<Matcher>, String> {
    l.map(|l| l.patterns.as_slice())
        .unwrap_or_default()
        .iter()
        .map(Matcher::from_envoy)
        .collect()
}
