//! What checking a request's JWT costs the proxy (bench/RESULTS.md): one
//! RS256 and one ES256 token through Istio's one-provider requirement, the
//! first time (the signature verified) and again (this thread's cache holds
//! it; time, issuer and audience are still checked).

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use oxmesh_demo::jwt::Issuer;
use oxmesh_proxy::authn::Request;
use oxmesh_proxy::config::jwt_authn::{self, JwtAuthn};

/// Istio's jwt_authn for one issuer, converted as a push would be.
fn config(issuer: &Issuer) -> JwtAuthn {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as envoy;
    use prost::Message;
    let mut providers = std::collections::HashMap::new();
    providers.insert(
        "origins-0".to_owned(),
        envoy::JwtProvider {
            issuer: issuer.issuer.clone(),
            payload_in_metadata: "payload".to_owned(),
            jwks_source_specifier: Some(envoy::jwt_provider::JwksSourceSpecifier::LocalJwks(
                envoy_types::pb::envoy::config::core::v3::DataSource {
                    specifier: Some(
                        envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                            issuer.jwks(),
                        ),
                    ),
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
    );
    let named = |name: &str| envoy::JwtRequirement {
        requires_type: Some(envoy::jwt_requirement::RequiresType::ProviderName(
            name.to_owned(),
        )),
    };
    let missing = envoy::JwtRequirement {
        requires_type: Some(envoy::jwt_requirement::RequiresType::AllowMissing(
            Default::default(),
        )),
    };
    let filter = envoy::JwtAuthentication {
        providers,
        rules: vec![envoy::RequirementRule {
            r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
                path_specifier: Some(
                    envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                        "/".to_owned(),
                    ),
                ),
                ..Default::default()
            }),
            requirement_type: Some(envoy::requirement_rule::RequirementType::Requires(
                envoy::JwtRequirement {
                    requires_type: Some(envoy::jwt_requirement::RequiresType::RequiresAny(
                        envoy::JwtRequirementOrList {
                            requirements: vec![named("origins-0"), missing],
                        },
                    )),
                },
            )),
        }],
        ..Default::default()
    };
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: jwt_authn::TYPE.to_owned(),
        value: filter.encode_to_vec(),
    };
    jwt_authn::convert(&any).expect("converts")
}

fn bench(c: &mut Criterion) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let uri: Uri = "/api/items".parse().expect("uri");
    for (name, issuer) in [
        ("RS256", Issuer::demo().expect("demo key")),
        ("ES256", Issuer::p256("bench", "k").expect("key")),
    ] {
        let token = issuer.token(&serde_json::json!({})).expect("token");
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        let request = Request {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
            now,
        };
        c.bench_function(
            &format!("jwt {name}: first sight (signature verified)"),
            |b| {
                // A new conversion each time: no cache can hold it.
                b.iter_batched(
                    || config(&issuer),
                    |filter| filter.authenticate(&request).expect("valid"),
                    criterion::BatchSize::SmallInput,
                )
            },
        );
        let filter = config(&issuer);
        c.bench_function(
            &format!("jwt {name}: seen before (cached signature)"),
            |b| b.iter(|| filter.authenticate(&request).expect("valid")),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
