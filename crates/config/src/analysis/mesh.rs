//! The objects under analysis, indexed the way the analyzers look things up.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::Options;
use crate::decode::Sourced;
use crate::hostname::{Hostname, resolve_short_name};
use crate::kind::Kind;
use crate::object::{Object, Resource};
use crate::selector::Labels;
use crate::service::{Service, services};

/// Something that runs: a Pod, or the pod template of a Deployment, StatefulSet,
/// DaemonSet, ReplicaSet, Job or CronJob (which is what manifests hold).
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

pub struct Mesh<'a> {
    pub options: &'a Options,
    pub objects: &'a [&'a Sourced],
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
    /// `(host FQDN, subset)` pairs that DestinationRules define.
    pub subsets: HashSet<(Hostname, String)>,
}

impl<'a> Mesh<'a> {
    pub fn new(objects: &'a [&'a Sourced], options: &'a Options) -> Self {
        let plain: Vec<&Object> = objects.iter().map(|s| &*s.object).collect();
        let services = services(&plain, &options.domain);
        let mut workloads: Vec<Workload> = objects.iter().copied().filter_map(workload).collect();
        if !workloads.is_empty() {
            workloads.push(ingress_gateway());
        }
        let mut subsets = HashSet::new();
        for sourced in objects {
            if let Resource::DestinationRule(dr) = &sourced.object.resource {
                let host = resolve_short_name(&dr.host, namespace(sourced), &options.domain);
                for subset in &dr.subsets {
                    subsets.insert((host.clone(), subset.name.clone()));
                }
            }
        }
        Self {
            options,
            objects,
            services,
            workloads,
            subsets,
        }
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &'a Sourced> + '_ {
        self.objects
            .iter()
            .copied()
            .filter(move |s| s.object.kind == kind)
    }

    /// `host` as written in an object in `namespace`, as a fully qualified name.
    pub fn fqdn(&self, host: &str, namespace: &str) -> Hostname {
        resolve_short_name(host, namespace, &self.options.domain)
    }

    /// The service a client in `namespace` reaches as `host` (already qualified): an
    /// exact host, or a wildcard ServiceEntry that covers it, visible to it.
    pub fn service(&self, host: &Hostname, namespace: &str) -> Option<&Service> {
        let visible = |s: &&Service| s.export_to.visible_in(namespace) || s.namespace == namespace;
        self.services
            .iter()
            .filter(visible)
            .find(|s| &s.hostname == host)
            .or_else(|| {
                self.services
                    .iter()
                    .filter(visible)
                    .find(|s| s.hostname.is_wildcard() && host.subset_of(&s.hostname))
            })
    }

    pub fn has_subset(&self, host: &Hostname, subset: &str) -> bool {
        self.subsets.contains(&(host.clone(), subset.to_owned()))
            || self
                .subsets
                .iter()
                .any(|(h, s)| s == subset && h.is_wildcard() && host.subset_of(h))
    }

    /// Workloads whose labels include all of `selector`, in `namespace` if given.
    pub fn workloads_matching<'m>(
        &'m self,
        namespace: Option<&'m str>,
        selector: &'m Labels,
    ) -> impl Iterator<Item = &'m Workload> + 'm {
        self.workloads.iter().filter(move |w| {
            namespace.is_none_or(|ns| w.namespace == ns)
                && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        })
    }

    /// Whether the input describes workloads at all; analyzers that look for the
    /// workloads a selector picks stay quiet over config-only input.
    pub fn has_workloads(&self) -> bool {
        !self.workloads.is_empty()
    }

    pub fn secret_exists(&self, namespace: &str, name: &str) -> bool {
        self.of_kind(Kind::Secret)
            .any(|s| s.object.name() == name && self::namespace(s) == namespace)
    }
}

/// The ingress gateway oxmesh installs (on the testbed and with `oxmesh install`),
/// labelled as Istio's is, which Gateways select without it being in the input.
fn ingress_gateway() -> Workload {
    Workload {
        namespace: "istio-system".to_owned(),
        name: "istio-ingressgateway".to_owned(),
        labels: [("istio", "ingressgateway"), ("app", "istio-ingressgateway")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

pub fn namespace(sourced: &Sourced) -> &str {
    sourced.object.namespace().unwrap_or_default()
}

fn workload(sourced: &Sourced) -> Option<Workload> {
    let template = |t: &Option<PodTemplateSpec>| {
        t.as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
    };
    let labels: BTreeMap<String, String> = match &sourced.object.resource {
        Resource::Pod(_) => sourced.object.meta.labels.clone().unwrap_or_default(),
        Resource::Deployment(d) => template(&d.spec.as_ref().map(|s| s.template.clone()))?,
        Resource::StatefulSet(d) => template(&d.spec.as_ref().map(|s| s.template.clone()))?,
        Resource::DaemonSet(d) => template(&d.spec.as_ref().map(|s| s.template.clone()))?,
        Resource::ReplicaSet(d) => template(&d.spec.as_ref().and_then(|s| s.template.clone()))?,
        Resource::Job(j) => template(&j.spec.as_ref().map(|s| s.template.clone()))?,
        Resource::CronJob(c) => template(
            &c.spec
                .as_ref()
                .and_then(|s| s.job_template.spec.as_ref())
                .map(|s| s.template.clone()),
        )?,
        _ => return None,
    };
    Some(Workload {
        namespace: namespace(sourced).to_owned(),
        name: sourced.object.name().to_owned(),
        labels,
    })
}
