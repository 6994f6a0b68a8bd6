//! Access logs as istiod writes them: from the mesh config's `accessLogFile`
//! (text or JSON), and from Telemetry `accessLogging` at mesh, namespace and
//! workload level, with `match.mode` and `disabled`.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{data_source, substitution_format_string};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use oxmesh_control::push_context::PushContext;
use prost::Message;

mod policy;

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 80}, {name: tcp, port: 9000, targetPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: httpbin-1, namespace: foo, labels: {app: httpbin}}
spec:
  containers: [{name: httpbin, image: httpbin}]
status: {podIP: 198.18.20.9}
"#;

fn context(extra: &str) -> PushContext {
    policy::context_of("access-log.yaml", &format!("{WORKLOADS}---\n{extra}"))
}

/// Every access log of every HTTP connection manager and TCP proxy of the
/// listener, as (path, format) with the format's text or its JSON keys.
fn logs(listener: &Listener) -> Logs {
    access_logs(listener).iter().map(described).collect()
}

/// Every access log of every HTTP connection manager and TCP proxy of the
/// listener.
fn access_logs(listener: &Listener) -> Vec<AccessLog> {
    let mut found = Vec::new();
    for filter in listener.filter_chains.iter().flat_map(|c| &c.filters) {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            continue;
        };
        if any.type_url.ends_with("HttpConnectionManager") {
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
            found.extend(hcm.access_log);
        } else if any.type_url.ends_with("TcpProxy") {
            let tcp = TcpProxy::decode(any.value.as_slice()).expect("tcp proxy");
            found.extend(tcp.access_log);
        }
    }
    found
}

fn described(log: &AccessLog) -> (String, String) {
    let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
        panic!("typed config");
    };
    let file = FileAccessLog::decode(any.value.as_slice()).expect("file logger");
    let Some(file_access_log::AccessLogFormat::LogFormat(format)) = &file.access_log_format else {
        panic!("a log format");
    };
    let text = match &format.format {
        Some(substitution_format_string::Format::TextFormatSource(source)) => {
            match &source.specifier {
                Some(data_source::Specifier::InlineString(s)) => s.clone(),
                other => panic!("inline text: {other:?}"),
            }
        }
        Some(substitution_format_string::Format::JsonFormat(s)) => {
            let mut keys: Vec<&String> = s.fields.keys().collect();
            keys.sort();
            format!("json:{keys:?}")
        }
        other => panic!("a format: {other:?}"),
    };
    (file.path, text)
}

/// (path, format) per access log.
type Logs = Vec<(String, String)>;

fn sidecar_logs(ctx: &PushContext) -> (Logs, Logs) {
    let proxy = policy::proxy("sidecar", "httpbin-1", "foo", &[("app", "httpbin")]);
    let listeners = policy::listeners(ctx, &proxy);
    (
        logs(policy::named(&listeners, "virtualOutbound")),
        logs(policy::named(&listeners, "virtualInbound")),
    )
}

#[test]
fn no_access_log_unless_the_mesh_config_asks() {
    let (outbound, inbound) = sidecar_logs(&context(""));
    assert!(outbound.is_empty() && inbound.is_empty());
}

#[test]
fn access_log_file_logs_every_chain_in_istios_format() {
    let (outbound, inbound) = sidecar_logs(&context(&policy::mesh_config_map(
        "accessLogFile: /dev/stdout",
    )));
    assert!(!inbound.is_empty());
    for (path, format) in outbound.iter().chain(&inbound) {
        assert_eq!(path, "/dev/stdout");
        assert!(
            format.starts_with("[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%"),
            "{format}"
        );
        assert!(format.ends_with("%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"));
    }
    // The TCP port's chain logs too.
    let proxy = policy::proxy("sidecar", "httpbin-1", "foo", &[("app", "httpbin")]);
    let listeners = policy::listeners(
        &context(&policy::mesh_config_map("accessLogFile: /dev/stdout")),
        &proxy,
    );
    let inbound = policy::named(&listeners, "virtualInbound");
    let tcp_chains = inbound
        .filter_chains
        .iter()
        .filter(|c| {
            c.filters
                .iter()
                .any(|f| f.name == "envoy.filters.network.tcp_proxy")
        })
        .count();
    assert!(tcp_chains > 0);
}

#[test]
fn json_encoding_uses_istios_fields_or_the_given_ones() {
    let (outbound, _) = sidecar_logs(&context(&policy::mesh_config_map(
        "accessLogFile: /var/log/mesh.json\naccessLogEncoding: JSON",
    )));
    let (path, format) = &outbound[0];
    assert_eq!(path, "/var/log/mesh.json");
    assert!(format.contains("\"response_code_details\""), "{format}");
    assert!(
        format.contains("\"upstream_transport_failure_reason\""),
        "{format}"
    );
    let (outbound, _) = sidecar_logs(&context(&policy::mesh_config_map(
        "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: '{\"code\": \"%RESPONSE_CODE%\", \"who\": \"%DOWNSTREAM_PEER_URI_SAN%\"}'",
    )));
    assert_eq!(outbound[0].1, "json:[\"code\", \"who\"]");
}

const PROVIDERS: &str = "extensionProviders:\n- name: server-file\n  envoyFileAccessLog: {path: /var/log/server.log, logFormat: {text: '%RESPONSE_CODE%'}}";

#[test]
fn telemetry_enables_providers_by_mode_and_a_workload_level_disables() {
    let telemetry = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: servers, namespace: foo}
spec:
  accessLogging:
  - providers: [{name: server-file}]
    match: {mode: SERVER}
"#;
    let ctx = context(&format!(
        "{}---\n{telemetry}",
        policy::mesh_config_map(PROVIDERS)
    ));
    let (outbound, inbound) = sidecar_logs(&ctx);
    // Server side, the namespace's provider replaces the mesh's; client
    // side the namespace says nothing, so the mesh's `envoy` stays (istiod's
    // mergeLogs).
    assert!(!outbound.is_empty() && !inbound.is_empty());
    assert!(
        outbound.iter().all(|(path, _)| path == "/dev/stdout"),
        "{outbound:?}"
    );
    assert!(
        inbound
            .iter()
            .all(|(path, format)| path == "/var/log/server.log" && format == "%RESPONSE_CODE%\n"),
        "{inbound:?}"
    );

    // A mesh-wide `envoy` alone: both sides log to stdout in Istio's format.
    let (outbound, inbound) = sidecar_logs(&context(&format!(
        "{}---\n{}",
        policy::mesh_config_map(PROVIDERS),
        telemetry.split("---").next().expect("first")
    )));
    assert!(
        outbound
            .iter()
            .chain(&inbound)
            .all(|(path, _)| path == "/dev/stdout")
    );
    assert!(!outbound.is_empty() && !inbound.is_empty());

    // The workload turns it off.
    let off = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet-httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  accessLogging:
  - disabled: true
"#;
    let first = telemetry.split("---").next().expect("first");
    let (outbound, inbound) = sidecar_logs(&context(&format!(
        "{}---\n{first}---\n{off}",
        policy::mesh_config_map(PROVIDERS)
    )));
    assert!(
        outbound.is_empty() && inbound.is_empty(),
        "{outbound:?} {inbound:?}"
    );
}

#[test]
fn the_mesh_log_stays_when_telemetry_leaves_no_provider_and_later_workload_telemetries_win() {
    // No provider named anywhere (and no default providers): istiod falls
    // back to the mesh config's file, `disabled` having nothing to turn off.
    let nothing_named = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - match: {mode: CLIENT}
    disabled: true
"#;
    let (outbound, inbound) = sidecar_logs(&context(&format!(
        "{}---\n{nothing_named}",
        policy::mesh_config_map("accessLogFile: /dev/stdout")
    )));
    assert!(!outbound.is_empty() && !inbound.is_empty());

    // Two Telemetries select the workload: the later one has the last word.
    let two = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: a-on, namespace: foo, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: httpbin}}
  accessLogging:
  - providers: [{name: envoy}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: b-off, namespace: foo, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  selector: {matchLabels: {app: httpbin}}
  accessLogging:
  - providers: [{name: envoy}]
    disabled: true
"#;
    let (outbound, inbound) = sidecar_logs(&context(two));
    assert!(
        outbound.is_empty() && inbound.is_empty(),
        "{outbound:?} {inbound:?}"
    );
}

#[test]
fn a_filter_expression_becomes_envoys_cel_filter() {
    let telemetry = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: errors, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
"#;
    let ctx = context(telemetry);
    let proxy = policy::proxy("sidecar", "httpbin-1", "foo", &[("app", "httpbin")]);
    let listeners = policy::listeners(&ctx, &proxy);
    let inbound = policy::named(&listeners, "virtualInbound");
    let filters: Vec<String> = access_logs(inbound).iter().map(cel_expression).collect();
    assert!(!filters.is_empty());
    assert!(
        filters.iter().all(|f| f == "response.code >= 400"),
        "{filters:?}"
    );
}

fn cel_expression(log: &AccessLog) -> String {
    use envoy_types::pb::envoy::config::accesslog::v3::{access_log_filter, extension_filter};
    use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
    let Some(access_log_filter::FilterSpecifier::ExtensionFilter(ext)) = log
        .filter
        .as_ref()
        .and_then(|f| f.filter_specifier.as_ref())
    else {
        panic!("an extension filter: {log:?}");
    };
    assert_eq!(ext.name, "envoy.access_loggers.extension_filters.cel");
    let Some(extension_filter::ConfigType::TypedConfig(any)) = &ext.config_type else {
        panic!("typed");
    };
    ExpressionFilter::decode(any.value.as_slice())
        .expect("expression filter")
        .expression
}
