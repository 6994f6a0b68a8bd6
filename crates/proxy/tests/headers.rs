//! Header mutations from the route configuration, over real sockets: what
//! the upstream receives and what the client gets back, at the weighted
//! cluster, route, virtual host and table levels, in Envoy's order.

use oxmesh_testkit::TempDir;

mod support;

const ROUTE: &str = r#"          route_config:
            name: web
            request_headers_to_add:
            - {header: {key: x-table, value: table}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
            - {header: {key: x-level, value: table}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
            response_headers_to_add:
            - {header: {key: x-level, value: table}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
            virtual_hosts:
            - name: all
              domains: ["*"]
              request_headers_to_remove: [x-secret]
              response_headers_to_add:
              - {header: {key: x-vhost, value: "100%%"}}
              routes:
              - match: {prefix: /}
                request_headers_to_add:
                - {header: {key: x-route, value: one}}
                - {header: {key: x-route, value: two}, append_action: APPEND_IF_EXISTS_OR_ADD}
                - {header: {key: x-level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
                - {header: {key: x-client, value: ignored}, append_action: ADD_IF_ABSENT}
                response_headers_to_remove: [x-upstream]
                route:
                  weighted_clusters:
                    clusters:
                    - name: web
                      weight: 1
                      host_rewrite_literal: rewritten.example
                      request_headers_to_add:
                      - {header: {key: x-cluster, value: web}}
                      response_headers_to_add:
                      - {header: {key: x-served-by, value: web}}
"#;

/// A listener whose inline route configuration is `ROUTE`.
fn listener() -> String {
    let plain = support::http_listener("web", "", "");
    let start = plain.find("          route_config:").expect("route config");
    format!("{}{ROUTE}", &plain[..start])
}

#[tokio::test]
async fn mutations_apply_at_every_level_in_envoys_order() {
    let dir = TempDir::new("route-headers");
    let backend = support::header_backend().await;
    let bootstrap = support::bootstrap(
        &listener(),
        &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
    );
    let proxy = support::start(&dir, &bootstrap, support::workload("foo", "sleep"));
    let address = proxy.listeners.bound("web")[0];
    let (status, headers, body) = support::get(
        address,
        "/headers",
        &[
            ("x-secret", "s3cr3t"),
            ("x-client", "mine"),
            ("x-route", "client"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = |name: &str| -> Vec<&str> {
        body.lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
            .collect()
    };
    assert_eq!(seen("x-cluster"), ["web"]);
    // The route's entries: its overwrite first, then its appends.
    assert_eq!(seen("x-route"), ["client", "one", "two"]);
    assert_eq!(seen("x-client"), ["mine"], "added only if absent");
    // The table's overwrite comes last and wins.
    assert_eq!(seen("x-level"), ["table"]);
    assert_eq!(seen("x-table"), ["table"]);
    assert!(seen("x-secret").is_empty(), "removed by the virtual host");
    assert_eq!(seen("host"), ["rewritten.example"]);
    assert_eq!(headers["x-served-by"], "web");
    assert_eq!(headers["x-vhost"], "100%");
    assert_eq!(headers["x-level"], "table");
}

#[tokio::test]
async fn a_command_operator_is_refused_naming_the_route() {
    let dir = TempDir::new("route-headers-refused");
    let backend = support::header_backend().await;
    let text = listener().replace("value: one}", "value: \"%START_TIME%\"}");
    dir.write(
        "bootstrap.yaml",
        &support::bootstrap(
            &text,
            &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
        ),
    );
    let error = oxmesh_proxy::bootstrap::load(&dir.path("bootstrap.yaml"))
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("route") && error.contains("x-route") && error.contains("%%"),
        "{error}"
    );
}

#[tokio::test]
async fn a_regex_rewrite_replaces_every_match_in_the_path_and_keeps_the_query() {
    let dir = TempDir::new("route-regex-rewrite");
    let backend = support::header_backend().await;
    let listener = support::http_listener("web", "", "").replace(
        "route: {cluster: web}",
        r#"route: {cluster: web, regex_rewrite: {pattern: {regex: "/v(\\d+)/"}, substitution: "/version-\\1/"}}"#,
    );
    let proxy = support::start(
        &dir,
        &support::bootstrap(
            &listener,
            &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
        ),
        support::workload("foo", "sleep"),
    );
    let address = proxy.listeners.bound("web")[0];
    let (status, _, body) = support::get(address, "/api/v1/items/v2/x?page=3", &[]).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(":path: /api/version-1/items/version-2/x?page=3"),
        "{body}"
    );
}
