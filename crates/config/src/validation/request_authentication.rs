//! RequestAuthentication rules.

use crate::path::FieldPath;
use crate::security::request_authentication::{JwtRule, RequestAuthentication};
use crate::validation::Report;
use crate::validation::shared;
use crate::validation::syntax::{self, Check};

const MIN_LENGTH: &str = "in body should be at least 1 chars long";

pub fn validate(ra: &RequestAuthentication, at: &FieldPath, report: &mut Report) {
    shared::policy_targets(
        ra.selector.is_some(),
        ra.target_ref.as_ref(),
        ra.target_refs.as_ref(),
        at,
        report,
    );
    shared::workload_selector(ra.selector.as_ref(), &at.field("selector"), report);
    if ra.jwt_rules.len() > 4096 {
        report.error(&at.field("jwtRules"), "must have at most 4096 items");
    }
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        jwt_rule(rule, &at.field("jwtRules").index(i), report);
    }
}

fn jwt_rule(rule: &JwtRule, at: &FieldPath, report: &mut Report) {
    if rule.issuer.is_empty() && rule.jwks_uri().is_empty() {
        report.error(
            &at.field("issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            report.error(
                &at.field("audiences").index(i),
                format!("{MIN_LENGTH}: audience must be non-empty string"),
            );
        }
    }
    let uris = [
        ("jwksUri", &rule.jwks_uri),
        ("jwks_uri", &rule.jwks_uri_snake),
    ];
    for (field, uri) in uris.iter().filter(|(_, u)| !u.is_empty()) {
        report.check(&at.field(field), jwks_uri(uri));
    }
    let sources =
        uris.iter().filter(|(_, u)| !u.is_empty()).count() + usize::from(!rule.jwks.is_empty());
    if sources > 1 {
        report.error(at, "only one of jwks or jwksUri can be set");
    }
    if !rule.jwks.is_empty() {
        report.check(&at.field("jwks"), jwks(&rule.jwks));
    }
    for (i, header) in rule.from_headers.iter().enumerate() {
        if header.name.is_empty() {
            report.error(
                &at.field("fromHeaders").index(i).field("name"),
                format!("{MIN_LENGTH}: location header name must be non-empty string"),
            );
        }
    }
    for (field, list, what) in [
        ("fromParams", &rule.from_params, "location query"),
        ("fromCookies", &rule.from_cookies, "cookie name"),
        (
            "spaceDelimitedClaims",
            &rule.space_delimited_claims,
            "claim",
        ),
    ] {
        for (i, item) in list.iter().enumerate() {
            if item.is_empty() {
                report.error(
                    &at.field(field).index(i),
                    format!("{MIN_LENGTH}: {what} must be non-empty string"),
                );
            }
        }
    }
    if rule.space_delimited_claims.len() > 64 {
        report.error(
            &at.field("spaceDelimitedClaims"),
            "must have at most 64 items",
        );
    }
    for (i, output) in rule.output_claim_to_headers.iter().enumerate() {
        let here = at.field("outputClaimToHeaders").index(i);
        if output.claim.is_empty() {
            report.error(&here.field("claim"), format!("{MIN_LENGTH}: outputClaimToHeaders header and claim value must be non-empty string"));
        }
        if output.header.is_empty() {
            report.error(&here.field("header"), format!("{MIN_LENGTH}: outputClaimToHeaders header and claim value must be non-empty string"));
        } else if let Err(e) = syntax::strict_header_name(&output.header) {
            report.error(
                &here.field("header"),
                format!("in body should match '^[-A-Za-z0-9]+$': {e}"),
            );
        }
    }
    if let Some(timeout) = rule.timeout {
        report.check(&at.field("timeout"), syntax::duration(timeout));
    }
}

/// A JWKS URL: `http://` or `https://`, with a host and a numeric port if any.
fn jwks_uri(uri: &str) -> Check {
    if uri.len() > 2048 {
        return Err("must have at most 2048 characters".to_owned());
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "url must have scheme http:// or https://: {uri:?} has none"
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "url must have scheme http:// or https://: URI scheme {scheme:?} is not supported"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    if host_port.is_empty() {
        return Err(format!("url {uri:?} has no host"));
    }
    let port = if host_port.starts_with('[') {
        host_port.rsplit_once("]:").map(|(_, p)| p)
    } else {
        host_port.rsplit_once(':').map(|(_, p)| p)
    };
    match port {
        Some(p) if p.parse::<u16>().is_err() => {
            Err(format!("url {uri:?} has an invalid port {p:?}"))
        }
        _ => Ok(()),
    }
}

/// An inline JWKS: a JSON object with a `keys` list of keys that each name a `kty`.
fn jwks(text: &str) -> Check {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("jwks parse error: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| {
            "jwks parse error: expected a JSON object with a \"keys\" list".to_owned()
        })?;
    if let Some(i) = keys
        .iter()
        .position(|k| k.get("kty").and_then(serde_json::Value::as_str).is_none())
    {
        return Err(format!("jwks parse error: key {i} has no \"kty\""));
    }
    Ok(())
}
