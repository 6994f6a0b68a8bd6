//! The connection manager's HTTP filters before routing, in their order:
//! ext_authz (Istio's CUSTOM, asked when its shadow RBAC matched), jwt_authn
//! (RequestAuthentication, see [`super::authenticate`]) and RBAC
//! (AuthorizationPolicy), and wherever an EnvoyFilter puts them, the
//! rate-limit filters (see [`super::rate_limit`]). A denied request is answered (403 `RBAC: access
//! denied`, the authorizer's answer, or a token's 401) and never reaches a
//! route; dry-run (shadow) results and AUDIT marks are counted and logged, and
//! shadow results are left in the metadata as Envoy leaves them.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Request, StatusCode};

use super::{Connection, Outcome, State, authenticate, local_response, rate_limit};
use crate::authz::{DENIED_BODY, Facts, Metadata, RequestFacts, Verdict};
use crate::config::ext_authz::ExtAuthz;
use crate::config::listener::HttpFilter;
use crate::config::rbac::RbacFilter;
use crate::ext_authz::{self, Decision, RequestView, Subject};

/// The HTTP RBAC filter's metadata namespace.
const RBAC_NAMESPACE: &str = "envoy.filters.http.rbac";

/// What the filters decided: a refusal, or headers for the response.
#[derive(Default)]
pub(super) struct Filtered {
    pub(super) refused: Option<Outcome>,
    pub(super) response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Runs `filters` on `req` (which they may change) in order, until one
/// refuses it.
pub(super) async fn check<B>(
    state: &State<'_>,
    conn: &Connection,
    filters: &[HttpFilter],
    req: &mut Request<B>,
    authority: &str,
    remote_ip: IpAddr,
) -> Filtered {
    let mut filtered = Filtered::default();
    if filters.is_empty() {
        return filtered;
    }
    let mut metadata = Metadata::default();
    for filter in filters {
        let refused = match filter {
            HttpFilter::Jwt(jwt) => authenticate::check(conn, jwt, req, authority, &mut metadata),
            HttpFilter::Rbac(rbac) => {
                rbac_check(conn, rbac, req, authority, remote_ip, &mut metadata)
            }
            HttpFilter::ExtAuthz(authz) => {
                ask(state, conn, authz, req, authority, &metadata, &mut filtered).await
            }
            HttpFilter::LocalRateLimit(name, limit) => {
                rate_limit::local(state, name, limit, req, authority, remote_ip)
            }
            HttpFilter::GlobalRateLimit(limit) => {
                rate_limit::global(state, limit, req, authority, remote_ip, &mut filtered).await
            }
        };
        if refused.is_some() {
            filtered.refused = refused;
            break;
        }
    }
    filtered
}

fn rbac_check<B>(
    conn: &Connection,
    rbac: &RbacFilter,
    req: &Request<B>,
    authority: &str,
    remote_ip: IpAddr,
    metadata: &mut Metadata,
) -> Option<Outcome> {
    let facts = Facts {
        direct_remote: conn.downstream.client,
        remote_ip,
        destination: conn.downstream.original,
        peer: conn.downstream.tls_peer.as_ref().map(|p| p.uri.as_deref()),
        sni: conn.downstream.sni.as_deref(),
        request: Some(RequestFacts {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            authority,
        }),
        metadata,
    };
    let verdict = rbac.check(&facts);
    record(conn, &verdict, &rbac.shadow_prefix);
    verdict.leave_shadow_result(RBAC_NAMESPACE, &rbac.shadow_prefix, metadata);
    let details = verdict.details()?;
    tracing::debug!(client = %conn.downstream.client, %details, "request denied");
    let mut outcome = Outcome::local(StatusCode::FORBIDDEN, "", DENIED_BODY);
    outcome.details = Some(details);
    Some(outcome)
}

/// ext_authz: asks the authorizer when the filter is enabled for this
/// request; an allow may change the request and the response's headers.
async fn ask<B>(
    state: &State<'_>,
    conn: &Connection,
    authz: &ExtAuthz,
    req: &mut Request<B>,
    authority: &str,
    metadata: &Metadata,
    filtered: &mut Filtered,
) -> Option<Outcome> {
    if authz.enabled.as_ref().is_some_and(|m| !m.matches(metadata)) {
        return None;
    }
    let downstream = &conn.downstream;
    let local = state.ctx.credentials.identity().to_string();
    let subject = Subject {
        source: downstream.client,
        source_principal: downstream.tls_peer.as_ref().and_then(|p| p.uri.as_deref()),
        destination: downstream.original,
        destination_principal: &local,
        request: Some(RequestView {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            authority,
            scheme: if downstream.tls { "https" } else { "http" },
            protocol: if req.version() == http::Version::HTTP_2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            },
        }),
    };
    match ext_authz::ask(state.ctx, &state.snapshot, authz, &subject).await {
        Decision::Allow(allowed) => {
            let headers = req.headers_mut();
            for name in allowed.remove_headers {
                headers.remove(name);
            }
            for (name, value) in allowed.upstream_headers {
                headers.insert(name, value);
            }
            filtered.response_headers.extend(allowed.downstream_headers);
            None
        }
        Decision::Deny(denied) => {
            tracing::debug!(client = %downstream.client, status = %denied.status, "denied by the external authorizer");
            let mut outcome = Outcome::local(denied.status, "UAEX", "");
            outcome.response = local_response(denied.status, denied.body);
            for (name, value) in denied.headers {
                outcome.response.headers_mut().insert(name, value);
            }
            outcome.details = Some("ext_authz_denied".to_owned());
            Some(outcome)
        }
        Decision::Error(reason) if authz.failure_mode_allow => {
            tracing::debug!(client = %downstream.client, %reason, "external authorizer failed; failOpen lets the request through");
            None
        }
        Decision::Error(reason) => {
            tracing::debug!(client = %downstream.client, %reason, "external authorizer failed");
            let mut outcome = Outcome::local(authz.status_on_error, "UAEX", "");
            outcome.details = Some("ext_authz_error".to_owned());
            Some(outcome)
        }
    }
}

fn record(conn: &Connection, verdict: &Verdict, shadow_prefix: &str) {
    for (decision, shadow) in verdict.decisions() {
        let prefix = if shadow { shadow_prefix } else { "" };
        conn.ctx
            .metrics
            .rbac_http(&conn.stat_prefix, decision, prefix)
            .inc();
    }
    if let Some(shadow) = verdict.shadow.as_ref().filter(|s| !s.allowed) {
        tracing::info!(
            client = %conn.downstream.client,
            policy = shadow.policy.as_deref().unwrap_or("none"),
            "dry-run: the request would have been denied"
        );
    }
}

/// The client's address: the peer's, or at the edge with trusted hops in
/// front, the `x-forwarded-for` entry that many from the right (as Envoy's
/// `xff_num_trusted_hops`), read before this proxy appends its own.
pub(super) fn remote_ip<B>(conn: &Connection, req: &Request<B>) -> IpAddr {
    let peer = conn.downstream.client.ip();
    let hops = conn.xff_num_trusted_hops as usize;
    if !conn.downstream.edge || hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = req
        .headers()
        .get_all(http::header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    entries
        .len()
        .checked_sub(hops)
        .and_then(|i| entries.get(i))
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(peer)
}
