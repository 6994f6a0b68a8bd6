//! State-of-the-world ADS: each response to a wildcard subscription (clusters,
//! listeners) carries every resource of its type. Named subscriptions
//! (endpoints, routes, secrets) get every subscribed resource when they change
//! and afterwards only the resources that changed, as the xDS protocol allows
//! and Envoy and istiod do: an endpoint edit sends one ClusterLoadAssignment,
//! not all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::session::{Link, Session};
use super::{Generator, Named, types, version_of};

/// What the proxy asked for of one type, and what it was last sent.
#[derive(Default)]
struct Watch {
    /// `None`: everything (wildcard).
    names: Option<BTreeSet<String>>,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    /// Named subscriptions: the hash of each resource as last sent.
    sent: HashMap<String, u64>,
}

pub struct Connection<G: Generator> {
    link: Link<G, DiscoveryResponse>,
    watches: BTreeMap<String, Watch>,
}

impl<G: Generator> Session<G> for Connection<G> {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const VARIANT: &'static str = "state of the world";

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn open(link: Link<G, DiscoveryResponse>) -> Self {
        Self {
            link,
            watches: BTreeMap::new(),
        }
    }

    fn link(&self) -> &Link<G, DiscoveryResponse> {
        &self.link
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        let type_url = request.type_url.clone();
        if !types::is_known(&type_url) {
            tracing::warn!(proxy = %self.link.name(), %type_url, "subscription to an unknown type ignored");
            return true;
        }
        let watch = self.watches.entry(type_url.clone()).or_default();
        // A nonce from before this stream (a proxy reconnecting to a restarted
        // control plane) answers nothing sent here: the request is a first one.
        if !request.response_nonce.is_empty() && watch.sent_nonce.is_some() {
            if watch.sent_nonce.as_deref() != Some(request.response_nonce.as_str()) {
                // An answer to an older push; the newer one is on its way.
                return true;
            }
            if let Some(error) = &request.error_detail {
                tracing::warn!(proxy = %self.link.name(), kind = types::short_name(&type_url), nonce = %request.response_nonce, error = %error.message, "proxy rejected the config (NACK)");
                self.link.metrics.rejected(&type_url);
                let message = error.message.clone();
                self.link
                    .status
                    .update(self.link.id, &type_url, |s| s.nack = Some(message));
                return true;
            }
            let acked = request.version_info.clone();
            self.link.status.update(self.link.id, &type_url, |s| {
                s.acked_version = Some(acked);
                s.nack = None;
            });
        }
        let wildcard =
            request.resource_names.is_empty() || request.resource_names.iter().any(|n| n == "*");
        let names = (!(types::is_wildcard_type(&type_url) && wildcard)).then(|| {
            request
                .resource_names
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
        });
        let first = watch.sent_nonce.is_none();
        if first || watch.names != names {
            watch.names = names;
            let snapshot = self.link.generator.snapshot();
            return self.push(&snapshot, &type_url, true).await;
        }
        true
    }

    async fn push_all(&mut self) -> bool {
        let snapshot = self.link.generator.snapshot();
        for type_url in types::ORDER {
            if self.watches.contains_key(type_url) && !self.push(&snapshot, type_url, false).await {
                return false;
            }
        }
        true
    }
}

impl<G: Generator> Connection<G> {
    /// Sends `type_url`'s resources if they changed (or `always`).
    async fn push(&mut self, snapshot: &G::Snapshot, type_url: &str, always: bool) -> bool {
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
        let selected: Vec<&Named> = resources
            .iter()
            .filter(|r| {
                watch
                    .names
                    .as_ref()
                    .is_none_or(|names| names.contains(&r.name))
            })
            .collect();
        let version = version_of(selected.iter().copied());
        if !always && watch.sent_version.as_deref() == Some(version.as_str()) {
            return true;
        }
        let selected = if types::is_wildcard_type(type_url) {
            selected
        } else {
            let changed = changed_only(&mut watch.sent, selected, always);
            // Only removals: a named resource's absence deletes nothing, so
            // there is nothing to tell the proxy.
            if changed.is_empty() && !always {
                watch.sent_version = Some(version);
                return true;
            }
            changed
        };
        let nonce = self.link.next_nonce();
        watch.sent_version = Some(version.clone());
        watch.sent_nonce = Some(nonce.clone());
        let (v, n) = (version.clone(), nonce.clone());
        self.link.status.update(self.link.id, type_url, |s| {
            s.sent_version = Some(v);
            s.sent_nonce = Some(n);
        });
        let response = DiscoveryResponse {
            version_info: version,
            resources: selected.into_iter().map(|r| r.resource.clone()).collect(),
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        };
        let sent = self.link.send(response).await;
        self.link.metrics.pushed(type_url, started.elapsed());
        sent
    }
}

/// Of a named subscription's resources, those the proxy has not been sent in
/// this form (all of them when `all`); records what is sent.
fn changed_only<'a>(
    sent: &mut HashMap<String, u64>,
    selected: Vec<&'a Named>,
    all: bool,
) -> Vec<&'a Named> {
    if all {
        sent.clear();
    }
    let changed: Vec<&Named> = selected
        .into_iter()
        .filter(|r| sent.get(&r.name) != Some(&r.hash()))
        .collect();
    for r in &changed {
        sent.insert(r.name.clone(), r.hash());
    }
    changed
}
