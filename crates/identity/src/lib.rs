//! The mesh's PKI. Workloads prove who they are with X.509 SVIDs carrying a SPIFFE
//! id; the CA (`ca`) signs them from CSRs (`csr`) whose identity the caller proved
//! with a token (`token`); every proxy keeps its certificate fresh (`manager`) and
//! talks mutual TLS with rustls configs that check peers' SPIFFE ids (`tls`,
//! `verify`, `bundle`).

pub mod ca;
pub mod canonical;
pub mod certificate;
pub mod csr;
pub mod file;
pub mod key;
pub mod spiffe;

pub use spiffe::{SpiffeId, TrustDomain};
pub mod bundle;
pub mod credentials;
pub mod inspect;
pub mod manager;
pub mod token;
pub mod verify;
