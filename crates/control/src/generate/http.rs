//! The pieces every HTTP listener is made of: the connection manager with its
//! router filter, its routes by RDS, and the filter wrappers listeners take.

use envoy_types::pb::envoy::config::listener::v3::{Filter, ListenerFilter, filter, listener_filter};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_filter,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use prost::{Message, Name};

use super::wire;

/// Routes fetched over ADS by name.
pub fn rds(route_config_name: String) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(wire::ads()),
        route_config_name,
    })
}

/// The router, always the last HTTP filter.
pub fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    }
}

/// Where a connection manager sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A sidecar's outbound: VirtualService faults apply here.
    Outbound,
    /// A sidecar's inbound, in front of its app.
    Inbound,
    /// A gateway: the peer is the client (or, behind this many trusted
    /// proxies, the `x-forwarded-for` entry they name), and faults apply.
    Edge { trusted_hops: u32 },
}

/// The fault filter, before the router where routes may inject faults.
pub fn fault() -> HttpFilter {
    HttpFilter {
        name: FAULT_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            HttpFault::default(),
        ))),
        ..Default::default()
    }
}

/// The name per-route fault configs are keyed by.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// The CORS filter (no config of its own: policies come per route), after
/// the fault filter as istiod places it.
pub fn cors() -> HttpFilter {
    HttpFilter {
        name: CORS_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Cors::default(),
        ))),
        ..Default::default()
    }
}

/// The name per-route CORS policies are keyed by.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// A connection manager serving `routes`. `guards` (authentication and
/// authorization, in the order they must run) go first, before the fault
/// filter and the router, where Istio puts them; outbound has none.
pub fn manager(
    stat_prefix: String,
    routes: RouteSpecifier,
    side: Side,
    guards: Vec<HttpFilter>,
) -> HttpConnectionManager {
    let mut http_filters = guards;
    if side != Side::Inbound {
        http_filters.push(fault());
        http_filters.push(cors());
    }
    http_filters.push(router());
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix,
        http_filters,
        use_remote_address: Some(BoolValue {
            value: matches!(side, Side::Edge { .. }),
        }),
        xff_num_trusted_hops: match side {
            Side::Edge { trusted_hops } => trusted_hops,
            _ => 0,
        },
        route_specifier: Some(routes),
        ..Default::default()
    }
}

/// A network filter in a listener's chain.
pub fn network_filter<T: Message + Name>(name: &str, config: T) -> Filter {
    Filter {
        name: name.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
    }
}

/// The connection manager as a chain's network filter.
pub fn manager_filter(
    stat_prefix: String,
    routes: RouteSpecifier,
    side: Side,
    guards: Vec<HttpFilter>,
) -> Filter {
    network_filter(
        "envoy.filters.network.http_connection_manager",
        manager(stat_prefix, routes, side, guards),
    )
}

pub fn listener_filter<T: Message + Name>(name: &str, config: T) -> ListenerFilter {
    ListenerFilter {
        name: name.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}
