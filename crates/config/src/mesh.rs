//! Istio's mesh config as istiod reads it: YAML of MeshConfig in `data.mesh`
//! of the `istio` ConfigMap in the root namespace. Only the fields oxmesh
//! honours are read (`outboundTrafficPolicy`, `connectTimeout`,
//! `rootNamespace`, `trustDomainAliases`, `extensionProviders`,
//! `defaultConfig.gatewayTopology`, `tcpKeepalive`, `localityLbSetting`,
//! `h2UpgradePolicy`);
//! Istio's others are accepted and ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::duration::Duration;
use crate::extension_provider::{ExtensionProvider, ProviderYaml};
use crate::object::{Object, Resource};

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "istio";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundMode {
    AllowAny,
    RegistryOnly,
}

/// What the mesh config sets; `None` leaves the control plane's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshSettings {
    pub outbound_traffic_policy: Option<OutboundMode>,
    pub connect_timeout: Option<Duration>,
    /// Where mesh-wide policies live (`rootNamespace`).
    pub root_namespace: Option<String>,
    /// Trust domains whose identities count as the mesh's own in
    /// authorization policies (`trustDomainAliases`).
    pub trust_domain_aliases: Option<Vec<String>>,
    /// External services policies name (`extensionProviders`).
    pub extension_providers: Option<Vec<ExtensionProvider>>,
    /// `defaultConfig.gatewayTopology.numTrustedProxies`.
    pub gateway_trusted_proxies: Option<u32>,
    /// `tcpKeepalive`: every outbound cluster's, field by field under a
    /// DestinationRule's.
    pub tcp_keepalive: Option<crate::networking::destination_rule::TcpKeepalive>,
    /// `localityLbSetting`: for services whose DestinationRule sets none.
    pub locality_lb_setting: Option<crate::networking::destination_rule::LocalityLbSetting>,
    /// `h2UpgradePolicy: UPGRADE`: HTTP/1.1 service ports go upstream as
    /// HTTP/2 unless a DestinationRule says otherwise.
    pub h2_upgrade: Option<bool>,
    /// `accessLogFile`, `accessLogEncoding`, `accessLogFormat`.
    pub access_log: AccessLogSettings,
    /// `defaultProviders.accessLogging`: the providers Telemetry access
    /// logging uses when it names none.
    pub default_access_logging: Option<Vec<String>>,
    /// `defaultProviders.tracing`: the tracer Telemetry uses when it names
    /// none (the first that resolves).
    pub default_tracing: Option<Vec<String>>,
    /// `defaultProviders.metrics`: the metrics providers Telemetry uses when
    /// it names none (Istio's default: `prometheus`).
    pub default_metrics: Option<Vec<String>>,
    /// `enableTracing` (Istio's default: on): requests are sampled and
    /// marked even with no tracer.
    pub enable_tracing: Option<bool>,
    /// `defaultConfig.tracing`.
    pub proxy_tracing: ProxyTracing,
}

/// `defaultConfig.tracing`: sampling and tags for proxies no Telemetry
/// gives a sampling percentage or tags.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyTracing {
    /// Percent; 0 or unset leaves Istio's 1 %.
    pub sampling: f64,
    pub max_path_tag_length: u32,
    pub custom_tags: BTreeMap<String, crate::telemetry::CustomTag>,
}

impl Eq for ProxyTracing {}

/// The mesh config's own access log, for proxies no Telemetry configures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// Off when `None` or empty (Istio's default).
    pub file: Option<String>,
    pub encoding: Option<AccessLogEncoding>,
    /// A text format, or with JSON encoding a JSON object of format strings.
    pub format: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogEncoding {
    Text,
    Json,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshYaml {
    outbound_traffic_policy: Option<OutboundYaml>,
    connect_timeout: Option<Duration>,
    root_namespace: Option<String>,
    trust_domain_aliases: Option<Vec<String>>,
    extension_providers: Option<Vec<ProviderYaml>>,
    default_config: Option<DefaultConfigYaml>,
    tcp_keepalive: Option<crate::networking::destination_rule::TcpKeepalive>,
    locality_lb_setting: Option<crate::networking::destination_rule::LocalityLbSetting>,
    h2_upgrade_policy: Option<String>,
    access_log_file: Option<String>,
    access_log_encoding: Option<String>,
    access_log_format: Option<String>,
    default_providers: Option<DefaultProvidersYaml>,
    enable_tracing: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultProvidersYaml {
    access_logging: Option<Vec<String>>,
    tracing: Option<Vec<String>>,
    metrics: Option<Vec<String>>,
}

/// `defaultConfig` (ProxyConfig): only what the control plane uses.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultConfigYaml {
    gateway_topology: Option<GatewayTopologyYaml>,
    tracing: Option<ProxyTracing>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewayTopologyYaml {
    num_trusted_proxies: Option<u32>,
}

#[derive(Deserialize)]
struct OutboundYaml {
    mode: Option<String>,
}

/// `data.mesh` of an `istio` ConfigMap, in any namespace (the control plane
/// reads its root namespace's).
pub fn text_of(object: &Object) -> Option<&str> {
    match &object.resource {
        Resource::ConfigMap(cm) if object.name() == CONFIG_MAP => {
            cm.data.as_ref()?.get("mesh").map(String::as_str)
        }
        _ => None,
    }
}

/// Reads the mesh config's YAML; the error names the field.
pub fn parse(text: &str) -> Result<MeshSettings, String> {
    // An empty mesh config is Istio's defaults.
    if text.trim().is_empty() {
        return Ok(MeshSettings::default());
    }
    let yaml: MeshYaml = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if let Some(timeout) = yaml.connect_timeout {
        crate::validation::syntax::duration(timeout).map_err(|e| format!("connectTimeout: {e}"))?;
    }
    let outbound_traffic_policy = match yaml.outbound_traffic_policy.and_then(|p| p.mode) {
        None => None,
        Some(mode) => Some(match mode.as_str() {
            "ALLOW_ANY" => OutboundMode::AllowAny,
            "REGISTRY_ONLY" => OutboundMode::RegistryOnly,
            other => {
                return Err(format!(
                    "outboundTrafficPolicy.mode: {other:?} is not ALLOW_ANY or REGISTRY_ONLY"
                ));
            }
        }),
    };
    if let Some(keepalive) = &yaml.tcp_keepalive {
        for (field, value) in [("time", keepalive.time), ("interval", keepalive.interval)] {
            if let Some(d) = value {
                crate::validation::syntax::duration(d)
                    .map_err(|e| format!("tcpKeepalive.{field}: {e}"))?;
            }
        }
    }
    if let Some(locality) = &yaml.locality_lb_setting {
        crate::validation::destination_rule::mesh_locality_lb(locality)?;
    }
    let h2_upgrade = match yaml.h2_upgrade_policy.as_deref() {
        None => None,
        Some("UPGRADE") => Some(true),
        Some("DO_NOT_UPGRADE") => Some(false),
        Some(other) => {
            return Err(format!(
                "h2UpgradePolicy: {other:?} is not DO_NOT_UPGRADE or UPGRADE"
            ));
        }
    };
    let access_log = access_log(
        yaml.access_log_file,
        yaml.access_log_encoding.as_deref(),
        yaml.access_log_format,
    )?;
    // An empty root namespace would name no namespace at all: read as unset.
    let root_namespace = yaml.root_namespace.filter(|ns| !ns.is_empty());
    let extension_providers = match yaml.extension_providers {
        None => None,
        Some(list) => {
            let providers = list
                .into_iter()
                .enumerate()
                .map(|(i, p)| p.into_provider(i))
                .collect::<Result<Vec<_>, _>>()?;
            for (i, p) in providers.iter().enumerate() {
                if providers[..i].iter().any(|q| q.name == p.name) {
                    return Err(format!(
                        "extensionProviders[{i}].name: {:?} is defined twice",
                        p.name
                    ));
                }
            }
            Some(providers)
        }
    };
    let (gateway_trusted_proxies, proxy_tracing) = match yaml.default_config {
        Some(c) => (
            c.gateway_topology.and_then(|t| t.num_trusted_proxies),
            c.tracing.unwrap_or_default(),
        ),
        None => (None, ProxyTracing::default()),
    };
    if !(0.0..=100.0).contains(&proxy_tracing.sampling) {
        return Err(format!(
            "defaultConfig.tracing.sampling: {} is not a percentage",
            proxy_tracing.sampling
        ));
    }
    let (default_access_logging, default_tracing, default_metrics) = match yaml.default_providers {
        Some(d) => (d.access_logging, d.tracing, d.metrics),
        None => (None, None, None),
    };
    Ok(MeshSettings {
        outbound_traffic_policy,
        connect_timeout: yaml.connect_timeout,
        root_namespace,
        trust_domain_aliases: yaml.trust_domain_aliases,
        extension_providers,
        gateway_trusted_proxies,
        tcp_keepalive: yaml.tcp_keepalive,
        locality_lb_setting: yaml.locality_lb_setting,
        h2_upgrade,
        access_log,
        default_access_logging,
        default_tracing,
        default_metrics,
        enable_tracing: yaml.enable_tracing,
        proxy_tracing,
    })
}

fn access_log(
    file: Option<String>,
    encoding: Option<&str>,
    format: Option<String>,
) -> Result<AccessLogSettings, String> {
    let encoding = match encoding {
        None | Some("") => None,
        Some("TEXT") => Some(AccessLogEncoding::Text),
        Some("JSON") => Some(AccessLogEncoding::Json),
        Some(other) => return Err(format!("accessLogEncoding: {other:?} is not TEXT or JSON")),
    };
    let format = format.filter(|f| !f.is_empty());
    if let (Some(AccessLogEncoding::Json), Some(text)) = (encoding, &format) {
        json_log_format(text).map_err(|e| format!("accessLogFormat: {e}"))?;
    }
    Ok(AccessLogSettings {
        file,
        encoding,
        format,
    })
}

/// A JSON access log format: an object whose values are format strings.
pub fn json_log_format(text: &str) -> Result<Vec<(String, String)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON with JSON encoding: {e}"))?;
    let serde_json::Value::Object(fields) = value else {
        return Err("with JSON encoding it must be a JSON object".to_owned());
    };
    fields
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            other => Err(format!("{key}: {other} is not a format string")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_honours_and_names_what_is_wrong() {
        let settings = parse(
            "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\nconnectTimeout: 3s\nenableTracing: true\n",
        )
        .expect("valid");
        assert_eq!(
            settings.outbound_traffic_policy,
            Some(OutboundMode::RegistryOnly)
        );
        assert_eq!(
            settings.connect_timeout.map(Duration::as_std),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(settings.root_namespace, None);
        assert_eq!(settings.trust_domain_aliases, None);
        let settings =
            parse("rootNamespace: mesh-root\ntrustDomainAliases: [old.example, cluster.local]\n")
                .expect("valid");
        assert_eq!(settings.root_namespace.as_deref(), Some("mesh-root"));
        assert_eq!(
            settings.trust_domain_aliases.as_deref(),
            Some(&["old.example".to_owned(), "cluster.local".to_owned()][..])
        );
        assert_eq!(parse("  \n"), Ok(MeshSettings::default()));
        let settings =
            parse("defaultConfig:\n  gatewayTopology: {numTrustedProxies: 2}\n  concurrency: 2\n")
                .expect("valid");
        assert_eq!(settings.gateway_trusted_proxies, Some(2));
        let settings = parse(
            "tcpKeepalive: {time: 600s, probes: 3}
",
        )
        .expect("valid");
        assert_eq!(settings.tcp_keepalive.map(|k| k.probes), Some(3));
        let error = parse(
            "tcpKeepalive: {time: 0.5ms}
",
        )
        .expect_err("under a millisecond");
        assert!(error.starts_with("tcpKeepalive.time"), "{error}");
        let settings =
            parse("localityLbSetting: {failover: [{from: us, to: eu}]}\n").expect("valid");
        assert_eq!(
            settings.locality_lb_setting.map(|l| l.failover.len()),
            Some(1)
        );
        let error = parse("localityLbSetting: {failover: [{from: us, to: us}]}\n")
            .expect_err("a region failing over to itself");
        assert!(
            error.starts_with("localityLbSetting.failover[0]"),
            "{error}"
        );
        assert_eq!(
            parse("h2UpgradePolicy: UPGRADE\n").map(|s| s.h2_upgrade),
            Ok(Some(true))
        );
        let error = parse("h2UpgradePolicy: ALWAYS\n").expect_err("not a policy");
        assert!(error.starts_with("h2UpgradePolicy"), "{error}");
        let settings = parse(
            "extensionProviders:\n- name: ext-authz-http\n  envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000, includeRequestHeadersInCheck: [x-ext-authz]}\n- name: zipkin\n  zipkin: {service: zipkin, port: 9411}\n- name: sky\n  skywalking: {service: sky, port: 11800}\n",
        )
        .expect("valid");
        let providers = settings.extension_providers.expect("providers");
        assert_eq!(providers.len(), 3);
        let crate::extension_provider::ProviderKind::ExtAuthzHttp(http) = &providers[0].kind else {
            panic!("an HTTP ext_authz provider");
        };
        assert_eq!(
            (http.port, http.include_request_headers_in_check.len()),
            (8000, 1)
        );
        let crate::extension_provider::ProviderKind::Zipkin(zipkin) = &providers[1].kind else {
            panic!("a Zipkin provider");
        };
        assert_eq!((zipkin.service.as_str(), zipkin.port), ("zipkin", 9411));
        assert_eq!(
            providers[2].kind,
            crate::extension_provider::ProviderKind::Other
        );
        let error = parse("extensionProviders: [{name: z, zipkin: {port: 9411}}]\n")
            .expect_err("no service");
        assert_eq!(error, "extensionProviders[0].zipkin.service: must be set");
        let settings = parse("enableTracing: false\ndefaultConfig: {tracing: {sampling: 10}}\ndefaultProviders: {tracing: [otel]}\n")
            .expect("valid");
        assert_eq!(settings.enable_tracing, Some(false));
        assert_eq!(settings.proxy_tracing.sampling, 10.0);
        assert_eq!(settings.default_tracing, Some(vec!["otel".to_owned()]));
        let error = parse("defaultConfig: {tracing: {sampling: 150}}\n").expect_err("not a share");
        assert!(
            error.starts_with("defaultConfig.tracing.sampling"),
            "{error}"
        );
        let error = parse("extensionProviders: [{name: a}, {name: a}]\n").expect_err("refused");
        assert!(error.contains("extensionProviders[1].name"), "{error}");
        let settings = parse(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'\ndefaultProviders: {accessLogging: [envoy]}\n",
        )
        .expect("valid");
        assert_eq!(settings.access_log.file.as_deref(), Some("/dev/stdout"));
        assert_eq!(settings.access_log.encoding, Some(AccessLogEncoding::Json));
        assert_eq!(
            settings.default_access_logging,
            Some(vec!["envoy".to_owned()])
        );
        let error = parse("accessLogEncoding: XML\n").expect_err("refused");
        assert!(error.starts_with("accessLogEncoding"), "{error}");
        let error =
            parse("accessLogEncoding: JSON\naccessLogFormat: '[1]'\n").expect_err("refused");
        assert!(error.starts_with("accessLogFormat: "), "{error}");
        let settings = parse(
            "extensionProviders:\n- name: json-file\n  envoyFileAccessLog: {path: /var/log/a.log, logFormat: {labels: {code: '%RESPONSE_CODE%'}}}\n",
        )
        .expect("valid");
        let providers = settings.extension_providers.expect("providers");
        let crate::extension_provider::ProviderKind::EnvoyFileAccessLog(file) = &providers[0].kind
        else {
            panic!("a file access log provider");
        };
        assert_eq!(file.path, "/var/log/a.log");
        let error = parse("connectTimeout: 0s\n").expect_err("refused");
        assert!(error.starts_with("connectTimeout: "), "{error}");
        let error = parse("outboundTrafficPolicy: {mode: BLOCK}\n").expect_err("refused");
        assert!(
            error.contains("outboundTrafficPolicy.mode: \"BLOCK\""),
            "{error}"
        );
    }
}
