//! Discovery: the current PushContext, rebuilt from config snapshots, and the
//! `Generator` the ADS server asks for each proxy's resources.
//!
//! Config changes are debounced (a burst of file edits makes one push) and a new
//! PushContext is swapped in whole; proxies connected at that moment finish their
//! current push from the old one and get the next from the new.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use oxmesh_xds::ads::{Generator, Named};
use tokio::sync::watch;

use crate::generate;
use crate::jwks::JwksResolver;
use crate::mesh_config::MeshConfig;
use crate::proxy::Proxy;
use crate::push_context::PushContext;
use crate::source::Snapshot;
use oxmesh_config::object::{Object, Resource};

/// How long config must be quiet before a push (Istio's PILOT_DEBOUNCE_AFTER).
pub const DEBOUNCE: Duration = Duration::from_millis(100);

pub struct Discovery {
    context: ArcSwap<PushContext>,
    /// The config snapshot `context` was built from: what `/debug/configz` shows.
    config: ArcSwap<Snapshot>,
    changes: watch::Sender<u64>,
}

impl Discovery {
    pub fn new(initial: PushContext, config: Arc<Snapshot>) -> Arc<Self> {
        let (changes, _) = watch::channel(initial.version);
        Arc::new(Self {
            context: ArcSwap::from_pointee(initial),
            config: ArcSwap::new(config),
            changes,
        })
    }

    pub fn current(&self) -> Arc<PushContext> {
        self.context.load_full()
    }

    pub fn config(&self) -> Arc<Snapshot> {
        self.config.load_full()
    }

    /// Swaps in a new PushContext and tells every connection.
    pub fn publish(&self, context: PushContext, config: Arc<Snapshot>) {
        let version = context.version;
        self.config.store(config);
        self.context.store(Arc::new(context));
        self.changes.send_replace(version);
    }

    /// Rebuilds the PushContext from each new snapshot, once changes have been quiet
    /// for `debounce`. `roots` yields the current trust bundle (PEM); a change
    /// of the roots or of a fetched JWKS rebuilds too. Each build waits for the
    /// key sets it newly needs (bounded by their rules' timeouts), so a new
    /// RequestAuthentication never reaches proxies with its keys missing.
    pub fn follow(
        self: Arc<Self>,
        triggers: Triggers,
        roots: impl Fn() -> Vec<u8> + Send + 'static,
        mesh: MeshConfig,
        jwks: Arc<JwksResolver>,
        debounce: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let Triggers {
            mut snapshots,
            mut roots_changed,
            mut jwks_changed,
        } = triggers;
        tokio::spawn(async move {
            let mut builds = 0u64;
            loop {
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    changed = roots_changed.changed() => if changed.is_err() { return },
                    changed = jwks_changed.changed() => if changed.is_err() { return },
                }
                // Debounce: wait until nothing new arrives for `debounce`.
                loop {
                    tokio::select! {
                        changed = snapshots.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep(debounce) => break,
                    }
                }
                let snapshot = snapshots.borrow_and_update().clone();
                builds += 1;
                let started = std::time::Instant::now();
                let mut context = PushContext::build(
                    &snapshot.objects,
                    mesh.clone(),
                    Arc::from(roots()),
                    version(snapshot.generation, builds),
                );
                context.jwt_keys = jwks.resolve(context.jwks_sources()).await;
                tracing::info!(generation = snapshot.generation, services = context.registry.services.len(), took = ?started.elapsed(), "new push context");
                self.publish(context, snapshot);
                crate::memory::trim_after_push();
            }
        })
    }
}

/// The labels of the pod at one of the proxy's addresses in its namespace.
fn pod_of<'a>(snapshot: &'a Snapshot, proxy: &Proxy) -> Option<&'a Object> {
    snapshot.objects.iter().map(AsRef::as_ref).find(|object| {
        let Resource::Pod(pod) = &object.resource else {
            return false;
        };
        let ip = pod.ip.as_deref().and_then(|ip| ip.parse().ok());
        object.namespace() == Some(proxy.namespace.as_str())
            && ip.is_some_and(|ip| proxy.ips.contains(&ip))
    })
}

/// The Node a pod runs on, when the snapshot has it.
fn node_of<'a>(snapshot: &'a Snapshot, pod: &Object) -> Option<&'a Object> {
    let Resource::Pod(spec) = &pod.resource else {
        return None;
    };
    let name = spec.node_name.as_deref()?;
    snapshot
        .objects
        .iter()
        .map(AsRef::as_ref)
        .find(|o| matches!(o.resource, Resource::Node) && o.name() == name)
}

/// What makes the PushContext be rebuilt.
pub struct Triggers {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub roots_changed: watch::Receiver<u64>,
    pub jwks_changed: watch::Receiver<u64>,
}

/// A version that changes with either the config or the trust bundle.
fn version(generation: u64, builds: u64) -> u64 {
    (generation << 20) | (builds & 0xfffff)
}

impl Generator for Discovery {
    type Proxy = Proxy;
    type Snapshot = Arc<PushContext>;

    fn connect(
        &self,
        node: &Node,
        caller: Option<&oxmesh_identity::SpiffeId>,
    ) -> Result<Proxy, String> {
        let mut proxy = Proxy::from_node(node)?;
        proxy.proven = caller.is_some();
        let config = self.config();
        if let Some(pod) = pod_of(&config, &proxy) {
            let labels: oxmesh_config::selector::Labels = pod
                .meta
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            // As istiod: the registry knows best where the pod runs (its
            // node's labels).
            let locality = crate::registry::pod_locality(&labels, node_of(&config, pod));
            if !locality.is_empty() {
                proxy.locality = locality;
            }
            // A proxy that reports no labels gets its pod's, so selectors
            // and Services see it as the workload it runs beside.
            if proxy.labels.is_empty() {
                proxy.labels = labels;
            }
        }
        Ok(proxy)
    }

    /// As istiod: the caller's identity must be the proxy's own namespace and,
    /// when the node names one, service account.
    fn authorize(&self, proxy: &Proxy, caller: &oxmesh_identity::SpiffeId) -> Result<(), String> {
        let account_named = proxy.metadata.contains_key("SERVICE_ACCOUNT");
        if caller.namespace() == proxy.namespace
            && (!account_named || caller.service_account() == proxy.service_account)
        {
            return Ok(());
        }
        Err(format!(
            "{caller} may not fetch the config of {} (namespace {}, service account {})",
            proxy.id, proxy.namespace, proxy.service_account
        ))
    }

    fn proxy_id(proxy: &Proxy) -> String {
        proxy.id.clone()
    }

    fn snapshot(&self) -> Arc<PushContext> {
        self.current()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn generate(
        &self,
        snapshot: &Arc<PushContext>,
        proxy: &Proxy,
        type_url: &str,
    ) -> Result<Arc<[Named]>, String> {
        Ok(generate::resources(snapshot, proxy, type_url))
    }
}
