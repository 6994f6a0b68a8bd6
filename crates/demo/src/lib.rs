//! Sample services that know nothing of the mesh, for `oxmesh up` and the
//! end-to-end tests: Istio's bookinfo (productpage, details, reviews v1–v3,
//! ratings, same paths, ports and JSON) and an echo server that answers with
//! what it received.

pub mod bookinfo;
pub mod echo;
mod server;

pub use server::serve;
