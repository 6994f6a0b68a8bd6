//! The ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService`), both
//! state-of-the-world and delta. It knows the protocol (versions, nonces, ACK and
//! NACK, subscriptions, push order); what to send comes from a `Generator`.
//!
//! Each connection runs in its own task and pushes when the generator's generation
//! changes. Changes coalesce in a watch channel, so a slow client holds at most one
//! pending push and never delays another client.

pub mod client;
mod delta;
pub mod metrics;
mod server;
mod service;
mod session;
mod sotw;
pub mod status;
pub mod types;

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

pub use server::{AdsServer, DEFAULT_MAX_STREAMS, DEFAULT_PUSH_THROTTLE};
pub use service::AdsService;

/// Proves who opened an ADS stream, from its `authorization` header (on 15012
/// Istio's proxies send the bearer token they give the CA). An error refuses
/// the stream.
pub trait Authenticate: Send + Sync + 'static {
    fn caller(
        &self,
        authorization: Option<String>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<oxmesh_identity::SpiffeId, tonic::Status>>
                + Send,
        >,
    >;
}

/// The largest ADS response a client accepts. gRPC's default of 4 MiB is far
/// too small: the clusters of a 5,000-service mesh are about 6 MiB in one
/// response (Envoy sets no limit).
pub const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// The largest ADS request the server accepts: resource names and a node.
/// Istio's default (ISTIO_GPRC_MAXRECVMSGSIZE, 4 MiB) holds tens of thousands
/// of names; a bigger request ends its stream with OUT_OF_RANGE before it is
/// read whole.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// One generated resource, with a hash of its content computed once: versions
/// are built from these, however many proxies receive the resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Named {
    pub name: String,
    pub resource: Any,
    hash: u64,
}

impl Named {
    pub fn new(name: String, resource: Any) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        resource.type_url.hash(&mut hasher);
        resource.value.hash(&mut hasher);
        Self {
            name,
            resource,
            hash: hasher.finish(),
        }
    }

    /// A hash of the name and encoding: equal hashes, same resource.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// This resource's version: a hash of its name and encoding.
    pub fn version(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// What a connected proxy should have.
pub trait Generator: Send + Sync + 'static {
    /// Who is connecting, from the node of its first request.
    type Proxy: Send + Sync + 'static;

    /// `caller` is who the stream proved to be, on an authenticated port.
    fn connect(
        &self,
        node: &Node,
        caller: Option<&oxmesh_identity::SpiffeId>,
    ) -> Result<Self::Proxy, String>;

    /// Whether a caller proven to be `caller` may have `proxy`'s config; the
    /// reason refuses the stream with PERMISSION_DENIED. Unauthenticated ports
    /// never ask.
    fn authorize(
        &self,
        _proxy: &Self::Proxy,
        _caller: &oxmesh_identity::SpiffeId,
    ) -> Result<(), String> {
        Ok(())
    }

    /// How the proxy is named in logs and status.
    fn proxy_id(proxy: &Self::Proxy) -> String;

    /// One consistent view of the config. A push of several types generates them
    /// all from one snapshot, so routes never name clusters from a newer config
    /// than the clusters sent with them.
    type Snapshot: Send + Sync;

    fn snapshot(&self) -> Self::Snapshot;

    /// Changes whenever the config any proxy may depend on changes.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Every resource of `type_url` the proxy should hold; the server narrows named
    /// types (endpoints, routes, secrets) to what the proxy subscribed to.
    fn generate(
        &self,
        snapshot: &Self::Snapshot,
        proxy: &Self::Proxy,
        type_url: &str,
    ) -> Result<Arc<[Named]>, String>;
}

/// A stable content version for a set of resources.
pub fn version_of<'a>(resources: impl IntoIterator<Item = &'a Named>) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for r in resources {
        r.hash.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}
