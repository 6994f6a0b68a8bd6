//! Proxyless gRPC clients (node metadata `GENERATOR: grpc`): only what gRPC's
//! xDS client accepts, as Istio's gRPC generator does. Listeners are API
//! listeners named `<host>:<port>` (the target a client dials, under every name
//! it may use) pointing at the port's route configuration; clusters use round
//! robin (gRPC refuses LEAST_REQUEST), LOGICAL_DNS for DNS services, and mTLS
//! only when a DestinationRule asks for ISTIO_MUTUAL, through the certificate
//! provider gRPC's bootstrap names, never SDS.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    UpstreamTlsContext,
};
use envoy_types::util::pack_any;
use oxmesh_config::networking::destination_rule::ClientTlsMode;
use oxmesh_config::protocol::Protocol;

use super::cluster::{Outbound, mesh_sni};
use super::tls::{ROOT_CA, WORKLOAD_CERT};
use super::{http, route, tls};
use crate::proxy::ProxyClass;
use crate::push_context::PushContext;

/// The certificate provider instance Istio's gRPC bootstrap defines.
pub const CERTIFICATE_PROVIDER: &str = "default";

/// An API listener per name a client may dial for each HTTP-capable service port.
pub fn listeners(ctx: &PushContext, proxy: &ProxyClass) -> Vec<Listener> {
    let mut seen = std::collections::HashSet::new();
    let mut listeners = Vec::new();
    for service in ctx.services_for(proxy) {
        for port in service
            .ports
            .iter()
            .filter(|p| p.protocol.is_http() || p.protocol == Protocol::Unknown)
        {
            let suffix = format!(":{}", port.number);
            for name in route::domains(service, port.number, &proxy.namespace, &ctx.mesh.domain) {
                if name.ends_with(&suffix) && seen.insert(name.clone()) {
                    listeners.push(api_listener(name, port.number));
                }
            }
        }
    }
    listeners
}

fn api_listener(name: String, port: u16) -> Listener {
    // gRPC reads only the filters and the routes.
    let manager = HttpConnectionManager {
        http_filters: vec![http::router()],
        route_specifier: Some(http::rds(port.to_string())),
        ..Default::default()
    };
    Listener {
        name,
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    }
}

/// Makes an outbound cluster acceptable to gRPC; `None` for kinds gRPC cannot use
/// (original-destination clusters).
pub fn cluster(mut cluster: Cluster, outbound: &Outbound<'_>) -> Option<Cluster> {
    let kind = match &cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(kind)) => DiscoveryType::try_from(*kind).ok()?,
        _ => return None,
    };
    match kind {
        DiscoveryType::OriginalDst | DiscoveryType::Static => return None,
        DiscoveryType::StrictDns => {
            cluster.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32))
        }
        DiscoveryType::Eds | DiscoveryType::LogicalDns => {}
    }
    // gRPC's LOGICAL_DNS takes exactly one locality with one endpoint.
    if cluster.load_assignment.as_ref().is_some_and(|a| {
        a.endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum::<usize>()
            > 1
    }) {
        return None;
    }
    if cluster.lb_policy != LbPolicy::RingHash as i32 {
        cluster.lb_policy = LbPolicy::RoundRobin as i32;
    }
    cluster.transport_socket_matches.clear();
    let policy = outbound.policy();
    cluster.transport_socket = policy
        .tls
        .filter(|t| t.mode == ClientTlsMode::IstioMutual)
        .map(|_| {
            let sni = mesh_sni(
                outbound.port.number,
                outbound.subset.map_or("", |s| s.name.as_str()),
                outbound.service.hostname.as_str(),
            );
            tls::socket(mesh_tls(sni))
        });
    Some(cluster)
}

fn provider(certificate: &str) -> CertificateProviderPluginInstance {
    CertificateProviderPluginInstance {
        instance_name: CERTIFICATE_PROVIDER.to_owned(),
        certificate_name: certificate.to_owned(),
    }
}

fn mesh_tls(sni: String) -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(provider(WORKLOAD_CERT)),
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    ca_certificate_provider_instance: Some(provider(ROOT_CA)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        sni,
        ..Default::default()
    }
}
