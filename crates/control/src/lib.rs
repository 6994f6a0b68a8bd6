//! `oxmesh control`: istiod's job. So far: the mesh CA, served as Istio's
//! `IstioCertificateService` on the TLS port (15012).

pub mod authenticate;
pub mod ca_service;
pub mod control_plane;
pub mod live_authority;
pub mod secure_server;
pub mod serving_certificate;
pub mod source;
