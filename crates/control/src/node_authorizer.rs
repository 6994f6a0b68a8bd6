//! Who may have a certificate for another identity: a node proxy, for the
//! pods on its own node only (istiod's node authorizer). The node proxy
//! runs as one of the trusted accounts (`CA_TRUSTED_NODE_ACCOUNTS`, by
//! default `istio-system/ztunnel`), its token names its node, and at least
//! one pod of the identity it asks for runs there.

use std::collections::BTreeSet;
use std::sync::Arc;

use oxmesh_config::object::Resource;
use oxmesh_identity::SpiffeId;
use oxmesh_identity::token::Bearer;

use crate::discovery::Discovery;

/// The account Istio's chart trusts: its ztunnel DaemonSet's.
pub const DEFAULT_TRUSTED: &str = "istio-system/ztunnel";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImpersonationError {
    #[error(
        "{caller} may not ask for other identities' certificates (trusted node accounts: {trusted})"
    )]
    NotTrusted { caller: SpiffeId, trusted: String },
    #[error("{caller}'s token names no node (a node proxy needs a pod-bound token)")]
    NoNode { caller: SpiffeId },
    #[error("no running pod of {identity} is on node {node:?}")]
    NotOnNode { identity: SpiffeId, node: String },
}

/// Where pods run: the config the control plane serves.
pub trait PodsOnNodes: Send + Sync + 'static {
    /// Whether a pod running as `namespace/account` is on `node` (and has
    /// not finished).
    fn runs_on(&self, node: &str, namespace: &str, account: &str) -> bool;
}

impl PodsOnNodes for Discovery {
    fn runs_on(&self, node: &str, namespace: &str, account: &str) -> bool {
        self.config().objects.iter().any(|object| {
            let Resource::Pod(pod) = &object.resource else {
                return false;
            };
            object.namespace() == Some(namespace)
                && pod.service_account.as_deref().unwrap_or("default") == account
                && pod.node_name.as_deref() == Some(node)
                && !matches!(pod.phase.as_deref(), Some("Failed" | "Succeeded"))
        })
    }
}

#[derive(Clone)]
pub struct NodeAuthorizer {
    /// `(namespace, account)` of the node proxies.
    trusted: BTreeSet<(String, String)>,
    pods: Arc<dyn PodsOnNodes>,
}

impl NodeAuthorizer {
    /// `trusted` lists `namespace/account` entries (comma-separated, as
    /// `CA_TRUSTED_NODE_ACCOUNTS`); an empty list trusts nobody.
    pub fn new(trusted: &str, pods: Arc<dyn PodsOnNodes>) -> Self {
        let trusted = trusted
            .split(',')
            .filter_map(|entry| entry.trim().split_once('/'))
            .map(|(ns, account)| (ns.to_owned(), account.to_owned()))
            .collect();
        Self { trusted, pods }
    }

    /// Whether `caller` may have `identity`'s certificate.
    pub fn check(&self, caller: &Bearer, identity: &SpiffeId) -> Result<(), ImpersonationError> {
        let key = (
            caller.identity.namespace().to_owned(),
            caller.identity.service_account().to_owned(),
        );
        if !self.trusted.contains(&key) {
            let trusted: Vec<String> = self
                .trusted
                .iter()
                .map(|(n, a)| format!("{n}/{a}"))
                .collect();
            return Err(ImpersonationError::NotTrusted {
                caller: caller.identity.clone(),
                trusted: if trusted.is_empty() {
                    "none".to_owned()
                } else {
                    trusted.join(",")
                },
            });
        }
        let node = caller
            .node
            .as_deref()
            .ok_or_else(|| ImpersonationError::NoNode {
                caller: caller.identity.clone(),
            })?;
        if self
            .pods
            .runs_on(node, identity.namespace(), identity.service_account())
        {
            Ok(())
        } else {
            Err(ImpersonationError::NotOnNode {
                identity: identity.clone(),
                node: node.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxmesh_identity::TrustDomain;

    /// One pod: `default/app` on node-a.
    struct OnePod;

    impl PodsOnNodes for OnePod {
        fn runs_on(&self, node: &str, namespace: &str, account: &str) -> bool {
            (node, namespace, account) == ("node-a", "default", "app")
        }
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(TrustDomain::cluster_local(), ns, sa).expect("id")
    }

    fn bearer(ns: &str, sa: &str, node: Option<&str>) -> Bearer {
        Bearer {
            identity: id(ns, sa),
            node: node.map(str::to_owned),
        }
    }

    #[test]
    fn a_node_proxy_gets_its_own_nodes_pods_only() {
        let authorizer = NodeAuthorizer::new(DEFAULT_TRUSTED, Arc::new(OnePod));
        let ztunnel_a = bearer("istio-system", "ztunnel", Some("node-a"));
        assert_eq!(authorizer.check(&ztunnel_a, &id("default", "app")), Ok(()));
        let ztunnel_b = bearer("istio-system", "ztunnel", Some("node-b"));
        assert!(matches!(
            authorizer.check(&ztunnel_b, &id("default", "app")),
            Err(ImpersonationError::NotOnNode { .. })
        ));
        assert!(matches!(
            authorizer.check(&ztunnel_a, &id("default", "other")),
            Err(ImpersonationError::NotOnNode { .. })
        ));
        let unbound = bearer("istio-system", "ztunnel", None);
        assert!(matches!(
            authorizer.check(&unbound, &id("default", "app")),
            Err(ImpersonationError::NoNode { .. })
        ));
    }

    #[test]
    fn only_trusted_accounts_impersonate() {
        let authorizer = NodeAuthorizer::new(DEFAULT_TRUSTED, Arc::new(OnePod));
        let app = bearer("default", "app", Some("node-a"));
        let refused = authorizer.check(&app, &id("default", "app"));
        assert!(
            matches!(&refused, Err(ImpersonationError::NotTrusted { trusted, .. }) if trusted == "istio-system/ztunnel"),
            "{refused:?}"
        );
        let nobody = NodeAuthorizer::new("", Arc::new(OnePod));
        let ztunnel = bearer("istio-system", "ztunnel", Some("node-a"));
        assert!(nobody.check(&ztunnel, &id("default", "app")).is_err());
    }
}
