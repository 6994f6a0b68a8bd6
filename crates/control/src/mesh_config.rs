//! Mesh-wide settings (Istio's MeshConfig): what applies when no object says
//! otherwise.

use std::sync::Arc;
use std::time::Duration;

use oxmesh_config::extension_provider::ExtensionProvider;
use oxmesh_config::mesh::{self, OutboundMode};
use oxmesh_config::networking::destination_rule::LocalityLbSetting;
use oxmesh_config::object::Object;
use oxmesh_identity::TrustDomain;

#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The control plane's own trust domain (`--trust-domain`), the one its CA
    /// signs: the mesh config's `trustDomain` is not read, so what
    /// authorization policies call local is always what the certificates say.
    pub trust_domain: TrustDomain,
    /// Other trust domains whose identities authorization policies treat as
    /// local ones (`trustDomainAliases`), in the order written.
    pub trust_domain_aliases: Vec<String>,
    /// The cluster DNS domain (`cluster.local`).
    pub domain: String,
    /// Where mesh-wide policies live (`istio-system`).
    pub root_namespace: String,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    pub connect_timeout: Duration,
    /// External services CUSTOM policies name (`extensionProviders`).
    pub extension_providers: Vec<ExtensionProvider>,
    /// Proxies in front of the gateways whose `x-forwarded-for` entries are
    /// trusted (`defaultConfig.gatewayTopology.numTrustedProxies`).
    pub gateway_trusted_proxies: u32,
    /// Mirrored requests carry `-shadow` on their host (istiod's
    /// `DISABLE_SHADOW_HOST_SUFFIX=false`; off by default since Istio 1.28).
    pub shadow_host_suffix: bool,
    /// `tcpKeepalive`: outbound clusters' keepalive, field by field under a
    /// DestinationRule's (as istiod applies it).
    pub tcp_keepalive: Option<oxmesh_config::networking::destination_rule::TcpKeepalive>,
    /// `localityLbSetting` for services whose DestinationRule sets none
    /// (Istio's default: enabled, no rules: failover by locality distance
    /// where outlier detection is on).
    pub locality_lb_setting: LocalityLbSetting,
    /// `h2UpgradePolicy: UPGRADE` (Istio's default: DO_NOT_UPGRADE).
    pub h2_upgrade: bool,
    /// `accessLogFile` and its format: every proxy's access log when no
    /// Telemetry configures one (off by default, as in Istio).
    pub access_log: oxmesh_config::mesh::AccessLogSettings,
    /// `defaultProviders.accessLogging`.
    pub default_access_logging: Vec<String>,
    /// `defaultProviders.tracing`.
    pub default_tracing: Vec<String>,
    /// `defaultProviders.metrics` (Istio's default mesh config: `prometheus`).
    pub default_metrics: Vec<String>,
    /// `enableTracing` (Istio's default: on).
    pub enable_tracing: bool,
    /// `defaultConfig.tracing`: sampling and tags Telemetry does not set.
    pub proxy_tracing: oxmesh_config::mesh::ProxyTracing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundTrafficPolicy {
    /// Unknown destinations are reached directly (PassthroughCluster).
    AllowAny,
    /// Unknown destinations are refused (BlackHoleCluster).
    RegistryOnly,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::cluster_local(),
            trust_domain_aliases: Vec::new(),
            domain: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
            outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
            connect_timeout: Duration::from_secs(10),
            extension_providers: Vec::new(),
            gateway_trusted_proxies: 0,
            shadow_host_suffix: false,
            tcp_keepalive: None,
            locality_lb_setting: LocalityLbSetting {
                enabled: Some(true),
                ..LocalityLbSetting::default()
            },
            h2_upgrade: false,
            access_log: Default::default(),
            default_access_logging: Vec::new(),
            default_tracing: Vec::new(),
            default_metrics: vec!["prometheus".to_owned()],
            enable_tracing: true,
            proxy_tracing: Default::default(),
        }
    }
}

impl MeshConfig {
    /// The extension provider `name` names, compared as istiod does for
    /// telemetry providers (case-insensitive).
    pub fn extension_provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// These settings with what the root namespace's `istio` ConfigMap says
    /// over them, as istiod reads it. Validation refuses a ConfigMap that does
    /// not parse, so the last good one stays; one that still fails here
    /// changes nothing.
    pub fn with_objects(&self, objects: &[Arc<Object>]) -> MeshConfig {
        let Some(text) = objects
            .iter()
            .filter(|o| o.namespace() == Some(self.root_namespace.as_str()))
            .find_map(|o| mesh::text_of(o))
        else {
            return self.clone();
        };
        let settings = match mesh::parse(text) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::warn!(error = %e, "ConfigMap {}/istio: data.mesh ignored", self.root_namespace);
                return self.clone();
            }
        };
        let mut config = self.clone();
        if let Some(mode) = settings.outbound_traffic_policy {
            config.outbound_traffic_policy = match mode {
                OutboundMode::AllowAny => OutboundTrafficPolicy::AllowAny,
                OutboundMode::RegistryOnly => OutboundTrafficPolicy::RegistryOnly,
            };
        }
        if let Some(timeout) = settings.connect_timeout {
            config.connect_timeout = timeout.as_std();
        }
        if let Some(namespace) = settings.root_namespace {
            config.root_namespace = namespace;
        }
        if let Some(aliases) = settings.trust_domain_aliases {
            config.trust_domain_aliases = aliases;
        }
        if let Some(hops) = settings.gateway_trusted_proxies {
            config.gateway_trusted_proxies = hops;
        }
        if let Some(providers) = settings.extension_providers {
            config.extension_providers = providers;
        }
        if let Some(keepalive) = settings.tcp_keepalive {
            config.tcp_keepalive = Some(keepalive);
        }
        if let Some(locality) = settings.locality_lb_setting {
            config.locality_lb_setting = locality;
        }
        if let Some(upgrade) = settings.h2_upgrade {
            config.h2_upgrade = upgrade;
        }
        config.access_log = settings.access_log;
        if let Some(providers) = settings.default_access_logging {
            config.default_access_logging = providers;
        }
        if let Some(providers) = settings.default_tracing {
            config.default_tracing = providers;
        }
        if let Some(providers) = settings.default_metrics {
            config.default_metrics = providers;
        }
        if let Some(enabled) = settings.enable_tracing {
            config.enable_tracing = enabled;
        }
        config.proxy_tracing = settings.proxy_tracing;
        config
    }
}
