//! The data plane: one proxy for sidecars, gateways and waypoints. It takes its
//! config over ADS (converted at the edge into the runtime types of [`config`]),
//! intercepts a pod's traffic (see [`interception`]), and carries HTTP/1.1,
//! HTTP/2 and opaque TCP with mesh mTLS and Istio's standard metrics.

pub mod access_log;
pub mod admin;
pub mod agent;
pub mod app_metrics;
pub mod app_probe;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod bootstrap;
pub mod breaker;
pub mod config;
pub mod context;
pub mod descriptors;
pub mod dns;
pub mod exchange;
pub mod ext_authz;
pub mod grpc_agent;
pub(crate) mod grpc_call;
pub mod hbone;
pub mod http;
pub mod idle;
pub mod inspect;
pub mod interception;
pub mod listeners;
pub mod metrics;
pub mod original_dst;
pub mod origination;
pub mod outlier;
pub mod peer;
pub(crate) mod pool;
pub mod process;
pub mod rate_limit_service;
pub mod relay;
pub mod state;
pub mod tcp;
pub mod token_bucket;
pub mod trace;
pub mod upstream;
pub mod workers;
pub mod workload;
