//! The kinds oxmesh reads, with the API groups and versions each is served at.

use std::fmt;

/// Every object kind the mesh reads. Anything else in the input is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    // networking.istio.io
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    WorkloadGroup,
    EnvoyFilter,
    ProxyConfig,
    // security.istio.io
    PeerAuthentication,
    RequestAuthentication,
    AuthorizationPolicy,
    // telemetry.istio.io, extensions.istio.io
    Telemetry,
    WasmPlugin,
    // gateway.networking.k8s.io
    GatewayClass,
    KubernetesGateway,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    TlsRoute,
    ReferenceGrant,
    // Kubernetes core and apps
    Namespace,
    Node,
    Service,
    Endpoints,
    EndpointSlice,
    Pod,
    ServiceAccount,
    Secret,
    ConfigMap,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
}

/// How strictly a kind's objects are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Istio and Gateway API custom resources: unknown fields are errors, as with
    /// `kubectl --validate=strict`.
    Strict,
    /// Kubernetes built-in objects: fields oxmesh does not model are ignored.
    Lenient,
}

const NETWORKING: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";
const TELEMETRY: &str = "telemetry.istio.io";
const EXTENSIONS: &str = "extensions.istio.io";
const GATEWAY_API: &str = "gateway.networking.k8s.io";

const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

impl Kind {
    pub const ALL: [Kind; 36] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::EnvoyFilter,
        Kind::ProxyConfig,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::AuthorizationPolicy,
        Kind::Telemetry,
        Kind::WasmPlugin,
        Kind::GatewayClass,
        Kind::KubernetesGateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TcpRoute,
        Kind::TlsRoute,
        Kind::ReferenceGrant,
        Kind::Namespace,
        Kind::Node,
        Kind::Service,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::ReplicaSet,
        Kind::Job,
        Kind::CronJob,
    ];

    /// The `kind:` field as written on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway | Kind::KubernetesGateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::ProxyConfig => "ProxyConfig",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Telemetry => "Telemetry",
            Kind::WasmPlugin => "WasmPlugin",
            Kind::GatewayClass => "GatewayClass",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
        }
    }

    /// The API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::Sidecar
            | Kind::WorkloadEntry
            | Kind::WorkloadGroup
            | Kind::EnvoyFilter
            | Kind::ProxyConfig => NETWORKING,
            Kind::PeerAuthentication | Kind::RequestAuthentication | Kind::AuthorizationPolicy => {
                SECURITY
            }
            Kind::Telemetry => TELEMETRY,
            Kind::WasmPlugin => EXTENSIONS,
            Kind::GatewayClass
            | Kind::KubernetesGateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TcpRoute
            | Kind::TlsRoute
            | Kind::ReferenceGrant => GATEWAY_API,
            Kind::Namespace
            | Kind::Node
            | Kind::Service
            | Kind::Endpoints
            | Kind::Pod
            | Kind::ServiceAccount
            | Kind::Secret
            | Kind::ConfigMap => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet | Kind::ReplicaSet => "apps",
            Kind::Job | Kind::CronJob => "batch",
        }
    }

    /// The versions the group serves this kind at, preferred first.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::EnvoyFilter => &["v1alpha3"],
            Kind::ProxyConfig => &["v1beta1"],
            Kind::PeerAuthentication | Kind::RequestAuthentication | Kind::AuthorizationPolicy => {
                &["v1", "v1beta1"]
            }
            Kind::Telemetry => &["v1", "v1alpha1"],
            Kind::WasmPlugin => &["v1alpha1"],
            Kind::GatewayClass | Kind::KubernetesGateway | Kind::HttpRoute | Kind::GrpcRoute => {
                &["v1", "v1beta1"]
            }
            Kind::ReferenceGrant => &["v1", "v1beta1", "v1alpha2"],
            // The experimental channel's, as Istio reads them.
            Kind::TcpRoute => &["v1alpha2"],
            Kind::TlsRoute => &["v1", "v1alpha3", "v1alpha2"],
            k if k.group() == NETWORKING => NETWORKING_VERSIONS,
            _ => &["v1"],
        }
    }

    pub fn strictness(self) -> Strictness {
        if self.is_custom_resource() {
            Strictness::Strict
        } else {
            Strictness::Lenient
        }
    }

    /// Istio's and the Gateway API's kinds, as opposed to Kubernetes' built-ins.
    pub fn is_custom_resource(self) -> bool {
        self.group().ends_with(".istio.io") || self.group() == GATEWAY_API
    }

    /// Kinds whose CRD marks `spec` as required; the others may omit it.
    pub fn spec_required(self) -> bool {
        matches!(
            self,
            Kind::ServiceEntry
                | Kind::WorkloadEntry
                | Kind::WorkloadGroup
                | Kind::WasmPlugin
                | Kind::GatewayClass
                | Kind::KubernetesGateway
                | Kind::HttpRoute
                | Kind::GrpcRoute
                | Kind::TcpRoute
                | Kind::TlsRoute
                | Kind::ReferenceGrant
        )
    }

    /// Namespaces and Nodes, and nothing else the mesh reads, live outside
    /// namespaces.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::GatewayClass)
    }

    /// Finds the kind for an `apiVersion`/`kind` pair.
    pub fn resolve(api_version: &str, kind: &str) -> Resolution {
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let mut group_known = false;
        for candidate in Kind::ALL {
            if candidate.group() != group {
                continue;
            }
            group_known = true;
            if candidate.name() != kind {
                continue;
            }
            return if candidate.versions().contains(&version) {
                Resolution::Known(candidate)
            } else {
                Resolution::UnservedVersion(candidate)
            };
        }
        if group_known
            && Kind::ALL
                .iter()
                .any(|k| k.group() == group && k.is_custom_resource())
        {
            Resolution::UnknownKindInGroup
        } else {
            Resolution::NotRead
        }
    }
}

/// What `Kind::resolve` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Known(Kind),
    /// The kind exists but not at this version: an error, the object cannot be read.
    UnservedVersion(Kind),
    /// An Istio or Gateway API group, but a kind it does not have: an error, a typo.
    UnknownKindInGroup,
    /// A kind the mesh does not read (a ClusterRole, a CRD, ...): skipped.
    NotRead,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_versions() {
        assert_eq!(
            Kind::resolve("networking.istio.io/v1alpha3", "VirtualService"),
            Resolution::Known(Kind::VirtualService)
        );
        assert_eq!(
            Kind::resolve("gateway.networking.k8s.io/v1", "Gateway"),
            Resolution::Known(Kind::KubernetesGateway)
        );
        assert_eq!(
            Kind::resolve("v1", "Service"),
            Resolution::Known(Kind::Service)
        );
        assert_eq!(
            Kind::resolve("networking.istio.io/v2", "VirtualService"),
            Resolution::UnservedVersion(Kind::VirtualService)
        );
        assert_eq!(
            Kind::resolve("networking.istio.io/v1", "VirtualSrvice"),
            Resolution::UnknownKindInGroup
        );
        assert_eq!(
            Kind::resolve("rbac.authorization.k8s.io/v1", "ClusterRole"),
            Resolution::NotRead
        );
        assert_eq!(Kind::resolve("v1", "PersistentVolume"), Resolution::NotRead);
    }
}
