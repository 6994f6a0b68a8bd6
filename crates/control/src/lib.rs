//! `oxmesh control`: istiod's job. The mesh CA (Istio's `IstioCertificateService`
//! on 15012), and config from a watched directory turned into per-proxy Envoy v3
//! resources served over ADS (15010 plaintext, 15012 TLS).

pub mod authenticate;
pub mod ca_secret;
pub mod ca_service;
pub mod control_plane;
pub mod credentials;
pub mod dashboard;
pub mod discovery;
pub mod gateway_api;
pub mod gateway_deployer;
pub mod gateway_status;
pub mod generate;
pub mod http_get;
pub mod inject;
pub mod install;
pub mod jwks;
pub mod kube_api;
pub mod leader;
pub mod live_authority;
pub mod locality;
pub mod memory;
pub mod mesh_config;
pub mod monitoring;
pub mod node_authorizer;
pub mod proxy;
pub mod push_context;
pub mod registry;
pub mod reply;
pub mod root_cert;
pub mod secure_server;
pub mod serving_certificate;
pub mod source;
pub mod token_review;
pub mod webhook;
pub mod webhook_ca_bundle;
