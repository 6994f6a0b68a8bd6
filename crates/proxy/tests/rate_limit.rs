//! The rate-limit filters over real sockets: local token buckets (the
//! listener's, a route's through a TypedStruct as Istio's docs write it, a
//! descriptor's), not-enforced mode, and global limits asked of the demo
//! rate limit service over gRPC, including what happens when it is away.

use oxmesh_testkit::TempDir;

mod support;

const ENABLED: &str =
    "filter_enabled: {runtime_key: e, default_value: {numerator: 100, denominator: HUNDRED}}";
const ENFORCED: &str =
    "filter_enforced: {runtime_key: f, default_value: {numerator: 100, denominator: HUNDRED}}";

fn local_filter(config: &str) -> String {
    format!(
        "          - name: envoy.filters.http.local_ratelimit\n            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: http_local_rate_limiter, {config}}}\n"
    )
}

async fn proxy(dir: &TempDir, filters: &str, routes: Option<&str>) -> oxmesh_proxy::process::Proxy {
    let backend = support::header_backend().await;
    let mut listener = support::http_listener("web", "", filters);
    if let Some(routes) = routes {
        listener = listener.replace(
            "routes: [{match: {prefix: /}, route: {cluster: web}}]",
            routes,
        );
    }
    support::start(
        dir,
        &support::bootstrap(
            &listener,
            &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
        ),
        support::workload("foo", "httpbin"),
    )
}

async fn statuses(address: std::net::SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(support::get(address, path, &[]).await.0.as_u16());
    }
    seen
}

#[tokio::test]
async fn the_listeners_bucket_answers_429_once_empty() {
    let dir = TempDir::new("local-ratelimit");
    let filter = local_filter(&format!(
        "token_bucket: {{max_tokens: 3, fill_interval: 3600s}}, {ENABLED}, {ENFORCED}, response_headers_to_add: [{{append_action: OVERWRITE_IF_EXISTS_OR_ADD, header: {{key: x-local-rate-limit, value: 'true'}}}}]"
    ));
    let proxy = proxy(&dir, &filter, None).await;
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(statuses(address, "/", 3).await, [200, 200, 200]);
    let (status, headers, body) = support::get(address, "/", &[]).await;
    assert_eq!(status, 429);
    assert_eq!(body, "local_rate_limited");
    assert_eq!(headers["x-local-rate-limit"], "true");
    let metrics = proxy.ctx.metrics.encode();
    for line in [
        "envoy_http_local_rate_limit_ok_total{envoy_http_local_rate_limit_prefix=\"http_local_rate_limiter\"} 3",
        "envoy_http_local_rate_limit_enforced_total{envoy_http_local_rate_limit_prefix=\"http_local_rate_limiter\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let istio = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total") && l.contains("response_code=\"429\""))
        .unwrap_or_default();
    assert!(istio.contains("response_flags=\"RL\""), "{metrics}");
}

#[tokio::test]
async fn a_routes_typed_struct_bucket_limits_only_that_route() {
    let dir = TempDir::new("local-ratelimit-route");
    // As Istio's docs do: the filter only named, the bucket on the route.
    let filter = "          - name: envoy.filters.http.local_ratelimit\n            typed_config: {\"@type\": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, value: {stat_prefix: http_local_rate_limiter}}\n";
    let per_route = format!(
        "typed_per_filter_config: {{envoy.filters.http.local_ratelimit: {{\"@type\": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, value: {{stat_prefix: http_local_rate_limiter, token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}}, {ENABLED}, {ENFORCED}}}}}}}"
    );
    let routes = format!(
        "routes: [{{match: {{prefix: /limited}}, {per_route}, route: {{cluster: web}}}}, {{match: {{prefix: /}}, route: {{cluster: web}}}}]"
    );
    let proxy = proxy(&dir, filter, Some(&routes)).await;
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(statuses(address, "/free", 4).await, [200, 200, 200, 200]);
    assert_eq!(statuses(address, "/limited", 2).await, [200, 429]);
    assert_eq!(statuses(address, "/free", 1).await, [200]);
}

#[tokio::test]
async fn not_enforced_only_marks_the_request() {
    let dir = TempDir::new("local-ratelimit-shadow");
    let filter = local_filter(&format!(
        "token_bucket: {{max_tokens: 1, fill_interval: 3600s}}, {ENABLED}, request_headers_to_add_when_not_enforced: [{{header: {{key: x-would-limit, value: 'yes'}}}}]"
    ));
    let proxy = proxy(&dir, &filter, None).await;
    let address = proxy.listeners.bound("web")[0];
    let (first, _, body) = support::get(address, "/", &[]).await;
    assert_eq!(first, 200);
    assert!(!body.contains("x-would-limit"), "{body}");
    let (second, _, body) = support::get(address, "/", &[]).await;
    assert_eq!(second, 200, "not enforced");
    assert!(body.contains("x-would-limit: yes"), "{body}");
    let metrics = proxy.ctx.metrics.encode();
    assert!(
        metrics.contains("envoy_http_local_rate_limit_rate_limited_total{envoy_http_local_rate_limit_prefix=\"http_local_rate_limiter\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn descriptors_from_route_actions_pick_their_own_bucket() {
    let dir = TempDir::new("local-ratelimit-descriptors");
    let filter = local_filter(&format!(
        "token_bucket: {{max_tokens: 100, fill_interval: 3600s}}, {ENABLED}, {ENFORCED}, descriptors: [{{entries: [{{key: PATH, value: /slow}}], token_bucket: {{max_tokens: 1, fill_interval: 3600s}}}}]"
    ));
    let routes = "routes: [{match: {prefix: /}, route: {cluster: web, rate_limits: [{actions: [{request_headers: {header_name: ':path', descriptor_key: PATH}}]}]}}]";
    let proxy = proxy(&dir, &filter, Some(routes)).await;
    let address = proxy.listeners.bound("web")[0];
    assert_eq!(statuses(address, "/slow", 2).await, [200, 429]);
    assert_eq!(statuses(address, "/fast", 3).await, [200, 200, 200]);
}

fn global_filter(cluster: &str, failure_mode_deny: bool) -> String {
    format!(
        "          - name: envoy.filters.http.ratelimit\n            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit, domain: ratelimit, failure_mode_deny: {failure_mode_deny}, timeout: 2s, rate_limit_service: {{grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}}}, transport_api_version: V3}}}}\n"
    )
}

const PATH_ACTIONS: &str = "routes: [{match: {prefix: /}, route: {cluster: web, rate_limits: [{actions: [{request_headers: {header_name: ':path', descriptor_key: PATH}}]}]}}]";

async fn global_proxy(
    dir: &TempDir,
    rls: std::net::SocketAddr,
    deny: bool,
) -> oxmesh_proxy::process::Proxy {
    let backend = support::header_backend().await;
    let listener = support::http_listener("web", "", &global_filter("rls", deny)).replace(
        "routes: [{match: {prefix: /}, route: {cluster: web}}]",
        PATH_ACTIONS,
    );
    let clusters = format!(
        "{}{}    http2_protocol_options: {{}}\n",
        support::static_cluster("web", &[backend], "ROUND_ROBIN"),
        support::static_cluster("rls", &[rls], "ROUND_ROBIN"),
    );
    support::start(
        dir,
        &support::bootstrap(&listener, &clusters),
        support::workload("foo", "httpbin"),
    )
}

#[tokio::test]
async fn the_rate_limit_service_decides_over_grpc() {
    let dir = TempDir::new("global-ratelimit");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let rls = listener.local_addr().expect("address");
    let rules = vec![
        // Hours, so the two requests never straddle a window's end.
        "PATH=/productpage:1/hour".parse().expect("rule"),
        "PATH:100/hour".parse().expect("rule"),
    ];
    tokio::spawn(oxmesh_demo::rate_limit::serve(
        listener,
        "ratelimit".to_owned(),
        rules,
    ));
    let proxy = global_proxy(&dir, rls, true).await;
    let address = proxy.listeners.bound("web")[0];
    let (status, _, _) = support::get(address, "/productpage", &[]).await;
    assert_eq!(status, 200);
    let (status, headers, _) = support::get(address, "/productpage", &[]).await;
    assert_eq!(status, 429, "the second in the hour is over the limit");
    assert_eq!(headers["x-envoy-ratelimited"], "true");
    assert_eq!(statuses(address, "/reviews", 3).await, [200, 200, 200]);
    let metrics = proxy.ctx.metrics.encode();
    assert!(
        metrics.contains("envoy_cluster_ratelimit_over_limit_total{cluster_name=\"web\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_absent_service_fails_open_unless_failure_mode_deny() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    };
    let dir = TempDir::new("global-ratelimit-open");
    let open = global_proxy(&dir, closed, false).await;
    let (status, _, _) = support::get(open.listeners.bound("web")[0], "/", &[]).await;
    assert_eq!(status, 200, "failure_mode_deny false lets requests through");
    let dir = TempDir::new("global-ratelimit-deny");
    let deny = global_proxy(&dir, closed, true).await;
    let (status, _, _) = support::get(deny.listeners.bound("web")[0], "/", &[]).await;
    assert_eq!(status, 500, "failure_mode_deny refuses");
    let metrics = deny.ctx.metrics.encode();
    assert!(metrics.contains("response_flags=\"RLSE\""), "{metrics}");
}
