//! The Istio and Kubernetes objects a mesh user writes: typed, loaded from YAML or
//! JSON, and checked as strictly and helpfully as Istio checks them.
//!
//! The flow is `load` (files → documents) → `decode` (document → typed `Object`,
//! refusing unknown fields in Istio kinds) → `validation` (per-object rules). Every
//! finding carries the file, line, object and field path it is about.

pub mod analysis;
pub mod decode;
pub mod diagnostic;
pub mod document;
pub mod duration;
pub mod extension_provider;
pub mod gateway_api;
pub mod hostname;
pub mod kind;
pub mod load;
pub mod mesh;
pub mod networking;
pub mod node;
pub mod object;
pub mod path;
pub mod percent;
pub mod pod;
pub mod protocol;
mod retired;
pub mod security;
pub mod selector;
pub mod service;
pub mod string_match;
mod suggest;
pub mod telemetry;
pub mod validation;
pub mod wasm_plugin;

pub use diagnostic::{Diagnostic, Finding, ObjectRef, Origin, Severity};
pub use kind::Kind;
pub use load::{Loaded, load_paths};
pub use object::{Object, Resource};
