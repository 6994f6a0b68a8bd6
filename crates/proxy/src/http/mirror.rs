//! Request mirroring (a route's `request_mirror_policies`): for its share of
//! requests, a copy with the same head and body (after the route's rewrites
//! and header mutations) goes to each mirror cluster, fire and forget. The
//! copy is sent from its own task, so the real request never waits for it;
//! its answer is read and dropped. A mirror cluster the proxy does not know
//! is skipped, as Envoy skips it. The copy counts under the mirror cluster's
//! circuit breakers and outlier detection like any request to it; it is not
//! in the caller's request metrics (Envoy's copies bypass the filters too).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::request::Parts;
use http_body_util::{BodyExt, Either, Full};

use super::State;
use super::forward::{self, Target};
use crate::config::Snapshot;
use crate::config::cluster::Cluster;
use crate::config::route::Mirror;
use crate::context::Context;
use crate::outlier::Attempt;
use crate::pool;
use crate::upstream::{self, UpstreamError};

/// How long a copy may take when its route sets no timeout (Envoy's copies
/// have none then; one that never answers would hold a connection forever).
const UNBOUNDED_ROUTE_LIMIT: Duration = Duration::from_secs(60);

/// Sends a copy of the request to each mirror that takes it.
pub(super) fn launch(
    state: &State<'_>,
    mirrors: &[Mirror],
    target: &Target<'_>,
    body: &Bytes,
    timeout: Option<Duration>,
) {
    for mirror in mirrors.iter().filter(|m| m.share.hits()) {
        let Some(cluster) = state.snapshot.cluster(&mirror.cluster).cloned() else {
            tracing::debug!(cluster = %mirror.cluster, "mirror cluster not known: no copy");
            continue;
        };
        let authority = if mirror.shadow_suffix {
            shadow_host(target.authority)
        } else {
            target.authority.to_owned()
        };
        let copy = Copy {
            ctx: state.ctx.clone(),
            snapshot: state.snapshot.clone(),
            cluster,
            parts: head(target.parts),
            authority,
            body: body.clone(),
            announce: target.announce,
            original: state.downstream.original,
        };
        let limit = timeout.unwrap_or(UNBOUNDED_ROUTE_LIMIT);
        tokio::spawn(async move {
            match tokio::time::timeout(limit, copy.send()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "mirrored request failed"),
                Err(_) => tracing::debug!("mirrored request timed out"),
            }
        });
    }
}

/// Everything a copy needs, owned, for its own task.
struct Copy {
    ctx: Arc<Context>,
    snapshot: Arc<Snapshot>,
    cluster: Arc<Cluster>,
    parts: Parts,
    authority: String,
    body: Bytes,
    announce: bool,
    original: SocketAddr,
}

impl Copy {
    async fn send(self) -> Result<(), UpstreamError> {
        let cluster = &self.cluster;
        let chosen = upstream::choose(&self.snapshot, cluster, self.original, &[], None).await?;
        let _in_flight = chosen.in_flight();
        let http2 = cluster.http2_for(self.parts.version);
        let (mut pooled, _slot) =
            match forward::connection(&self.ctx, None, cluster, &chosen, http2).await {
                Ok(connected) => connected,
                Err(e) => {
                    // A refused copy never reached the endpoint; a failed
                    // connection counts against it, as for any request.
                    if !matches!(e, UpstreamError::Overflow(..)) {
                        chosen.record(cluster, Attempt::Failed);
                    }
                    return Err(e);
                }
            };
        let target = Target {
            parts: &self.parts,
            authority: &self.authority,
            cluster,
            hash: None,
            announce: self.announce,
            http2,
        };
        let body = Either::Left(Full::new(self.body.clone()));
        let request = forward::upstream_request(&self.ctx, &target, body, &chosen);
        match pooled.send(request).await {
            Ok(response) => {
                chosen.record(cluster, Attempt::Status(response.status().as_u16()));
                let key = forward::pool_key(None, cluster, &chosen, http2);
                let _stream = pooled.take_stream();
                pool::checkin(key, pooled, &cluster.reuse);
                // Read to the end so the connection can serve again.
                let _ = response.into_body().collect().await;
            }
            Err(e) => {
                chosen.record(cluster, Attempt::Failed);
                tracing::debug!(error = %e, "mirrored request failed");
            }
        }
        Ok(())
    }
}

/// The request head again, for a copy that outlives the request.
fn head(parts: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// Envoy's shadow host: `-shadow` before the port, if there is one
/// (`reviews:9080` → `reviews-shadow:9080`, `[::1]:80` → `[::1]-shadow:80`).
fn shadow_host(authority: &str) -> String {
    let port_start = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => Some(i),
        _ => None,
    };
    match port_start {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::shadow_host;

    #[test]
    fn shadow_hosts_keep_the_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }
}
