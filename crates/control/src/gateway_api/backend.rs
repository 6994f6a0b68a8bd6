//! Where a route's `backendRefs` (and a mirror's `backendRef`) lead: a
//! Service by name (same namespace, or another with a ReferenceGrant), or a
//! ServiceEntry host (`networking.istio.io/Hostname`), as istiod resolves them.

use oxmesh_config::networking::virtual_service::{Destination, PortSelector};

use super::World;

/// The host every refused backend is sent to: no service can have it (the
/// `.invalid` top-level domain is reserved), so its share of requests gets
/// the Gateway API's 500 and never reaches a Service the route may not use.
pub(super) const REFUSED: &str = "refused-backend.invalid";

/// A backend as any route kind names it.
pub(super) struct Reference<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// Why a reference does not resolve: the ResolvedRefs reason and message.
#[derive(Clone, Debug)]
pub(super) struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

impl Unresolved {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// The destination, and what is wrong with the reference if anything. A
/// backend that is merely missing keeps its own host (requests get 500
/// until it exists); one that may not or cannot be used goes to
/// [`REFUSED`].
pub(super) fn destination(
    world: &World<'_>,
    route_kind: &str,
    route_namespace: &str,
    to: &Reference<'_>,
    enforce_grants: bool,
) -> (Destination, Option<Unresolved>) {
    match resolve(world, route_kind, route_namespace, to, enforce_grants) {
        Ok((host, missing)) => (
            Destination {
                host,
                subset: String::new(),
                port: to
                    .port
                    .and_then(|p| u32::try_from(p).ok())
                    .map(|number| PortSelector { number }),
            },
            missing,
        ),
        Err(why) => (refused(), Some(why)),
    }
}

/// The destination of what must go nowhere.
pub(super) fn refused() -> Destination {
    Destination {
        host: REFUSED.to_owned(),
        subset: String::new(),
        port: Some(PortSelector { number: 1 }),
    }
}

fn resolve(
    world: &World<'_>,
    route_kind: &str,
    route_namespace: &str,
    to: &Reference<'_>,
    enforce_grants: bool,
) -> Result<(String, Option<Unresolved>), Unresolved> {
    let group = to.group.unwrap_or("");
    let kind = to.kind.unwrap_or("Service");
    let namespace = to.namespace.unwrap_or(route_namespace);
    match (group, kind) {
        ("" | "core", "Service") => {
            if to.name.contains('.') {
                return Err(Unresolved::new(
                    "InvalidDestination",
                    "service name invalid; the name of the Service must be used, not the hostname."
                        .to_owned(),
                ));
            }
            if enforce_grants
                && namespace != route_namespace
                && !world.granted(
                    route_kind,
                    route_namespace,
                    ("", "Service"),
                    namespace,
                    to.name,
                )
            {
                return Err(Unresolved::new(
                    "RefNotPermitted",
                    format!(
                        "backendRef {}/{namespace} not accessible to a {route_kind} in namespace {route_namespace:?} (missing a ReferenceGrant?)",
                        to.name
                    ),
                ));
            }
            if to.port.is_none() {
                return Err(Unresolved::new(
                    "InvalidDestination",
                    "port is required in backendRef".to_owned(),
                ));
            }
            let host = format!("{}.{namespace}.svc.{}", to.name, world.domain);
            let missing = world
                .service(namespace, to.name)
                .is_none()
                .then(|| Unresolved::new("BackendNotFound", format!("backend({host}) not found")));
            Ok((host, missing))
        }
        ("networking.istio.io", "Hostname") => {
            if to.namespace.is_some() {
                return Err(Unresolved::new(
                    "InvalidDestination",
                    "namespace may not be set with Hostname type".to_owned(),
                ));
            }
            let missing = world.service_by_host(to.name).is_none().then(|| {
                Unresolved::new("BackendNotFound", format!("backend({}) not found", to.name))
            });
            Ok((to.name.to_owned(), missing))
        }
        _ => Err(Unresolved::new(
            "InvalidKind",
            format!("referencing unsupported backendRef: group {group:?} kind {kind:?}"),
        )),
    }
}
