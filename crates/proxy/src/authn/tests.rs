//! Tokens signed by real keys (ring, through the demo issuer) against the
//! requirement tree Istio writes.

use http::{HeaderMap, HeaderValue, Method, Uri};
use oxmesh_demo::jwt::Issuer;
use serde_json::json;

use super::*;
use crate::authn::jwks::KeySet;
use crate::config::jwt_authn::Rule;
use crate::config::route::PathMatch;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn provider(name: &str, issuer: &Issuer) -> Provider {
    Provider {
        name: name.to_owned(),
        issuer: issuer.issuer.clone(),
        audiences: Vec::new(),
        keys: Some(KeySet::parse(&issuer.jwks()).expect("valid JWKS")),
        locations: Vec::new(),
        forward: false,
        forward_payload_header: None,
        payload_in_metadata: Some("payload".to_owned()),
        space_delimited_claims: vec!["scope".to_owned()],
        claim_to_headers: Vec::new(),
        clock_skew_secs: 60,
        require_expiration: false,
    }
}

/// Istio's requirement for its providers: any one of them, or each either
/// satisfied or with no token at all.
fn istio(providers: Vec<Provider>) -> JwtAuthn {
    let n = providers.len();
    let one = |index| Requirement::Provider {
        index,
        audiences: None,
    };
    let requirement = if n == 1 {
        Requirement::Any(vec![one(0), Requirement::AllowMissing])
    } else {
        let mut any: Vec<Requirement> = (0..n).map(one).collect();
        any.push(Requirement::All(
            (0..n)
                .map(|i| Requirement::Any(vec![one(i), Requirement::AllowMissing]))
                .collect(),
        ));
        Requirement::Any(any)
    };
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);
    JwtAuthn {
        id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        providers,
        rules: vec![Rule {
            path: PathMatch::Prefix("/".to_owned()),
            requirement,
        }],
        bypass_cors_preflight: true,
    }
}

fn check(config: &JwtAuthn, uri: &str, headers: &[(&str, &str)]) -> Result<Vec<Verified>, Failure> {
    check_method(config, Method::GET, uri, headers)
}

fn check_method(
    config: &JwtAuthn,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<Vec<Verified>, Failure> {
    let uri: Uri = uri.parse().expect("uri");
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::try_from(*name).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    config.authenticate(&Request {
        method: &method,
        uri: &uri,
        headers: &map,
        now: now(),
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn claims(issuer: &Issuer, extra: serde_json::Value) -> serde_json::Value {
    let mut claims = issuer.claims(&extra);
    claims["iat"] = json!(now());
    if extra.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    claims
}

#[test]
fn every_supported_algorithm_verifies() {
    let rsa = Issuer::demo().expect("demo key");
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let config = istio(vec![provider("origins-0", &rsa)]);
        let token = rsa.sign(alg, &claims(&rsa, json!({}))).expect("signed");
        let verified = check(&config, "/", &[("authorization", &bearer(&token))])
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(verified.len(), 1, "{alg}");
        assert_eq!(verified[0].payload["iss"], rsa.issuer.as_str());
    }
    for issuer in [
        Issuer::p256("ec", "k").expect("key"),
        Issuer::p384("ec384", "k").expect("key"),
        Issuer::ed25519("ed", "k").expect("key"),
    ] {
        let config = istio(vec![provider("origins-0", &issuer)]);
        let token = issuer
            .sign(issuer.default_algorithm(), &claims(&issuer, json!({})))
            .expect("signed");
        check(&config, "/", &[("authorization", &bearer(&token))])
            .unwrap_or_else(|e| panic!("{}: {e}", issuer.default_algorithm()));
    }
}

#[test]
fn no_token_passes_and_a_bad_one_is_refused() {
    let issuer = Issuer::demo().expect("demo key");
    let config = istio(vec![provider("origins-0", &issuer)]);
    assert!(check(&config, "/", &[]).expect("no token").is_empty());

    let other = Issuer::p256(&issuer.issuer, "demo").expect("key");
    let forged = other
        .sign("ES256", &claims(&issuer, json!({})))
        .expect("signed");
    let good = issuer.token(&json!({})).expect("signed");
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims(&issuer, json!({"sub": "admin"})).to_string(),
        );
        parts.join(".")
    };
    let cases = [
        ("garbage", Failure::BadFormat),
        (forged.as_str(), Failure::KidAlgMismatch),
        (tampered.as_str(), Failure::VerificationFails),
    ];
    for (token, want) in cases {
        let got = check(&config, "/", &[("authorization", &bearer(token))]);
        assert_eq!(got.expect_err("refused"), want, "{token}");
        assert_eq!(want.status(), http::StatusCode::UNAUTHORIZED);
    }
    let none = format!(
        "{}.{}.",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            r#"{"alg":"none"}"#
        ),
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims(&issuer, json!({})).to_string()
        )
    );
    assert_eq!(
        check(&config, "/", &[("authorization", &bearer(&none))]).expect_err("refused"),
        Failure::AlgNotImplemented
    );
}

#[test]
fn time_claims_allow_sixty_seconds_of_skew() {
    let issuer = Issuer::demo().expect("demo key");
    let config = istio(vec![provider("origins-0", &issuer)]);
    let with = |extra| {
        let token = issuer
            .sign("RS256", &claims(&issuer, extra))
            .expect("signed");
        check(&config, "/", &[("authorization", &bearer(&token))]).map(|_| ())
    };
    assert_eq!(with(json!({"exp": now() - 30})), Ok(()));
    assert_eq!(with(json!({"exp": now() - 61})), Err(Failure::Expired));
    assert_eq!(with(json!({"nbf": now() + 30})), Ok(()));
    assert_eq!(with(json!({"nbf": now() + 61})), Err(Failure::NotYetValid));
}

#[test]
fn issuer_and_audience_are_checked() {
    let issuer = Issuer::demo().expect("demo key");
    let mut p = provider("origins-0", &issuer);
    p.audiences = vec!["bookinfo".to_owned()];
    let config = istio(vec![p]);
    let with = |extra| {
        let token = issuer
            .sign("RS256", &claims(&issuer, extra))
            .expect("signed");
        check(&config, "/", &[("authorization", &bearer(&token))]).map(|_| ())
    };
    assert_eq!(with(json!({"aud": ["x", "bookinfo"]})), Ok(()));
    assert_eq!(with(json!({"aud": "bookinfo"})), Ok(()));
    let refused = with(json!({"aud": "other"})).expect_err("refused");
    assert_eq!(refused, Failure::AudienceNotAllowed);
    assert_eq!(refused.status(), http::StatusCode::FORBIDDEN);
    assert_eq!(
        with(json!({"iss": "someone-else", "aud": "bookinfo"})),
        Err(Failure::UnknownIssuer)
    );
}

#[test]
fn with_two_issuers_either_token_passes_and_an_invalid_one_is_named() {
    let a = Issuer::demo().expect("demo key");
    let b = Issuer::p256("issuer-b", "b").expect("key");
    let config = istio(vec![provider("origins-0", &a), provider("origins-1", &b)]);
    for issuer in [&a, &b] {
        let token = issuer.token(&json!({})).expect("signed");
        let verified = check(&config, "/", &[("authorization", &bearer(&token))]);
        assert_eq!(verified.expect("valid").len(), 1);
    }
    let stranger = Issuer::p256("issuer-b", "b").expect("key");
    let forged = stranger.token(&json!({})).expect("signed");
    assert_eq!(
        check(&config, "/", &[("authorization", &bearer(&forged))]).expect_err("refused"),
        Failure::VerificationFails
    );
}

#[test]
fn tokens_are_found_where_the_provider_says() {
    let issuer = Issuer::demo().expect("demo key");
    let token = issuer.token(&json!({})).expect("signed");
    let mut p = provider("origins-0", &issuer);
    p.locations = vec![
        Location::Header {
            name: http::HeaderName::from_static("x-jwt"),
            prefix: "Token ".to_owned(),
        },
        Location::Param("jwt".to_owned()),
        Location::Cookie("session".to_owned()),
    ];
    let config = istio(vec![p]);
    let header = format!("Token {token}");
    assert_eq!(
        check(&config, "/", &[("x-jwt", &header)])
            .expect("header")
            .len(),
        1
    );
    let uri = format!("/a?x=1&jwt={token}");
    assert_eq!(check(&config, &uri, &[]).expect("param").len(), 1);
    let cookie = format!("a=b; session={token}");
    assert_eq!(
        check(&config, "/", &[("cookie", &cookie)])
            .expect("cookie")
            .len(),
        1
    );
    // Once locations are configured, the defaults are not read.
    let ignored = check(&config, "/", &[("authorization", &bearer("garbage"))]);
    assert!(ignored.expect("not a location").is_empty());

    let default = istio(vec![provider("origins-0", &issuer)]);
    let uri = format!("/?access_token={token}");
    assert_eq!(check(&default, &uri, &[]).expect("default param").len(), 1);
    let lower = format!("bearer {token}");
    assert_eq!(
        check(&default, "/", &[("authorization", &lower)])
            .expect("scheme")
            .len(),
        1
    );
}

#[test]
fn cors_preflights_skip_verification() {
    let issuer = Issuer::demo().expect("demo key");
    let config = istio(vec![provider("origins-0", &issuer)]);
    let preflight = [
        ("origin", "http://a"),
        ("access-control-request-method", "GET"),
        ("authorization", "Bearer garbage"),
    ];
    assert!(check_method(&config, Method::OPTIONS, "/", &preflight).is_ok());
    assert!(check_method(&config, Method::GET, "/", &preflight).is_err());
}

#[test]
fn payload_is_normalized_for_authorization() {
    let issuer = Issuer::demo().expect("demo key");
    let p = provider("origins-0", &issuer);
    let payload = claims(
        &issuer,
        json!({"scope": "read write", "org": {"team": "a", "n": 3}}),
    );
    let map = payload.as_object().expect("object");
    let normalized = normalized(&p, map);
    assert_eq!(normalized["scope"], json!(["read", "write"]));
    assert_eq!(claim_text(map, "org.team").as_deref(), Some("a"));
    assert_eq!(claim_text(map, "org.n").as_deref(), Some("3"));
    assert_eq!(claim_text(map, "org"), None);
    assert_eq!(
        Failure::VerificationFails.details(),
        "jwt_authn_access_denied{Jwt_verification_fails}"
    );
}

#[test]
fn a_token_verified_under_old_keys_is_checked_again_under_new_ones() {
    let old = Issuer::p256("rotating", "k").expect("key");
    let new = Issuer::p256("rotating", "k").expect("key");
    let token = old.token(&json!({})).expect("signed");
    let header = bearer(&token);
    let before = istio(vec![provider("origins-0", &old)]);
    for _ in 0..2 {
        // The second time comes from this thread's cache.
        assert!(check(&before, "/", &[("authorization", &header)]).is_ok());
    }
    let after = istio(vec![provider("origins-0", &new)]);
    assert_eq!(
        check(&after, "/", &[("authorization", &header)]).expect_err("old key"),
        Failure::VerificationFails
    );
    // Time is checked on every request, cached or not.
    let expiring = old
        .sign("ES256", &claims(&old, json!({"exp": now() - 120})))
        .expect("signed");
    let header = bearer(&expiring);
    assert_eq!(
        check(&before, "/", &[("authorization", &header)]).expect_err("expired"),
        Failure::Expired
    );
}
