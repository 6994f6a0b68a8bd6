//! PushContext: one immutable snapshot of the registry and the policies, indexed
//! for the generators. A new one is built for every config change and swapped in
//! whole, so a generator never sees half an update.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use oxmesh_config::hostname::{Hostname, resolve_short_name};
use oxmesh_config::networking::destination_rule::DestinationRule;
use oxmesh_config::networking::gateway::Gateway;
use oxmesh_config::networking::sidecar::Sidecar;
use oxmesh_config::networking::virtual_service::VirtualService;
use oxmesh_config::object::{Object, Resource};
use oxmesh_config::security::authorization_policy::AuthorizationPolicy;
use oxmesh_config::security::peer_authentication::{MtlsMode, PeerAuthentication};
use oxmesh_config::security::request_authentication::RequestAuthentication;
use oxmesh_config::selector::Labels;
use oxmesh_config::service::{ExportTo, Service};

use crate::credentials::Credential;
use crate::jwks::{JwksSource, JwtKeys};
use crate::mesh_config::MeshConfig;
use crate::proxy::ProxyClass;
use crate::registry::Registry;

mod attachment;
mod delegate;

/// The annotation that puts an AuthorizationPolicy in dry-run mode.
const DRY_RUN: &str = "istio.io/dry-run";

/// A namespaced policy object with its visibility.
#[derive(Debug)]
pub struct Scoped<T> {
    pub namespace: String,
    pub name: String,
    pub export_to: ExportTo,
    pub spec: T,
}

/// An AuthorizationPolicy with what its metadata decides about it.
#[derive(Debug)]
pub(crate) struct Authorization {
    pub(crate) policy: AuthorizationPolicy,
    /// `istio.io/dry-run`: evaluated and reported, never enforced.
    pub(crate) dry_run: bool,
}

#[derive(Debug)]
pub struct PushContext {
    /// The source generation this was built from.
    pub version: u64,
    pub mesh: MeshConfig,
    pub registry: Registry,
    /// The mesh's root certificates (PEM), served as `ROOTCA`.
    pub trust_bundle: Arc<[u8]>,
    /// Resources generated from this context, shared by proxies of one class.
    pub cache: crate::generate::Cache,
    destination_rules: Vec<Scoped<DestinationRule>>,
    virtual_services: Vec<Scoped<VirtualService>>,
    sidecars: Vec<Scoped<Sidecar>>,
    gateways: Vec<Scoped<Gateway>>,
    peer_authentications: Vec<Scoped<PeerAuthentication>>,
    /// Oldest first (see `build`).
    authorization_policies: Vec<Scoped<Authorization>>,
    /// In creation order, as AuthorizationPolicies.
    request_authentications: Vec<Scoped<RequestAuthentication>>,
    /// In creation order: the first that applies at each level counts.
    telemetries: Vec<Scoped<oxmesh_config::telemetry::Telemetry>>,
    /// The key sets of the issuers RequestAuthentications name by URI, as
    /// the JWKS resolver had them when this context was built.
    pub jwt_keys: Arc<JwtKeys>,
    /// TLS Secrets by (namespace, name), for gateways' `credentialName`.
    credentials: BTreeMap<(String, String), Credential>,
    /// SDS names of Secrets in other namespaces that the Gateway API
    /// Gateways of a namespace may use, a ReferenceGrant allowing it:
    /// (Gateways' namespace, `kubernetes-gateway://ns/name`).
    pub granted_credentials: BTreeSet<(String, String)>,
    /// In creation order, their patches read once.
    envoy_filters: Vec<crate::generate::envoy_filter::Compiled>,
    /// The status each Gateway API object should carry.
    pub gateway_api_status: Vec<crate::gateway_api::ObjectStatus>,
    /// Pods, WorkloadEntries and Nodes, as the workload API describes them
    /// to node proxies (shared with the snapshot, not copied).
    pub(crate) workloads: Vec<Arc<Object>>,
}

impl PushContext {
    pub fn build(
        objects: &[Arc<Object>],
        mesh: MeshConfig,
        trust_bundle: Arc<[u8]>,
        version: u64,
    ) -> Self {
        let mesh = mesh.with_objects(objects);
        let registry = Registry::build(objects, &mesh);
        let mut context = Self {
            version,
            registry,
            trust_bundle,
            cache: crate::generate::Cache::default(),
            mesh: MeshConfig::default(),
            destination_rules: Vec::new(),
            virtual_services: Vec::new(),
            sidecars: Vec::new(),
            gateways: Vec::new(),
            peer_authentications: Vec::new(),
            authorization_policies: Vec::new(),
            request_authentications: Vec::new(),
            telemetries: Vec::new(),
            jwt_keys: Arc::default(),
            credentials: BTreeMap::new(),
            granted_credentials: BTreeSet::new(),
            envoy_filters: Vec::new(),
            gateway_api_status: Vec::new(),
            workloads: Vec::new(),
        };
        let mut envoy_filters = Vec::new();
        let mut authorization_policies = Vec::new();
        let mut request_authentications = Vec::new();
        let mut telemetries = Vec::new();
        for object in objects {
            let namespace = object.namespace().unwrap_or_default().to_owned();
            let name = object.name().to_owned();
            let scope = |export_to: &[String]| {
                ExportTo::parse(export_to.iter().map(String::as_str), &namespace)
            };
            match &object.resource {
                Resource::DestinationRule(dr) => context.destination_rules.push(Scoped {
                    export_to: scope(&dr.export_to),
                    namespace,
                    name,
                    spec: (**dr).clone(),
                }),
                Resource::VirtualService(vs) => context.virtual_services.push(Scoped {
                    export_to: scope(&vs.export_to),
                    namespace,
                    name,
                    spec: (**vs).clone(),
                }),
                Resource::Sidecar(sidecar) => context.sidecars.push(Scoped {
                    export_to: ExportTo::All,
                    namespace,
                    name,
                    spec: (**sidecar).clone(),
                }),
                Resource::Gateway(gateway) => context.gateways.push(Scoped {
                    export_to: ExportTo::All,
                    namespace,
                    name,
                    spec: (**gateway).clone(),
                }),
                Resource::PeerAuthentication(pa) => context.peer_authentications.push(Scoped {
                    export_to: ExportTo::All,
                    namespace,
                    name,
                    spec: (**pa).clone(),
                }),
                Resource::AuthorizationPolicy(policy) => {
                    let dry_run = dry_run(object);
                    let created = object.meta.creation_timestamp.clone();
                    let scoped = Scoped {
                        export_to: ExportTo::All,
                        namespace,
                        name,
                        spec: Authorization {
                            policy: (**policy).clone(),
                            dry_run,
                        },
                    };
                    authorization_policies.push((created, scoped));
                }
                Resource::RequestAuthentication(ra) => {
                    let created = object.meta.creation_timestamp.clone();
                    let scoped = Scoped {
                        export_to: ExportTo::All,
                        namespace,
                        name,
                        spec: (**ra).clone(),
                    };
                    request_authentications.push((created, scoped));
                }
                Resource::Telemetry(telemetry) => {
                    let created = object.meta.creation_timestamp.clone();
                    let scoped = Scoped {
                        export_to: ExportTo::All,
                        namespace,
                        name,
                        spec: (**telemetry).clone(),
                    };
                    telemetries.push((created, scoped));
                }
                Resource::EnvoyFilter(ef) => {
                    let created = object.meta.creation_timestamp.clone();
                    let compiled =
                        crate::generate::envoy_filter::Compiled::new(&namespace, &name, ef);
                    envoy_filters.push((created, name, namespace, compiled));
                }
                Resource::Secret(secret) => {
                    if let Some(credential) = Credential::of(secret) {
                        context.credentials.insert((namespace, name), credential);
                    }
                }
                Resource::Pod(_) | Resource::WorkloadEntry(_) | Resource::Node => {
                    context.workloads.push(object.clone());
                }
                _ => {}
            }
        }
        context.authorization_policies = in_creation_order(authorization_policies);
        context.request_authentications = in_creation_order(request_authentications);
        context.telemetries = in_creation_order(telemetries);
        envoy_filters.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        context.envoy_filters = envoy_filters.into_iter().map(|(.., c)| c).collect();
        context.virtual_services =
            delegate::merge(std::mem::take(&mut context.virtual_services), &mesh.domain);
        let translated = crate::gateway_api::translate(objects, &context.registry, &mesh.domain);
        context.gateways.extend(translated.gateways);
        context.virtual_services.extend(translated.virtual_services);
        context.gateway_api_status = translated.statuses;
        context.granted_credentials = translated.granted_credentials;
        context.mesh = mesh;
        context
    }

    /// The EnvoyFilters that apply to `proxy`, in istiod's order: the root
    /// namespace's, then the proxy's namespace's, each oldest first, then
    /// (stably) by priority. Those oxmesh cannot apply are left out.
    pub(crate) fn envoy_filters_for(
        &self,
        proxy: &ProxyClass,
    ) -> Vec<&crate::generate::envoy_filter::Compiled> {
        let root = self.mesh.root_namespace.as_str();
        let selects = |f: &&crate::generate::envoy_filter::Compiled| {
            f.patches.is_ok()
                && f.selector
                    .as_ref()
                    .is_none_or(|wanted| labels_include(&proxy.labels, wanted))
        };
        let mut chosen: Vec<_> = self
            .envoy_filters
            .iter()
            .filter(|f| f.namespace == root)
            .filter(selects)
            .collect();
        if proxy.namespace != root {
            chosen.extend(
                self.envoy_filters
                    .iter()
                    .filter(|f| f.namespace == proxy.namespace)
                    .filter(selects),
            );
        }
        chosen.sort_by_key(|f| f.priority);
        chosen
    }

    /// Why each EnvoyFilter oxmesh skips is skipped.
    pub fn envoy_filters_unapplied(&self) -> Vec<String> {
        self.envoy_filters
            .iter()
            .filter_map(crate::generate::envoy_filter::Compiled::unapplied)
            .collect()
    }

    /// The TLS Secret `namespace/name`, if it holds any TLS material.
    pub fn credential(&self, namespace: &str, name: &str) -> Option<&Credential> {
        self.credentials
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The TLS Secrets of one namespace, by name.
    pub fn credentials_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Credential)> + 'a {
        self.credentials
            .iter()
            .filter(move |((ns, _), _)| ns == namespace)
            .map(|((_, name), credential)| (name.as_str(), credential))
    }

    /// The services a proxy may reach: exported to its namespace and, when a
    /// Sidecar applies, named by one of its egress listeners.
    pub fn services_for<'a>(
        &'a self,
        proxy: &'a ProxyClass,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        let sidecar = self.sidecar_for(proxy);
        self.registry
            .services
            .iter()
            .filter(move |s| s.export_to.visible_in(&proxy.namespace))
            .filter(move |s| sidecar.is_none_or(|sc| egress_allows(&sc.spec, &proxy.namespace, s)))
    }

    /// The Sidecar that scopes a proxy: a selecting one in its namespace, else the
    /// namespace's default, else the root namespace's default.
    pub fn sidecar_for(&self, proxy: &ProxyClass) -> Option<&Scoped<Sidecar>> {
        let selects = |sc: &&Scoped<Sidecar>| {
            sc.spec
                .workload_selector
                .as_ref()
                .is_some_and(|sel| labels_include(&proxy.labels, &sel.labels))
        };
        let default_in = |ns: &str| {
            self.sidecars
                .iter()
                .find(|sc| sc.namespace == ns && sc.spec.workload_selector.is_none())
        };
        self.sidecars
            .iter()
            .filter(|sc| sc.namespace == proxy.namespace)
            .find(selects)
            .or_else(|| default_in(&proxy.namespace))
            .or_else(|| default_in(&self.mesh.root_namespace))
    }

    /// The DestinationRule for `service` as seen from `proxy`, with Istio's
    /// precedence: the proxy's namespace, then the service's, then the root
    /// namespace; within one, the most specific host.
    pub fn destination_rule(
        &self,
        proxy: &ProxyClass,
        service: &Service,
    ) -> Option<&Scoped<DestinationRule>> {
        let candidates = |namespace: &str| {
            let best = self
                .destination_rules
                .iter()
                .filter(|dr| dr.namespace == namespace && dr.export_to.visible_in(&proxy.namespace))
                .filter(|dr| {
                    dr.spec.workload_selector.as_ref().is_none_or(|sel| {
                        dr.namespace == proxy.namespace && sel.matches(&proxy.labels)
                    })
                })
                .filter_map(|dr| {
                    let host = resolve_short_name(&dr.spec.host, &dr.namespace, &self.mesh.domain);
                    service.hostname.subset_of(&host).then_some((dr, host))
                })
                .min_by(|(_, a), (_, b)| specificity(a).cmp(&specificity(b)));
            best.map(|(dr, _)| dr)
        };
        candidates(&proxy.namespace)
            .or_else(|| candidates(&service.namespace))
            .or_else(|| candidates(&self.mesh.root_namespace))
    }

    /// VirtualServices that apply to sidecars (not bound to a gateway only) and are
    /// visible to the proxy.
    pub fn virtual_services_for<'a>(
        &'a self,
        proxy: &'a ProxyClass,
    ) -> impl Iterator<Item = &'a Scoped<VirtualService>> + 'a {
        self.virtual_services.iter().filter(move |vs| {
            vs.export_to.visible_in(&proxy.namespace)
                && (vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
        })
    }

    /// The mTLS mode a workload accepts on `port` (a workload port; `None` for
    /// ports no service names): the workload's policy (its port-level setting
    /// first), else its namespace's, else the mesh's; PERMISSIVE when none says.
    /// Whether an endpoint's workload accepts mesh mTLS on `port`: it has a
    /// sidecar, and its PeerAuthentication does not say DISABLE (Istio's auto
    /// mTLS honours the destination's policy).
    pub fn accepts_mtls(&self, endpoint: &crate::registry::Endpoint) -> bool {
        if !endpoint.mtls {
            return false;
        }
        if self.peer_authentications.is_empty() {
            return true;
        }
        let workload = ProxyClass::workload(endpoint.namespace.clone(), endpoint.labels.clone());
        self.mtls_mode(&workload, Some(endpoint.port)) != MtlsMode::Disable
    }

    pub fn mtls_mode(&self, proxy: &ProxyClass, port: Option<u16>) -> MtlsMode {
        let in_namespace = |ns: &'_ str| {
            let ns = ns.to_owned();
            self.peer_authentications
                .iter()
                .filter(move |pa| pa.namespace == ns)
        };
        let workload = in_namespace(&proxy.namespace).find(|pa| {
            pa.spec
                .selector
                .as_ref()
                .is_some_and(|sel| !sel.match_labels.is_empty() && sel.matches(&proxy.labels))
        });
        let namespace = in_namespace(&proxy.namespace).find(|pa| pa.spec.selector.is_none());
        let mesh = in_namespace(&self.mesh.root_namespace).find(|pa| pa.spec.selector.is_none());
        let port_level = workload.and_then(|pa| {
            let levels = pa.spec.port_level_mtls.as_ref()?;
            levels.get(&port?.to_string()).map(|m| m.mode)
        });
        let mode_of = |pa: Option<&Scoped<PeerAuthentication>>| {
            pa.and_then(|pa| pa.spec.mtls.as_ref()).map(|m| m.mode)
        };
        [
            port_level,
            mode_of(workload),
            mode_of(namespace),
            mode_of(mesh),
        ]
        .into_iter()
        .flatten()
        .find(|m| *m != MtlsMode::Unset)
        .unwrap_or(MtlsMode::Permissive)
    }

    /// Every AuthorizationPolicy, oldest first.
    pub(crate) fn authorization_policies(&self) -> &[Scoped<Authorization>] {
        &self.authorization_policies
    }

    /// Whether any PeerAuthentication exists: istiod sends node proxies its
    /// static STRICT policy only then.
    pub(crate) fn has_peer_authentications(&self) -> bool {
        !self.peer_authentications.is_empty()
    }

    /// The AuthorizationPolicies that apply to `proxy`, in Istio's order: the
    /// root namespace's (mesh-wide), then those of the proxy's namespace; in
    /// each, oldest first.
    pub(crate) fn authorization_policies_for<'a>(
        &'a self,
        proxy: &'a ProxyClass,
    ) -> impl Iterator<Item = &'a Scoped<Authorization>> + 'a {
        let root = self.mesh.root_namespace.as_str();
        let own = (proxy.namespace != root).then_some(proxy.namespace.as_str());
        std::iter::once(root).chain(own).flat_map(move |namespace| {
            self.authorization_policies.iter().filter(move |p| {
                let spec = &p.spec.policy;
                p.namespace == namespace
                    && attachment::attaches(
                        spec.selector.as_ref(),
                        spec.target_ref.as_ref(),
                        spec.target_refs.as_deref(),
                        &p.namespace,
                        proxy,
                        root,
                    )
            })
        })
    }

    /// The RequestAuthentications that apply to a proxy: the root
    /// namespace's, then its own namespace's, each as
    /// [`Self::authorization_policies_for`] selects them.
    pub(crate) fn request_authentications_for<'a>(
        &'a self,
        proxy: &'a ProxyClass,
    ) -> impl Iterator<Item = &'a Scoped<RequestAuthentication>> + 'a {
        let root = self.mesh.root_namespace.as_str();
        let own = (proxy.namespace != root).then_some(proxy.namespace.as_str());
        std::iter::once(root).chain(own).flat_map(move |namespace| {
            self.request_authentications.iter().filter(move |p| {
                p.namespace == namespace
                    && attachment::attaches(
                        p.spec.selector.as_ref(),
                        p.spec.target_ref.as_ref(),
                        p.spec.target_refs.as_deref(),
                        &p.namespace,
                        proxy,
                        root,
                    )
            })
        })
    }

    /// The host an extension provider's `service` names: `<namespace>/<hostname>`,
    /// or a bare hostname that one namespace defines.
    pub(crate) fn provider_host(&self, service: &str) -> Result<String, String> {
        let (namespace, host) = match service.split_once('/') {
            Some((ns, host)) => (Some(ns), host),
            None => (None, service),
        };
        let mut found = self.registry.services.iter().filter(|s| {
            s.hostname.as_str() == host && namespace.is_none_or(|ns| s.namespace == ns)
        });
        let first = found
            .next()
            .ok_or_else(|| format!("service {service:?} is not in the registry"))?;
        if found.any(|s| s.namespace != first.namespace) {
            return Err(format!(
                "service {host:?} is defined in several namespaces: write <namespace>/{host}"
            ));
        }
        Ok(first.hostname.as_str().to_owned())
    }

    /// The Telemetries that configure a proxy, least specific first, as
    /// istiod picks them: the root namespace's first namespace-wide one, its
    /// own namespace's first namespace-wide one, then every one of its
    /// namespace that selects it (by `selector`, or a gateway's `targetRefs`)
    /// in creation order, so a later one has the last word.
    pub(crate) fn telemetries_for<'a>(
        &'a self,
        proxy: &'a ProxyClass,
    ) -> Vec<&'a Scoped<oxmesh_config::telemetry::Telemetry>> {
        let root = self.mesh.root_namespace.as_str();
        let namespace_wide = |t: &&Scoped<oxmesh_config::telemetry::Telemetry>| {
            t.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
                && t.spec.target_ref.is_none()
                && t.spec.target_refs.as_ref().is_none_or(Vec::is_empty)
        };
        let in_namespace = |namespace: &'a str| {
            self.telemetries
                .iter()
                .filter(move |t| t.namespace == namespace)
        };
        let mut found: Vec<_> = in_namespace(root)
            .find(namespace_wide)
            .into_iter()
            .collect();
        if proxy.namespace != root {
            found.extend(in_namespace(&proxy.namespace).find(namespace_wide));
        }
        let selecting = self.telemetries.iter().filter(|t| {
            t.namespace == proxy.namespace
                && !namespace_wide(t)
                && attachment::attaches(
                    t.spec.selector.as_ref(),
                    t.spec.target_ref.as_ref(),
                    t.spec.target_refs.as_deref(),
                    &t.namespace,
                    proxy,
                    root,
                )
        });
        found.extend(selecting);
        found
    }

    /// The key sets to fetch: every JWT rule without inline keys, by its
    /// `jwksUri` or else its issuer's discovery document, with its timeout.
    pub fn jwks_sources(&self) -> Vec<(JwksSource, std::time::Duration)> {
        self.request_authentications
            .iter()
            .flat_map(|ra| &ra.spec.jwt_rules)
            .filter(|rule| rule.jwks.is_empty())
            .map(|rule| {
                let source = JwksSource {
                    issuer: rule.issuer.clone(),
                    uri: rule.jwks_uri().to_owned(),
                };
                let timeout = rule
                    .timeout
                    .map_or(crate::jwks::DEFAULT_TIMEOUT, |t| t.as_std());
                (source, timeout)
            })
            .collect()
    }

    /// The Gateways a gateway proxy implements: those whose selector its labels
    /// satisfy (in any namespace, as Istio does by default).
    pub fn gateways_for<'a>(
        &'a self,
        proxy: &'a ProxyClass,
    ) -> impl Iterator<Item = &'a Scoped<Gateway>> + 'a {
        self.gateways.iter().filter(move |g| {
            !g.spec.selector.is_empty()
                && labels_include(&proxy.labels, &g.spec.selector)
                && g.export_to.visible_in(&proxy.namespace)
        })
    }

    /// The VirtualServices bound to `gateway` through their `gateways` field.
    pub fn virtual_services_bound_to<'a>(
        &'a self,
        gateway: &'a Scoped<Gateway>,
    ) -> impl Iterator<Item = &'a Scoped<VirtualService>> + 'a {
        self.virtual_services.iter().filter(move |vs| {
            vs.export_to.visible_in(&gateway.namespace)
                && vs
                    .spec
                    .gateways
                    .iter()
                    .any(|g| names_gateway(g, &vs.namespace, gateway))
        })
    }

    /// Services whose workloads include this proxy: the ones it serves inbound.
    pub fn services_of<'a>(
        &'a self,
        proxy: &'a ProxyClass,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.registry.services.iter().filter(move |s| {
            s.namespace == proxy.namespace
                && s.selector
                    .as_ref()
                    .is_some_and(|sel| !sel.is_empty() && labels_include(&proxy.labels, sel))
        })
    }
}

/// `istio.io/dry-run` read as Go's `strconv.ParseBool` reads it; a value that
/// does not parse leaves the policy enforced, as in Istio.
fn dry_run(object: &Object) -> bool {
    let Some(value) = object
        .meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN))
    else {
        return false;
    };
    parse_go_bool(value).unwrap_or_else(|| {
        tracing::warn!(
            "AuthorizationPolicy {}/{}: {DRY_RUN} {value:?} is not a boolean; the policy is enforced",
            object.namespace().unwrap_or_default(),
            object.name()
        );
        false
    })
}

fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Exact hosts first, then longer wildcards.
fn specificity(host: &Hostname) -> (bool, std::cmp::Reverse<usize>) {
    (host.is_wildcard(), std::cmp::Reverse(host.as_str().len()))
}

pub fn labels_include(labels: &Labels, wanted: &Labels) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a Sidecar's egress lists (`namespace/host`) name the service.
fn egress_allows(sidecar: &Sidecar, proxy_namespace: &str, service: &Service) -> bool {
    sidecar.egress.iter().flat_map(|e| &e.hosts).any(|entry| {
        let Some((namespace, host)) = entry.split_once('/') else {
            return false;
        };
        let namespace_ok = match namespace {
            "*" => true,
            "." => service.namespace == proxy_namespace,
            "~" => false,
            ns => service.namespace == ns,
        };
        namespace_ok && (host == "*" || service.hostname.subset_of(&Hostname::new(host)))
    })
}

/// Whether `reference`, written in an object in `namespace`, names `gateway`:
/// `<ns>/<name>`, `<name>` (same namespace) or the legacy `<name>.<ns>`.
pub fn names_gateway(reference: &str, namespace: &str, gateway: &Scoped<Gateway>) -> bool {
    let (ns, name) = match reference.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => match reference.split_once('.') {
            Some((name, ns)) => (ns, name),
            None => (namespace, reference),
        },
    };
    name == gateway.name && ns == gateway.namespace
}

/// Istio's creation order: by creationTimestamp, objects without one (files)
/// first as Go's zero time sorts first, then by name and namespace, so the
/// order never depends on how objects arrived.
fn in_creation_order<T, C: Ord>(mut objects: Vec<(C, Scoped<T>)>) -> Vec<Scoped<T>> {
    objects.sort_by(|(a, pa), (b, pb)| {
        (a, &pa.name, &pa.namespace).cmp(&(b, &pb.name, &pb.namespace))
    });
    objects.into_iter().map(|(_, object)| object).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ProxyKind;

    fn context(yaml: &str) -> PushContext {
        let loaded =
            oxmesh_config::load::load_bytes(std::path::Path::new("test.yaml"), yaml.as_bytes());
        assert!(!loaded.has_errors(), "{:?}", loaded.error_messages());
        let objects: Vec<_> = loaded.objects.into_iter().map(|s| s.object).collect();
        PushContext::build(&objects, MeshConfig::default(), Arc::from(&b""[..]), 1)
    }

    fn proxy(kind: ProxyKind, namespace: &str, labels: &[(&str, &str)]) -> ProxyClass {
        ProxyClass {
            kind,
            namespace: namespace.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            grpc: false,
            tproxy: false,
            proven: false,
            locality: Default::default(),
            network: String::new(),
        }
    }

    fn selected(ctx: &PushContext, proxy: &ProxyClass) -> Vec<String> {
        ctx.authorization_policies_for(proxy)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    fn policy(namespace: &str, name: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: {namespace}}}\nspec: {{{extra}}}\n"
        )
    }

    #[test]
    fn authorization_policies_are_selected_as_istio_does() {
        let yaml = [
            policy("foo", "ns-wide", ""),
            policy("foo", "for-a", "selector: {matchLabels: {app: a}}"),
            policy("foo", "for-b", "selector: {matchLabels: {app: b}}"),
            policy("istio-system", "mesh-wide", ""),
            policy(
                "istio-system",
                "mesh-for-a",
                "selector: {matchLabels: {app: a}}",
            ),
            policy("bar", "elsewhere", ""),
            policy(
                "foo",
                "on-gateway",
                "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
            ),
            policy("foo", "on-service", "targetRef: {kind: Service, name: svc}"),
        ]
        .concat();
        let ctx = context(&yaml);
        // Root namespace first; creation order inside (no timestamps: names).
        assert_eq!(
            selected(&ctx, &proxy(ProxyKind::Sidecar, "foo", &[("app", "a")])),
            [
                "istio-system/mesh-for-a",
                "istio-system/mesh-wide",
                "foo/for-a",
                "foo/ns-wide"
            ]
        );
        // A Gateway API gateway also takes policies targeting its Gateway
        // (the rules are `attachment`'s).
        let gateway = proxy(
            ProxyKind::Router,
            "foo",
            &[("gateway.networking.k8s.io/gateway-name", "gw")],
        );
        assert_eq!(
            selected(&ctx, &gateway),
            ["istio-system/mesh-wide", "foo/ns-wide", "foo/on-gateway"]
        );
        // A workload of the root namespace is not counted twice.
        assert_eq!(
            selected(&ctx, &proxy(ProxyKind::Sidecar, "istio-system", &[])),
            ["istio-system/mesh-wide"]
        );
    }

    #[test]
    fn older_policies_come_first() {
        let stamped = |name: &str, at: &str| {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: {name}, namespace: foo, creationTimestamp: '{at}'}}\nspec: {{}}\n"
            )
        };
        let yaml = [
            stamped("a-newest", "2024-01-01T00:00:00Z"),
            stamped("b-oldest", "2020-01-01T00:00:00Z"),
            policy("foo", "z-file", ""),
            policy("foo", "y-file", ""),
        ]
        .concat();
        let ctx = context(&yaml);
        assert_eq!(
            selected(&ctx, &proxy(ProxyKind::Sidecar, "foo", &[])),
            ["foo/y-file", "foo/z-file", "foo/b-oldest", "foo/a-newest"]
        );
    }

    #[test]
    fn dry_run_reads_go_booleans() {
        for (value, expected) in [
            ("1", Some(true)),
            ("t", Some(true)),
            ("TRUE", Some(true)),
            ("True", Some(true)),
            ("0", Some(false)),
            ("F", Some(false)),
            ("false", Some(false)),
            ("yes", None),
            ("tRUE", None),
            ("", None),
        ] {
            assert_eq!(parse_go_bool(value), expected, "{value:?}");
        }
        let ctx = context(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: dry, namespace: foo, annotations: {istio.io/dry-run: 'True'}}\n\
             spec: {}\n",
        );
        let workload = proxy(ProxyKind::Sidecar, "foo", &[]);
        let policy = ctx
            .authorization_policies_for(&workload)
            .next()
            .expect("selected");
        assert!(policy.spec.dry_run);
    }

    #[test]
    fn the_mesh_config_moves_the_root_namespace() {
        let yaml = [
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
             data:\n  mesh: |\n    rootNamespace: mesh-root\n    trustDomainAliases: [old.example]\n"
                .to_owned(),
            policy("mesh-root", "mesh-wide", ""),
            policy("istio-system", "now-local", ""),
        ]
        .concat();
        let ctx = context(&yaml);
        assert_eq!(ctx.mesh.root_namespace, "mesh-root");
        assert_eq!(ctx.mesh.trust_domain_aliases, ["old.example"]);
        assert_eq!(
            selected(&ctx, &proxy(ProxyKind::Sidecar, "foo", &[])),
            ["mesh-root/mesh-wide"]
        );
    }
}
