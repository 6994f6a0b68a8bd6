//! Delta ADS: responses carry only what changed, and the names removed.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::session::{Link, Session};
use super::{Generator, Named, types};

#[derive(Default)]
struct Watch {
    /// `None`: everything (wildcard).
    names: Option<BTreeSet<String>>,
    /// What the proxy holds, by name: the version it was sent.
    held: BTreeMap<String, String>,
    sent_nonce: Option<String>,
    started: bool,
}

pub struct Connection<G: Generator> {
    link: Link<G, DeltaDiscoveryResponse>,
    watches: BTreeMap<String, Watch>,
}

impl<G: Generator> Session<G> for Connection<G> {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const VARIANT: &'static str = "delta";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn open(link: Link<G, DeltaDiscoveryResponse>) -> Self {
        Self {
            link,
            watches: BTreeMap::new(),
        }
    }

    fn link(&self) -> &Link<G, DeltaDiscoveryResponse> {
        &self.link
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> bool {
        let type_url = request.type_url.clone();
        if !types::is_known(&type_url) {
            tracing::warn!(proxy = %self.link.name(), %type_url, "subscription to an unknown type ignored");
            return true;
        }
        let watch = self.watches.entry(type_url.clone()).or_default();
        // ACK and NACK bookkeeping only for the push this answers; subscription
        // changes in the same request always apply (Envoy never repeats them).
        let answers_last = !request.response_nonce.is_empty()
            && watch.sent_nonce.as_deref() == Some(request.response_nonce.as_str());
        if answers_last {
            if let Some(error) = &request.error_detail {
                tracing::warn!(proxy = %self.link.name(), kind = types::short_name(&type_url), nonce = %request.response_nonce, error = %error.message, "proxy rejected the config (NACK)");
                self.link.metrics.rejected(&type_url);
                let message = error.message.clone();
                self.link
                    .status
                    .update(self.link.id, &type_url, |s| s.nack = Some(message));
            } else {
                let acked = self.status_version(&type_url);
                self.link.status.update(self.link.id, &type_url, |s| {
                    s.acked_version = acked;
                    s.nack = None;
                });
            }
        }
        let watch = self.watches.entry(type_url.clone()).or_default();
        let mut changed = false;
        if !watch.started {
            watch.started = true;
            changed = true;
            // A reconnecting proxy says what it holds; only differences are sent.
            watch.held = request
                .initial_resource_versions
                .clone()
                .into_iter()
                .collect();
            let wildcard = request.resource_names_subscribe.is_empty()
                || request.resource_names_subscribe.iter().any(|n| n == "*");
            watch.names = if types::is_wildcard_type(&type_url) && wildcard {
                None
            } else {
                Some(BTreeSet::new())
            };
        }
        if let Some(names) = &mut watch.names {
            for name in request
                .resource_names_subscribe
                .iter()
                .filter(|n| *n != "*")
            {
                names.insert(name.clone());
                // A (re-)subscription asks for the resource again, even one
                // already subscribed to.
                watch.held.remove(name);
                changed = true;
            }
            for name in &request.resource_names_unsubscribe {
                changed |= names.remove(name);
                watch.held.remove(name);
            }
        }
        if !changed {
            return true;
        }
        let snapshot = self.link.generator.snapshot();
        self.push(&snapshot, &type_url).await
    }

    async fn push_all(&mut self) -> bool {
        let snapshot = self.link.generator.snapshot();
        for type_url in types::ORDER {
            if self.watches.contains_key(type_url) && !self.push(&snapshot, type_url).await {
                return false;
            }
        }
        true
    }
}

impl<G: Generator> Connection<G> {
    /// One version for everything the proxy holds of a type, for status.
    fn status_version(&self, type_url: &str) -> Option<String> {
        use std::hash::{Hash, Hasher};
        self.watches.get(type_url).map(|w| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            w.held.hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        })
    }

    /// Sends what changed since the proxy's last state, and what went away.
    async fn push(&mut self, snapshot: &G::Snapshot, type_url: &str) -> bool {
        let started = std::time::Instant::now();
        let resources = match self
            .link
            .generator
            .generate(snapshot, &self.link.proxy, type_url)
        {
            Ok(resources) => resources,
            Err(reason) => {
                tracing::error!(proxy = %self.link.name(), kind = types::short_name(type_url), %reason, "cannot generate config; the proxy keeps what it has");
                return true;
            }
        };
        let Some(watch) = self.watches.get_mut(type_url) else {
            return true;
        };
        let wanted: Vec<&Named> = resources
            .iter()
            .filter(|r| {
                watch
                    .names
                    .as_ref()
                    .is_none_or(|names| names.contains(&r.name))
            })
            .collect();
        let mut updated = Vec::new();
        for r in wanted.iter().copied() {
            let version = r.version();
            if watch.held.get(&r.name) != Some(&version) {
                updated.push(Resource {
                    name: r.name.clone(),
                    version: version.clone(),
                    resource: Some(r.resource.clone()),
                    ..Default::default()
                });
                watch.held.insert(r.name.clone(), version);
            }
        }
        let present: BTreeSet<&str> = wanted.iter().map(|r| r.name.as_str()).collect();
        let removed: Vec<String> = watch
            .held
            .keys()
            .filter(|n| !present.contains(n.as_str()))
            .cloned()
            .collect();
        for name in &removed {
            watch.held.remove(name);
        }
        if updated.is_empty() && removed.is_empty() && watch.sent_nonce.is_some() {
            return true;
        }
        let nonce = self.link.next_nonce();
        watch.sent_nonce = Some(nonce.clone());
        let version = self.status_version(type_url);
        let n = nonce.clone();
        self.link.status.update(self.link.id, type_url, |s| {
            s.sent_version = version;
            s.sent_nonce = Some(n);
        });
        let response = DeltaDiscoveryResponse {
            system_version_info: String::new(),
            resources: updated,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        let sent = self.link.send(response).await;
        self.link.metrics.pushed(type_url, started.elapsed());
        sent
    }
}
