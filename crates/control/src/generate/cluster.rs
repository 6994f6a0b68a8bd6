//! CDS: one cluster per outbound service port and subset
//! (`outbound|<port>|<subset>|<host>`), one per inbound port (`inbound|<port>||`),
//! and Istio's fixed clusters (PassthroughCluster, BlackHoleCluster,
//! InboundPassthroughCluster).

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as RetryBudgetProto;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy,
    MaglevLbConfig, RingHashLbConfig, TransportSocketMatch,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, Http2ProtocolOptions, HttpProtocolOptions as CommonHttp, KeepaliveSettings,
    Metadata, TcpKeepalive as TcpKeepaliveProto,
};
use envoy_types::pb::envoy::config::core::v3::{SocketAddress, socket_address};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, UInt32Value, UInt64Value, Value};
use envoy_types::util::pack_any;
use oxmesh_config::networking::destination_rule::{
    ClientTlsMode, ConnectionPoolSettings, ConsistentHashLb, DestinationRule, LoadBalancerSettings,
    OutlierDetection, RetryBudget, SimpleLb, Subset, TcpKeepalive, TrafficPolicy,
};
use oxmesh_config::protocol::Protocol;
use oxmesh_config::service::{Resolution, Service, ServicePort};

use super::{tls, wire};
use crate::proxy::{ProxyClass, ProxyKind};
use crate::push_context::{PushContext, Scoped};

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";
/// Inbound traffic is re-sent from this address so the sidecar's own capture
/// rules let it through to the application, as Istio does.
pub const INBOUND_SOURCE: &str = "127.0.0.6";
/// Envoy's "no limit" for circuit breakers; Istio sets it when a DestinationRule
/// says nothing, instead of Envoy's low defaults (1024).
const UNLIMITED: u32 = u32::MAX;
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub fn outbound_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

pub fn inbound_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// The SNI a sidecar sends to another: it names the cluster, as in Istio.
pub fn mesh_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// One outbound cluster to build: a service port, maybe narrowed to a subset.
pub struct Outbound<'a> {
    pub service: &'a Arc<Service>,
    pub port: &'a ServicePort,
    pub subset: Option<&'a Subset>,
    pub rule: Option<&'a Scoped<DestinationRule>>,
}

impl<'a> Outbound<'a> {
    pub fn name(&self) -> String {
        outbound_name(
            self.port.number,
            self.subset_name(),
            self.service.hostname.as_str(),
        )
    }

    fn subset_name(&self) -> &str {
        self.subset.map_or("", |s| s.name.as_str())
    }

    /// The DestinationRule's policy for this port and subset: subset settings over
    /// the rule's, port-level settings over both, field by field.
    pub fn policy(&self) -> Policy<'a> {
        let top = self.rule.and_then(|r| r.spec.traffic_policy.as_ref());
        let mut policy = Policy::default();
        policy.apply(top, self.port.number);
        policy.apply(
            self.subset.and_then(|s| s.traffic_policy.as_ref()),
            self.port.number,
        );
        policy
    }
}

/// Every outbound cluster a proxy gets, in a stable order; a host defined twice
/// (a Service and a ServiceEntry) keeps its first definition.
pub fn outbound<'a>(ctx: &'a PushContext, proxy: &'a ProxyClass) -> Vec<Outbound<'a>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for service in ctx.services_for(proxy) {
        if !seen.insert(service.hostname.clone()) {
            continue;
        }
        let rule = ctx.destination_rule(proxy, service);
        let mut ports_seen = std::collections::HashSet::new();
        for port in service.ports.iter().filter(|p| ports_seen.insert(p.number)) {
            out.push(Outbound {
                service,
                port,
                subset: None,
                rule,
            });
            for subset in rule.iter().flat_map(|r| &r.spec.subsets) {
                out.push(Outbound {
                    service,
                    port,
                    subset: Some(subset),
                    rule,
                });
            }
        }
    }
    out
}

#[derive(Default)]
pub struct Policy<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a oxmesh_config::networking::destination_rule::ClientTlsSettings>,
    /// Only at the rule's (or the subset's) top level, as in Istio.
    pub retry_budget: Option<&'a RetryBudget>,
}

impl<'a> Policy<'a> {
    fn apply(&mut self, policy: Option<&'a TrafficPolicy>, port: u16) {
        let Some(policy) = policy else { return };
        self.load_balancer = policy.load_balancer.as_ref().or(self.load_balancer);
        self.connection_pool = policy.connection_pool.as_ref().or(self.connection_pool);
        self.outlier_detection = policy.outlier_detection.as_ref().or(self.outlier_detection);
        self.tls = policy.tls.as_ref().or(self.tls);
        self.retry_budget = policy.retry_budget.as_ref().or(self.retry_budget);
        let port_level = policy.port_level_settings.iter().find(|p| {
            p.port
                .as_ref()
                .is_some_and(|sel| sel.number == u32::from(port))
        });
        if let Some(p) = port_level {
            self.load_balancer = p.load_balancer.as_ref().or(self.load_balancer);
            self.connection_pool = p.connection_pool.as_ref().or(self.connection_pool);
            self.outlier_detection = p.outlier_detection.as_ref().or(self.outlier_detection);
            self.tls = p.tls.as_ref().or(self.tls);
        }
    }
}

pub fn generate(ctx: &PushContext, proxy: &ProxyClass) -> Vec<Cluster> {
    if proxy.is_grpc() {
        return outbound(ctx, proxy)
            .iter()
            .filter_map(|o| super::grpc::cluster(outbound_cluster(ctx, o, false), o))
            .collect();
    }
    let mut clusters = vec![passthrough(ctx, PASSTHROUGH, None), blackhole(ctx)];
    let outbound = outbound(ctx, proxy);
    clusters.extend(
        outbound
            .iter()
            .map(|o| outbound_cluster(ctx, o, proxy.kind == ProxyKind::Sidecar)),
    );
    if proxy.kind == ProxyKind::Router && super::gateway::auto_passthrough(ctx, proxy) {
        // The mesh's own services only: an external host is no other
        // network's workload, and relaying to it would make an open relay.
        clusters.extend(
            outbound
                .iter()
                .filter(|o| o.service.resolution != Resolution::Passthrough && !o.service.external)
                .map(|o| sni_dnat_cluster(ctx, o)),
        );
    }
    if proxy.kind == ProxyKind::Sidecar {
        // TPROXY connects to the app from the client's own address (the
        // listener's original_src); REDIRECT from 127.0.0.6.
        let bind = (!proxy.tproxy).then_some(INBOUND_SOURCE);
        clusters.push(passthrough(ctx, INBOUND_PASSTHROUGH, bind));
        clusters.extend(
            inbound_ports(ctx, proxy)
                .into_iter()
                .map(|port| inbound_cluster(ctx, proxy, port)),
        );
    }
    clusters
}

/// The workload ports a sidecar receives traffic on: its services' target ports.
pub fn inbound_ports(ctx: &PushContext, proxy: &ProxyClass) -> Vec<(u16, Protocol)> {
    let mut ports: Vec<(u16, Protocol)> = ctx
        .services_of(proxy)
        .flat_map(|s| &s.ports)
        .filter_map(|p| Some((target_number(p)?, p.protocol)))
        .collect();
    ports.sort_by_key(|(n, _)| *n);
    ports.dedup_by_key(|(n, _)| *n);
    ports
}

/// The workload port a service port sends to (a named target port, which
/// only pods resolve, counts as the service port).
pub fn target_port(port: &ServicePort) -> u16 {
    target_number(port).unwrap_or(port.number)
}

/// The service port that sends to workload port `target` (the lowest, when
/// several do): Istio names inbound virtual hosts by it.
pub fn inbound_service_port(ctx: &PushContext, proxy: &ProxyClass, target: u16) -> u16 {
    ctx.services_of(proxy)
        .flat_map(|s| &s.ports)
        .filter(|p| target_number(p) == Some(target))
        .map(|p| p.number)
        .min()
        .unwrap_or(target)
}

fn base(ctx: &PushContext, name: String, kind: DiscoveryType) -> Cluster {
    Cluster {
        name,
        connect_timeout: Some(wire::duration(ctx.mesh.connect_timeout)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        ..Default::default()
    }
}

/// How long istiod lets a passthrough connection idle.
const PASSTHROUGH_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// PassthroughCluster and InboundPassthroughCluster: to the address dialled,
/// in the client's HTTP version, idle connections closed after five
/// minutes (istiod's `passthroughHttpProtocolOptions`).
fn passthrough(ctx: &PushContext, name: &str, bind: Option<&str>) -> Cluster {
    let mut cluster = Cluster {
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(circuit_breakers(None)),
        upstream_bind_config: bind.map(bind_config),
        ..base(ctx, name.to_owned(), DiscoveryType::OriginalDst)
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttp {
            idle_timeout: Some(wire::duration(PASSTHROUGH_IDLE)),
            ..Default::default()
        }),
        upstream_protocol_options: Some(downstream_protocol()),
        ..Default::default()
    };
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_OPTIONS.to_owned(), pack_any(options));
    cluster
}

/// `use_downstream_protocol_config`: HTTP/1.1 or HTTP/2, as the client spoke.
fn downstream_protocol() -> UpstreamProtocolOptions {
    UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
        http_protocol_options: Some(Default::default()),
        http2_protocol_options: Some(Http2ProtocolOptions::default()),
        ..Default::default()
    })
}

fn blackhole(ctx: &PushContext) -> Cluster {
    base(ctx, BLACKHOLE.to_owned(), DiscoveryType::Static)
}

fn bind_config(ip: &str) -> BindConfig {
    BindConfig {
        source_address: Some(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Inbound traffic goes to the address the client dialled (the pod's own IP and
/// the workload port), from 127.0.0.6 (TPROXY: from the client's address).
fn inbound_cluster(
    ctx: &PushContext,
    proxy: &ProxyClass,
    (port, protocol): (u16, Protocol),
) -> Cluster {
    let mut cluster = Cluster {
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(circuit_breakers(None)),
        upstream_bind_config: (!proxy.tproxy).then(|| bind_config(INBOUND_SOURCE)),
        metadata: Some(services_metadata(ctx, proxy, port)),
        ..base(ctx, inbound_name(port), DiscoveryType::OriginalDst)
    };
    // An undeclared port follows the client's protocol, as istiod's sidecars.
    let upstream = match protocol {
        Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => UpstreamHttp::Http2,
        Protocol::Unknown => UpstreamHttp::Downstream,
        _ => UpstreamHttp::Http1,
    };
    set_protocol(&mut cluster, None, upstream);
    cluster
}

/// Istio's `istio.services` metadata on an inbound cluster: the services whose
/// target port it is, which names the destination service in inbound metrics
/// (TCP has no Host header to name it). Each entry carries only `host`: a
/// `Struct`'s fields encode in hash order, and more than one would make the
/// output differ from push to push; name and namespace follow from the host.
fn services_metadata(ctx: &PushContext, proxy: &ProxyClass, port: u16) -> Metadata {
    let services = ctx
        .services_of(proxy)
        .filter(|s| s.ports.iter().any(|p| target_number(p) == Some(port)))
        .map(|s| Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("host".to_owned(), wire::string_value(s.hostname.as_str()))]
                    .into_iter()
                    .collect(),
            })),
        })
        .collect();
    let list = Value {
        kind: Some(Kind::ListValue(ListValue { values: services })),
    };
    Metadata {
        filter_metadata: [(
            "istio".to_owned(),
            Struct {
                fields: [("services".to_owned(), list)].into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn target_number(port: &ServicePort) -> Option<u16> {
    match &port.target {
        oxmesh_config::service::TargetPort::Same => Some(port.number),
        oxmesh_config::service::TargetPort::Number(n) => Some(*n),
        oxmesh_config::service::TargetPort::Named(_) => None,
    }
}

/// `sidecar`: an undeclared port follows the client's protocol (istiod does
/// so only where it sniffs protocols, in sidecars).
fn outbound_cluster(ctx: &PushContext, outbound: &Outbound<'_>, sidecar: bool) -> Cluster {
    let policy = outbound.policy();
    let name = outbound.name();
    let mut cluster = match outbound.service.resolution {
        Resolution::Endpoints => Cluster {
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(wire::ads()),
                service_name: name.clone(),
            }),
            ..base(ctx, name, DiscoveryType::Eds)
        },
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let kind = if outbound.service.resolution == Resolution::Dns {
                DiscoveryType::StrictDns
            } else {
                DiscoveryType::LogicalDns
            };
            let load_assignment = super::endpoint::assignment(ctx, outbound, name.clone());
            Cluster {
                load_assignment: Some(load_assignment),
                ..base(ctx, name, kind)
            }
        }
        Resolution::Passthrough => Cluster {
            lb_policy: LbPolicy::ClusterProvided as i32,
            ..base(ctx, name, DiscoveryType::OriginalDst)
        },
    };
    if outbound.service.resolution != Resolution::Passthrough {
        set_load_balancer(&mut cluster, policy.load_balancer);
        weigh_localities(ctx, &mut cluster, &policy);
    }
    let mut breakers = circuit_breakers(policy.connection_pool);
    if let (Some(budget), Some(thresholds)) = (policy.retry_budget, breakers.thresholds.first_mut())
    {
        thresholds.retry_budget = Some(retry_budget(budget));
    }
    cluster.circuit_breakers = Some(breakers);
    let tcp = policy.connection_pool.and_then(|p| p.tcp.as_ref());
    if let Some(timeout) = tcp.and_then(|t| t.connect_timeout) {
        cluster.connect_timeout = Some(wire::duration(timeout.as_std()));
    }
    if let Some(keepalive) = keepalive(
        ctx.mesh.tcp_keepalive.as_ref(),
        tcp.and_then(|t| t.tcp_keepalive.as_ref()),
    ) {
        cluster.upstream_connection_options = Some(keepalive_options(&keepalive));
    }
    if let Some(outlier) = policy.outlier_detection {
        apply_outlier(&mut cluster, outlier);
    }
    let upstream = upstream_http(ctx, outbound.port.protocol, policy.connection_pool, sidecar);
    set_protocol(&mut cluster, policy.connection_pool, upstream);
    set_tls(ctx, &mut cluster, outbound, &policy, sidecar);
    cluster
}

/// An AUTO_PASSTHROUGH gateway's cluster for one service port (and
/// subset), named as a sidecar's SNI names it: the same endpoints and
/// balancing as the outbound cluster (its EDS), but the client's TLS passes
/// through untouched, as istiod's SNI-DNAT clusters.
fn sni_dnat_cluster(ctx: &PushContext, outbound: &Outbound<'_>) -> Cluster {
    let mut cluster = outbound_cluster(ctx, outbound, false);
    cluster.name = mesh_sni(
        outbound.port.number,
        outbound.subset_name(),
        outbound.service.hostname.as_str(),
    );
    if let Some(assignment) = cluster.load_assignment.as_mut() {
        assignment.cluster_name = cluster.name.clone();
    }
    cluster.transport_socket = None;
    cluster.transport_socket_matches.clear();
    cluster.typed_extension_protocol_options.clear();
    cluster
}

/// The consistent-hash settings for traffic to `service:port` (a subset, or `""`)
/// from `proxy`, when its DestinationRule asks for them: routes turn them into
/// hash policies.
pub fn consistent_hash<'a>(
    ctx: &'a PushContext,
    proxy: &ProxyClass,
    service: &'a Arc<Service>,
    port: u16,
    subset: &str,
) -> Option<&'a ConsistentHashLb> {
    policy_for(ctx, proxy, service, port, subset)?
        .load_balancer?
        .consistent_hash
        .as_ref()
}

/// `connectionPool.tcp.idleTimeout` for TCP connections to `service:port`
/// (a subset, or `""`) from `proxy`: tcp_proxy's idle timeout.
pub fn tcp_idle_timeout(
    ctx: &PushContext,
    proxy: &ProxyClass,
    service: &Arc<Service>,
    port: u16,
    subset: &str,
) -> Option<std::time::Duration> {
    let pool = policy_for(ctx, proxy, service, port, subset)?.connection_pool?;
    pool.tcp.as_ref()?.idle_timeout.map(|d| d.as_std())
}

/// The DestinationRule policy for `service:port` and a subset, seen from
/// `proxy`.
fn policy_for<'a>(
    ctx: &'a PushContext,
    proxy: &ProxyClass,
    service: &'a Arc<Service>,
    port: u16,
    subset: &str,
) -> Option<Policy<'a>> {
    let rule = ctx.destination_rule(proxy, service);
    let outbound = Outbound {
        service,
        port: service.ports.iter().find(|p| p.number == port)?,
        subset: rule.and_then(|r| r.spec.subsets.iter().find(|s| s.name == subset)),
        rule,
    };
    Some(outbound.policy())
}

/// `locality_weighted_lb_config` where istiod sets it: for `distribute`,
/// and for explicit failover rules with outlier detection on (otherwise
/// locality weights would skew LEAST_REQUEST and the like).
fn weigh_localities(ctx: &PushContext, cluster: &mut Cluster, policy: &Policy<'_>) {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
        LocalityConfigSpecifier, LocalityWeightedLbConfig,
    };
    let Some(setting) = super::locality_lb::setting(ctx, policy) else {
        return;
    };
    let explicit_failover = !setting.failover.is_empty() || !setting.failover_priority.is_empty();
    if setting.distribute.is_empty()
        && !(explicit_failover && super::locality_lb::fails_over(policy))
    {
        return;
    }
    cluster
        .common_lb_config
        .get_or_insert_with(Default::default)
        .locality_config_specifier = Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
        LocalityWeightedLbConfig {},
    ));
}

fn set_load_balancer(cluster: &mut Cluster, settings: Option<&LoadBalancerSettings>) {
    // Istio's default when nothing is said is LEAST_REQUEST.
    let policy = match settings {
        Some(LoadBalancerSettings {
            consistent_hash: Some(hash),
            ..
        }) if hash.maglev.is_some() => {
            let size = hash.maglev.map_or(0, |m| m.table_size);
            cluster.lb_config = (size > 0).then_some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value { value: size }),
            }));
            LbPolicy::Maglev
        }
        Some(LoadBalancerSettings {
            consistent_hash: Some(hash),
            ..
        }) => {
            let size = hash
                .ring_hash
                .map(|r| r.minimum_ring_size)
                .or(hash.minimum_ring_size)
                .unwrap_or(0);
            cluster.lb_config = (size > 0).then(|| {
                LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value { value: size }),
                    ..Default::default()
                })
            });
            LbPolicy::RingHash
        }
        Some(LoadBalancerSettings {
            simple: Some(simple),
            ..
        }) => match simple {
            SimpleLb::RoundRobin => LbPolicy::RoundRobin,
            SimpleLb::Random => LbPolicy::Random,
            SimpleLb::Passthrough => {
                cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                    DiscoveryType::OriginalDst as i32,
                ));
                cluster.eds_cluster_config = None;
                cluster.load_assignment = None;
                LbPolicy::ClusterProvided
            }
            SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified => {
                LbPolicy::LeastRequest
            }
        },
        _ => LbPolicy::LeastRequest,
    };
    cluster.lb_policy = policy as i32;
}

fn circuit_breakers(pool: Option<&ConnectionPoolSettings>) -> CircuitBreakers {
    let limit = |n: i32| UInt32Value {
        value: if n > 0 { n.unsigned_abs() } else { UNLIMITED },
    };
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: Some(limit(tcp.map_or(0, |t| t.max_connections))),
            max_pending_requests: Some(limit(http.map_or(0, |h| h.http1_max_pending_requests))),
            max_requests: Some(limit(http.map_or(0, |h| h.http2_max_requests))),
            max_retries: Some(limit(http.map_or(0, |h| h.max_retries))),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Istio's retry budget: 20 % and at least 3 retries unless it says
/// otherwise, as istiod writes it since 1.30 (before, 0.2, which Envoy
/// reads as 0.2 %).
fn retry_budget(budget: &RetryBudget) -> RetryBudgetProto {
    RetryBudgetProto {
        budget_percent: Some(Percent {
            value: budget.percent.unwrap_or(20.0),
        }),
        min_retry_concurrency: Some(wire::u32_value(
            budget.min_retry_concurrency.filter(|n| *n > 0).unwrap_or(3),
        )),
        budget_interval: budget
            .budget_interval
            .filter(|d| d.as_std() > std::time::Duration::ZERO)
            .map(|d| wire::duration(d.as_std())),
    }
}

/// The mesh's `tcpKeepalive` with a DestinationRule's fields over it, as
/// istiod sets them one by one.
fn keepalive(mesh: Option<&TcpKeepalive>, rule: Option<&TcpKeepalive>) -> Option<TcpKeepalive> {
    let mut merged = mesh.cloned();
    if let Some(rule) = rule {
        let base = merged.get_or_insert_with(TcpKeepalive::default);
        if rule.probes > 0 {
            base.probes = rule.probes;
        }
        base.time = rule.time.or(base.time);
        base.interval = rule.interval.or(base.interval);
    }
    merged
}

/// `tcpKeepalive` as the socket options Envoy sets on upstream connections.
fn keepalive_options(keepalive: &TcpKeepalive) -> UpstreamConnectionOptions {
    let seconds = |d: Option<oxmesh_config::duration::Duration>| {
        d.map(|d| wire::u32_value(u32::try_from(d.as_std().as_secs()).unwrap_or(u32::MAX)))
    };
    UpstreamConnectionOptions {
        tcp_keepalive: Some(TcpKeepaliveProto {
            keepalive_probes: (keepalive.probes > 0).then(|| wire::u32_value(keepalive.probes)),
            keepalive_time: seconds(keepalive.time),
            keepalive_interval: seconds(keepalive.interval),
        }),
        ..Default::default()
    }
}

fn apply_outlier(cluster: &mut Cluster, outlier: &OutlierDetection) {
    let consecutive_5xx = outlier.consecutive_5xx_errors.or_else(|| {
        outlier
            .consecutive_errors
            .and_then(|n| u32::try_from(n).ok())
    });
    let enforce = |set: bool| {
        Some(UInt32Value {
            value: if set { 100 } else { 0 },
        })
    };
    cluster.outlier_detection = Some(EnvoyOutlier {
        consecutive_5xx: consecutive_5xx.map(wire::u32_value),
        enforcing_consecutive_5xx: enforce(consecutive_5xx.is_some_and(|n| n > 0)),
        consecutive_gateway_failure: outlier.consecutive_gateway_errors.map(wire::u32_value),
        enforcing_consecutive_gateway_failure: enforce(
            outlier.consecutive_gateway_errors.is_some_and(|n| n > 0),
        ),
        interval: outlier.interval.map(|d| wire::duration(d.as_std())),
        base_ejection_time: outlier
            .base_ejection_time
            .map(|d| wire::duration(d.as_std())),
        max_ejection_percent: outlier
            .max_ejection_percent
            .and_then(|n| u32::try_from(n).ok())
            .map(wire::u32_value),
        enforcing_success_rate: enforce(false),
        ..Default::default()
    });
    if outlier.split_external_local_origin_errors == Some(true)
        && let Some(od) = cluster.outlier_detection.as_mut()
    {
        // As istiod: the local-origin limit only when given, and no
        // local-origin success-rate ejection.
        od.split_external_local_origin_errors = true;
        if let Some(n) = outlier.consecutive_local_origin_failures.filter(|n| *n > 0) {
            od.consecutive_local_origin_failure = Some(wire::u32_value(n));
            od.enforcing_consecutive_local_origin_failure = enforce(true);
        }
        od.enforcing_local_origin_success_rate = enforce(false);
    }
    // Istio turns Envoy's panic mode off unless minHealthPercent asks for it.
    let panic = outlier.min_health_percent.unwrap_or(0).clamp(0, 100);
    cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default)
        .healthy_panic_threshold = Some(Percent {
        value: f64::from(panic),
    });
}

/// istiod's `shouldH2Upgrade`: a DestinationRule's `h2UpgradePolicy` says
/// (UPGRADE even on a port not named HTTP: the user knows it is), else the
/// mesh's, for HTTP ports only.
fn h2_upgrade(
    ctx: &PushContext,
    protocol: Protocol,
    pool: Option<&ConnectionPoolSettings>,
) -> bool {
    use oxmesh_config::networking::destination_rule::H2UpgradePolicy;
    match pool
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
    {
        Some(H2UpgradePolicy::Upgrade) => true,
        Some(H2UpgradePolicy::DoNotUpgrade) => false,
        Some(H2UpgradePolicy::Default) | None => protocol.is_http() && ctx.mesh.h2_upgrade,
    }
}

/// The HTTP a cluster speaks upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpstreamHttp {
    Http1,
    Http2,
    /// The client's (`use_downstream_protocol_config`).
    Downstream,
}

/// As istiod decides it, strongest first: `useClientProtocol` (istiod
/// writes it last and never upgrades such a cluster); else an H2 upgrade;
/// else HTTP/2 for `http2`/`grpc`/`grpc-web` ports, the client's own on a
/// sidecar's undeclared ports, HTTP/1.1 otherwise.
fn upstream_http(
    ctx: &PushContext,
    protocol: Protocol,
    pool: Option<&ConnectionPoolSettings>,
    sidecar: bool,
) -> UpstreamHttp {
    if pool
        .and_then(|p| p.http.as_ref())
        .is_some_and(|h| h.use_client_protocol)
    {
        return UpstreamHttp::Downstream;
    }
    if h2_upgrade(ctx, protocol, pool) {
        return UpstreamHttp::Http2;
    }
    match protocol {
        Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => UpstreamHttp::Http2,
        Protocol::Unknown if sidecar => UpstreamHttp::Downstream,
        _ => UpstreamHttp::Http1,
    }
}

/// The upstream HTTP version, idle timeouts and per-connection request
/// limits from the connection pool.
fn set_protocol(
    cluster: &mut Cluster,
    pool: Option<&ConnectionPoolSettings>,
    upstream: UpstreamHttp,
) {
    let http = pool.and_then(|p| p.http.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    // The HTTP idle timeout, else the TCP one, as Istio picks.
    let idle_timeout = http
        .and_then(|h| h.idle_timeout)
        .or_else(|| tcp.and_then(|t| t.idle_timeout));
    let max_duration = tcp.and_then(|t| t.max_connection_duration);
    let per_connection = http.map_or(0, |h| h.max_requests_per_connection);
    let max_streams = http.map_or(0, |h| h.max_concurrent_streams);
    let ping = http.and_then(|h| h.http2_keep_alive.as_ref());
    // istiod writes the (maybe empty) common options for any of these.
    let common = (idle_timeout.is_some()
        || max_duration.is_some()
        || per_connection > 0
        || max_streams > 0
        || ping.is_some())
    .then(|| CommonHttp {
        idle_timeout: idle_timeout.map(|d| wire::duration(d.as_std())),
        max_connection_duration: max_duration.map(|d| wire::duration(d.as_std())),
        max_requests_per_connection: (per_connection > 0)
            .then(|| wire::u32_value(per_connection.unsigned_abs())),
        ..Default::default()
    });
    if upstream == UpstreamHttp::Http1 && common.is_none() {
        return;
    }
    let upstream_protocol_options = match upstream {
        UpstreamHttp::Http1 => None,
        // Stream limits and PINGs only where istiod writes them: on clusters
        // that speak HTTP/2 whatever the client speaks.
        UpstreamHttp::Http2 => Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions {
                    max_concurrent_streams: (max_streams > 0)
                        .then(|| wire::u32_value(max_streams.unsigned_abs())),
                    connection_keepalive: ping.map(|p| KeepaliveSettings {
                        interval: p.interval.map(|d| wire::duration(d.as_std())),
                        timeout: p.timeout.map(|d| wire::duration(d.as_std())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            },
        )),
        UpstreamHttp::Downstream => Some(downstream_protocol()),
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: common,
        upstream_protocol_options,
        ..Default::default()
    };
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_OPTIONS.to_owned(), pack_any(options));
}

/// A DestinationRule's TLS if it has one; otherwise, for services inside the mesh,
/// mTLS to endpoints that have a sidecar and plaintext to the rest (auto mTLS).
fn set_tls(
    ctx: &PushContext,
    cluster: &mut Cluster,
    outbound: &Outbound<'_>,
    policy: &Policy<'_>,
    sidecar: bool,
) {
    let host = outbound.service.hostname.as_str();
    let port = outbound.port.number;
    let sni = mesh_sni(port, outbound.subset_name(), host);
    let identities = identities(ctx, outbound);
    match policy.tls {
        // As istiod: a rule without a workloadSelector would hand every
        // sidecar it covers a Secret they may not read, so sidecars ignore
        // its SIMPLE/MUTUAL credentialName TLS (the egress gateway uses it);
        // a ConfigMap CA is anyone's.
        Some(settings)
            if sidecar
                && settings.credential_name.as_deref().is_some_and(|c| {
                    !c.is_empty() && !c.starts_with(crate::credentials::CONFIGMAP)
                })
                && matches!(settings.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual)
                && outbound
                    .rule
                    .is_none_or(|r| r.spec.workload_selector.is_none()) => {}
        Some(settings) if settings.mode != ClientTlsMode::Disable => {
            let default_sni = if outbound.service.hostname.is_wildcard() {
                String::new()
            } else {
                host.to_owned()
            };
            if let Some(context) = tls::from_settings(settings, default_sni, sni, &identities) {
                cluster.transport_socket = Some(tls::socket(context));
            }
        }
        Some(_) => {}
        None if !outbound.service.external
            && outbound.service.resolution != Resolution::Passthrough =>
        {
            let mtls = tls::socket(tls::istio_mutual(sni, &identities));
            cluster.transport_socket_matches = vec![
                TransportSocketMatch {
                    name: "tlsMode-istio".to_owned(),
                    r#match: Some(tls_mode_match()),
                    transport_socket: Some(mtls),
                },
                TransportSocketMatch {
                    name: "tlsMode-disabled".to_owned(),
                    r#match: Some(Struct::default()),
                    transport_socket: None,
                },
            ];
        }
        None => {}
    }
}

/// `{tlsMode: istio}`: what endpoints with a sidecar carry in their metadata.
pub fn tls_mode_match() -> Struct {
    Struct {
        fields: [("tlsMode".to_owned(), wire::string_value("istio"))]
            .into_iter()
            .collect(),
    }
}

/// The identities a client accepts from the service: its workloads' SPIFFE ids.
fn identities(ctx: &PushContext, outbound: &Outbound<'_>) -> Vec<String> {
    let mut ids: Vec<String> = ctx
        .registry
        .endpoints(outbound.service, outbound.port.number)
        .iter()
        .filter_map(|e| e.identity.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}
