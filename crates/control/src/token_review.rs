//! On Kubernetes a workload proves who it is with its service-account token
//! (a projected JWT, audience `istio-ca`); the API server says whose it is
//! through a TokenReview, as istiod asks it. The control plane calls the API
//! server with its own service-account token, trusting the cluster's CA.

use std::time::Duration;

use oxmesh_identity::token::{Bearer, CA_AUDIENCE};
use oxmesh_identity::{SpiffeId, TrustDomain};
use serde_json::{Value, json};

use crate::authenticate::{AuthError, Authenticator, LocalTokens};

/// A review that takes longer than this fails, and the caller is refused.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Service-account tokens, checked by the API server.
#[derive(Clone)]
pub struct TokenReview {
    api: kube::Client,
    trust_domain: TrustDomain,
}

impl TokenReview {
    pub fn new(api: kube::Client, trust_domain: TrustDomain) -> Self {
        Self { api, trust_domain }
    }

    async fn review(&self, token: &str) -> Result<Bearer, AuthError> {
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [CA_AUDIENCE]},
        });
        let request = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(review.to_string().into_bytes())
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let answer: Value = self
            .api
            .request(request)
            .await
            .map_err(|e| AuthError::Invalid(format!("the TokenReview failed: {e}")))?;
        identity(&answer["status"], &self.trust_domain)
    }
}

/// The extra a TokenReview carries for a pod-bound token: the pod's node.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The workload a TokenReview's status names, if it says the token is good
/// for the CA, with the node its pod runs on when the token is pod-bound.
fn identity(status: &Value, trust_domain: &TrustDomain) -> Result<Bearer, AuthError> {
    if status["authenticated"] != true {
        let reason = status["error"]
            .as_str()
            .unwrap_or("the API server did not authenticate it");
        return Err(AuthError::Invalid(reason.to_owned()));
    }
    // An API server that checked the audience says so; one that lists others
    // accepted the token for something else.
    if let Some(audiences) = status["audiences"].as_array()
        && !audiences.iter().any(|a| a == CA_AUDIENCE)
    {
        return Err(AuthError::Invalid(format!(
            "the token is not for audience {CA_AUDIENCE}"
        )));
    }
    let username = status["user"]["username"].as_str().unwrap_or_default();
    let account = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| AuthError::Invalid(format!("{username:?} is not a service account")))?;
    let identity = SpiffeId::new(trust_domain.clone(), account.0, account.1)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let node = status["user"]["extra"][NODE_NAME_EXTRA][0]
        .as_str()
        .map(str::to_owned);
    Ok(Bearer { identity, node })
}

impl Authenticator for TokenReview {
    async fn authenticate(&self, token: &str) -> Result<Bearer, AuthError> {
        tokio::time::timeout(REVIEW_TIMEOUT, self.review(token))
            .await
            .map_err(|_| {
                AuthError::Invalid("the API server did not answer the TokenReview in time".into())
            })?
    }
}

/// Every caller the control plane accepts: tokens it minted itself, and on
/// Kubernetes service-account tokens the API server vouches for.
#[derive(Clone)]
pub struct Callers {
    pub local: LocalTokens,
    pub cluster: Option<TokenReview>,
}

impl Authenticator for Callers {
    async fn authenticate(&self, token: &str) -> Result<Bearer, AuthError> {
        match (self.local.authenticate(token).await, &self.cluster) {
            (Ok(id), _) => Ok(id),
            (Err(_), Some(review)) => review.authenticate(token).await,
            (Err(local), None) => Err(local),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reviewed_service_account_becomes_its_spiffe_id() {
        let td = TrustDomain::cluster_local();
        let ok = json!({"authenticated": true, "audiences": ["istio-ca"], "user": {"username": "system:serviceaccount:default:reviews"}});
        assert_eq!(
            identity(&ok, &td).map(|b| (b.identity.to_string(), b.node)),
            Ok((
                "spiffe://cluster.local/ns/default/sa/reviews".to_owned(),
                None
            ))
        );
        let bound = json!({"authenticated": true, "audiences": ["istio-ca"], "user": {"username": "system:serviceaccount:istio-system:ztunnel", "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}});
        assert_eq!(
            identity(&bound, &td).map(|b| b.node),
            Ok(Some("node-a".to_owned()))
        );
        let elsewhere = json!({"authenticated": true, "audiences": ["https://kubernetes.default.svc"], "user": {"username": "system:serviceaccount:default:reviews"}});
        assert!(identity(&elsewhere, &td).is_err());
        let person = json!({"authenticated": true, "user": {"username": "alice"}});
        assert!(identity(&person, &td).is_err());
        let refused = json!({"authenticated": false, "error": "token expired"});
        assert_eq!(
            identity(&refused, &td).map(|_| ()),
            Err(AuthError::Invalid("token expired".into()))
        );
    }
}
