//! The connection manager's HTTP filters before routing, in their order:
//! jwt_authn (Istio's RequestAuthentication, see [`super::authenticate`])
//! and RBAC (AuthorizationPolicy). A denied request is answered 403 `RBAC:
//! access denied` and never reaches a route; dry-run (shadow) results and
//! AUDIT marks are counted and logged.

use std::net::IpAddr;

use http::{Request, StatusCode};

use super::{Connection, Outcome, authenticate};
use crate::authz::{DENIED_BODY, Facts, Metadata, RequestFacts, Verdict};
use crate::config::listener::HttpFilter;
use crate::config::rbac::RbacFilter;

/// The response for a request a filter refused, or `None` to go on (with the
/// request as the filters left it).
pub(super) fn check<B>(
    conn: &Connection,
    filters: &[HttpFilter],
    req: &mut Request<B>,
    authority: &str,
    remote_ip: IpAddr,
) -> Option<Outcome> {
    if filters.is_empty() {
        return None;
    }
    let mut metadata = Metadata::default();
    for filter in filters {
        let refused = match filter {
            HttpFilter::Jwt(jwt) => authenticate::check(conn, jwt, req, authority, &mut metadata),
            HttpFilter::Rbac(rbac) => rbac_check(conn, rbac, req, authority, remote_ip, &metadata),
        };
        if refused.is_some() {
            return refused;
        }
    }
    None
}

fn rbac_check<B>(
    conn: &Connection,
    rbac: &RbacFilter,
    req: &Request<B>,
    authority: &str,
    remote_ip: IpAddr,
    metadata: &Metadata,
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
    let details = verdict.details()?;
    tracing::debug!(client = %conn.downstream.client, %details, "request denied");
    let mut outcome = Outcome::local(StatusCode::FORBIDDEN, "", DENIED_BODY);
    outcome.details = Some(details);
    Some(outcome)
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
