//! The CORS filter over real sockets: preflights answered by the proxy for
//! allowed origins (and forwarded for others), answers to allowed origins
//! marked, others left alone.

use oxmesh_testkit::TempDir;

mod support;

const CORS_FILTER: &str = "          - name: envoy.filters.http.cors\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}\n";
const POLICY: &str = r#"typed_per_filter_config: {envoy.filters.http.cors: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy, allow_origin_string_match: [{exact: "https://app.example"}, {prefix: "https://test."}], allow_methods: "GET,POST", allow_headers: "*", expose_headers: "x-trace", max_age: "60", allow_credentials: true}}, "#;

async fn proxy(dir: &TempDir) -> oxmesh_proxy::process::Proxy {
    let backend = support::header_backend().await;
    let listener = support::http_listener("web", "", CORS_FILTER).replace(
        "route: {cluster: web}",
        &format!("{POLICY}route: {{cluster: web}}"),
    );
    support::start(
        dir,
        &support::bootstrap(
            &listener,
            &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
        ),
        support::workload("foo", "httpbin"),
    )
}

async fn request(
    address: std::net::SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, String) {
    support::request(address, method, "/api", headers, "").await
}

#[tokio::test]
async fn preflights_from_allowed_origins_are_answered_by_the_proxy() {
    let dir = TempDir::new("cors-preflight");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    let (status, headers, body) = request(
        address,
        "OPTIONS",
        &[
            ("origin", "https://test.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-custom"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.is_empty(),
        "answered by the proxy, not the app: {body}"
    );
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://test.example"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET,POST");
    assert_eq!(
        headers["access-control-allow-headers"], "x-custom",
        "* echoes the request"
    );
    assert_eq!(headers["access-control-max-age"], "60");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(headers.get("access-control-expose-headers").is_none());

    // Another origin's preflight goes on to the app, unmarked.
    let (status, headers, body) = request(
        address,
        "OPTIONS",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("origin: https://evil.example"), "{body}");
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn answers_to_allowed_origins_are_marked() {
    let dir = TempDir::new("cors-simple");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    let (status, headers, body) =
        request(address, "GET", &[("origin", "https://app.example")]).await;
    assert_eq!(status, 200);
    assert!(body.contains("origin: https://app.example"));
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-expose-headers"], "x-trace");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let (_, headers, _) = request(address, "GET", &[("origin", "https://evil.example")]).await;
    assert!(headers.get("access-control-allow-origin").is_none());
    let (_, headers, _) = request(address, "GET", &[]).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}
