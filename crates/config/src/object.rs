//! A typed mesh object: its kind, metadata, where it was written, and its body.

use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::diagnostic::{ObjectRef, Origin};
use crate::gateway_api;
use crate::kind::Kind;
use crate::networking::{
    destination_rule::DestinationRule, envoy_filter::EnvoyFilter, gateway::Gateway,
    proxy_config::ProxyConfig, service_entry::ServiceEntry, sidecar::Sidecar,
    virtual_service::VirtualService, workload_entry::WorkloadEntry, workload_entry::WorkloadGroup,
};
use crate::security::{
    authorization_policy::AuthorizationPolicy, peer_authentication::PeerAuthentication,
    request_authentication::RequestAuthentication,
};
use crate::telemetry::Telemetry;
use crate::wasm_plugin::WasmPlugin;

/// The namespace an object without one lands in, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub kind: Kind,
    /// The `apiVersion` it was written with (`networking.istio.io/v1beta1`).
    pub api_version: String,
    pub meta: ObjectMeta,
    pub origin: Origin,
    pub resource: Resource,
}

impl Object {
    pub fn name(&self) -> &str {
        self.meta.name.as_deref().unwrap_or_default()
    }

    /// The namespace, or `default` for namespaced kinds written without one.
    pub fn namespace(&self) -> Option<&str> {
        if !self.kind.is_namespaced() {
            return None;
        }
        Some(self.meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE))
    }

    pub fn reference(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind,
            namespace: self.namespace().map(str::to_owned),
            name: self.name().to_owned(),
        }
    }
}

/// The body of an object. Custom resources hold their `spec`; Kubernetes objects
/// are kept whole, minus the metadata that `Object` holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    Gateway(Box<Gateway>),
    ServiceEntry(Box<ServiceEntry>),
    Sidecar(Box<Sidecar>),
    WorkloadEntry(Box<WorkloadEntry>),
    WorkloadGroup(Box<WorkloadGroup>),
    EnvoyFilter(Box<EnvoyFilter>),
    ProxyConfig(Box<ProxyConfig>),
    PeerAuthentication(Box<PeerAuthentication>),
    RequestAuthentication(Box<RequestAuthentication>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    Telemetry(Box<Telemetry>),
    WasmPlugin(Box<WasmPlugin>),
    GatewayClass(Box<gateway_api::GatewayClass>),
    KubernetesGateway(Box<gateway_api::Gateway>),
    HttpRoute(Box<gateway_api::HttpRoute>),
    GrpcRoute(Box<gateway_api::GrpcRoute>),
    TcpRoute(Box<gateway_api::TcpRoute>),
    TlsRoute(Box<gateway_api::TlsRoute>),
    ReferenceGrant(Box<gateway_api::ReferenceGrant>),
    Namespace(Box<core::Namespace>),
    /// A node: the mesh reads only its labels (locality), in the object's metadata.
    Node,
    Service(Box<core::Service>),
    Endpoints(Box<core::Endpoints>),
    EndpointSlice(Box<discovery::EndpointSlice>),
    Pod(Box<crate::pod::Pod>),
    ServiceAccount(Box<core::ServiceAccount>),
    Secret(Box<core::Secret>),
    ConfigMap(Box<core::ConfigMap>),
    Deployment(Box<apps::Deployment>),
    StatefulSet(Box<apps::StatefulSet>),
    DaemonSet(Box<apps::DaemonSet>),
    ReplicaSet(Box<apps::ReplicaSet>),
    Job(Box<batch::Job>),
    CronJob(Box<batch::CronJob>),
}
