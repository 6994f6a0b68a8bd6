//! CDS: how to reach an upstream (discovery, balancing, TLS, HTTP version).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{Http2ProtocolOptions, TransportSocket};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;

use super::endpoint::{self, Endpoint, EndpointSet};
use super::tls::{self, UpstreamTls};
use super::{ClusterName, ConvertError};
use crate::breaker::{Limits, Load, Retries};
use crate::metrics::ServiceLabels;

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Debug)]
pub enum Discovery {
    /// Endpoints come by EDS under this name.
    Eds(String),
    /// Endpoints listed in the cluster itself (their runtime state lives as
    /// long as this version of the cluster).
    Static(Arc<crate::state::Balanced>),
    /// Host names resolved in the background (STRICT_DNS and LOGICAL_DNS).
    Dns(Arc<crate::dns::DnsCluster>),
    /// Wherever the client was going (PassthroughCluster, inbound clusters).
    OriginalDst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Power of two choices on active requests.
    LeastRequest,
    Random,
    /// Consistent hashing on a ring of at least this many entries (Envoy: 1024).
    RingHash {
        minimum_ring_size: u64,
    },
    /// Maglev's lookup table of this (prime) size (Envoy: 65537).
    Maglev {
        table_size: u64,
    },
}

/// Which TLS to use towards an endpoint: Istio's auto mTLS is a transport socket
/// match on the endpoint's `tlsMode: istio` label.
#[derive(Debug, Default)]
pub struct TlsSelection {
    pub mesh_endpoints: Option<Arc<UpstreamTls>>,
    pub other_endpoints: Option<Arc<UpstreamTls>>,
}

impl TlsSelection {
    pub fn for_endpoint(&self, endpoint_is_mesh: bool) -> Option<&Arc<UpstreamTls>> {
        if endpoint_is_mesh {
            self.mesh_endpoints.as_ref()
        } else {
            self.other_endpoints.as_ref()
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub name: ClusterName,
    pub discovery: Discovery,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub tls: TlsSelection,
    /// Which HTTP to speak upstream (h2c, or h2 inside TLS, for HTTP/2).
    pub protocol: UpstreamHttp,
    /// How long and how much a pooled connection is used.
    pub reuse: Reuse,
    /// TCP keep-alive on upstream sockets (`upstream_connection_options`).
    pub keepalive: Option<Keepalive>,
    /// The source address for upstream connections (inbound: 127.0.0.6).
    pub bind: Option<IpAddr>,
    /// The service an inbound cluster serves (Istio's `istio.services`
    /// metadata), which names it in metrics when no Host header does.
    pub service: Option<ServiceLabels>,
    /// Passive outlier detection (a DestinationRule's `outlierDetection`).
    pub outlier: Option<crate::outlier::OutlierPolicy>,
    /// `locality_weighted_lb_config`: localities weighted within a priority.
    pub locality_weighted: bool,
    /// Circuit breakers (a DestinationRule's `connectionPool`).
    pub limits: Limits,
    /// What the breakers count. A converted cluster starts with its own; the
    /// agent gives it the one its name had, so counts outlive a push.
    pub load: Arc<Load>,
}

impl Cluster {
    /// How the balancer picks for this cluster.
    pub fn balance_policy(&self) -> crate::balance::Policy {
        crate::balance::Policy {
            balance: self.balance,
            panic_threshold: self.outlier.as_ref().map(|o| o.panic_threshold),
            locality_weighted: self.locality_weighted,
        }
    }

    /// Whether a request the client sent as `downstream` goes upstream as
    /// HTTP/2.
    pub fn http2_for(&self, downstream: http::Version) -> bool {
        match self.protocol {
            UpstreamHttp::Http1 => false,
            UpstreamHttp::Http2 => true,
            UpstreamHttp::Downstream => downstream == http::Version::HTTP_2,
        }
    }

    /// The EDS name this cluster's endpoints arrive under.
    pub fn eds_name(&self) -> &str {
        match &self.discovery {
            Discovery::Eds(name) => name,
            _ => self.name.as_str(),
        }
    }

    /// BlackHoleCluster: a static cluster with no endpoints.
    pub fn is_black_hole(&self) -> bool {
        matches!(&self.discovery, Discovery::Static(set) if set.is_empty())
    }
}

pub fn convert(cluster: &EnvoyCluster) -> Result<Cluster, ConvertError> {
    let error = |reason: String| ConvertError::new("Cluster", &cluster.name, reason);
    check_unsupported(cluster).map_err(error)?;
    let http = http_options(cluster).map_err(error)?;
    Ok(Cluster {
        name: ClusterName::new(&cluster.name),
        discovery: discovery(cluster).map_err(error)?,
        balance: balance(cluster).map_err(error)?,
        connect_timeout: cluster
            .connect_timeout
            .as_ref()
            .map(super::duration)
            .transpose()
            .map_err(|e| error(format!("connect_timeout: {e}")))?
            .unwrap_or(Duration::from_secs(5)),
        tls: tls_selection(cluster).map_err(error)?,
        protocol: http.protocol,
        reuse: http.reuse,
        keepalive: keepalive(cluster),
        bind: bind(cluster).map_err(error)?,
        service: service(cluster),
        outlier: cluster
            .outlier_detection
            .as_ref()
            .map(crate::outlier::policy)
            .transpose()
            .map_err(error)?
            .map(|policy| -> Result<_, String> {
                Ok(crate::outlier::OutlierPolicy {
                    panic_threshold: panic_threshold(cluster)?,
                    ..policy
                })
            })
            .transpose()
            .map_err(error)?,
        locality_weighted: locality_weighted(cluster).map_err(error)?,
        limits: limits(cluster).map_err(error)?,
        load: Arc::default(),
    })
}

/// `common_lb_config.locality_weighted_lb_config` (what istiod sets for
/// `localityLbSetting`); zone-aware routing (which needs the local
/// cluster's membership, and Istio never asks for) is refused.
fn locality_weighted(cluster: &EnvoyCluster) -> Result<bool, String> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
    match cluster
        .common_lb_config
        .as_ref()
        .and_then(|c| c.locality_config_specifier.as_ref())
    {
        None => Ok(false),
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => Ok(true),
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            Err("zone-aware balancing is not supported".to_owned())
        }
    }
}

/// The default priority's thresholds (the first that names it, as Envoy
/// takes); what a threshold leaves out keeps Envoy's default.
fn limits(cluster: &EnvoyCluster) -> Result<Limits, String> {
    let defaults = Limits::default();
    let Some(t) = cluster
        .circuit_breakers
        .iter()
        .flat_map(|c| c.thresholds.iter())
        .find(|t| t.priority == 0)
    else {
        return Ok(defaults);
    };
    let or = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
        v.as_ref().map_or(d, |v| v.value)
    };
    let retries = match &t.retry_budget {
        // Envoy's budget defaults: 20 % and at least 3.
        Some(budget) => {
            let interval = duration(&budget.budget_interval)
                .map_err(|e| format!("retry budget's budget_interval: {e}"))?
                .filter(|d| !d.is_zero());
            let percent = budget.budget_percent.as_ref().map_or(20.0, |p| p.value);
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!("retry budget {percent} % is outside 0..=100"));
            }
            Retries::Budget {
                percent,
                min_concurrency: or(&budget.min_retry_concurrency, 3),
                interval,
            }
        }
        None => match defaults.retries {
            Retries::Fixed(n) => Retries::Fixed(or(&t.max_retries, n)),
            budget => budget,
        },
    };
    Ok(Limits {
        connections: or(&t.max_connections, defaults.connections),
        pending: or(&t.max_pending_requests, defaults.pending),
        requests: or(&t.max_requests, defaults.requests),
        retries,
    })
}

/// The first host of `metadata.filter_metadata.istio.services`.
fn service(cluster: &EnvoyCluster) -> Option<ServiceLabels> {
    let services = cluster
        .metadata
        .as_ref()?
        .filter_metadata
        .get("istio")?
        .fields
        .get("services")?;
    let Some(Kind::ListValue(list)) = &services.kind else {
        return None;
    };
    let Some(Kind::StructValue(service)) = &list.values.first()?.kind else {
        return None;
    };
    match service.fields.get("host")?.kind.as_ref()? {
        Kind::StringValue(host) => Some(ServiceLabels::from_host(host)),
        _ => None,
    }
}

/// `common_lb_config.healthy_panic_threshold` (percent; Envoy's 50 when
/// unset, Istio's 0 unless `minHealthPercent`); Envoy refuses one outside
/// 0–100.
fn panic_threshold(cluster: &EnvoyCluster) -> Result<f64, String> {
    let common = cluster.common_lb_config.as_ref();
    match common.and_then(|c| c.healthy_panic_threshold.as_ref()) {
        None => Ok(crate::outlier::DEFAULT_PANIC_THRESHOLD),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok(p.value),
        Some(p) => Err(format!(
            "healthy_panic_threshold {} is not a percentage",
            p.value
        )),
    }
}

/// Fields that change behaviour and this proxy does not enforce yet: refusing them
/// is better than silently not doing what the user asked.
fn check_unsupported(cluster: &EnvoyCluster) -> Result<(), String> {
    if cluster
        .circuit_breakers
        .as_ref()
        .is_some_and(|c| !c.per_host_thresholds.is_empty())
    {
        return Err("per-host circuit breakers are not supported yet".to_owned());
    }
    if !cluster.health_checks.is_empty() {
        return Err("active health checks are not supported".to_owned());
    }
    Ok(())
}

fn discovery(cluster: &EnvoyCluster) -> Result<Discovery, String> {
    let kind = match cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(t).map_err(|_| format!("unknown discovery type {t}"))?
        }
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err("custom cluster types are not supported".to_owned());
        }
        None => DiscoveryType::Static,
    };
    Ok(match kind {
        DiscoveryType::Eds => Discovery::Eds(
            cluster
                .eds_cluster_config
                .as_ref()
                .map(|c| c.service_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| cluster.name.clone()),
        ),
        DiscoveryType::OriginalDst => Discovery::OriginalDst,
        DiscoveryType::Static => Discovery::Static(Arc::new(crate::state::Balanced::fresh(
            match &cluster.load_assignment {
                Some(cla) => endpoint::convert(cla).map_err(|e| e.reason)?,
                None => EndpointSet::default(),
            },
        ))),
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            // Deprecated in Envoy's API for the DNS cluster extension, but
            // what istiod still writes.
            #[allow(deprecated)]
            let refresh = cluster
                .dns_refresh_rate
                .as_ref()
                .map(super::duration)
                .transpose()?
                .filter(|d| !d.is_zero())
                .unwrap_or(crate::dns::DEFAULT_REFRESH);
            Discovery::Dns(Arc::new(crate::dns::DnsCluster::new(
                dns_hosts(cluster)?,
                refresh,
            )))
        }
    })
}

fn dns_hosts(cluster: &EnvoyCluster) -> Result<Vec<(String, u16)>, String> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut hosts = Vec::new();
    for locality in cluster.load_assignment.iter().flat_map(|c| &c.endpoints) {
        for lb in &locality.lb_endpoints {
            let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                continue;
            };
            let Some(AddressKind::SocketAddress(s)) =
                e.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err("DNS endpoints need socket addresses".to_owned());
            };
            let Some(PortSpecifier::PortValue(port)) = s.port_specifier else {
                return Err("DNS endpoints need port numbers".to_owned());
            };
            let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
            hosts.push((s.address.clone(), port));
        }
    }
    Ok(hosts)
}

/// Envoy's defaults and limits for the hash tables.
const DEFAULT_RING: u64 = 1024;
const MAX_RING: u64 = 8 * 1024 * 1024;
const DEFAULT_MAGLEV: u64 = 65537;

fn balance(cluster: &EnvoyCluster) -> Result<Balance, String> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    match LbPolicy::try_from(cluster.lb_policy) {
        Ok(LbPolicy::RoundRobin) => Ok(Balance::RoundRobin),
        Ok(LbPolicy::LeastRequest) => Ok(Balance::LeastRequest),
        Ok(LbPolicy::Random) => Ok(Balance::Random),
        Ok(LbPolicy::RingHash) => {
            let size = match &cluster.lb_config {
                Some(LbConfig::RingHashLbConfig(c)) => c
                    .minimum_ring_size
                    .as_ref()
                    .map_or(DEFAULT_RING, |v| v.value),
                _ => DEFAULT_RING,
            };
            if size == 0 || size > MAX_RING {
                return Err(format!("ring size {size} is outside 1..={MAX_RING}"));
            }
            Ok(Balance::RingHash {
                minimum_ring_size: size,
            })
        }
        Ok(LbPolicy::Maglev) => {
            let size = match &cluster.lb_config {
                Some(LbConfig::MaglevLbConfig(c)) => {
                    c.table_size.as_ref().map_or(DEFAULT_MAGLEV, |v| v.value)
                }
                _ => DEFAULT_MAGLEV,
            };
            if !is_prime(size) || size > 5_000_011 {
                return Err(format!(
                    "Maglev table size {size} must be a prime up to 5000011"
                ));
            }
            Ok(Balance::Maglev { table_size: size })
        }
        // ORIGINAL_DST clusters pick the destination themselves.
        Ok(LbPolicy::ClusterProvided) => Ok(Balance::RoundRobin),
        Ok(other) => Err(format!(
            "load balancing {} is not supported yet",
            other.as_str_name()
        )),
        Err(_) => Err(format!("unknown lb_policy {}", cluster.lb_policy)),
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn tls_selection(cluster: &EnvoyCluster) -> Result<TlsSelection, String> {
    let default = socket(cluster.transport_socket.as_ref())?;
    let mut selection = TlsSelection {
        mesh_endpoints: default.clone(),
        other_endpoints: default,
    };
    // Matches are tried in order; only the first that fits an endpoint counts, so
    // walk them backwards and let earlier ones overwrite.
    for m in cluster.transport_socket_matches.iter().rev() {
        let tls = socket(m.transport_socket.as_ref())?;
        let fields = m.r#match.as_ref().map(|s| &s.fields);
        match fields {
            None => {
                selection.mesh_endpoints = tls.clone();
                selection.other_endpoints = tls;
            }
            Some(f) if f.is_empty() => {
                selection.mesh_endpoints = tls.clone();
                selection.other_endpoints = tls;
            }
            Some(f)
                if f.len() == 1
                    && f.get("tlsMode").is_some_and(
                        |v| matches!(&v.kind, Some(Kind::StringValue(s)) if s == "istio"),
                    ) =>
            {
                selection.mesh_endpoints = tls;
            }
            Some(_) => {
                return Err(format!(
                    "transport socket match {:?}: only tlsMode=istio is supported",
                    m.name
                ));
            }
        }
    }
    Ok(selection)
}

fn socket(socket: Option<&TransportSocket>) -> Result<Option<Arc<UpstreamTls>>, String> {
    match socket {
        Some(s) => Ok(tls::upstream(s)?.map(Arc::new)),
        None => Ok(None),
    }
}

/// How long and how much a pooled upstream connection is used
/// (`common_http_protocol_options`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// Closed after this long unused (Envoy's default: an hour; zero: never).
    pub idle_timeout: Option<Duration>,
    /// Closed after this many requests.
    pub max_requests: Option<u32>,
    /// No new request after this long since the connection opened.
    pub max_duration: Option<Duration>,
    /// Requests an HTTP/2 connection carries at once; more open another
    /// connection (`http2_protocol_options.max_concurrent_streams`).
    pub max_streams: Option<u32>,
    /// HTTP/2 PINGs that find a dead connection
    /// (`http2_protocol_options.connection_keepalive`).
    pub ping: Option<Ping>,
}

/// HTTP/2 keep-alive: a PING every `interval`, the connection closed when
/// one goes unanswered for `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    pub interval: Duration,
    pub timeout: Duration,
}

/// The PING timeout when a keep-alive names none (Envoy requires one).
const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keep-alive probes; what is unset keeps the system's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

fn keepalive(cluster: &EnvoyCluster) -> Option<Keepalive> {
    let options = cluster.upstream_connection_options.as_ref()?;
    let seconds = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        v.as_ref().map(|v| Duration::from_secs(u64::from(v.value)))
    };
    options.tcp_keepalive.as_ref().map(|k| Keepalive {
        time: seconds(&k.keepalive_time),
        interval: seconds(&k.keepalive_interval),
        probes: k.keepalive_probes.as_ref().map(|v| v.value),
    })
}

struct HttpOptions {
    protocol: UpstreamHttp,
    reuse: Reuse,
}

/// The HTTP a cluster speaks upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamHttp {
    Http1,
    Http2,
    /// The client's own (`use_downstream_protocol_config`, istiod's choice
    /// for undeclared ports and `useClientProtocol`).
    Downstream,
}

impl UpstreamHttp {
    fn of(http2: bool) -> Self {
        if http2 { Self::Http2 } else { Self::Http1 }
    }
}

fn http_options(cluster: &EnvoyCluster) -> Result<HttpOptions, String> {
    // The deprecated cluster-level field, as Istio's rate-limit docs still
    // write it for the service's cluster.
    #[allow(deprecated)]
    let legacy = cluster.http2_protocol_options.as_ref();
    let legacy_http2 = legacy.is_some();
    let mut options = HttpOptions {
        protocol: UpstreamHttp::of(legacy_http2),
        reuse: Reuse::default(),
    };
    if let Some(h2) = legacy {
        http2_reuse(h2, &mut options.reuse)?;
    }
    let Some(any) = cluster.typed_extension_protocol_options.get(HTTP_OPTIONS) else {
        return Ok(options);
    };
    let decoded = HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode {HTTP_OPTIONS}: {e}"))?;
    if let Some(common) = &decoded.common_http_protocol_options {
        options.reuse.idle_timeout = duration(&common.idle_timeout)?;
        options.reuse.max_requests = common.max_requests_per_connection.as_ref().map(|v| v.value);
        options.reuse.max_duration = duration(&common.max_connection_duration)?;
    }
    options.protocol = match &decoded.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
            match &explicit.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    http2_reuse(h2, &mut options.reuse)?;
                    UpstreamHttp::Http2
                }
                _ => UpstreamHttp::Http1,
            }
        }
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(downstream)) => {
            if let Some(h2) = &downstream.http2_protocol_options {
                http2_reuse(h2, &mut options.reuse)?;
            }
            UpstreamHttp::Downstream
        }
        Some(UpstreamProtocolOptions::AutoConfig(_)) => {
            return Err("auto_config is not supported yet".to_owned());
        }
        None => UpstreamHttp::of(legacy_http2),
    };
    Ok(options)
}

fn duration(
    d: &Option<envoy_types::pb::google::protobuf::Duration>,
) -> Result<Option<Duration>, &'static str> {
    d.as_ref().map(super::duration).transpose()
}

/// What `http2_protocol_options` says about sharing and probing an HTTP/2
/// connection; what the proxy cannot honour is refused.
fn http2_reuse(h2: &Http2ProtocolOptions, reuse: &mut Reuse) -> Result<(), String> {
    if let Some(max) = &h2.max_concurrent_streams {
        if max.value == 0 {
            return Err("http2_protocol_options.max_concurrent_streams must be at least 1".into());
        }
        reuse.max_streams = Some(max.value);
    }
    let Some(keepalive) = &h2.connection_keepalive else {
        return Ok(());
    };
    if keepalive.connection_idle_interval.is_some() {
        return Err(
            "http2_protocol_options.connection_keepalive.connection_idle_interval is not supported"
                .into(),
        );
    }
    let field = |name: &str, e: &str| format!("connection_keepalive.{name}: {e}");
    let interval = duration(&keepalive.interval).map_err(|e| field("interval", e))?;
    let timeout = duration(&keepalive.timeout).map_err(|e| field("timeout", e))?;
    // No interval (or zero): no PINGs, as in Envoy.
    reuse.ping = interval.filter(|i| !i.is_zero()).map(|interval| Ping {
        interval,
        timeout: timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_PING_TIMEOUT),
    });
    Ok(())
}

fn bind(cluster: &EnvoyCluster) -> Result<Option<IpAddr>, String> {
    let Some(bind) = &cluster.upstream_bind_config else {
        return Ok(None);
    };
    let Some(source) = &bind.source_address else {
        return Ok(None);
    };
    source
        .address
        .parse()
        .map(Some)
        .map_err(|_| format!("bind address {:?} is not an IP", source.address))
}

/// The endpoints an ORIGINAL_DST cluster talks to: exactly the one asked for.
pub fn original_destination(address: std::net::SocketAddr) -> Endpoint {
    Endpoint {
        address,
        weight: 1,
        mesh_tls: false,
        tunnel: false,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::KeepaliveSettings;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig;
    use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration, UInt32Value};

    use super::*;

    /// A cluster speaking HTTP/2 upstream with these options.
    fn http2_cluster(h2: Http2ProtocolOptions) -> EnvoyCluster {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
                },
            )),
            ..Default::default()
        };
        let mut cluster = EnvoyCluster::default();
        cluster.typed_extension_protocol_options.insert(
            HTTP_OPTIONS.to_owned(),
            Any {
                type_url: format!("type.googleapis.com/{HTTP_OPTIONS}"),
                value: options.encode_to_vec(),
            },
        );
        cluster
    }

    fn millis(ms: i32) -> Option<ProtoDuration> {
        Some(ProtoDuration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })
    }

    #[test]
    fn http2_stream_caps_and_pings_are_read_and_what_cannot_be_honoured_refused() {
        let read = http_options(&http2_cluster(Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value { value: 7 }),
            connection_keepalive: Some(KeepaliveSettings {
                interval: millis(300),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .map(|o| o.reuse);
        assert_eq!(
            read.map(|r| (r.max_streams, r.ping)),
            Ok((
                Some(7),
                Some(Ping {
                    interval: Duration::from_millis(300),
                    timeout: DEFAULT_PING_TIMEOUT,
                })
            ))
        );
        let no_interval = http_options(&http2_cluster(Http2ProtocolOptions {
            connection_keepalive: Some(KeepaliveSettings {
                timeout: millis(300),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert_eq!(no_interval.map(|o| o.reuse.ping), Ok(None), "no PINGs");
        let zero = http_options(&http2_cluster(Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value { value: 0 }),
            ..Default::default()
        }));
        assert!(zero.is_err_and(|e| e.contains("max_concurrent_streams")));
        let idle = http_options(&http2_cluster(Http2ProtocolOptions {
            connection_keepalive: Some(KeepaliveSettings {
                interval: millis(300),
                connection_idle_interval: millis(100),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert!(idle.is_err_and(|e| e.contains("connection_idle_interval")));
    }
}
