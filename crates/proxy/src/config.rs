//! The proxy's runtime configuration: what the xDS resources mean once checked.
//! Every resource is converted at the edge (`TryFrom`-style functions per type);
//! a resource that cannot be honoured is rejected with a reason naming it, and the
//! data path only ever sees these types, never protobufs.

pub mod access_log;
pub mod client_checks;
pub mod cluster;
pub mod cors;
pub mod endpoint;
pub mod ext_authz;
pub mod fault;
pub mod global_rate_limit;
pub mod header_ops;
pub mod jwt_authn;
pub mod listener;
pub mod local_rate_limit;
pub mod rate_limit;
pub mod rbac;
pub mod route;
pub mod stats;
pub mod string_match;
pub mod tls;
pub mod tls_params;
pub mod tracing;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use oxmesh_identity::bundle::TrustBundle;

use crate::state::Balanced;

pub use cluster::Cluster;
pub use endpoint::EndpointSet;
pub use listener::Listener;
pub use route::RouteTable;

/// A cluster's name, as routes and TCP proxies refer to it
/// (`outbound|9080|v1|reviews.default.svc.cluster.local`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(Arc<str>);

impl ClusterName {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lookups by `&str` (hashing an `Arc<str>` hashes the `str`).
impl std::borrow::Borrow<str> for ClusterName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a resource was refused: the proxy cannot honour it as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {reason}")]
pub struct ConvertError {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

impl ConvertError {
    pub fn new(kind: &'static str, name: &str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Everything the data path reads, swapped as one value. A connection keeps the
/// listener and filter chain it was accepted with; each HTTP request loads the
/// snapshot current when it arrives, so routes, clusters and endpoints pushed
/// while a keep-alive or HTTP/2 connection is open apply to its next request,
/// as in Envoy.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub listeners: HashMap<String, Arc<Listener>>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    pub clusters: HashMap<ClusterName, Arc<Cluster>>,
    /// EDS endpoints by name, each lined up with its runtime state.
    pub endpoints: HashMap<String, Arc<Balanced>>,
    /// The mesh roots from `ROOTCA`, when the control plane sent them.
    pub roots: Option<Arc<TrustBundle>>,
    /// Gateway credentials (`kubernetes://<name>`) the control plane served.
    pub credentials: HashMap<String, Arc<tls::Material>>,
    /// The version last accepted per type URL, for the admin's config dump.
    pub versions: HashMap<String, String>,
    /// What is serving, in wire form, per type URL and name: the admin's config
    /// dump shows these, as Envoy's does.
    pub raw: HashMap<String, BTreeMap<String, Arc<Any>>>,
}

impl Snapshot {
    pub fn cluster(&self, name: &ClusterName) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    pub fn cluster_named(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The endpoints of an EDS cluster (by its service name).
    pub fn endpoints_of(&self, cluster: &Cluster) -> Option<&Arc<Balanced>> {
        self.endpoints.get(cluster.eds_name())
    }
}

/// `google.protobuf.Duration` as std's, refusing negatives.
pub fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Result<Duration, &'static str> {
    let secs = u64::try_from(d.seconds).map_err(|_| "negative duration")?;
    let nanos = u32::try_from(d.nanos).map_err(|_| "negative duration")?;
    Ok(Duration::new(secs, nanos))
}
