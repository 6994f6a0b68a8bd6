//! Envoy's RBAC filters, as Istio generates them from AuthorizationPolicies,
//! enforced by the proxy in process: real sockets on loopback, config from a
//! bootstrap whose filters are written as Istio writes them.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn http_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = format!("{} {}", req.method(), req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn cluster(name: &str, endpoint: SocketAddr) -> String {
    support::static_cluster(name, &[endpoint], "ROUND_ROBIN")
}

/// An HTTP listener `web` whose connection manager runs `filters` (each an
/// RBAC filter's YAML) before the router, and a TCP listener `tcp` with
/// `network` (network RBAC filters) before its TCP proxy.
async fn proxy(dir: &TempDir, filters: &[&str], network: &[&str], edge_hops: u32) -> Proxy {
    let (web, echo) = (http_backend().await, support::tcp_echo().await);
    let http_filters: String = filters
        .iter()
        .map(|f| format!("          - name: envoy.filters.http.rbac\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n{}\n", indent(f, 14)))
        .collect();
    let network_filters: String = network
        .iter()
        .map(|f| format!("      - name: envoy.filters.network.rbac\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC\n          stat_prefix: tcp.\n{}\n", indent(f, 10)))
        .collect();
    let edge = if edge_hops > 0 {
        format!("          use_remote_address: true\n          xff_num_trusted_hops: {edge_hops}\n")
    } else {
        String::new()
    };
    let web_listener = support::http_listener("web", &edge, &http_filters);
    let text = format!(
        r#"
static_resources:
  listeners:
{web_listener}  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
{network_filters}      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
  clusters:
{}{}"#,
        cluster("web", web),
        cluster("echo", echo),
    );
    support::start(dir, &text, support::workload("foo", "httpbin"))
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.trim_matches('\n')
        .lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn send(
    proxy: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let address = proxy.listeners.bound("web")[0];
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "httpbin.foo:8000");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Whether a TCP connection through `tcp` echoes (allowed) or is closed
/// without a byte (denied).
async fn tcp_allowed(proxy: &Proxy) -> bool {
    let address = proxy.listeners.bound("tcp")[0];
    let mut stream = TcpStream::connect(address).await.expect("connect");
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"ping"
}

const DENY_ADMIN: &str = r#"
rules:
  action: DENY
  policies:
    ns[foo]-policy[deny-admin]-rule[0]:
      permissions: [{and_rules: {rules: [{or_rules: {rules: [{url_path: {path: {prefix: /admin}}}]}}]}}]
      principals: [{and_ids: {ids: [{any: true}]}}]
shadow_rules_stat_prefix: istio_dry_run_allow_
"#;

const ALLOW_GET_AND_TEMPLATES: &str = r#"
rules:
  policies:
    ns[foo]-policy[readers]-rule[0]:
      permissions:
      - and_rules:
          rules:
          - or_rules: {rules: [{header: {name: ":method", string_match: {exact: GET}}}]}
      principals: [{and_ids: {ids: [{any: true}]}}]
    ns[foo]-policy[editors]-rule[0]:
      permissions:
      - and_rules:
          rules:
          - or_rules: {rules: [{uri_template: {name: uri-template, typed_config: {"@type": type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig, path_template: "/books/*/edit"}}}]}
          - or_rules: {rules: [{header: {name: ":authority", string_match: {prefix: "httpbin.foo", ignore_case: true}}}]}
      principals:
      - and_ids:
          ids:
          - or_ids: {ids: [{header: {name: x-team, string_match: {exact: editors}}}]}
shadow_rules_stat_prefix: istio_dry_run_allow_
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_then_allow_as_istio_orders_them() {
    let dir = TempDir::new("authz-http");
    let proxy = proxy(&dir, &[DENY_ADMIN, ALLOW_GET_AND_TEMPLATES], &[], 0).await;

    assert_eq!(
        send(&proxy, "GET", "/headers", &[]).await,
        (StatusCode::OK, "GET /headers".into())
    );
    // DENY wins over ALLOW, with Envoy's answer.
    assert_eq!(
        send(&proxy, "GET", "/admin/users", &[]).await,
        (StatusCode::FORBIDDEN, "RBAC: access denied".into())
    );
    // An ALLOW policy exists: what none matches is denied.
    assert_eq!(
        send(&proxy, "POST", "/headers", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    // `{*}` is one segment; the principal side needs the header.
    let editor = [("x-team", "editors")];
    assert_eq!(
        send(&proxy, "POST", "/books/7/edit", &editor).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&proxy, "POST", "/books/7/edit", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&proxy, "POST", "/books/7/pages/edit", &editor).await.0,
        StatusCode::FORBIDDEN
    );

    let metrics = proxy.ctx.metrics.encode();
    assert!(
        metrics.contains("response_code=\"403\""),
        "denials show in istio_requests_total:\n{metrics}"
    );
    assert!(metrics.contains("envoy_http_rbac_total{envoy_http_conn_manager_prefix=\"inbound_0.0.0.0_8000\",decision=\"denied\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_and_denies_nothing() {
    let dir = TempDir::new("authz-dry-run");
    let dry_run = r#"
shadow_rules:
  action: DENY
  policies:
    ns[foo]-policy[deny-all]-rule[0]:
      permissions: [{and_rules: {rules: [{any: true}]}}]
      principals: [{and_ids: {ids: [{any: true}]}}]
shadow_rules_stat_prefix: istio_dry_run_deny_
"#;
    let proxy = proxy(&dir, &[dry_run], &[], 0).await;
    for _ in 0..3 {
        assert_eq!(
            send(&proxy, "DELETE", "/anything", &[]).await.0,
            StatusCode::OK
        );
    }
    let metrics = proxy.ctx.metrics.encode();
    assert!(
        metrics
            .contains("decision=\"shadow_denied\",shadow_rules_prefix=\"istio_dry_run_deny_\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_ip_blocks_read_trusted_forwarded_for_hops() {
    let dir = TempDir::new("authz-remote-ip");
    let allow_office = r#"
rules:
  policies:
    ns[foo]-policy[office]-rule[0]:
      permissions: [{and_rules: {rules: [{any: true}]}}]
      principals: [{and_ids: {ids: [{or_ids: {ids: [{remote_ip: {address_prefix: 203.0.113.0, prefix_len: 24}}]}}]}}]
"#;
    // One trusted proxy in front: the client is the last x-forwarded-for entry.
    let proxy = proxy(&dir, &[allow_office], &[], 1).await;
    let from = |xff: &'static str| [("x-forwarded-for", xff)];
    assert_eq!(
        send(&proxy, "GET", "/", &from("203.0.113.7")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&proxy, "GET", "/", &from("203.0.113.7, 198.51.100.1"))
            .await
            .0,
        StatusCode::FORBIDDEN,
        "the entry that one trusted hop deep is not the office"
    );
    assert_eq!(send(&proxy, "GET", "/", &[]).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_closed_or_carried_by_port() {
    let dir = TempDir::new("authz-tcp");
    // ALLOW on another port: nothing matches, every connection is refused.
    let other_port = r#"
rules:
  policies:
    ns[foo]-policy[tcp]-rule[0]:
      permissions: [{and_rules: {rules: [{or_rules: {rules: [{destination_port: 1}]}}]}}]
      principals: [{and_ids: {ids: [{any: true}]}}]
"#;
    let proxy_denying = proxy(&dir, &[], &[other_port], 0).await;
    assert!(!tcp_allowed(&proxy_denying).await, "closed without a byte");
    let metrics = proxy_denying.ctx.metrics.encode();
    assert!(
        metrics.contains(
            "envoy_tcp_rbac_total{envoy_http_conn_manager_prefix=\"\",decision=\"denied\""
        ),
        "{metrics}"
    );

    let dir = TempDir::new("authz-tcp-allow");
    let any_port = r#"
rules:
  policies:
    ns[foo]-policy[tcp]-rule[0]:
      permissions: [{and_rules: {rules: [{not_rule: {destination_port: 1}}]}}]
      principals: [{and_ids: {ids: [{any: true}]}}]
"#;
    let proxy_allowing = proxy(&dir, &[], &[any_port], 0).await;
    assert!(tcp_allowed(&proxy_allowing).await, "carried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_evaluated_is_refused_by_name() {
    let dir = TempDir::new("authz-refused");
    let text = "static_resources:\n  listeners:\n  - name: web\n    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: x\n          http_filters:\n          - name: envoy.filters.http.rbac\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n              rules: {policies: {p: {permissions: [{any: true}], principals: [{any: true}], condition: {const_expr: {bool_value: true}}}}}\n          - name: envoy.filters.http.router\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}\n          route_config: {name: r}\n";
    dir.write("bootstrap.yaml", text);
    let error = oxmesh_proxy::bootstrap::load(&dir.path("bootstrap.yaml"))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("envoy.filters.http.rbac") && error.contains("CEL conditions"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_pushed_mid_connection_applies_to_the_next_request() {
    let dir = TempDir::new("authz-live");
    let proxy = proxy(&dir, &[], &[], 0).await;
    let address = proxy.listeners.bound("web")[0];
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let get = || {
        Request::get("/admin")
            .header("host", "httpbin.foo:8000")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    assert_eq!(
        sender.send_request(get()).await.expect("response").status(),
        StatusCode::OK
    );

    // The same listener, now with a DENY policy, stored as the agent stores a push.
    let denying = TempDir::new("authz-live-push");
    let with_policy = proxy_text_of(&denying, &[DENY_ADMIN]).await;
    let mut next = oxmesh_proxy::bootstrap::from_text(&with_policy, "push").expect("converts");
    let current = proxy.ctx.snapshot();
    next.clusters = current.clusters.clone();
    proxy.ctx.config.store(std::sync::Arc::new(next));

    let response = sender.send_request(get()).await.expect("same connection");
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "no waiting for the connection to drain"
    );
}

/// The bootstrap text `proxy` would write for `filters`.
async fn proxy_text_of(dir: &TempDir, filters: &[&str]) -> String {
    let started = proxy(dir, filters, &[], 0).await;
    drop(started);
    std::fs::read_to_string(dir.path("bootstrap.yaml")).expect("bootstrap")
}
