//! LDS: where the proxy accepts, and which filter chain a connection takes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain as EnvoyChain, FilterChainMatch, Listener as EnvoyListener,
    ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use ipnet::IpNet;
use prost::Message;

use super::rbac::{self, RbacFilter};
use super::route::{self, RouteTable};
use super::tls::{self, DownstreamTls};
use super::{ClusterName, ConvertError};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
    Unspecified,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Connections arrived by iptables redirection (the original_dst listener
    /// filter, or `use_original_dst`): chains match on where the client was
    /// really going.
    pub use_original_dst: bool,
    /// Peek for a TLS ClientHello before choosing a chain, except where the
    /// predicate disables it.
    pub inspect_tls: Option<Predicate>,
    /// Peek for an HTTP request line or the HTTP/2 preface (Envoy's
    /// http_inspector), except where the predicate disables it.
    pub inspect_http: Option<Predicate>,
    /// How long to wait for the first bytes; on expiry the connection goes on as
    /// plaintext (server-first protocols send nothing)...
    pub inspect_timeout: Duration,
    /// ...unless this is false, when it is closed.
    pub continue_on_timeout: bool,
    /// Accepts connections addressed to any IP (TPROXY): the socket's local
    /// address is where the client was going.
    pub transparent: bool,
    /// Envoy's original_src listener filter: upstream connections leave from
    /// the client's address, with this socket mark (0: none).
    pub original_source_mark: Option<u32>,
    pub direction: Direction,
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub tls: Option<Arc<DownstreamTls>>,
    /// Network RBAC and ext_authz filters, in order, before the terminal
    /// filter.
    pub authz: Vec<NetworkGuard>,
    /// `envoy.filters.network.sni_cluster`: the TCP proxy's cluster is the
    /// connection's SNI (an AUTO_PASSTHROUGH gateway's
    /// `outbound_.<port>_.<subset>_.<host>`).
    pub sni_cluster: bool,
    pub filter: NetworkFilter,
}

/// The SNI cluster filter's type; it has no settings.
pub const SNI_CLUSTER: &str =
    "type.googleapis.com/envoy.extensions.filters.network.sni_cluster.v3.SniCluster";

/// A network filter that decides whether a connection may go on.
#[derive(Clone, Debug)]
pub enum NetworkGuard {
    Rbac(Arc<RbacFilter>),
    ExtAuthz(Arc<super::ext_authz::ExtAuthz>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tls,
    RawBuffer,
}

#[derive(Debug, Default)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<IpNet>,
    /// SNI: exact names or `*.suffix` wildcards, lower case.
    pub server_names: Vec<String>,
    pub transport: Option<Transport>,
    pub application_protocols: Vec<String>,
}

#[derive(Debug)]
pub enum NetworkFilter {
    Http(HttpManager),
    Tcp(TcpRoute),
}

#[derive(Debug)]
pub struct HttpManager {
    pub stat_prefix: String,
    pub routes: RouteSource,
    /// The client is at the edge (gateways): its address joins
    /// `x-forwarded-for`, as Envoy's `use_remote_address` does.
    pub use_remote_address: bool,
    /// How long a client may take to send request headers (slowloris guard).
    pub request_headers_timeout: Option<Duration>,
    /// How long a connection may wait with no request in flight
    /// (`common_http_protocol_options.idle_timeout`: an hour unless set; 0
    /// turns it off).
    pub idle_timeout: Option<Duration>,
    /// `x-forwarded-for` entries, from the right, put there by proxies the
    /// edge trusts: the client address is the one before them.
    pub xff_num_trusted_hops: u32,
    /// The HTTP filters before the router, in order.
    pub filters: Vec<HttpFilter>,
    /// The CORS filter is in the chain: routes' CORS policies apply.
    pub cors: bool,
    /// Its `access_log`; `None` keeps nothing per request.
    pub access_logs: Option<Arc<crate::access_log::AccessLogs>>,
    /// Its `tracing`; `None`: requests are neither decided nor traced.
    pub tracing: Option<Arc<super::tracing::Tracing>>,
    /// Its `istio.stats` filter, when it changes Istio's standard metrics.
    pub stats: Option<Arc<super::stats::StatsConfig>>,
}

/// An HTTP filter the connection manager runs before routing.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    Rbac(Arc<RbacFilter>),
    Jwt(Arc<super::jwt_authn::JwtAuthn>),
    ExtAuthz(Arc<super::ext_authz::ExtAuthz>),
    /// By the filter's name: routes' per-filter configs are keyed by it.
    LocalRateLimit(Arc<str>, Arc<super::local_rate_limit::LocalRateLimit>),
    GlobalRateLimit(Arc<super::global_rate_limit::GlobalRateLimit>),
}

#[derive(Clone, Debug)]
pub enum RouteSource {
    /// A RouteConfiguration that comes by RDS.
    Rds(String),
    Inline(Arc<RouteTable>),
}

#[derive(Debug)]
pub struct TcpRoute {
    pub stat_prefix: String,
    /// The cluster; for weighted clusters, the first.
    pub cluster: ClusterName,
    /// Weighted clusters (empty: `cluster` alone) and their weights' sum:
    /// each connection picks one.
    pub weighted: Vec<(ClusterName, u32)>,
    pub total_weight: u32,
    /// Close after this long without a byte either way (`idle_timeout`;
    /// Envoy's hour when unset, never with 0).
    pub idle_timeout: Option<Duration>,
    /// Its `access_log`, written when a connection closes.
    pub access_logs: Option<Arc<crate::access_log::AccessLogs>>,
    /// The chain's `istio.stats` filter, when it changes Istio's standard
    /// metrics.
    pub stats: Option<Arc<super::stats::StatsConfig>>,
}

impl TcpRoute {
    /// This route sent to the cluster an AUTO_PASSTHROUGH client's SNI
    /// names. Only an SNI-named (`outbound_.`) cluster may be named: not the
    /// passthrough clusters, nor one that originates TLS with the gateway's
    /// own credentials (Envoy takes any name).
    pub fn for_sni(&self, sni: &str) -> Option<TcpRoute> {
        sni.starts_with("outbound_.").then(|| TcpRoute {
            stat_prefix: self.stat_prefix.clone(),
            cluster: ClusterName::new(sni),
            weighted: Vec::new(),
            total_weight: 0,
            idle_timeout: self.idle_timeout,
            access_logs: self.access_logs.clone(),
            stats: self.stats.clone(),
        })
    }

    /// The cluster for a new connection.
    pub fn pick(&self) -> &ClusterName {
        if self.weighted.is_empty() {
            return &self.cluster;
        }
        let mut point = (crate::balance::random_u64() % u64::from(self.total_weight)) as u32;
        for (name, weight) in &self.weighted {
            if point < *weight {
                return name;
            }
            point -= weight;
        }
        &self.cluster
    }

    /// Every cluster the route may send a connection to.
    pub fn clusters(&self) -> impl Iterator<Item = &ClusterName> {
        std::iter::once(&self.cluster).chain(self.weighted.iter().map(|(name, _)| name))
    }
}

impl Listener {
    /// Takes over `old`'s local rate-limit buckets where a chain of the same
    /// name keeps a limit of the same shape (the filter's own, and its inline
    /// routes'): a push that changes other chains, or resends this one, keeps
    /// the tokens. Envoy keeps unchanged chains' filters too.
    pub fn carry_over(&mut self, old: &Listener) {
        let old_chains: Vec<&FilterChain> =
            old.chains.iter().chain(old.default_chain.iter()).collect();
        for chain in self.chains.iter_mut().chain(self.default_chain.iter_mut()) {
            let previous = old_chains.iter().find(|c| c.name == chain.name);
            if let (NetworkFilter::Http(manager), Some(previous)) = (&mut chain.filter, previous)
                && let NetworkFilter::Http(was) = &previous.filter
            {
                manager.carry_over(was);
            }
        }
    }
}

impl HttpManager {
    fn carry_over(&mut self, old: &HttpManager) {
        for filter in &mut self.filters {
            let HttpFilter::LocalRateLimit(name, config) = filter else {
                continue;
            };
            let previous = old.filters.iter().find_map(|f| match f {
                HttpFilter::LocalRateLimit(n, c) if n == name => Some(c),
                _ => None,
            });
            if let (Some(config), Some(previous)) = (Arc::get_mut(config), previous) {
                config.carry_over(previous);
            }
        }
        if let (RouteSource::Inline(table), RouteSource::Inline(was)) =
            (&mut self.routes, &old.routes)
            && let Some(table) = Arc::get_mut(table)
        {
            table.carry_over(was);
        }
        if let (Some(tracing), Some(was)) = (&mut self.tracing, &old.tracing)
            && let Some(tracing) = Arc::get_mut(tracing)
        {
            tracing.carry_over(was);
        }
    }
}

impl Listener {
    /// Opens the files its access logs write to (conversion only reads the
    /// config): the error names the chain and the log.
    pub fn open_access_logs(&self) -> Result<(), ConvertError> {
        for chain in self.chains.iter().chain(&self.default_chain) {
            let logs = match &chain.filter {
                NetworkFilter::Http(m) => m.access_logs.as_ref(),
                NetworkFilter::Tcp(t) => t.access_logs.as_ref(),
            };
            if let Some(logs) = logs {
                logs.open().map_err(|e| {
                    ConvertError::new(
                        "Listener",
                        &self.name,
                        format!("filter chain {:?}: {e}", chain.name),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Envoy's default wait for listener filters.
const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(15);

pub fn convert(listener: &EnvoyListener) -> Result<Listener, ConvertError> {
    let error = |reason: String| ConvertError::new("Listener", &listener.name, reason);
    let address = super::endpoint::socket_address(listener.address.as_ref()).map_err(error)?;
    let mut inspect_tls = None;
    let mut inspect_http = None;
    let mut original_dst = listener.use_original_dst.is_some_and(|b| b.value);
    let mut original_source_mark = None;
    for filter in &listener.listener_filters {
        let disabled = filter
            .filter_disabled
            .as_ref()
            .map(predicate)
            .transpose()
            .map_err(error)?;
        match filter.name.as_str() {
            "envoy.filters.listener.tls_inspector" => {
                inspect_tls = Some(disabled.unwrap_or(Predicate::Never));
            }
            "envoy.filters.listener.original_dst" if disabled.is_none() => original_dst = true,
            "envoy.filters.listener.original_src" if disabled.is_none() => {
                original_source_mark = Some(original_src_mark(filter).map_err(error)?);
            }
            "envoy.filters.listener.http_inspector" => {
                inspect_http = Some(disabled.unwrap_or(Predicate::Never));
            }
            other => {
                return Err(error(format!(
                    "listener filter {other:?} (or disabling it by predicate) is not supported"
                )));
            }
        }
    }
    let inspect_timeout = match &listener.listener_filters_timeout {
        Some(d) => super::duration(d).map_err(|e| error(e.to_owned()))?,
        None => DEFAULT_INSPECT_TIMEOUT,
    };
    let direction = match listener.traffic_direction {
        1 => Direction::Inbound,
        2 => Direction::Outbound,
        _ => Direction::Unspecified,
    };
    Ok(Listener {
        name: listener.name.clone(),
        address,
        use_original_dst: original_dst,
        inspect_tls,
        inspect_http,
        inspect_timeout,
        continue_on_timeout: listener.continue_on_listener_filters_timeout,
        transparent: listener.transparent.is_some_and(|b| b.value),
        original_source_mark,
        direction,
        chains: listener
            .filter_chains
            .iter()
            .map(chain)
            .collect::<Result<_, _>>()
            .map_err(error)?,
        default_chain: listener
            .default_filter_chain
            .as_ref()
            .map(chain)
            .transpose()
            .map_err(error)?,
    })
}

/// The mark of an original_src filter's config; `bind_port` is refused, as
/// Envoy leaves it unimplemented too.
fn original_src_mark(filter: &ListenerFilter) -> Result<u32, String> {
    let Some(listener_filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Ok(0);
    };
    let config = OriginalSrc::decode(any.value.as_slice())
        .map_err(|e| format!("original_src config: {e}"))?;
    if config.bind_port {
        return Err("original_src bind_port is not supported".to_owned());
    }
    Ok(config.mark)
}

fn chain(c: &EnvoyChain) -> Result<FilterChain, String> {
    let context = |e: String| format!("filter chain {:?}: {e}", c.name);
    let matcher = chain_match(c.filter_chain_match.as_ref()).map_err(context)?;
    let tls = c
        .transport_socket
        .as_ref()
        .map(tls::downstream)
        .transpose()
        .map_err(context)?
        .flatten()
        .map(Arc::new);
    // Guards (RBAC, ext_authz), then one terminal filter (connection manager
    // or TCP proxy).
    let Some((last, before)) = c.filters.split_last() else {
        return Err(context("a filter chain without filters".to_owned()));
    };
    let is_type = |f: &Filter, type_url: &str| matches!(&f.config_type, Some(FilterConfig::TypedConfig(any)) if any.type_url == type_url);
    let sni_cluster = before.iter().any(|f| is_type(f, SNI_CLUSTER));
    let authz = before
        .iter()
        .filter(|f| !is_type(f, SNI_CLUSTER) && !is_type(f, super::stats::TYPE))
        .map(network_guard)
        .collect::<Result<_, _>>()
        .map_err(context)?;
    let mut filter = network_filter(last).map_err(context)?;
    // The TCP chain's `istio.stats`; a connection manager has its own.
    if let NetworkFilter::Tcp(route) = &mut filter
        && let Some(stats) = before.iter().find(|f| is_type(f, super::stats::TYPE))
    {
        route.stats = stats_filter(stats).map_err(context)?;
    }
    if sni_cluster && !matches!(filter, NetworkFilter::Tcp(_)) {
        return Err(context(
            "the SNI cluster filter needs a TCP proxy after it".to_owned(),
        ));
    }
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        tls,
        authz,
        sni_cluster,
        filter,
    })
}

fn chain_match(m: Option<&FilterChainMatch>) -> Result<ChainMatch, String> {
    let Some(m) = m else {
        return Ok(ChainMatch::default());
    };
    if !m.source_prefix_ranges.is_empty() || !m.source_ports.is_empty() {
        return Err("matching on the source is not supported yet".to_owned());
    }
    let transport = match m.transport_protocol.as_str() {
        "" => None,
        "tls" => Some(Transport::Tls),
        "raw_buffer" => Some(Transport::RawBuffer),
        other => return Err(format!("unknown transport protocol {other:?}")),
    };
    Ok(ChainMatch {
        destination_port: m
            .destination_port
            .as_ref()
            .map(|p| {
                u16::try_from(p.value).map_err(|_| format!("port {} is out of range", p.value))
            })
            .transpose()?,
        prefix_ranges: m
            .prefix_ranges
            .iter()
            .map(|r| {
                let ip: IpAddr = r
                    .address_prefix
                    .parse()
                    .map_err(|_| format!("{:?} is not an IP", r.address_prefix))?;
                let len = r
                    .prefix_len
                    .as_ref()
                    .map_or(if ip.is_ipv4() { 32 } else { 128 }, |l| {
                        u8::try_from(l.value).unwrap_or(u8::MAX)
                    });
                IpNet::new(ip, len).map_err(|e| format!("{ip}/{len}: {e}"))
            })
            .collect::<Result<_, String>>()?,
        transport,
        server_names: m
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        application_protocols: m.application_protocols.clone(),
    })
}

/// An `istio.stats` filter's config, kept only when it changes the metrics.
fn stats_filter(f: &Filter) -> Result<Option<Arc<super::stats::StatsConfig>>, String> {
    let Some(FilterConfig::TypedConfig(any)) = &f.config_type else {
        return Ok(None);
    };
    let stats = super::stats::convert(any).map_err(|e| format!("filter {:?}: {e}", f.name))?;
    Ok(stats
        .changes(&super::stats::StandardMetric::TCP)
        .then(|| Arc::new(stats)))
}

/// A network filter before the terminal one: RBAC or ext_authz.
fn network_guard(f: &Filter) -> Result<NetworkGuard, String> {
    match &f.config_type {
        Some(FilterConfig::TypedConfig(any)) if any.type_url == rbac::NETWORK_TYPE => {
            rbac::network_filter(any).map(|r| NetworkGuard::Rbac(Arc::new(r)))
        }
        Some(FilterConfig::TypedConfig(any)) if any.type_url == super::ext_authz::NETWORK_TYPE => {
            super::ext_authz::network_filter(any).map(|e| NetworkGuard::ExtAuthz(Arc::new(e)))
        }
        _ => Err(format!(
            "network filter {:?} before the last one is not supported (only RBAC and ext_authz are)",
            f.name
        )),
    }
}

fn network_filter(f: &Filter) -> Result<NetworkFilter, String> {
    let Some(FilterConfig::TypedConfig(any)) = &f.config_type else {
        return Err(format!("filter {:?} has no typed config", f.name));
    };
    match any.type_url.as_str() {
        HCM => http_manager(
            &HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| e.to_string())?,
        )
        .map(NetworkFilter::Http),
        TCP_PROXY => {
            let tcp = TcpProxy::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
            tcp_route(&tcp).map(NetworkFilter::Tcp)
        }
        other => Err(format!("network filter {other} is not supported")),
    }
}

fn http_manager(hcm: &HttpConnectionManager) -> Result<HttpManager, String> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    let mut filters = Vec::new();
    let mut cors = false;
    let mut stats = None;
    if let Some((_, before_last)) = hcm.http_filters.split_last()
        && let Some(router) = before_last.iter().find(|f| is_router(f))
    {
        return Err(format!(
            "the router filter {:?} must be the last HTTP filter",
            router.name
        ));
    }
    for filter in &hcm.http_filters {
        let any = match &filter.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let unwrapped = any
            .map(oxmesh_xds::json::unwrap_typed_struct)
            .transpose()
            .map_err(|e| format!("HTTP filter {:?}: {e}", filter.name))?;
        let any = unwrapped.as_deref();
        match any.map(|a| a.type_url.as_str()) {
            Some(ROUTER) => {}
            // Policies come per route (an empty filter config, as istiod
            // writes it).
            Some(super::cors::FILTER_TYPE) => cors = true,
            // Faults come per route; one configured for the whole listener
            // would apply everywhere, which is not supported.
            Some(FAULT) => {
                let any = any.ok_or("the fault filter has no config")?;
                if !super::fault::convert(any)?.is_empty() {
                    return Err(
                        "listener-wide faults are not supported; put them on routes".to_owned()
                    );
                }
            }
            Some(super::ext_authz::HTTP_TYPE) => {
                let any = any.ok_or("the ext_authz filter has no config")?;
                let converted = super::ext_authz::http_filter(any)
                    .map_err(|e| format!("HTTP filter {:?}: {e}", filter.name))?;
                filters.push(HttpFilter::ExtAuthz(Arc::new(converted)));
            }
            Some(super::jwt_authn::TYPE) => {
                let any = any.ok_or("the JWT filter has no config")?;
                let converted = super::jwt_authn::convert(any)
                    .map_err(|e| format!("HTTP filter {:?}: {e}", filter.name))?;
                filters.push(HttpFilter::Jwt(Arc::new(converted)));
            }
            Some(rbac::HTTP_TYPE) => {
                let any = any.ok_or("the RBAC filter has no config")?;
                let converted = rbac::http_filter(any)
                    .map_err(|e| format!("HTTP filter {:?}: {e}", filter.name))?;
                filters.push(HttpFilter::Rbac(Arc::new(converted)));
            }
            Some(super::local_rate_limit::TYPE) => {
                let any = any.ok_or("the local rate limit filter has no config")?;
                let converted = super::local_rate_limit::convert(any)
                    .map_err(|e| format!("HTTP filter {:?}: {e}", filter.name))?;
                filters.push(HttpFilter::LocalRateLimit(
                    Arc::from(filter.name.as_str()),
                    Arc::new(converted),
                ));
            }
            Some(super::stats::TYPE) => {
                let any = any.ok_or("the stats filter has no config")?;
                let converted = super::stats::convert(any)
                    .map_err(|e| format!("HTTP filter {:?}: {e}", filter.name))?;
                stats = converted
                    .changes(&super::stats::StandardMetric::HTTP)
                    .then(|| Arc::new(converted));
            }
            Some(super::global_rate_limit::TYPE) => {
                let any = any.ok_or("the rate limit filter has no config")?;
                let converted = super::global_rate_limit::convert(any)
                    .map_err(|e| format!("HTTP filter {:?}: {e}", filter.name))?;
                filters.push(HttpFilter::GlobalRateLimit(Arc::new(converted)));
            }
            // Envoy skips an optional filter it does not know.
            _ if filter.is_optional => {}
            _ => {
                return Err(format!(
                    "HTTP filter {:?} is not supported yet",
                    filter.name
                ));
            }
        }
    }
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => RouteSource::Rds(rds.route_config_name.clone()),
        Some(RouteSpecifier::RouteConfig(config)) => {
            RouteSource::Inline(Arc::new(route::convert(config).map_err(|e| e.reason)?))
        }
        _ => return Err("routes must be inline or by RDS".to_owned()),
    };
    Ok(HttpManager {
        stat_prefix: hcm.stat_prefix.clone(),
        routes,
        use_remote_address: hcm.use_remote_address.as_ref().is_some_and(|b| b.value),
        request_headers_timeout: hcm
            .request_headers_timeout
            .as_ref()
            .map(super::duration)
            .transpose()?
            .filter(|d| !d.is_zero()),
        idle_timeout: http_idle_timeout(hcm)?,
        xff_num_trusted_hops: hcm.xff_num_trusted_hops,
        filters,
        cors,
        access_logs: super::access_log::convert(&hcm.access_log)?,
        tracing: hcm
            .tracing
            .as_ref()
            .map(super::tracing::convert)
            .transpose()?
            .map(Arc::new),
        stats,
    })
}

/// Envoy's default for an HTTP connection with no request in flight.
const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

fn http_idle_timeout(hcm: &HttpConnectionManager) -> Result<Option<Duration>, String> {
    let set = hcm
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.idle_timeout.as_ref());
    match set {
        None => Ok(Some(HTTP_IDLE_TIMEOUT)),
        Some(d) => {
            let d = super::duration(d).map_err(|e| format!("idle_timeout: {e}"))?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

fn is_router(
    filter: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
) -> bool {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    matches!(&filter.config_type, Some(ConfigType::TypedConfig(any)) if any.type_url == ROUTER)
}

fn tcp_route(tcp: &TcpProxy) -> Result<TcpRoute, String> {
    let stat_prefix = tcp.stat_prefix.clone();
    let access_logs = super::access_log::convert(&tcp.access_log)?;
    let idle_timeout = match &tcp.idle_timeout {
        None => Some(crate::idle::DEFAULT),
        Some(d) => Some(super::duration(d).map_err(|e| format!("idle_timeout: {e}"))?)
            .filter(|d| !d.is_zero()),
    };
    match &tcp.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => Ok(TcpRoute {
            stat_prefix,
            cluster: ClusterName::new(name),
            weighted: Vec::new(),
            total_weight: 0,
            idle_timeout,
            access_logs,
            stats: None,
        }),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let weighted: Vec<(ClusterName, u32)> = w
                .clusters
                .iter()
                .map(|c| (ClusterName::new(&c.name), c.weight))
                .collect();
            let total = weighted
                .iter()
                .try_fold(0u32, |sum, (_, weight)| sum.checked_add(*weight))
                .ok_or("weighted TCP clusters whose weights sum past 4294967295")?;
            let first = weighted
                .first()
                .map(|(name, _)| name.clone())
                .ok_or("weighted TCP clusters without a cluster")?;
            if total == 0 {
                return Err("weighted TCP clusters whose weights sum to 0".to_owned());
            }
            Ok(TcpRoute {
                stat_prefix,
                cluster: first,
                weighted,
                total_weight: total,
                idle_timeout,
                access_logs,
                stats: None,
            })
        }
        None => Err("a TCP proxy without a cluster".to_owned()),
    }
}

/// When a listener filter is disabled: Envoy's ListenerFilterChainMatchPredicate
/// over the destination port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    Never,
    Always,
    /// `[start, end)`.
    PortRange(u16, u16),
    Not(Box<Predicate>),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
}

impl Predicate {
    pub fn holds(&self, port: u16) -> bool {
        match self {
            Predicate::Never => false,
            Predicate::Always => true,
            Predicate::PortRange(start, end) => (*start..*end).contains(&port),
            Predicate::Not(p) => !p.holds(port),
            Predicate::Or(ps) => ps.iter().any(|p| p.holds(port)),
            Predicate::And(ps) => ps.iter().all(|p| p.holds(port)),
        }
    }
}

fn predicate(
    p: &envoy_types::pb::envoy::config::listener::v3::ListenerFilterChainMatchPredicate,
) -> Result<Predicate, String> {
    use envoy_types::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::Rule;
    let port = |v: i32| u16::try_from(v).map_err(|_| format!("port {v} is out of range"));
    Ok(match &p.rule {
        Some(Rule::AnyMatch(true)) => Predicate::Always,
        Some(Rule::AnyMatch(false)) | None => Predicate::Never,
        Some(Rule::DestinationPortRange(r)) => Predicate::PortRange(port(r.start)?, port(r.end)?),
        Some(Rule::NotMatch(inner)) => Predicate::Not(Box::new(predicate(inner)?)),
        Some(Rule::OrMatch(set)) => {
            Predicate::Or(set.rules.iter().map(predicate).collect::<Result<_, _>>()?)
        }
        Some(Rule::AndMatch(set)) => {
            Predicate::And(set.rules.iter().map(predicate).collect::<Result<_, _>>()?)
        }
    })
}

/// What a connection offers for chain selection.
#[derive(Debug, Default)]
pub struct ConnectionFacts<'a> {
    pub destination: Option<SocketAddr>,
    pub sni: Option<&'a str>,
    pub transport: Option<Transport>,
    pub alpn: &'a [String],
}

impl Listener {
    /// The chain called `name` (Istio names every chain of a listener apart).
    pub fn chain_named(&self, name: &str) -> Option<&FilterChain> {
        self.chains
            .iter()
            .chain(self.default_chain.iter())
            .find(|c| c.name == name)
    }

    /// Envoy's filter-chain selection: at each step (destination port, destination
    /// IP, server name, transport protocol, application protocols) the most specific criterion
    /// that fits narrows the candidates; a chain that leaves a step empty fits any.
    pub fn select(&self, facts: &ConnectionFacts<'_>) -> Option<&FilterChain> {
        let mut candidates: Vec<&FilterChain> = self.chains.iter().collect();
        let port = facts.destination.map(|d| d.port());
        candidates = narrow(candidates, |c| match c.matcher.destination_port {
            None => Some(0),
            Some(p) => (Some(p) == port).then_some(1),
        });
        let ip = facts.destination.map(|d| d.ip());
        candidates = narrow(candidates, |c| {
            if c.matcher.prefix_ranges.is_empty() {
                return Some(0);
            }
            let ip = ip?;
            c.matcher
                .prefix_ranges
                .iter()
                .filter(|n| n.contains(&ip))
                .map(|n| usize::from(n.prefix_len()) + 1)
                .max()
        });
        let sni = facts.sni.map(str::to_ascii_lowercase);
        candidates = narrow(candidates, |c| {
            if c.matcher.server_names.is_empty() {
                return Some(0);
            }
            let sni = sni.as_deref()?;
            c.matcher
                .server_names
                .iter()
                .filter_map(|name| server_name_score(name, sni))
                .max()
        });
        candidates = narrow(candidates, |c| match c.matcher.transport {
            None => Some(0),
            Some(t) => (Some(t) == facts.transport).then_some(1),
        });
        candidates = narrow(candidates, |c| {
            if c.matcher.application_protocols.is_empty() {
                Some(0)
            } else {
                c.matcher
                    .application_protocols
                    .iter()
                    .any(|p| facts.alpn.contains(p))
                    .then_some(1)
            }
        });
        candidates.first().copied().or(self.default_chain.as_ref())
    }
}

/// An exact name beats any wildcard; a longer wildcard suffix beats a shorter.
fn server_name_score(name: &str, sni: &str) -> Option<usize> {
    if name == sni {
        Some(usize::MAX)
    } else if let Some(suffix) = name.strip_prefix('*') {
        (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len() + 1)
    } else {
        None
    }
}

/// Keeps the candidates with the best score; `None` means the chain does not fit.
fn narrow(
    candidates: Vec<&FilterChain>,
    score: impl Fn(&FilterChain) -> Option<usize>,
) -> Vec<&FilterChain> {
    let scored: Vec<(usize, &FilterChain)> = candidates
        .into_iter()
        .filter_map(|c| score(c).map(|s| (s, c)))
        .collect();
    let best = scored.iter().map(|(s, _)| *s).max();
    scored
        .into_iter()
        .filter(|(s, _)| Some(*s) == best)
        .map(|(_, c)| c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sni_names_only_sni_named_clusters() {
        let route = TcpRoute {
            stat_prefix: "BlackHoleCluster".to_owned(),
            cluster: ClusterName::new("BlackHoleCluster"),
            weighted: Vec::new(),
            total_weight: 0,
            idle_timeout: None,
            access_logs: None,
            stats: None,
        };
        let sni = "outbound_.8000_._.httpbin.default.svc.cluster.local";
        let picked = route.for_sni(sni).map(|r| r.pick().clone());
        assert_eq!(picked, Some(ClusterName::new(sni)));
        for refused in [
            "outbound|8000||httpbin.default.svc.cluster.local",
            "PassthroughCluster",
            "InboundPassthroughCluster",
        ] {
            assert!(route.for_sni(refused).is_none(), "{refused}");
        }
    }
}
