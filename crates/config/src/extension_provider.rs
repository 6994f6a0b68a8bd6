//! MeshConfig `extensionProviders`: the external services Istio's CUSTOM
//! authorization (and telemetry) name by `provider.name`. Only the ext_authz
//! kinds are read; other kinds are kept by name so a policy naming one gets a
//! precise error.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::duration::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionProvider {
    pub name: String,
    pub kind: ProviderKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    ExtAuthzHttp(ExtAuthzHttp),
    ExtAuthzGrpc(ExtAuthzGrpc),
    /// `envoyFileAccessLog`: access logs to a file (`envoy`, the built-in
    /// provider, is one to `/dev/stdout`).
    EnvoyFileAccessLog(FileAccessLog),
    /// `opentelemetry`: spans over OTLP (gRPC, or HTTP with `http`).
    OpenTelemetry(OpenTelemetryTracing),
    /// `zipkin`: spans as Zipkin's v2 JSON.
    Zipkin(ZipkinTracing),
    /// `prometheus`: Istio's standard metrics, scraped from the proxies.
    Prometheus,
    /// A kind this mesh does not use yet (other tracers and loggers...).
    Other,
}

/// `opentelemetry`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpenTelemetryTracing {
    /// `<namespace>/<hostname>` or `<hostname>`.
    pub service: String,
    pub port: u32,
    pub max_tag_length: u32,
    /// OTLP/HTTP instead of gRPC.
    pub http: Option<OtlpHttp>,
    pub grpc: Option<OtlpGrpc>,
}

/// `opentelemetry.http`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtlpHttp {
    pub path: String,
    pub timeout: Option<Duration>,
    pub headers: Vec<CollectorHeader>,
}

/// `opentelemetry.grpc`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtlpGrpc {
    pub timeout: Option<Duration>,
    pub initial_metadata: Vec<CollectorHeader>,
}

/// A header sent with every report: a value, or an environment variable's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CollectorHeader {
    pub name: String,
    pub value: String,
    pub env_name: String,
}

/// `zipkin`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinTracing {
    pub service: String,
    pub port: u32,
    pub max_tag_length: u32,
    #[serde(rename = "enable64bitTraceId")]
    pub enable_64bit_trace_id: bool,
    /// `/api/v2/spans` when empty.
    pub path: String,
    /// `USE_B3` (the default) or `USE_B3_WITH_W3C_PROPAGATION`.
    pub trace_context_option: String,
}

/// `envoyFileAccessLog`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileAccessLog {
    /// `/dev/stdout` when empty.
    pub path: String,
    pub log_format: Option<FileLogFormat>,
    pub omit_empty_values: bool,
}

/// `logFormat`: a text format, or JSON `labels` (key: format string).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileLogFormat {
    pub text: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

impl ExtensionProvider {
    /// Istio's built-in `prometheus` provider: the proxies' standard metrics.
    pub fn builtin_prometheus() -> Self {
        Self {
            name: "prometheus".to_owned(),
            kind: ProviderKind::Prometheus,
        }
    }

    /// Istio's built-in `envoy` provider: Envoy's file logger on
    /// `/dev/stdout`, formatted as the mesh config says.
    pub fn builtin_envoy() -> Self {
        Self {
            name: "envoy".to_owned(),
            kind: ProviderKind::EnvoyFileAccessLog(FileAccessLog {
                path: "/dev/stdout".to_owned(),
                ..FileAccessLog::default()
            }),
        }
    }
}

/// `envoyExtAuthzHttp`: Envoy's ext_authz over plain HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzHttp {
    /// `<namespace>/<hostname>` or `<hostname>`.
    pub service: String,
    pub port: u32,
    pub timeout: Option<Duration>,
    pub path_prefix: String,
    pub fail_open: bool,
    pub status_on_error: String,
    pub include_request_headers_in_check: Vec<String>,
    /// The deprecated spelling of `includeRequestHeadersInCheck`.
    pub include_headers_in_check: Vec<String>,
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    pub headers_to_upstream_on_allow: Vec<String>,
    pub headers_to_downstream_on_deny: Vec<String>,
    pub headers_to_downstream_on_allow: Vec<String>,
    pub include_request_body_in_check: Option<BodyInCheck>,
}

/// `envoyExtAuthzGrpc`: Envoy's ext_authz over gRPC (`envoy.service.auth.v3`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzGrpc {
    pub service: String,
    pub port: u32,
    pub timeout: Option<Duration>,
    pub fail_open: bool,
    pub status_on_error: String,
    pub include_request_body_in_check: Option<BodyInCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BodyInCheck {
    pub max_request_bytes: u32,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
}

/// One entry as written; which kind it is depends on the field set.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProviderYaml {
    #[serde(default)]
    name: String,
    envoy_ext_authz_http: Option<ExtAuthzHttp>,
    envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
    envoy_file_access_log: Option<FileAccessLog>,
    opentelemetry: Option<OpenTelemetryTracing>,
    zipkin: Option<ZipkinTracing>,
    prometheus: Option<serde_json::Value>,
}

impl ProviderYaml {
    pub(crate) fn into_provider(self, index: usize) -> Result<ExtensionProvider, String> {
        let at = format!("extensionProviders[{index}]");
        if self.name.is_empty() {
            return Err(format!("{at}.name: must be set"));
        }
        let set = [
            self.envoy_ext_authz_http.is_some(),
            self.envoy_ext_authz_grpc.is_some(),
            self.envoy_file_access_log.is_some(),
            self.opentelemetry.is_some(),
            self.zipkin.is_some(),
            self.prometheus.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(format!("{at}: set one provider kind, not several"));
        }
        if let Some(FileAccessLog {
            log_format: Some(format),
            ..
        }) = &self.envoy_file_access_log
            && format.text.is_some()
            && format.labels.is_some()
        {
            return Err(format!(
                "{at}.envoyFileAccessLog.logFormat: set text or labels, not both"
            ));
        }
        let kind = if let Some(http) = self.envoy_ext_authz_http {
            ProviderKind::ExtAuthzHttp(http)
        } else if let Some(grpc) = self.envoy_ext_authz_grpc {
            ProviderKind::ExtAuthzGrpc(grpc)
        } else if let Some(file) = self.envoy_file_access_log {
            ProviderKind::EnvoyFileAccessLog(file)
        } else if let Some(otel) = self.opentelemetry {
            tracing_target(&at, "opentelemetry", &otel.service, otel.port)?;
            ProviderKind::OpenTelemetry(otel)
        } else if let Some(zipkin) = self.zipkin {
            tracing_target(&at, "zipkin", &zipkin.service, zipkin.port)?;
            if !matches!(
                zipkin.trace_context_option.as_str(),
                "" | "USE_B3" | "USE_B3_WITH_W3C_PROPAGATION"
            ) {
                return Err(format!(
                    "{at}.zipkin.traceContextOption: {:?} is not USE_B3 or USE_B3_WITH_W3C_PROPAGATION",
                    zipkin.trace_context_option
                ));
            }
            ProviderKind::Zipkin(zipkin)
        } else if self.prometheus.is_some() {
            ProviderKind::Prometheus
        } else {
            ProviderKind::Other
        };
        Ok(ExtensionProvider {
            name: self.name,
            kind,
        })
    }
}

/// A tracer needs a service and a port to send to.
fn tracing_target(at: &str, kind: &str, service: &str, port: u32) -> Result<(), String> {
    if service.is_empty() {
        return Err(format!("{at}.{kind}.service: must be set"));
    }
    if port == 0 || port > 65535 {
        return Err(format!("{at}.{kind}.port: {port} is not a port"));
    }
    Ok(())
}
