//! Access logs on every connection manager and TCP proxy, as istiod writes
//! them: from the Telemetry API's `accessLogging` (and the mesh's
//! `defaultProviders.accessLogging`) when they leave a logging provider in
//! place, else from the mesh config's `accessLogFile`, `accessLogEncoding`
//! and `accessLogFormat`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ExtensionFilter, access_log_filter, extension_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use oxmesh_config::extension_provider::{
    ExtensionProvider, FileAccessLog as FileProvider, ProviderKind,
};
use oxmesh_config::mesh::{AccessLogEncoding, AccessLogSettings, json_log_format};
use oxmesh_config::telemetry::WorkloadMode;
use prost::Message;

use crate::proxy::ProxyClass;
use crate::push_context::{PushContext, Scoped};
use envoy_types::util::pack_any;
use oxmesh_config::telemetry::Telemetry;

const FILE_LOGGER: &str = "envoy.access_loggers.file";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Istio's default text format (istiod's `EnvoyTextLogFormat`).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON fields (istiod's `EnvoyJSONLogFormatIstio`).
pub const ISTIO_JSON_FIELDS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// Puts the proxy's access logs on each connection manager and TCP proxy of
/// `listeners` that has none: inbound listeners log as the server, the rest
/// (outbound, gateways) as the client, as Telemetry's `match.mode` reads it.
pub fn attach(ctx: &PushContext, proxy: &ProxyClass, listeners: &mut [Listener]) {
    if proxy.is_grpc() {
        return;
    }
    let telemetries = ctx.telemetries_for(proxy);
    let client = logs_for(ctx, &telemetries, WorkloadMode::Client);
    let server = logs_for(ctx, &telemetries, WorkloadMode::Server);
    super::listener::each_filter_by_mode(proxy, listeners, |filter, mode| {
        let logs = if mode == WorkloadMode::Server {
            &server
        } else {
            &client
        };
        if !logs.is_empty() {
            add_to(filter, logs);
        }
    });
}

fn add_to(filter: &mut Filter, logs: &[AccessLog]) {
    let Some(filter::ConfigType::TypedConfig(any)) = &mut filter.config_type else {
        return;
    };
    match any.type_url.as_str() {
        HCM => {
            if let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice())
                && hcm.access_log.is_empty()
            {
                hcm.access_log = logs.to_vec();
                any.value = hcm.encode_to_vec();
            }
        }
        TCP_PROXY => {
            if let Ok(mut tcp) = TcpProxy::decode(any.value.as_slice())
                && tcp.access_log.is_empty()
            {
                tcp.access_log = logs.to_vec();
                any.value = tcp.encode_to_vec();
            }
        }
        _ => {}
    }
}

/// The access logs of a proxy's listeners of one mode, given the
/// Telemetries that apply to it. As istiod, the mesh config's log is the
/// fallback whenever Telemetry leaves no provider (disabled ones count as
/// configured: they turn logging off).
fn logs_for(
    ctx: &PushContext,
    telemetries: &[&Scoped<Telemetry>],
    mode: WorkloadMode,
) -> Vec<AccessLog> {
    let levels: Vec<&[oxmesh_config::telemetry::AccessLogging]> = telemetries
        .iter()
        .map(|t| t.spec.access_logging.as_slice())
        .filter(|l| !l.is_empty())
        .collect();
    let defaults = &ctx.mesh.default_access_logging;
    let resolved: Vec<(ProviderSpec, &ExtensionProvider)> =
        merged_providers(&levels, defaults, mode)
            .into_iter()
            .filter_map(|(name, spec)| Some((spec, provider(ctx, &name)?)))
            // Only logging providers count, as istiod counts the logs it built.
            .filter(|(_, p)| matches!(p.kind, ProviderKind::EnvoyFileAccessLog(_)))
            .collect();
    if resolved.is_empty() {
        return mesh_log(&ctx.mesh.access_log).into_iter().collect();
    }
    resolved
        .into_iter()
        .filter_map(|(spec, provider)| provider_log(ctx, provider, spec))
        .collect()
}

/// A provider by name (case-insensitive, as istiod), Istio's built-in
/// `envoy` when the mesh config does not define one by that name.
fn provider<'a>(ctx: &'a PushContext, name: &str) -> Option<&'a ExtensionProvider> {
    static BUILTIN: std::sync::LazyLock<ExtensionProvider> =
        std::sync::LazyLock::new(ExtensionProvider::builtin_envoy);
    ctx.mesh
        .extension_provider(name)
        .or_else(|| name.eq_ignore_ascii_case("envoy").then(|| &*BUILTIN))
}

/// What one provider does after every level has had its say.
#[derive(Debug, Clone, Default, PartialEq)]
struct ProviderSpec {
    disabled: bool,
    filter: Option<String>,
}

fn selected(logging: &oxmesh_config::telemetry::AccessLogging, mode: WorkloadMode) -> bool {
    match logging.selector.as_ref().and_then(|s| s.mode) {
        None | Some(WorkloadMode::ClientAndServer) => true,
        Some(m) => m == mode,
    }
}

/// istiod's `mergeLogs`: the most specific level naming providers decides
/// which are in scope; each level's entries then enable (with its filter) or
/// disable them in turn, an entry without providers meaning the level
/// above's. Sorted by provider name, as istiod sorts them.
fn merged_providers(
    levels: &[&[oxmesh_config::telemetry::AccessLogging]],
    defaults: &[String],
    mode: WorkloadMode,
) -> BTreeMap<String, ProviderSpec> {
    let mut providers = BTreeMap::new();
    if levels.is_empty() {
        for name in defaults {
            providers.insert(name.clone(), ProviderSpec::default());
        }
        return providers;
    }
    let names = |l: &oxmesh_config::telemetry::AccessLogging| -> Vec<String> {
        l.providers.iter().map(|p| p.name.clone()).collect()
    };
    let mut in_scope: Vec<String> = defaults.to_vec();
    let mut filters: BTreeMap<String, Option<String>> = BTreeMap::new();
    for level in levels {
        let mut named = Vec::new();
        for logging in level.iter().filter(|l| selected(l, mode)) {
            for name in names(logging) {
                filters.insert(
                    name.clone(),
                    logging.filter.as_ref().map(|f| f.expression.clone()),
                );
                named.push(name);
            }
        }
        if !named.is_empty() {
            in_scope = named;
        }
    }
    let mut parent: Vec<String> = defaults.to_vec();
    for level in levels {
        for logging in level.iter() {
            let mut these = names(logging);
            if these.is_empty() {
                these = parent.clone();
            }
            parent = these.clone();
            if !selected(logging, mode) {
                continue;
            }
            for name in these.into_iter().filter(|n| in_scope.contains(n)) {
                let spec = if logging.disabled == Some(true) {
                    ProviderSpec {
                        disabled: true,
                        filter: None,
                    }
                } else {
                    ProviderSpec {
                        disabled: false,
                        filter: filters.get(&name).cloned().flatten(),
                    }
                };
                providers.insert(name, spec);
            }
        }
    }
    providers
}

/// The provider's log, unless disabled, unknown or not a file logger; with
/// the Telemetry's filter expression as Envoy's CEL filter.
fn provider_log(
    ctx: &PushContext,
    provider: &ExtensionProvider,
    spec: ProviderSpec,
) -> Option<AccessLog> {
    if spec.disabled {
        return None;
    }
    let mut log = provider_file(ctx, provider)?;
    if let Some(expression) = spec.filter {
        log.filter = Some(cel_filter(expression));
    }
    Some(log)
}

const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";

fn cel_filter(expression: String) -> AccessLogFilter {
    AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::ExtensionFilter(
            ExtensionFilter {
                name: CEL_FILTER.to_owned(),
                config_type: Some(extension_filter::ConfigType::TypedConfig(pack_any(
                    ExpressionFilter {
                        expression,
                        ..Default::default()
                    },
                ))),
            },
        )),
    }
}

fn provider_file(ctx: &PushContext, provider: &ExtensionProvider) -> Option<AccessLog> {
    let ProviderKind::EnvoyFileAccessLog(file) = &provider.kind else {
        tracing::debug!(provider = %provider.name, "not a file access log provider: no access log");
        return None;
    };
    // The built-in provider without a format of its own follows the mesh config's.
    if provider.name == "envoy" && file.log_format.is_none() && !file.omit_empty_values {
        let settings = AccessLogSettings {
            file: Some(file_path(file)),
            ..ctx.mesh.access_log.clone()
        };
        return mesh_log(&settings);
    }
    Some(provider_file_log(file))
}

fn file_path(file: &FileProvider) -> String {
    if file.path.is_empty() {
        "/dev/stdout".to_owned()
    } else {
        file.path.clone()
    }
}

fn provider_file_log(file: &FileProvider) -> AccessLog {
    let format = match file.log_format.as_ref() {
        Some(f) => match (&f.text, &f.labels) {
            (_, Some(labels)) if !labels.is_empty() => json_format(
                labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                file.omit_empty_values,
            ),
            (_, Some(_)) => istio_json(file.omit_empty_values),
            (Some(text), None) => text_format(text, file.omit_empty_values),
            (None, None) => text_format("", file.omit_empty_values),
        },
        None => text_format("", file.omit_empty_values),
    };
    file_log(file_path(file), format)
}

/// The mesh config's log (istiod's `FileAccessLogFromMeshConfig`), if a
/// file is set.
fn mesh_log(settings: &AccessLogSettings) -> Option<AccessLog> {
    let path = settings.file.as_deref().filter(|p| !p.is_empty())?;
    let format = match settings.encoding {
        Some(AccessLogEncoding::Json) => match settings.format.as_deref() {
            Some(text) => match json_log_format(text) {
                Ok(fields) => {
                    json_format(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())), false)
                }
                Err(_) => istio_json(false),
            },
            None => istio_json(false),
        },
        _ => text_format(settings.format.as_deref().unwrap_or(""), false),
    };
    Some(file_log(path.to_owned(), format))
}

fn file_log(path: String, format: SubstitutionFormatString) -> AccessLog {
    let config = FileAccessLog {
        path,
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(format)),
    };
    AccessLog {
        name: FILE_LOGGER.to_owned(),
        filter: None,
        config_type: Some(
            envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
                pack_any(config),
            ),
        ),
    }
}

/// A text format; Istio's default when empty, and always ending in a newline.
fn text_format(text: &str, omit_empty: bool) -> SubstitutionFormatString {
    let mut text = if text.is_empty() {
        ISTIO_TEXT_FORMAT.to_owned()
    } else {
        text.to_owned()
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let formatters = formatters(std::iter::once(text.as_str()));
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(text)),
                ..Default::default()
            },
        )),
        omit_empty_values: omit_empty,
        formatters,
        ..Default::default()
    }
}

fn istio_json(omit_empty: bool) -> SubstitutionFormatString {
    json_format(ISTIO_JSON_FIELDS.iter().copied(), omit_empty)
}

fn json_format<'a>(
    fields: impl Iterator<Item = (&'a str, &'a str)>,
    omit_empty: bool,
) -> SubstitutionFormatString {
    let fields: std::collections::HashMap<String, Value> = fields
        .map(|(key, format)| {
            let value = Value {
                kind: Some(value::Kind::StringValue(format.to_owned())),
            };
            (key.to_owned(), value)
        })
        .collect();
    let formatters = formatters(fields.values().filter_map(|v| match &v.kind {
        Some(value::Kind::StringValue(s)) => Some(s.as_str()),
        _ => None,
    }));
    SubstitutionFormatString {
        formatters,
        format: Some(substitution_format_string::Format::JsonFormat(Struct {
            fields,
        })),
        omit_empty_values: omit_empty,
        json_format_options: Some(Default::default()),
        ..Default::default()
    }
}

/// The `REQ_WITHOUT_QUERY` formatter, which Envoy needs declared where a
/// format uses it (istiod adds it then; the oxmesh proxy has it built in).
fn formatters<'a>(
    mut formats: impl Iterator<Item = &'a str>,
) -> Vec<envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig> {
    if !formats.any(|f| f.contains("%REQ_WITHOUT_QUERY")) {
        return Vec::new();
    }
    vec![
        envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
            name: "envoy.formatter.req_without_query".to_owned(),
            typed_config: Some(envoy_types::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery".to_owned(),
                value: Vec::new(),
            }),
        },
    ]
}
