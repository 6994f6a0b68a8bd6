//! Port 15017: the admission webhooks the Kubernetes API server calls over
//! HTTPS, as istiod serves them. `/inject` answers an AdmissionReview for a
//! Pod with a JSONPatch that adds the sidecar (or a refusal naming the bad
//! annotation); `/validate` runs `oxmesh validate`'s checks on an Istio object
//! and refuses it with their messages.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::inject::{self, Outcome, Settings};
use crate::reply;

/// The largest AdmissionReview accepted; the API server's own limit is 3 MiB
/// an object.
const MAX_REVIEW_BYTES: usize = 8 << 20;

pub struct Webhooks {
    pub settings: Settings,
}

impl Webhooks {
    /// Serves HTTPS on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed on the webhook port");
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let (this, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed on the webhook port");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |request| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.answer(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        if request.method() != Method::POST || !matches!(path.as_str(), "/inject" | "/validate") {
            return reply::json(
                StatusCode::NOT_FOUND,
                &json!({"error": "POST an AdmissionReview to /inject or /validate"}),
            );
        }
        let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return reply::json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": format!("cannot read the review: {e}")}),
                );
            }
        };
        reply::json(StatusCode::OK, &review(&path, &body, &self.settings))
    }
}

/// Answers one AdmissionReview (`admission.k8s.io/v1`) sent to `path`. Even a
/// malformed one gets an AdmissionReview back, refusing with the reason, so the
/// API server reports what went wrong instead of a failed call.
pub fn review(path: &str, body: &[u8], settings: &Settings) -> Value {
    let parsed = serde_json::from_slice::<Value>(body);
    let review = parsed.as_ref().unwrap_or(&Value::Null);
    let version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1")
        .to_owned();
    let request = review.get("request").filter(|r| r.is_object());
    let uid = request
        .and_then(|r| r.get("uid"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut response = match (&parsed, request) {
        (Err(e), _) => refused(format!("not an AdmissionReview: {e}")),
        (Ok(_), None) => refused("the AdmissionReview has no request".into()),
        (Ok(_), Some(request)) => match request.get("object").filter(|o| o.is_object()) {
            None => refused("the AdmissionReview's request has no object".into()),
            Some(object) if path == "/inject" => injection(request, object, settings),
            Some(object) => validation(object),
        },
    };
    response["uid"] = uid;
    json!({"apiVersion": version, "kind": "AdmissionReview", "response": response})
}

fn refused(message: String) -> Value {
    json!({"allowed": false, "status": {"code": 400, "reason": "BadRequest", "message": message}})
}

fn injection(request: &Value, pod: &Value, settings: &Settings) -> Value {
    let kind = request
        .pointer("/kind/kind")
        .or_else(|| pod.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("Pod");
    if kind != "Pod" {
        return refused(format!(
            "the injection webhook injects Pods, not a {kind}: check the webhook configuration's rules"
        ));
    }
    let mut metadata = pod.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let Some(mut spec) = pod.get("spec").filter(|s| s.is_object()).cloned() else {
        return refused("the pod has no spec".into());
    };
    let workload = workload_name(&metadata);
    match inject::inject_pod(&mut metadata, &mut spec, &workload, settings) {
        Err(e) => refused(format!("pod {workload}: {e}")),
        Ok(Outcome::Skipped(_)) => json!({"allowed": true}),
        Ok(Outcome::Injected) => {
            let mut injected = pod.clone();
            injected["metadata"] = metadata;
            injected["spec"] = spec;
            let patch = json_patch::diff(pod, &injected);
            let encoded = match serde_json::to_vec(&patch) {
                Ok(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
                Err(e) => return refused(format!("pod {workload}: encoding the patch: {e}")),
            };
            json!({"allowed": true, "patchType": "JSONPatch", "patch": encoded})
        }
    }
}

/// A pod's workload: its name, or for a pod the API server will name
/// (`generateName`), its ReplicaSet's name without the template hash, as
/// istiod names it.
fn workload_name(metadata: &Value) -> String {
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let name = match text("name") {
        "" => text("generateName").trim_end_matches('-'),
        name => name,
    };
    let hash = metadata
        .pointer("/labels/pod-template-hash")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match name.strip_suffix(hash).and_then(|n| n.strip_suffix('-')) {
        Some(owner) if !hash.is_empty() => owner.to_owned(),
        _ => name.to_owned(),
    }
}

fn validation(object: &Value) -> Value {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let loaded = oxmesh_config::load::load_bytes(
        Path::new(&format!("{kind}/{name}")),
        object.to_string().as_bytes(),
    );
    let errors = loaded.error_messages();
    if errors.is_empty() {
        json!({"allowed": true})
    } else {
        refused(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_sets_pod_is_named_for_its_deployment() {
        let pod = json!({"generateName": "reviews-v1-7d4b9c8f6-", "labels": {"pod-template-hash": "7d4b9c8f6"}});
        assert_eq!(workload_name(&pod), "reviews-v1");
        let named = json!({"name": "ratings"});
        assert_eq!(workload_name(&named), "ratings");
    }
}
