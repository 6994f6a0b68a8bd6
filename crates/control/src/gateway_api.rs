//! The Kubernetes Gateway API as Istio implements it (`gatewayClassName:
//! istio`, controller `istio.io/gateway-controller`). Every listener of a
//! Gateway becomes an Istio Gateway with one server, and every route a
//! VirtualService bound to the listeners that accept it, so the generators
//! serve both APIs one way, as istiod's conversion does. The status each
//! object should carry (Istio's conditions, reasons and messages) is worked
//! out alongside.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use oxmesh_config::gateway_api::ReferenceGrant;
use oxmesh_config::hostname::Hostname;
use oxmesh_config::kind::Kind;
use oxmesh_config::networking::gateway::Gateway;
use oxmesh_config::networking::virtual_service::VirtualService;
use oxmesh_config::object::{Object, Resource};
use oxmesh_config::selector::Labels;
use oxmesh_config::service::Service;

use crate::push_context::Scoped;
use crate::registry::Registry;

mod addresses;
mod backend;
mod listener;
mod route;
mod rule;
mod status;

pub use status::{Body, Condition, ListenerStatus, ObjectStatus, ParentStatus};

pub use oxmesh_config::gateway_api::{CLASS, GROUP};
pub const CONTROLLER: &str = "istio.io/gateway-controller";

/// What the Gateway API objects amount to.
#[derive(Debug, Default)]
pub struct Translation {
    pub gateways: Vec<Scoped<Gateway>>,
    pub virtual_services: Vec<Scoped<VirtualService>>,
    pub statuses: Vec<ObjectStatus>,
    /// (Gateways' namespace, `kubernetes-gateway://ns/name`): the Secrets of
    /// other namespaces a ReferenceGrant lets those Gateways serve.
    pub granted_credentials: BTreeSet<(String, String)>,
}

/// Everything a translation looks things up in.
struct World<'a> {
    domain: &'a str,
    registry: &'a Registry,
    /// Kubernetes Services by namespace and name, indexed once: every
    /// backend and parent reference looks one up.
    services: HashMap<(&'a str, &'a str), &'a Arc<Service>>,
    /// Every namespace with its labels, `kubernetes.io/metadata.name`
    /// included as the API server sets it.
    namespaces: BTreeMap<&'a str, Labels>,
    grants: Vec<(&'a str, &'a ReferenceGrant)>,
    /// Secrets by (namespace, name).
    secrets: BTreeMap<(&'a str, &'a str), &'a Object>,
    /// GatewayClasses' controllers, by class name.
    classes: BTreeMap<&'a str, &'a str>,
}

impl World<'_> {
    /// Whether this controller serves Gateways of `class`: a GatewayClass of
    /// that name names it, or there is none and the class is `istio`, which
    /// Istio installs.
    fn serves_class(&self, class: &str) -> bool {
        class_served(self.classes.get(class).copied(), class)
    }

    /// The Kubernetes Service `namespace/name`, if the registry has it.
    fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(&(namespace, name)).copied()
    }

    fn service_by_host(&self, host: &str) -> Option<&Arc<Service>> {
        self.registry.services_for(&Hostname::new(host)).next()
    }

    /// Whether a ReferenceGrant in `to_namespace` lets a `from_kind` in
    /// `from_namespace` refer to the `to_kind` named `to_name`.
    fn granted(
        &self,
        from_kind: &str,
        from_namespace: &str,
        (to_group, to_kind): (&str, &str),
        to_namespace: &str,
        to_name: &str,
    ) -> bool {
        self.grants
            .iter()
            .filter(|(ns, _)| *ns == to_namespace)
            .any(|(_, grant)| {
                grant.from.iter().any(|f| {
                    f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace
                }) && grant.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
            })
    }
}

/// Whether this controller serves Gateways of `class` among `objects` (a
/// GatewayClass naming Istio's controller, or `istio` when none says
/// otherwise).
pub fn serves_class(objects: &[Arc<Object>], class: &str) -> bool {
    let named = objects.iter().find_map(|o| match &o.resource {
        Resource::GatewayClass(c) if o.name() == class => Some(c.controller_name.as_str()),
        _ => None,
    });
    class_served(named, class)
}

/// Given the controller the GatewayClass `class` names, if there is one.
fn class_served(controller: Option<&str>, class: &str) -> bool {
    match controller {
        Some(controller) => controller == CONTROLLER,
        None => class == CLASS,
    }
}

/// Translates the Gateway API objects among `objects`.
pub fn translate(objects: &[Arc<Object>], registry: &Registry, domain: &str) -> Translation {
    let mut world = World {
        domain,
        registry,
        services: registry
            .services
            .iter()
            .filter(|s| s.source.kind == Kind::Service)
            .map(|s| ((s.namespace.as_str(), s.source.name.as_str()), s))
            .collect(),
        namespaces: BTreeMap::new(),
        grants: Vec::new(),
        secrets: BTreeMap::new(),
        classes: BTreeMap::new(),
    };
    for object in objects {
        let namespace = object.namespace().unwrap_or_default();
        match &object.resource {
            Resource::Namespace(_) => {
                let mut labels = object.meta.labels.clone().unwrap_or_default();
                labels.insert(
                    "kubernetes.io/metadata.name".to_owned(),
                    object.name().to_owned(),
                );
                world.namespaces.insert(object.name(), labels);
            }
            Resource::ReferenceGrant(grant) => world.grants.push((namespace, grant)),
            Resource::GatewayClass(class) => {
                world.classes.insert(object.name(), &class.controller_name);
            }
            Resource::Secret(_) => {
                world.secrets.insert((namespace, object.name()), object);
            }
            _ => {}
        }
    }
    let mut translation = Translation::default();
    class_statuses(objects, &mut translation);
    let mut gateways = listener::translate(&world, objects, &mut translation);
    route::translate(&world, objects, &mut gateways, &mut translation);
    listener::report(gateways, &mut translation);
    translation.granted_credentials = granted_credentials(&translation.gateways);
    translation
}

/// The `kubernetes-gateway://` names translated Gateways use: translation
/// wrote them only where a ReferenceGrant allows.
fn granted_credentials(gateways: &[Scoped<Gateway>]) -> BTreeSet<(String, String)> {
    gateways
        .iter()
        .flat_map(|g| {
            g.spec
                .servers
                .iter()
                .filter_map(|s| s.tls.as_ref())
                .flat_map(|tls| tls.credential_refs())
                .filter(|n| n.starts_with(crate::credentials::KUBERNETES_GATEWAY))
                .map(|n| (g.namespace.clone(), n.to_owned()))
        })
        .collect()
}

/// The GatewayClasses this controller implements are accepted.
fn class_statuses(objects: &[Arc<Object>], out: &mut Translation) {
    for object in objects {
        let Resource::GatewayClass(class) = &object.resource else {
            continue;
        };
        if class.controller_name != CONTROLLER {
            continue;
        }
        out.statuses.push(ObjectStatus {
            kind: Kind::GatewayClass,
            api_version: object.api_version.clone(),
            namespace: String::new(),
            name: object.name().to_owned(),
            generation: object.meta.generation.unwrap_or(1),
            body: Body::Class {
                conditions: vec![Condition::holds(
                    "Accepted",
                    "Accepted",
                    "Handled by Istio controller",
                )],
            },
        });
    }
}

/// Whether `labels` satisfy a Kubernetes label selector.
fn selects(selector: &LabelSelector, labels: &Labels) -> bool {
    let wanted = selector.match_labels.iter().flatten();
    let expressions = selector.match_expressions.iter().flatten();
    wanted.into_iter().all(|(k, v)| labels.get(k) == Some(v))
        && expressions.into_iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let have = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// The key objects are ordered by, as istiod orders them: creationTimestamp
/// (none first, as Go's zero time), then namespace and name.
fn creation_order(object: &Object) -> (Option<Time>, String, String) {
    (
        object.meta.creation_timestamp.clone(),
        object.namespace().unwrap_or_default().to_owned(),
        object.name().to_owned(),
    )
}
