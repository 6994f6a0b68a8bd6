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
    assert_eq!(headers["x-envoy-ratelimited"], "true");
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

/// The listener's bucket (`default`) and one for descriptor PATH=/slow
/// (`slow`), the route making a PATH descriptor of every request.
async fn descriptor_proxy(
    dir: &TempDir,
    default: u32,
    slow: u32,
    always_default: bool,
) -> (oxmesh_proxy::process::Proxy, std::net::SocketAddr) {
    let filter = local_filter(&format!(
        "token_bucket: {{max_tokens: {default}, fill_interval: 3600s}}, {ENABLED}, {ENFORCED}, always_consume_default_token_bucket: {always_default}, descriptors: [{{entries: [{{key: PATH, value: /slow}}], token_bucket: {{max_tokens: {slow}, fill_interval: 3600s}}}}]"
    ));
    let routes = "routes: [{match: {prefix: /}, route: {cluster: web, rate_limits: [{actions: [{request_headers: {header_name: ':path', descriptor_key: PATH}}]}]}}]";
    let proxy = proxy(dir, &filter, Some(routes)).await;
    let address = proxy.listeners.bound("web")[0];
    (proxy, address)
}

#[tokio::test]
async fn a_descriptors_bucket_and_the_default_one_both_give_a_token() {
    let dir = TempDir::new("local-ratelimit-descriptors");
    let (_proxy, address) = descriptor_proxy(&dir, 2, 5, true).await;
    assert_eq!(
        statuses(address, "/slow", 3).await,
        [200, 200, 429],
        "the default bucket (2) runs out before the descriptor's (5)"
    );
    assert_eq!(statuses(address, "/fast", 1).await, [429]);
}

#[tokio::test]
async fn without_always_consume_default_a_descriptors_bucket_decides_alone() {
    let dir = TempDir::new("local-ratelimit-descriptors-alone");
    let (_proxy, address) = descriptor_proxy(&dir, 1, 2, false).await;
    assert_eq!(statuses(address, "/slow", 3).await, [200, 200, 429]);
    assert_eq!(
        statuses(address, "/fast", 2).await,
        [200, 429],
        "the default bucket was left for other requests"
    );
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

/// A push that changes the listener elsewhere (here the connection manager's
/// trusted hops) keeps the limit's tokens; one that reshapes the bucket
/// starts it full.
#[tokio::test]
async fn a_push_keeping_the_limit_keeps_its_tokens() {
    use oxmesh_proxy::config::listener::{HttpFilter, Listener, NetworkFilter};
    let listener = |options: &str, max: u32| -> Listener {
        let filter = local_filter(&format!(
            "token_bucket: {{max_tokens: {max}, fill_interval: 3600s}}, {ENABLED}, {ENFORCED}"
        ));
        let text = support::bootstrap(
            &support::http_listener("web", options, &filter),
            &support::static_cluster(
                "web",
                &["127.0.0.1:9".parse().expect("address")],
                "ROUND_ROBIN",
            ),
        );
        let mut snapshot = oxmesh_proxy::bootstrap::from_text(&text, "test").expect("converts");
        let listener = snapshot.listeners.remove("web").expect("listener");
        std::sync::Arc::try_unwrap(listener).expect("only here")
    };
    let tokens = |l: &Listener| match &l
        .chains
        .iter()
        .chain(l.default_chain.iter())
        .next()
        .expect("chain")
        .filter
    {
        NetworkFilter::Http(m) => match &m.filters[0] {
            HttpFilter::LocalRateLimit(_, c) => c.bucket.as_ref().expect("bucket").clone(),
            _ => panic!("the rate limit filter first"),
        },
        NetworkFilter::Tcp(_) => panic!("an HTTP chain"),
    };
    let old = listener("", 3);
    assert!(tokens(&old).try_take());
    let mut pushed = listener("          xff_num_trusted_hops: 1\n", 3);
    pushed.carry_over(&old);
    assert_eq!(tokens(&pushed).tokens(), 2, "the spent token stays spent");
    let mut reshaped = listener("", 5);
    reshaped.carry_over(&old);
    assert_eq!(tokens(&reshaped).tokens(), 5);
}
