//! Envoy's ext_authz filters as Istio generates them for CUSTOM policies, in
//! process against the demo authorizer (Istio's ext-authz sample) on
//! loopback, over HTTP and gRPC: the shadow RBAC decides whether to ask, the
//! authorizer's answer decides the request, its headers go where the filter
//! says, and a missing authorizer fails closed unless told to fail open.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use oxmesh_demo::ext_authz as authorizer;
use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The demo authorizer's HTTP and gRPC services; TCP checks are denied.
async fn authorizers() -> (SocketAddr, SocketAddr) {
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addresses = (
        http.local_addr().expect("address"),
        grpc.local_addr().expect("address"),
    );
    tokio::spawn(authorizer::serve_http(http));
    tokio::spawn(authorizer::serve_grpc(grpc, vec![String::new()]));
    addresses
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

/// Istio's shadow RBAC for a CUSTOM policy of `provider` on `/headers`.
fn shadow_rbac(provider: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              shadow_rules:
                action: DENY
                policies:
                  istio-ext-authz-{provider}-ns[foo]-policy[ext-authz]-rule[0]:
                    permissions: [{{and_rules: {{rules: [{{or_rules: {{rules: [{{url_path: {{path: {{exact: /headers}}}}}}]}}}}]}}}}]
                    principals: [{{and_ids: {{ids: [{{any: true}}]}}}}]
              shadow_rules_stat_prefix: istio_ext_authz_
"#
    )
}

fn enabled(filter: &str, provider: &str) -> String {
    format!(
        "{{filter: {filter}, path: [{{key: istio_ext_authz_shadow_effective_policy_id}}], value: {{string_match: {{prefix: istio-ext-authz-{provider}}}}}}}"
    )
}

/// An HTTP listener `name` asking the authorizer described by `service`.
fn http_listener(name: &str, provider: &str, service: &str, fail_open: bool) -> String {
    let filters = format!(
        r#"{rbac}          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: {fail_open}
              filter_enabled_metadata: {enabled}
{service}"#,
        rbac = shadow_rbac(provider),
        enabled = enabled("envoy.filters.http.rbac", provider),
    );
    support::http_listener(name, "", &filters)
}

const HTTP_SERVICE: &str = r#"              http_service:
                server_uri: {uri: "http://ext-authz.foo.svc.cluster.local", cluster: authz-http, timeout: 2s}
                authorization_response:
                  allowed_upstream_headers: {patterns: [{exact: x-ext-authz-check-result, ignore_case: true}]}
              allowed_headers: {patterns: [{exact: x-ext-authz, ignore_case: true}]}
"#;

fn grpc_service(cluster: &str) -> String {
    format!(
        "              grpc_service: {{envoy_grpc: {{cluster_name: {cluster}, authority: ext-authz.foo.svc.cluster.local}}, timeout: 2s}}\n"
    )
}

async fn proxy(dir: &TempDir) -> Proxy {
    let (backend, (http, grpc)) = (support::header_backend().await, authorizers().await);
    let closed = closed_port().await;
    let listeners = [
        http_listener("http", "http-provider", HTTP_SERVICE, false),
        http_listener("grpc", "grpc-provider", &grpc_service("authz-grpc"), false),
        http_listener("down", "down", &grpc_service("authz-down"), false),
        http_listener("down-open", "down", &grpc_service("authz-down"), true),
    ]
    .concat();
    let text = format!(
        r#"
static_resources:
  listeners:
{listeners}  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          shadow_rules:
            action: DENY
            policies:
              istio-ext-authz-grpc-provider-ns[foo]-policy[tcp]-rule[0]:
                permissions: [{{any: true}}]
                principals: [{{any: true}}]
          shadow_rules_stat_prefix: istio_ext_authz_
      - name: envoy.filters.network.ext_authz
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz
          stat_prefix: tcp.
          transport_api_version: V3
          grpc_service: {{envoy_grpc: {{cluster_name: authz-grpc}}, timeout: 2s}}
          filter_enabled_metadata: {enabled}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web
          cluster: web
  clusters:
{}{}{}{}"#,
        support::static_cluster("web", &[backend], "ROUND_ROBIN"),
        support::http_cluster("authz-http", http, false),
        support::http_cluster("authz-grpc", grpc, true),
        support::http_cluster("authz-down", closed, true),
        enabled = enabled("envoy.filters.network.rbac", "grpc-provider"),
    );
    support::start(dir, &text, support::workload("foo", "httpbin"))
}

async fn send(
    proxy: &Proxy,
    listener: &str,
    path: &str,
    check: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let headers: Vec<(&str, &str)> = check
        .map(|value| (authorizer::CHECK_HEADER, value))
        .into_iter()
        .collect();
    support::get(proxy.listeners.bound(listener)[0], path, &headers).await
}

#[tokio::test]
async fn the_authorizer_decides_what_custom_rules_match() {
    let dir = TempDir::new("proxy-ext-authz");
    let proxy = proxy(&dir).await;
    for listener in ["http", "grpc"] {
        let (status, headers, body) = send(&proxy, listener, "/headers", Some("deny")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::FORBIDDEN, authorizer::DENIED_BODY),
            "{listener}"
        );
        // Without a list of headers for denials, the authorizer's all go to
        // the client (Envoy's default), over HTTP and gRPC alike.
        assert_eq!(headers[authorizer::RESULT_HEADER], "denied", "{listener}");

        let (status, _, body) = send(&proxy, listener, "/headers", Some("allow")).await;
        assert_eq!(status, StatusCode::OK, "{listener}: {body}");
        assert!(
            body.contains("x-ext-authz-check-result: allowed\n"),
            "{listener}: the allow's header goes upstream: {body}"
        );

        // No CUSTOM rule matches /ip: the authorizer is not asked.
        let (status, _, body) = send(&proxy, listener, "/ip", Some("deny")).await;
        assert_eq!(status, StatusCode::OK, "{listener}");
        assert!(!body.contains("x-ext-authz-check-result"), "{body}");
    }

    // An authorizer that cannot be reached: 403, unless the filter fails open.
    let (status, _, _) = send(&proxy, "down", "/headers", Some("allow")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&proxy, "down-open", "/headers", None).await;
    assert_eq!(status, StatusCode::OK);

    let metrics = proxy.ctx.metrics.encode();
    assert!(
        metrics.contains("response_flags=\"UAEX\""),
        "denials are flagged UAEX: {metrics}"
    );

    // A connection the authorizer denies is closed without a byte.
    let address = proxy.listeners.bound("tcp")[0];
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed, not answered: {read:?}"
    );
}
