//! What picking an endpoint costs the proxy (bench/RESULTS.md): per request
//! on every upstream call, so it must stay small. A flat set (one priority,
//! as most clusters are), and Istio's locality failover shape (three
//! priorities of two localities each, localities weighted) healthy and while
//! an ejection lasts.

use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use oxmesh_proxy::balance::{Policy, pick};
use oxmesh_proxy::config::cluster::Balance;
use oxmesh_proxy::config::endpoint::{Endpoint, EndpointSet, convert};
use oxmesh_proxy::outlier::{Attempt, OutlierPolicy, policy, record};
use oxmesh_proxy::state::Balanced;

fn flat(n: u8) -> Balanced {
    Balanced::fresh(EndpointSet::new(
        (0..n)
            .map(|i| Endpoint {
                address: SocketAddr::from(([198, 18, 0, i + 1], 80)),
                weight: 1,
                mesh_tls: true,
                tunnel: false,
            })
            .collect(),
    ))
}

/// Three priorities, two localities each, three endpoints per locality.
fn failover() -> Balanced {
    let address = |l: u32, h: u32| Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: format!("198.18.{l}.{h}"),
            port_specifier: Some(PortSpecifier::PortValue(80)),
            ..Default::default()
        })),
    };
    let endpoints = (0..6)
        .map(|l| LocalityLbEndpoints {
            priority: l / 2,
            load_balancing_weight: Some(UInt32Value { value: 3 }),
            lb_endpoints: (1..=3)
                .map(|h| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(address(l, h)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let cla = ClusterLoadAssignment {
        cluster_name: "outbound|5000||helloworld.default.svc.cluster.local".into(),
        endpoints,
        ..Default::default()
    };
    Balanced::fresh(convert(&cla).expect("a valid assignment"))
}

/// Istio's outlier settings: panic off, ejections count.
fn with_outlier(balance: Balance, locality_weighted: bool) -> Policy {
    Policy {
        balance,
        panic_threshold: Some(0.0),
        locality_weighted,
    }
}

fn eject_first(set: &Balanced) {
    let od = envoy_types::pb::envoy::config::cluster::v3::OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 1 }),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        max_ejection_percent: Some(UInt32Value { value: 100 }),
        ..Default::default()
    };
    let policy: OutlierPolicy = policy(&od).expect("a valid policy");
    record(set, 0, &policy, Attempt::Status(503));
}

fn bench(c: &mut Criterion) {
    let three = flat(3);
    for (name, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("least_request", Balance::LeastRequest),
    ] {
        let policy = Policy::plain(balance);
        c.bench_function(&format!("pick flat 3 {name}"), |b| {
            b.iter(|| pick(&three, &policy, &[], None))
        });
    }
    let levels = failover();
    let policy = with_outlier(Balance::LeastRequest, true);
    c.bench_function("pick 3 priorities x 2 localities, healthy", |b| {
        b.iter(|| pick(&levels, &policy, &[], None))
    });
    eject_first(&levels);
    c.bench_function("pick 3 priorities x 2 localities, one ejected", |b| {
        b.iter(|| pick(&levels, &policy, &[], None))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
