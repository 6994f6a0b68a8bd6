//! Envoy's jwt_authn filter, as Istio generates it from a RequestAuthentication,
//! in front of an RBAC filter that needs a request principal and a claim:
//! real sockets on loopback, tokens signed with real keys, and a backend that
//! reports the headers it received.

mod support;

use http::{HeaderMap, StatusCode};
use oxmesh_demo::jwt::Issuer;
use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use serde_json::json;

/// A connection manager with Istio's jwt_authn for `issuer` and an ALLOW
/// policy: a token of that issuer whose `groups` include `admin`.
async fn proxy(dir: &TempDir, issuer: &Issuer) -> Proxy {
    let backend = support::header_backend().await;
    let filters = format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                origins-0:
                  issuer: {iss}
                  local_jwks: {{inline_string: '{jwks}'}}
                  payload_in_metadata: payload
                  normalize_payload_in_metadata: {{space_delimited_claims: [permission, scope]}}
                  claim_to_headers: [{{header_name: x-user, claim_name: sub}}]
              rules:
              - match: {{prefix: /}}
                requires: {{requires_any: {{requirements: [{{provider_name: origins-0}}, {{allow_missing: {{}}}}]}}}}
              bypass_cors_preflight: true
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  ns[foo]-policy[admins]-rule[0]:
                    permissions: [{{and_rules: {{rules: [{{any: true}}]}}}}]
                    principals:
                    - and_ids:
                        ids:
                        - metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: iss}}], value: {{string_match: {{exact: {iss}}}}}}}
                        - metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: scope}}], value: {{list_match: {{one_of: {{string_match: {{exact: admin}}}}}}}}}}
                  ns[foo]-policy[open]-rule[0]:
                    permissions: [{{url_path: {{path: {{exact: /open}}}}}}]
                    principals: [{{any: true}}]
"#,
        iss = issuer.issuer,
        jwks = issuer.jwks(),
    );
    let text = support::bootstrap(
        &support::http_listener("web", "", &filters),
        &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
    );
    support::start(dir, &text, support::workload("foo", "httpbin"))
}

async fn send(proxy: &Proxy, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    send_to(proxy, "/headers", headers).await
}

async fn send_to(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    support::get(proxy.listeners.bound("web")[0], path, headers).await
}

#[tokio::test]
async fn tokens_are_verified_before_authorization_reads_their_claims() {
    let dir = TempDir::new("proxy-authn");
    let issuer = Issuer::demo().expect("demo key");
    let proxy = proxy(&dir, &issuer).await;
    let bearer = |token: &str| format!("Bearer {token}");

    // No token: jwt_authn lets it through, the policy wants a principal.
    let (status, _, body) = send(&proxy, &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied")
    );

    // A valid token with the claim: allowed; the backend sees the claim
    // header and not the token, which is not forwarded.
    let admin = issuer
        .token(&json!({"sub": "alice", "scope": "read admin"}))
        .expect("signed");
    let (status, _, body) = send(&proxy, &[("authorization", &bearer(&admin))]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("x-user: alice\n"), "{body}");
    assert!(!body.contains("authorization"), "token stripped: {body}");

    // A request without a token cannot bring the claim header itself.
    let (status, _, body) = send_to(&proxy, "/open", &[("x-user", "admin")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !body.contains("x-user"),
        "a forged claim header is removed: {body}"
    );

    // Valid, without the claim: authorization says no.
    let reader = issuer.token(&json!({"scope": "read"})).expect("signed");
    let (status, _, _) = send(&proxy, &[("authorization", &bearer(&reader))]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Refused by jwt_authn, before authorization: 401 with Envoy's reason.
    let stranger = Issuer::p256(&issuer.issuer, "demo").expect("key");
    let forged = stranger.token(&json!({"scope": "admin"})).expect("signed");
    let expired = issuer
        .token(&json!({"scope": "admin", "exp": 1_000_000_000}))
        .expect("signed");
    let wrong_issuer = {
        let mut claims = issuer.claims(&json!({"scope": "admin"}));
        claims["iss"] = json!("someone@else");
        issuer.sign("RS256", &claims).expect("signed")
    };
    let cases = [
        (
            "deadbeef",
            "Jwt is not in the form of Header.Payload.Signature",
        ),
        (
            &forged,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (&expired, "Jwt is expired"),
        (&wrong_issuer, "Jwt issuer is not configured"),
    ];
    for (token, reason) in cases {
        let (status, headers, body) = send(&proxy, &[("authorization", &bearer(token))]).await;
        assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, reason));
        let challenge = headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(
            challenge,
            "Bearer realm=\"http://httpbin.foo:8000/headers\", error=\"invalid_token\""
        );
    }

    // A token too large for the header limit never reaches verification.
    let huge = bearer(&"a".repeat(100 * 1024));
    let (status, _, _) = send(&proxy, &[("authorization", &huge)]).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let stats = proxy.ctx.metrics.encode();
    assert!(
        stats.contains("response_code=\"401\""),
        "refusals are counted: {stats}"
    );
}
