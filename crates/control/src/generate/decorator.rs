//! Span names: each route that sends to one outbound cluster gets istiod's
//! `decorator.operation`, `<host>:<port><path>` (`reviews.default.svc.cluster.local:9080/*`
//! for a service's default route), which names the client's span and, passed
//! on in `x-envoy-decorator-operation`, the server's.

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Decorator, Route, RouteConfiguration};

pub fn decorate(configs: &mut [RouteConfiguration]) {
    let routes = configs
        .iter_mut()
        .flat_map(|c| c.virtual_hosts.iter_mut())
        .flat_map(|v| v.routes.iter_mut());
    for route in routes.filter(|r| r.decorator.is_none()) {
        if let Some(operation) = operation(route) {
            route.decorator = Some(Decorator {
                operation,
                ..Default::default()
            });
        }
    }
}

/// `<host>:<port><path>` for a route to `outbound|<port>|<subset>|<host>`.
fn operation(route: &Route) -> Option<String> {
    let Some(Action::Route(action)) = &route.action else {
        return None;
    };
    let Some(ClusterSpecifier::Cluster(cluster)) = &action.cluster_specifier else {
        return None;
    };
    let mut parts = cluster.split('|');
    let (direction, port, _subset, host) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if direction != "outbound" {
        return None;
    }
    let path = match route
        .r#match
        .as_ref()
        .and_then(|m| m.path_specifier.as_ref())
    {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".to_owned(),
    };
    Some(format!("{host}:{port}{path}"))
}
