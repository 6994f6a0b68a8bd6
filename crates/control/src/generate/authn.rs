//! Request authentication: the RequestAuthentications that select a proxy, as
//! the `envoy.filters.http.jwt_authn` filter Istio writes for them.
//!
//! Their JWT rules are merged and sorted by issuer; rule `i` becomes provider
//! `origins-<i>`, with its keys inline (the rule's `jwks`, or what the JWKS
//! resolver fetched for its `jwksUri`). The one requirement accepts a request
//! with no token and refuses one whose token no provider accepts, leaving
//! "a token is required" to AuthorizationPolicy (`requestPrincipals`).

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::RouteMatch;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::{
    JwksSourceSpecifier, NormalizePayload,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::Empty;
use envoy_types::util::pack_any;
use oxmesh_config::security::request_authentication::JwtRule;

use crate::jwks::{JwksSource, JwtKeys};
use crate::proxy::{ProxyClass, ProxyKind};
use crate::push_context::PushContext;

pub(crate) const FILTER_NAME: &str = "envoy.filters.http.jwt_authn";
/// Where the verified payload goes in the filter's metadata, for RBAC.
const PAYLOAD_KEY: &str = "payload";
/// Claims Istio always treats as space-delimited lists.
const SPACE_DELIMITED: [&str; 2] = ["permission", "scope"];

/// The JWT filter for a proxy's server-side connection managers, or `None`
/// when no RequestAuthentication selects it.
pub(crate) fn filter(ctx: &PushContext, proxy: &ProxyClass) -> Option<HttpFilter> {
    let mut rules: Vec<&JwtRule> = ctx
        .request_authentications_for(proxy)
        .flat_map(|ra| &ra.spec.jwt_rules)
        .collect();
    if rules.is_empty() {
        return None;
    }
    rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    // Gateways route on claims (`@request.auth.claims`), so their route
    // choice is made again once a token is verified; sidecars do not.
    let clear_route_cache = proxy.kind != ProxyKind::Sidecar;
    let providers = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let provider = provider(rule, &ctx.jwt_keys, clear_route_cache);
            (provider_name(i), provider)
        })
        .collect();
    let config = JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(requirement(rules.len()))),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    Some(HttpFilter {
        name: FILTER_NAME.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    })
}

fn provider_name(index: usize) -> String {
    format!("origins-{index}")
}

fn provider(rule: &JwtRule, keys: &JwtKeys, clear_route_cache: bool) -> JwtProvider {
    let jwks = if rule.jwks.is_empty() {
        keys.get(&JwksSource {
            issuer: rule.issuer.clone(),
            uri: rule.jwks_uri().to_owned(),
        })
        .to_owned()
    } else {
        rule.jwks.clone()
    };
    let mut space_delimited: Vec<String> =
        SPACE_DELIMITED.iter().map(|c| (*c).to_owned()).collect();
    space_delimited.extend(rule.space_delimited_claims.iter().cloned());
    space_delimited.sort();
    space_delimited.dedup();
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        payload_in_metadata: PAYLOAD_KEY.to_owned(),
        normalize_payload_in_metadata: Some(NormalizePayload {
            space_delimited_claims: space_delimited,
        }),
        clear_route_cache,
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(jwks)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Istio's requirement for `n` providers: one provider's valid token, or for
/// every provider either its valid token or none at all. The second half
/// refuses a present but invalid token while letting a request without any
/// token through; the first covers providers sharing a token location.
fn requirement(n: usize) -> JwtRequirement {
    let named = |i: usize| JwtRequirement {
        requires_type: Some(RequiresType::ProviderName(provider_name(i))),
    };
    let or_missing = |i: usize| JwtRequirement {
        requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
            requirements: vec![
                named(i),
                JwtRequirement {
                    requires_type: Some(RequiresType::AllowMissing(Empty {})),
                },
            ],
        })),
    };
    if n == 1 {
        return or_missing(0);
    }
    let mut any: Vec<JwtRequirement> = (0..n).map(named).collect();
    any.push(JwtRequirement {
        requires_type: Some(RequiresType::RequiresAll(JwtRequirementAndList {
            requirements: (0..n).map(or_missing).collect(),
        })),
    });
    JwtRequirement {
        requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
            requirements: any,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_take_istios_shape() {
        let one = requirement(1);
        let Some(RequiresType::RequiresAny(any)) = &one.requires_type else {
            panic!("any-of for one provider");
        };
        assert_eq!(any.requirements.len(), 2);
        assert!(matches!(
            any.requirements[1].requires_type,
            Some(RequiresType::AllowMissing(_))
        ));
        let three = requirement(3);
        let Some(RequiresType::RequiresAny(any)) = &three.requires_type else {
            panic!("any-of for three providers");
        };
        assert_eq!(any.requirements.len(), 4, "three names and one all-of");
        let Some(RequiresType::RequiresAll(all)) = &any.requirements[3].requires_type else {
            panic!("the last is all-of");
        };
        assert_eq!(all.requirements.len(), 3);
    }
}
