//! Access logs written by a running proxy to real files: Istio's default text
//! format and JSON, over HTTP and TCP, with a filter, read back and checked
//! field by field.

mod support;

use std::time::Duration;

use http::StatusCode;
use oxmesh_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Istio's default text format (`meshConfig.accessLogFormat` unset).
const ISTIO_TEXT: &str = "[%START_TIME%] \\\"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\\\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \\\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\\\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \\\"%REQ(X-FORWARDED-FOR)%\\\" \\\"%REQ(USER-AGENT)%\\\" \\\"%REQ(X-REQUEST-ID)%\\\" \\\"%REQ(:AUTHORITY)%\\\" \\\"%UPSTREAM_HOST%\\\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\\n";

fn file_log(path: &str, format: &str, filter: &str) -> String {
    format!(
        r#"          - name: envoy.access_loggers.file
            {filter}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
              {format}
"#
    )
}

const JSON_FIELDS: &str = r#"log_format: {json_format: {start_time: "%START_TIME%", method: "%REQ(:METHOD)%", path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", response_code: "%RESPONSE_CODE%", response_flags: "%RESPONSE_FLAGS%", response_code_details: "%RESPONSE_CODE_DETAILS%", upstream_cluster: "%UPSTREAM_CLUSTER_RAW%", upstream_host: "%UPSTREAM_HOST%", bytes_received: "%BYTES_RECEIVED%", bytes_sent: "%BYTES_SENT%", duration: "%DURATION%", route_name: "%ROUTE_NAME%"}}"#;

/// Waits for `path` to hold `lines` lines (the writer flushes off the
/// request path).
async fn lines(path: &str, lines: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found: Vec<String> = text.lines().map(str::to_owned).collect();
        if found.len() >= lines || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http_requests_are_logged_in_istios_text_format_and_filtered_json() {
    let dir = TempDir::new("proxy-access-log-http");
    let text_path = dir.path("text.log").display().to_string();
    let json_path = dir.path("errors.json").display().to_string();
    let backend = support::header_backend().await;
    let errors_only = "filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: none}}}}";
    let access_log = format!(
        "          access_log:\n{}{}",
        file_log(
            &text_path,
            &format!("log_format: {{text_format_source: {{inline_string: \"{ISTIO_TEXT}\"}}}}"),
            ""
        ),
        file_log(&json_path, JSON_FIELDS, errors_only),
    );
    let listener = format!(
        r#"  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_8000
{access_log}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            name: web
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{name: to-web, match: {{prefix: /ok}}, route: {{cluster: web}}}}]
"#
    );
    let text = support::bootstrap(
        &listener,
        &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
    );
    let proxy = support::start(&dir, &text, support::workload("foo", "httpbin"));
    let address = proxy.listeners.bound("web")[0];

    let (status, _, body) = support::get(address, "/ok?x=1", &[("user-agent", "curl/8.5.0")]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = support::get(address, "/missing", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let logged = lines(&text_path, 2).await;
    assert_eq!(logged.len(), 2, "{logged:#?}");
    let ok = Fields::of(&logged[0]);
    assert_eq!(ok.request, "GET /ok?x=1 HTTP/1.1");
    assert_eq!(ok.words[..4], ["200", "-", "via_upstream", "-"]);
    assert_eq!(ok.words[5], body.len().to_string(), "bytes sent");
    assert!(
        ok.words[7].parse::<u64>().is_ok(),
        "x-envoy-upstream-service-time in ms: {}",
        ok.words[7]
    );
    assert_eq!(ok.quoted[2], "curl/8.5.0");
    assert_eq!(ok.quoted[3].len(), 36, "a generated x-request-id");
    assert_eq!(ok.quoted[4], "httpbin.foo:8000");
    assert_eq!(ok.quoted[5], backend.to_string());
    let tail: Vec<&str> = ok.tail.split(' ').collect();
    assert_eq!(tail[0], "web", "upstream cluster");
    assert!(tail[1].starts_with("127.0.0.1:"), "upstream local address");
    assert_eq!(tail[2], address.to_string(), "downstream local address");
    assert!(
        tail[3].starts_with("127.0.0.1:"),
        "downstream remote address"
    );
    assert_eq!(tail[4..], ["-", "to-web"]);
    let missing = Fields::of(&logged[1]);
    assert_eq!(missing.request, "GET /missing HTTP/1.1");
    assert_eq!(missing.words[..4], ["404", "NR", "route_not_found", "-"]);
    assert_eq!(missing.quoted[5], "-", "no upstream host");
    assert_eq!(missing.words[7], "-", "no upstream, no service time");

    // The JSON log has only the error, its numbers as numbers.
    let errors = lines(&json_path, 1).await;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let error: serde_json::Value = serde_json::from_str(&errors[0]).expect("JSON");
    assert_eq!(error["response_code"], 404);
    assert_eq!(error["response_flags"], "NR");
    assert_eq!(error["response_code_details"], "route_not_found");
    assert_eq!(error["path"], "/missing");
    assert!(error["upstream_cluster"].is_null(), "{error}");
    assert!(error["duration"].is_u64(), "{error}");
}

/// One line of Istio's text format, cut at its quotes.
struct Fields {
    /// The quoted request line.
    request: String,
    /// The unquoted words after it: code, flags, details, termination, then
    /// (after the quoted transport failure) received, sent, duration, service time.
    words: Vec<String>,
    /// The quoted fields in order: transport failure, forwarded-for, user
    /// agent, request id, authority, upstream host.
    quoted: Vec<String>,
    /// After the last quote: cluster, local addresses, SNI, route.
    tail: String,
}

impl Fields {
    fn of(line: &str) -> Self {
        let parts: Vec<&str> = line.split('"').collect();
        assert_eq!(
            parts.len(),
            15,
            "Istio's format has 7 quoted fields: {line}"
        );
        let mut words: Vec<String> = parts[2].split_whitespace().map(str::to_owned).collect();
        words.extend(parts[4].split_whitespace().map(str::to_owned));
        let quoted = [3, 5, 7, 9, 11, 13]
            .iter()
            .map(|&i| parts[i].to_owned())
            .collect();
        assert!(
            parts[0].starts_with('[') && parts[0].ends_with("] "),
            "{line}"
        );
        Self {
            request: parts[1].to_owned(),
            words,
            quoted,
            tail: parts[14].trim().to_owned(),
        }
    }
}

#[tokio::test]
async fn a_tcp_connection_is_logged_when_it_closes() {
    let dir = TempDir::new("proxy-access-log-tcp");
    let json_path = dir.path("tcp.json").display().to_string();
    let echo = support::tcp_echo().await;
    let listener = format!(
        r#"  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
          access_log:
{}"#,
        file_log(&json_path, JSON_FIELDS, "")
    );
    let text = support::bootstrap(
        &listener,
        &support::static_cluster("echo", &[echo], "ROUND_ROBIN"),
    );
    let proxy = support::start(&dir, &text, support::workload("foo", "echo"));
    let address = proxy.listeners.bound("tcp")[0];
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"hello").await.expect("write");
    let mut echoed = [0u8; 5];
    stream.read_exact(&mut echoed).await.expect("echo");
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    drop(stream);

    let logged = lines(&json_path, 1).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    let line: serde_json::Value = serde_json::from_str(&logged[0]).expect("JSON");
    assert_eq!(line["response_code"], 0);
    assert_eq!(line["bytes_received"], 5);
    assert_eq!(line["bytes_sent"], 5);
    assert_eq!(line["upstream_cluster"], "echo");
    assert_eq!(line["upstream_host"], echo.to_string());
    assert_eq!(line["response_flags"], "-");
    assert!(line["method"].is_null(), "no request on TCP: {line}");
}
