//! What the policy tests share: a PushContext from a directory of test
//! objects, a proxy as a node describes it, and the listeners generated for it.

// Each test binary uses a part.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use oxmesh_config::load::load_paths;
use oxmesh_control::generate;
use oxmesh_control::mesh_config::MeshConfig;
use oxmesh_control::proxy::Proxy;
use oxmesh_control::push_context::PushContext;
use oxmesh_xds::ads::types;
use prost::Message;

/// The objects under `tests/<dir>`, with the mesh config's defaults and
/// whatever an `istio` ConfigMap there says.
pub fn context(dir: &str) -> PushContext {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let loaded = load_paths(&[dir]);
    assert!(!loaded.has_errors(), "{:?}", loaded.error_messages());
    let objects: Vec<_> = loaded.objects.into_iter().map(|s| s.object).collect();
    PushContext::build(&objects, MeshConfig::default(), Arc::from(&b""[..]), 1)
}

/// The objects of a YAML text (`file` names it in errors).
pub fn context_of(file: &str, yaml: &str) -> PushContext {
    let loaded = oxmesh_config::load::load_bytes(Path::new(file), yaml.as_bytes());
    assert!(!loaded.has_errors(), "{:?}", loaded.error_messages());
    let objects: Vec<_> = loaded.objects.into_iter().map(|s| s.object).collect();
    PushContext::build(&objects, MeshConfig::default(), Arc::from(&b""[..]), 1)
}

/// The root namespace's `istio` ConfigMap holding mesh config `text`.
pub fn mesh_config_map(text: &str) -> String {
    let indented: String = text.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{indented}"
    )
}

/// A proxy of `kind` (`sidecar`, `router`) for pod `pod` in `namespace`.
pub fn proxy(kind: &str, pod: &str, namespace: &str, labels: &[(&str, &str)]) -> Proxy {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let labels = Struct {
        fields: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect(),
    };
    let fields = [
        ("NAMESPACE".to_owned(), string(namespace)),
        (
            "LABELS".to_owned(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
    ];
    let node = Node {
        id: format!("{kind}~198.18.20.9~{pod}.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    };
    Proxy::from_node(&node).expect("valid node")
}

pub fn listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<Listener> {
    generate::resources(ctx, proxy, types::LISTENER)
        .iter()
        .map(|named| Listener::decode(named.resource.value.as_slice()).expect("a listener"))
        .collect()
}

pub fn named<'a>(listeners: &'a [Listener], name: &str) -> &'a Listener {
    listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}
