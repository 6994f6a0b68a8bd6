//! The xDS agent: keeps one ADS stream to the control plane, converts each
//! response into runtime types, swaps the snapshot, and ACKs or NACKs. A resource
//! that cannot be converted is NACKed with the reason and its previous version (if
//! any) keeps serving; the others apply. When the stream breaks, the proxy keeps
//! serving its last good config and reconnects with backoff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as EnvoyListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use oxmesh_identity::bundle::TrustBundle;
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use oxmesh_xds::ads::types;
use prost::Message;

use crate::config::cluster::Discovery;
use crate::config::listener::{NetworkFilter, RouteSource};
use crate::config::tls::{DownstreamKind, UpstreamKind};
use crate::config::{self, ConvertError, Snapshot};
use crate::context::Context;
use crate::listeners::Listeners;

mod ordering;

use ordering::Ordering;

/// Reconnecting: from 100 ms, doubling to at most a second, each wait drawn
/// between half and all of it so a fleet does not reconnect in step. A short
/// ceiling puts every proxy back in sync within about a second of the control
/// plane's return; failing to connect to a control plane that is away costs
/// a refused connection a second.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A stream that lasted this long resets the back-off.
const STREAM_HEALTHY: Duration = Duration::from_secs(10);

pub struct Agent<F> {
    ctx: Arc<Context>,
    listeners: Arc<Listeners>,
    connect: F,
}

/// Names subscribed by name (EDS, RDS), as last requested.
#[derive(Default)]
struct Subscriptions {
    endpoints: Vec<String>,
    routes: Vec<String>,
    /// `ROOTCA`, and the credentials the listeners name.
    secrets: Vec<String>,
}

impl<F, Fut> Agent<F>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<SotwClient, ClientError>>,
{
    pub fn new(ctx: Arc<Context>, listeners: Arc<Listeners>, connect: F) -> Self {
        Self {
            ctx,
            listeners,
            connect,
        }
    }

    /// Runs for ever: connect, follow the stream, reconnect after failures.
    pub async fn run(self) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            match (self.connect)().await {
                Ok(client) => {
                    tracing::info!("connected to the control plane");
                    let connected = tokio::time::Instant::now();
                    match self.follow(client).await {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "xDS stream ended; serving the last good config")
                        }
                    }
                    // A stream that broke at once is no sign of health: only
                    // one that lasted starts the back-off over.
                    if connected.elapsed() >= STREAM_HEALTHY {
                        backoff = INITIAL_BACKOFF;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the control plane")
                }
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn follow(&self, mut client: SotwClient) -> Result<(), ClientError> {
        client.subscribe(types::CLUSTER, &[]).await?;
        client.subscribe(types::LISTENER, &[]).await?;
        // After a reconnect the listeners already name their credentials: ask
        // for them at once, so a gateway's TLS chains are never left without.
        let mut subs = Subscriptions {
            secrets: secrets_wanted(&self.ctx.snapshot()),
            ..Subscriptions::default()
        };
        let secrets: Vec<&str> = subs.secrets.iter().map(String::as_str).collect();
        client.subscribe(types::SECRET, &secrets).await?;
        let mut ordering = Ordering::default();
        loop {
            let response = match ordering.next_deadline() {
                Some(deadline) => tokio::select! {
                    received = client.recv() => received?,
                    () = tokio::time::sleep_until(deadline) => {
                        self.settle(&mut client, &mut ordering, &mut subs).await?;
                        continue;
                    }
                },
                None => client.recv().await?,
            };
            self.handle(&mut client, &response, &mut subs, &mut ordering)
                .await?;
            self.settle(&mut client, &mut ordering, &mut subs).await?;
        }
    }

    /// Applies what waited and is due now, drops kept clusters whose time is
    /// up, and shrinks the EDS subscription accordingly.
    async fn settle(
        &self,
        client: &mut SotwClient,
        ordering: &mut Ordering,
        subs: &mut Subscriptions,
    ) -> Result<(), ClientError> {
        let now = tokio::time::Instant::now();
        let current = self.ctx.snapshot();
        let due = ordering.due(&current, now);
        let mut next = (*current).clone();
        let mut changed = !due.is_empty();
        if changed {
            let errors = apply_route_configs(&mut next, &due, &subs.routes);
            // They were checked when they arrived and ACKed then.
            errors
                .iter()
                .for_each(|e| tracing::warn!(error = %e, "waiting routes refused"));
        }
        changed |= ordering.drop_kept(&mut next, now);
        if !changed {
            return Ok(());
        }
        self.ctx.config.store(Arc::new(next));
        self.resubscribe(client, types::CLUSTER, subs).await
    }

    /// Applies one response, ACKs or NACKs it, and subscribes to what the
    /// new config names.
    async fn handle(
        &self,
        client: &mut SotwClient,
        response: &DiscoveryResponse,
        subs: &mut Subscriptions,
        ordering: &mut Ordering,
    ) -> Result<(), ClientError> {
        let type_url = response.type_url.clone();
        let errors = self.apply(response, subs, ordering);
        let names: Vec<&str> = match type_url.as_str() {
            types::ENDPOINT => subs.endpoints.iter().map(String::as_str).collect(),
            types::ROUTE => subs.routes.iter().map(String::as_str).collect(),
            types::SECRET => subs.secrets.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        if errors.is_empty() {
            client.ack(response, &names).await?;
        } else {
            let reason: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::warn!(r#type = types::short_name(&type_url), errors = %reason.join("; "), "config rejected");
            let last = self
                .ctx
                .snapshot()
                .versions
                .get(&type_url)
                .cloned()
                .unwrap_or_default();
            client
                .nack(response, &names, &last, &reason.join("; "))
                .await?;
        }
        // New clusters or listeners may need endpoints or routes by name.
        self.resubscribe(client, &type_url, subs).await?;
        // Gateway chains and clusters may name credentials the control
        // plane serves.
        if type_url == types::LISTENER || type_url == types::CLUSTER {
            let wanted = secrets_wanted(&self.ctx.snapshot());
            if subs.secrets != wanted {
                subs.secrets = wanted;
                let refs: Vec<&str> = subs.secrets.iter().map(String::as_str).collect();
                client.subscribe(types::SECRET, &refs).await?;
            }
        }
        Ok(())
    }

    /// Subscribes by name to the endpoints (after `CLUSTER`) or routes (after
    /// `LISTENER`) the config now names, when they changed.
    async fn resubscribe(
        &self,
        client: &mut SotwClient,
        type_url: &str,
        subs: &mut Subscriptions,
    ) -> Result<(), ClientError> {
        let Some(wanted) = names_wanted(&self.ctx.snapshot(), type_url) else {
            return Ok(());
        };
        let (current, subscribe_to) = match type_url {
            types::CLUSTER => (&mut subs.endpoints, types::ENDPOINT),
            _ => (&mut subs.routes, types::ROUTE),
        };
        if *current != wanted {
            *current = wanted;
            let refs: Vec<&str> = current.iter().map(String::as_str).collect();
            client.subscribe(subscribe_to, &refs).await?;
        }
        Ok(())
    }

    /// Applies one response; returns the conversion errors.
    fn apply(
        &self,
        response: &DiscoveryResponse,
        subs: &Subscriptions,
        ordering: &mut Ordering,
    ) -> Vec<ConvertError> {
        let current = self.ctx.snapshot();
        let mut next = (*current).clone();
        let now = tokio::time::Instant::now();
        let errors = match response.type_url.as_str() {
            types::CLUSTER => {
                let errors = apply_clusters(&self.ctx, &mut next, response);
                ordering.keep_named(&current, &mut next, now);
                // Clusters kept because a route still names them keep their
                // counts too.
                self.ctx
                    .upstreams
                    .retain_loads(|name| next.clusters.contains_key(name));
                errors
            }
            types::ENDPOINT => apply_endpoints(&self.ctx, &mut next, response, &subs.endpoints),
            types::LISTENER => apply_listeners(&mut next, response),
            types::ROUTE => {
                let (received, mut errors) =
                    decode_all::<RouteConfiguration>(response, "RouteConfiguration");
                let admitted = ordering.admit(&current, received, now);
                errors.extend(apply_route_configs(&mut next, &admitted, &subs.routes));
                ordering.forget_routes(&subs.routes);
                errors
            }
            types::SECRET => apply_secrets(&self.ctx, &mut next, response, &subs.secrets),
            other => vec![ConvertError::new(
                "type",
                other,
                "not a type this proxy asked for",
            )],
        };
        next.versions
            .insert(response.type_url.clone(), response.version_info.clone());
        let next = Arc::new(next);
        self.ctx.config.store(next.clone());
        if response.type_url == types::LISTENER {
            let bind_errors = self.listeners.reconcile(&self.ctx, &next);
            if bind_errors.is_empty() {
                self.ctx.mark_config_applied();
            }
            bind_errors
                .iter()
                .for_each(|e| tracing::error!(error = %e, "cannot listen"));
        }
        errors
    }
}

/// Between half of `backoff` and all of it.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(crate::balance::random_u64() % nanos)
}

/// EDS names for the EDS clusters, or RDS names for the HTTP chains.
fn names_wanted(snapshot: &Snapshot, type_url: &str) -> Option<Vec<String>> {
    let names: BTreeSet<String> = match type_url {
        types::CLUSTER => snapshot
            .clusters
            .values()
            .filter_map(|c| match &c.discovery {
                Discovery::Eds(name) => Some(name.clone()),
                _ => None,
            })
            .collect(),
        types::LISTENER => snapshot
            .listeners
            .values()
            .flat_map(|l| l.chains.iter().chain(l.default_chain.iter()))
            .filter_map(|c| match &c.filter {
                NetworkFilter::Http(m) => match &m.routes {
                    RouteSource::Rds(name) => Some(name.clone()),
                    RouteSource::Inline(_) => None,
                },
                NetworkFilter::Tcp(_) => None,
            })
            .collect(),
        _ => return None,
    };
    Some(names.into_iter().collect())
}

/// The wire form the config dump shows: a private key never leaves the proxy,
/// as Envoy's dump shows `[redacted]` in its place.
fn redacted(secret: &Secret, any: &Arc<Any>) -> Arc<Any> {
    let Some(SecretType::TlsCertificate(cert)) = &secret.r#type else {
        return any.clone();
    };
    let mut cert = cert.clone();
    cert.private_key = Some(envoy_types::pb::envoy::config::core::v3::DataSource {
        specifier: Some(Specifier::InlineString("[redacted]".to_owned())),
        ..Default::default()
    });
    let shown = Secret {
        name: secret.name.clone(),
        r#type: Some(SecretType::TlsCertificate(cert)),
    };
    Arc::new(Any {
        type_url: any.type_url.clone(),
        value: shown.encode_to_vec(),
    })
}

/// `ROOTCA` and every served credential a listener's chains or a cluster's
/// TLS names.
fn secrets_wanted(snapshot: &Snapshot) -> Vec<String> {
    let mut names = BTreeSet::from([config::tls::ROOT_CA.to_owned()]);
    for chain in snapshot
        .listeners
        .values()
        .flat_map(|l| l.chains.iter().chain(l.default_chain.iter()))
    {
        if let Some(tls) = &chain.tls
            && let DownstreamKind::Credential {
                certificates,
                client_ca,
            } = &tls.kind
        {
            names.extend(certificates.iter().cloned());
            names.extend(client_ca.iter().cloned());
        }
    }
    for tls in snapshot.clusters.values().flat_map(|c| {
        [&c.tls.mesh_endpoints, &c.tls.other_endpoints]
            .into_iter()
            .flatten()
    }) {
        if let UpstreamKind::Credential {
            client_certificate,
            roots,
            ..
        } = &tls.kind
        {
            names.extend(client_certificate.iter().cloned());
            names.extend(roots.iter().cloned());
        }
    }
    names.into_iter().collect()
}

/// Each resource decoded, beside the wire form the admin's config dump shows.
fn decode_all<T: Message + Default>(
    response: &DiscoveryResponse,
    kind: &'static str,
) -> (Vec<(T, Arc<Any>)>, Vec<ConvertError>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for any in &response.resources {
        match T::decode(any.value.as_slice()) {
            Ok(r) => ok.push((r, Arc::new(any.clone()))),
            Err(e) => errors.push(ConvertError::new(kind, "?", format!("cannot decode: {e}"))),
        }
    }
    (ok, errors)
}

/// State of the world: the response lists every cluster; a refused one keeps
/// its previous version.
fn apply_clusters(
    ctx: &Context,
    next: &mut Snapshot,
    response: &DiscoveryResponse,
) -> Vec<ConvertError> {
    let (clusters, mut errors) = decode_all::<EnvoyCluster>(response, "Cluster");
    let mut map = HashMap::new();
    let mut raw = BTreeMap::new();
    for (c, any) in &clusters {
        match config::cluster::convert(c) {
            Ok(mut converted) => {
                converted.load = ctx.upstreams.load(&converted.name);
                // A DNS cluster pushed again keeps what it resolved.
                if let (Discovery::Dns(new), Some(Discovery::Dns(old))) = (
                    &converted.discovery,
                    next.clusters.get(&converted.name).map(|c| &c.discovery),
                ) {
                    new.continue_from(old);
                }
                map.insert(converted.name.clone(), Arc::new(converted));
                raw.insert(c.name.clone(), any.clone());
            }
            Err(e) => {
                let name = config::ClusterName::new(&c.name);
                if let Some(previous) = next.clusters.get(&name) {
                    map.insert(name, previous.clone());
                    keep_raw(next, types::CLUSTER, &c.name, &mut raw);
                }
                errors.push(e);
            }
        }
    }
    next.clusters = map;
    next.raw.insert(types::CLUSTER.to_owned(), raw);
    errors
}

fn apply_listeners(next: &mut Snapshot, response: &DiscoveryResponse) -> Vec<ConvertError> {
    let (listeners, mut errors) = decode_all::<EnvoyListener>(response, "Listener");
    let mut map = HashMap::new();
    let mut raw = BTreeMap::new();
    for (l, any) in &listeners {
        // Unchanged: keep what was converted, and with it the state it holds
        // (a rate limit's tokens), as Envoy keeps a listener whose hash holds.
        if let Some(kept) = unchanged(next, types::LISTENER, &l.name, any)
            .then(|| next.listeners.get(&l.name).cloned())
            .flatten()
        {
            map.insert(l.name.clone(), kept);
            raw.insert(l.name.clone(), any.clone());
            continue;
        }
        match config::listener::convert(l).and_then(|c| c.open_access_logs().map(|()| c)) {
            Ok(mut converted) => {
                if let Some(previous) = next.listeners.get(&l.name) {
                    converted.carry_over(previous);
                }
                map.insert(converted.name.clone(), Arc::new(converted));
                raw.insert(l.name.clone(), any.clone());
            }
            Err(e) => {
                if let Some(previous) = next.listeners.get(&l.name) {
                    map.insert(l.name.clone(), previous.clone());
                    keep_raw(next, types::LISTENER, &l.name, &mut raw);
                }
                errors.push(e);
            }
        }
    }
    next.listeners = map;
    next.raw.insert(types::LISTENER.to_owned(), raw);
    errors
}

/// Named resources: those in the response replace their previous versions; those
/// no longer subscribed are dropped.
fn apply_endpoints(
    ctx: &Context,
    next: &mut Snapshot,
    response: &DiscoveryResponse,
    subscribed: &[String],
) -> Vec<ConvertError> {
    let (assignments, mut errors) =
        decode_all::<ClusterLoadAssignment>(response, "ClusterLoadAssignment");
    for (cla, any) in &assignments {
        match config::endpoint::convert(cla) {
            Ok(set) => {
                let balanced = ctx.upstreams.attach(&cla.cluster_name, set);
                next.endpoints
                    .insert(cla.cluster_name.clone(), Arc::new(balanced));
                raw_entry(next, types::ENDPOINT).insert(cla.cluster_name.clone(), any.clone());
            }
            Err(e) => errors.push(e),
        }
    }
    let subscribed: std::collections::HashSet<&str> =
        subscribed.iter().map(String::as_str).collect();
    next.endpoints
        .retain(|name, _| subscribed.contains(name.as_str()));
    ctx.upstreams.retain(|name| subscribed.contains(name));
    raw_entry(next, types::ENDPOINT).retain(|name, _| subscribed.contains(name.as_str()));
    errors
}

/// Route configurations replace their previous versions; those no longer
/// subscribed are dropped.
fn apply_route_configs(
    next: &mut Snapshot,
    configs: &[(RouteConfiguration, Arc<Any>)],
    subscribed: &[String],
) -> Vec<ConvertError> {
    let mut errors = Vec::new();
    for (rc, any) in configs {
        if unchanged(next, types::ROUTE, &rc.name, any) && next.routes.contains_key(&rc.name) {
            continue;
        }
        match config::route::convert(rc) {
            Ok(mut table) => {
                if let Some(previous) = next.routes.get(&rc.name) {
                    table.carry_over(previous);
                }
                next.routes.insert(rc.name.clone(), Arc::new(table));
                raw_entry(next, types::ROUTE).insert(rc.name.clone(), any.clone());
            }
            Err(e) => errors.push(e),
        }
    }
    next.routes.retain(|name, _| subscribed.contains(name));
    raw_entry(next, types::ROUTE).retain(|name, _| subscribed.contains(name));
    errors
}

/// The resource came again with the very bytes it had.
fn unchanged(next: &Snapshot, type_url: &str, name: &str, any: &Any) -> bool {
    next.raw
        .get(type_url)
        .and_then(|m| m.get(name))
        .is_some_and(|previous| previous.value == any.value)
}

/// Keeps the wire form of a resource whose new version was refused.
fn keep_raw(next: &Snapshot, type_url: &str, name: &str, raw: &mut BTreeMap<String, Arc<Any>>) {
    if let Some(any) = next.raw.get(type_url).and_then(|m| m.get(name)) {
        raw.insert(name.to_owned(), any.clone());
    }
}

fn raw_entry<'a>(next: &'a mut Snapshot, type_url: &str) -> &'a mut BTreeMap<String, Arc<Any>> {
    next.raw.entry(type_url.to_owned()).or_default()
}

/// `ROOTCA`: the mesh roots, added to those the certificate manager installed;
/// and the gateway credentials (`kubernetes://`). As Envoy treats SDS, a
/// subscribed credential a response leaves out keeps its last version (a
/// Secret deleted and made again never leaves a gateway without a
/// certificate); one no longer subscribed to is dropped, and a refused one
/// keeps its previous version.
fn apply_secrets(
    ctx: &Context,
    next: &mut Snapshot,
    response: &DiscoveryResponse,
    subscribed: &[String],
) -> Vec<ConvertError> {
    let (secrets, mut errors) = decode_all::<Secret>(response, "Secret");
    let mut credentials: HashMap<String, Arc<config::tls::Material>> = next
        .credentials
        .iter()
        .filter(|(name, _)| subscribed.contains(name))
        .map(|(name, material)| (name.clone(), material.clone()))
        .collect();
    let raw = raw_entry(next, types::SECRET);
    raw.retain(|name, _| !config::tls::is_credential(name) || subscribed.contains(name));
    for (secret, any) in secrets
        .iter()
        .filter(|(s, _)| config::tls::is_credential(&s.name))
    {
        match config::tls::material(secret) {
            Ok(material) => {
                credentials.insert(secret.name.clone(), Arc::new(material));
                raw.insert(secret.name.clone(), redacted(secret, any));
            }
            Err(e) => errors.push(ConvertError::new("Secret", &secret.name, e)),
        }
    }
    next.credentials = credentials;
    for (secret, any) in secrets
        .iter()
        .filter(|(s, _)| s.name == config::tls::ROOT_CA)
    {
        let pem = match &secret.r#type {
            Some(SecretType::ValidationContext(v)) => {
                match v.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()) {
                    Some(Specifier::InlineBytes(b)) => b.clone(),
                    Some(Specifier::InlineString(s)) => s.clone().into_bytes(),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        match TrustBundle::from_pem(&pem) {
            Ok(bundle) => {
                ctx.credentials
                    .set_bundle(ctx.credentials.bundle().merged(&bundle));
                next.roots = Some(Arc::new(bundle));
                raw_entry(next, types::SECRET).insert(secret.name.clone(), any.clone());
            }
            Err(e) => errors.push(ConvertError::new("Secret", &secret.name, e.to_string())),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use oxmesh_identity::credentials::Credentials;
    use oxmesh_identity::{SpiffeId, TrustDomain};

    use super::*;
    use crate::outlier::{Attempt, OutlierPolicy};
    use crate::workload::{Mode, Workload};

    fn context() -> Arc<Context> {
        let workload = Workload {
            mode: Mode::Sidecar,
            pod_name: "client-0".into(),
            namespace: "default".into(),
            ips: vec!["198.18.0.10".parse().expect("ip")],
            service_account: "client".into(),
            workload_name: "client".into(),
            labels: Default::default(),
            cluster_id: "Kubernetes".into(),
            dns_domain: "cluster.local".into(),
            metadata: Default::default(),
        };
        let id = SpiffeId::new(TrustDomain::cluster_local(), "default", "client").expect("id");
        Context::new(workload, Credentials::new(id), false)
    }

    fn eds(name: &str, hosts: &[u8]) -> DiscoveryResponse {
        let endpoint = |n: &u8| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: format!("198.18.0.{n}"),
                        port_specifier: Some(PortSpecifier::PortValue(9080)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: hosts.iter().map(endpoint).collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        DiscoveryResponse {
            type_url: types::ENDPOINT.to_owned(),
            resources: vec![Any {
                type_url: types::ENDPOINT.to_owned(),
                value: cla.encode_to_vec(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_eds_push_keeps_the_ejections_and_load_of_endpoints_it_keeps() {
        let ctx = context();
        let name = "outbound|9080||reviews.default.svc.cluster.local";
        let subscribed = vec![name.to_owned()];
        let mut snapshot = Snapshot::default();
        assert!(
            apply_endpoints(&ctx, &mut snapshot, &eds(name, &[11, 12]), &subscribed).is_empty()
        );
        let before = snapshot.endpoints[name].clone();
        let policy = OutlierPolicy::after_5xx(1, 100);
        crate::outlier::record(&before, 0, &policy, Attempt::Status(503));
        before.states[1].active.fetch_add(3, Ordering::Relaxed);

        // A pod starts elsewhere: .13 joins, .11 and .12 stay.
        assert!(
            apply_endpoints(&ctx, &mut snapshot, &eds(name, &[13, 12, 11]), &subscribed).is_empty()
        );
        let after = &snapshot.endpoints[name];
        let state_of = |n: u8| {
            let address: std::net::SocketAddr = format!("198.18.0.{n}:9080").parse().expect("addr");
            let i = after
                .set
                .endpoints
                .iter()
                .position(|e| e.address == address)
                .expect("endpoint");
            after.states[i].clone()
        };
        assert!(
            state_of(11).health.is_ejected(),
            "the ejection carried over"
        );
        assert_eq!(state_of(12).active.load(Ordering::Relaxed), 3);
        assert!(!state_of(13).health.is_ejected());
        // What the balancer picks from now on avoids the ejected endpoint.
        for _ in 0..20 {
            let policy = crate::balance::Policy {
                panic_threshold: Some(0.0),
                ..crate::balance::Policy::plain(config::cluster::Balance::RoundRobin)
            };
            let i = crate::balance::pick(after, &policy, &[], None).expect("an endpoint");
            assert_ne!(
                after.set.endpoints[i].address.ip().to_string(),
                "198.18.0.11"
            );
        }
    }
}
