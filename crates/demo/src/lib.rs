//! Sample services that know nothing of the mesh, for `oxmesh up` and the
//! end-to-end tests: Istio's bookinfo (productpage, details, reviews v1–v3,
//! ratings, same paths, ports and JSON), an httpbin-like echo server, Istio's
//! tcp-echo, a gRPC greeter with a server stream, a rate limit service, an
//! OTLP trace collector that prints spans, and a load client for the tests
//! (`load`).

pub mod bookinfo;
pub mod echo;
pub mod ext_authz;
pub mod greeter;
pub mod jwt;
pub mod load;
pub mod otel_collector;
pub mod rate_limit;
mod server;
pub mod tcp_echo;

pub use server::serve;
