//! The control plane's own certificate, for its TLS ports. Clients verify it by DNS
//! name (`istiod.istio-system.svc`), so besides its SPIFFE id it carries the names
//! the control plane is reached by. It is issued by the CA in-process and renewed
//! like any workload's.

use std::sync::Arc;
use std::time::Duration;

use crate::live_authority::LiveAuthority;
use oxmesh_identity::SpiffeId;
use oxmesh_identity::csr::SigningRequest;
use oxmesh_identity::manager::{CaClient, CaClientError};

/// Istio's names for the control plane, as proxies dial it.
pub fn default_dns_names(namespace: &str, service: &str) -> Vec<String> {
    let mut services = vec!["istiod"];
    if service != "istiod" {
        services.push(service);
    }
    let mut names = Vec::new();
    for service in services {
        names.extend([
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]);
    }
    names.push("localhost".to_owned());
    names
}

/// Signs the control plane's own CSRs, and nobody else's.
pub struct InProcessCa {
    authority: Arc<LiveAuthority>,
    identity: SpiffeId,
    dns_names: Vec<String>,
}

impl InProcessCa {
    pub fn new(authority: Arc<LiveAuthority>, identity: SpiffeId, dns_names: Vec<String>) -> Self {
        Self {
            authority,
            identity,
            dns_names,
        }
    }
}

impl CaClient for InProcessCa {
    async fn create_certificate(
        &self,
        csr_pem: String,
        ttl: Duration,
    ) -> Result<Vec<String>, CaClientError> {
        let refused = |e: &dyn std::fmt::Display| CaClientError::Refused(e.to_string());
        let request = SigningRequest::from_pem(&csr_pem).map_err(|e| refused(&e))?;
        request
            .check_identity(&self.identity)
            .map_err(|e| refused(&e))?;
        let chain = self
            .authority
            .current()
            .sign_with_dns_names(&request, &self.identity, &self.dns_names, Some(ttl))
            .map_err(|e| refused(&e))?;
        Ok(chain.to_pem_elements())
    }
}
