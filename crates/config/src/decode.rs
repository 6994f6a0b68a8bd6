//! Turning a parsed document into typed objects: the boundary where YAML becomes
//! the model. Everything past it can trust the types.

use serde::de::DeserializeOwned;

use crate::diagnostic::{Finding, ObjectRef, Severity};
use crate::kind::{Kind, Resolution, Strictness};
use crate::node::{Node, Value};
use crate::object::{Object, ObjectMeta, Resource};
use crate::path::{FieldPath, Segment};
use crate::retired;

/// An object together with the tree it was read from, kept so that later findings
/// (validation) can be placed on a line.
#[derive(Clone, Debug)]
pub struct Sourced {
    pub object: std::sync::Arc<Object>,
    pub tree: Node,
    /// Decoding found errors outside the body (an unknown top-level field, bad
    /// metadata): the object can still be checked, but must not be used.
    pub rejected: bool,
}

/// What decoding one document produced: objects, and findings about the document.
#[derive(Debug, Default)]
pub struct Decoded {
    pub objects: Vec<Sourced>,
    /// Findings with the object they concern (when it could be named) and the line.
    pub findings: Vec<Located>,
}

#[derive(Clone, Debug)]
pub struct Located {
    pub object: Option<ObjectRef>,
    pub line: u32,
    pub finding: Finding,
}

const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Decodes one document: a single object, or every item of a `List`.
pub fn decode(tree: Node, origin: &crate::diagnostic::Origin) -> Decoded {
    let mut out = Decoded::default();
    decode_into(tree, origin, &mut out);
    out
}

fn decode_into(tree: Node, origin: &crate::diagnostic::Origin, out: &mut Decoded) {
    let line = tree.line;
    let mut fail = |path: FieldPath, message: String| {
        out.findings.push(Located {
            object: None,
            line: tree.line_of(&path),
            finding: Finding::error(path, message),
        });
    };
    if !matches!(tree.value, Value::Map(_)) {
        fail(
            FieldPath::root(),
            format!(
                "expected a Kubernetes object (a mapping with apiVersion and kind), found {}",
                tree.type_name()
            ),
        );
        return;
    }
    let api_version = match required_string(&tree, "apiVersion") {
        Ok(v) => v.to_owned(),
        Err(message) => return fail(FieldPath::root().field("apiVersion"), message),
    };
    let kind_name = match required_string(&tree, "kind") {
        Ok(k) => k.to_owned(),
        Err(message) => return fail(FieldPath::root().field("kind"), message),
    };
    if kind_name.ends_with("List") && tree.get("items").is_some() {
        return decode_list(tree, origin, out);
    }
    let kind = match Kind::resolve(&api_version, &kind_name) {
        Resolution::Known(kind) => kind,
        Resolution::NotRead => {
            out.findings.push(Located {
                object: None,
                line,
                finding: Finding {
                    severity: Severity::Info,
                    path: FieldPath::root(),
                    message: format!(
                        "skipping {kind_name} ({api_version}): not a kind the mesh reads"
                    ),
                    code: None,
                },
            });
            return;
        }
        Resolution::UnservedVersion(kind) => {
            return fail(
                FieldPath::root().field("apiVersion"),
                format!(
                    "{kind_name} is not served at {api_version}; use {}/{}",
                    kind.group(),
                    kind.versions().join(" or ")
                ),
            );
        }
        Resolution::UnknownKindInGroup => {
            return fail(
                FieldPath::root().field("kind"),
                format!("no kind {kind_name:?} in {api_version}"),
            );
        }
    };
    decode_object(kind, api_version, tree, origin, out);
}

fn required_string<'a>(tree: &'a Node, key: &str) -> Result<&'a str, String> {
    match tree.get(key) {
        None => Err(format!("Required value: every object needs {key}")),
        Some(node) => match node.as_str() {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(format!(
                "must be a non-empty string, found {}",
                node.type_name()
            )),
        },
    }
}

fn decode_list(tree: Node, origin: &crate::diagnostic::Origin, out: &mut Decoded) {
    let Node {
        value: Value::Map(entries),
        line,
    } = tree
    else {
        return;
    };
    for entry in entries {
        if entry.key != "items" {
            continue;
        }
        match entry.value.value {
            Value::Seq(items) => items
                .into_iter()
                .for_each(|item| decode_into(item, origin, out)),
            Value::Null => {}
            _ => out.findings.push(Located {
                object: None,
                line,
                finding: Finding::error(FieldPath::parse("items"), "must be a list of objects"),
            }),
        }
    }
}

fn decode_object(
    kind: Kind,
    api_version: String,
    mut tree: Node,
    origin: &crate::diagnostic::Origin,
    out: &mut Decoded,
) {
    let meta = read_meta(&tree);
    let object_ref = ObjectRef {
        kind,
        namespace: kind.is_namespaced().then(|| {
            meta.namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned())
        }),
        name: meta.name.clone().unwrap_or_default(),
    };
    let mut findings = Vec::new();
    let resource = match kind.strictness() {
        Strictness::Strict => {
            findings.extend(retired::strip(kind, &mut tree));
            decode_custom(kind, &tree, &mut findings)
        }
        Strictness::Lenient => decode_builtin(kind, &tree, &mut findings),
    };
    if meta.name.as_deref().unwrap_or_default().is_empty() && meta.generate_name.is_none() {
        findings.push(Finding::error(
            FieldPath::parse("metadata.name"),
            "Required value: name or generateName is required",
        ));
    }
    let failed = findings.iter().any(|f| f.severity == Severity::Error);
    out.findings
        .extend(findings.into_iter().map(|finding| Located {
            object: Some(object_ref.clone()),
            line: tree.line_of(&finding.path),
            finding,
        }));
    if let Some(resource) = resource {
        let object = Object {
            kind,
            api_version,
            meta,
            origin: origin.at_line(tree.line),
            resource,
        };
        out.objects.push(Sourced {
            object: object.into(),
            tree,
            rejected: failed,
        });
    }
}

/// Metadata is read leniently for every kind, as the API server's clients do; a
/// malformed one reads as empty and is reported by the typed decode.
fn read_meta(tree: &Node) -> ObjectMeta {
    tree.get("metadata")
        .and_then(|m| serde_json::from_value(m.to_json()).ok())
        .unwrap_or_default()
}

fn decode_custom(kind: Kind, tree: &Node, findings: &mut Vec<Finding>) -> Option<Resource> {
    if let Value::Map(entries) = &tree.value {
        for entry in entries
            .iter()
            .filter(|e| !TOP_LEVEL.contains(&e.key.as_str()))
        {
            findings.push(Finding::error(
                FieldPath::root().field(&entry.key),
                format!("unknown field {:?}", entry.key),
            ));
        }
    }
    decode_part::<ObjectMeta>(tree, "metadata", findings);
    let spec_path = FieldPath::root().field("spec");
    let spec = match tree.get("spec") {
        None if kind.spec_required() => {
            findings.push(Finding::error(spec_path, "Required value"));
            return None;
        }
        None => Node {
            line: tree.line,
            value: Value::Map(Vec::new()),
        },
        Some(spec) if spec.is_null() => {
            findings.push(Finding::error(
                spec_path,
                "in body must be of type object: \"null\"",
            ));
            return None;
        }
        Some(spec) => spec.clone(),
    };
    let nulls_before = findings.len();
    report_nulls(&spec, &spec_path, findings);
    if findings.len() > nulls_before {
        return None;
    }
    let spec = spec.to_json();
    let typed = |findings: &mut Vec<Finding>| -> Option<Resource> {
        Some(match kind {
            Kind::VirtualService => Resource::VirtualService(spec_of(&spec, findings)?),
            Kind::DestinationRule => Resource::DestinationRule(spec_of(&spec, findings)?),
            Kind::Gateway => Resource::Gateway(spec_of(&spec, findings)?),
            Kind::ServiceEntry => Resource::ServiceEntry(spec_of(&spec, findings)?),
            Kind::Sidecar => Resource::Sidecar(spec_of(&spec, findings)?),
            Kind::WorkloadEntry => Resource::WorkloadEntry(spec_of(&spec, findings)?),
            Kind::WorkloadGroup => Resource::WorkloadGroup(spec_of(&spec, findings)?),
            Kind::EnvoyFilter => Resource::EnvoyFilter(spec_of(&spec, findings)?),
            Kind::ProxyConfig => Resource::ProxyConfig(spec_of(&spec, findings)?),
            Kind::PeerAuthentication => Resource::PeerAuthentication(spec_of(&spec, findings)?),
            Kind::RequestAuthentication => {
                Resource::RequestAuthentication(spec_of(&spec, findings)?)
            }
            Kind::AuthorizationPolicy => Resource::AuthorizationPolicy(spec_of(&spec, findings)?),
            Kind::Telemetry => Resource::Telemetry(spec_of(&spec, findings)?),
            Kind::WasmPlugin => Resource::WasmPlugin(spec_of(&spec, findings)?),
            Kind::GatewayClass => Resource::GatewayClass(spec_of(&spec, findings)?),
            Kind::KubernetesGateway => Resource::KubernetesGateway(spec_of(&spec, findings)?),
            Kind::HttpRoute => Resource::HttpRoute(spec_of(&spec, findings)?),
            Kind::GrpcRoute => Resource::GrpcRoute(spec_of(&spec, findings)?),
            Kind::TcpRoute => Resource::TcpRoute(spec_of(&spec, findings)?),
            Kind::TlsRoute => Resource::TlsRoute(spec_of(&spec, findings)?),
            Kind::ReferenceGrant => Resource::ReferenceGrant(spec_of(&spec, findings)?),
            _ => return None,
        })
    };
    typed(findings)
}

/// A null inside an Istio spec is refused, as the API server refuses it for fields
/// that are not nullable (all of them, in Istio's CRDs).
fn report_nulls(node: &Node, at: &FieldPath, findings: &mut Vec<Finding>) {
    match &node.value {
        Value::Null => findings.push(Finding::error(
            at.clone(),
            "in body must not be null: give it a value or remove the field",
        )),
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                report_nulls(item, &at.index(i), findings);
            }
        }
        Value::Map(entries) => {
            for entry in entries {
                // Free-form fields (EnvoyFilter patches, Wasm plugin config) may hold nulls.
                if matches!(entry.key.as_str(), "value" | "pluginConfig") && entry.value.is_map() {
                    continue;
                }
                report_nulls(&entry.value, &at.field(&entry.key), findings);
            }
        }
        _ => {}
    }
}

fn spec_of<T: DeserializeOwned>(
    spec: &serde_json::Value,
    findings: &mut Vec<Finding>,
) -> Option<Box<T>> {
    match serde_path_to_error::deserialize(spec) {
        Ok(typed) => Some(Box::new(typed)),
        Err(err) => {
            findings.push(serde_finding(FieldPath::root().field("spec"), &err));
            None
        }
    }
}

fn decode_part<T: DeserializeOwned>(
    tree: &Node,
    key: &str,
    findings: &mut Vec<Finding>,
) -> Option<T> {
    let node = tree.get(key)?;
    match serde_path_to_error::deserialize::<_, T>(&node.to_json()) {
        Ok(v) => Some(v),
        Err(err) => {
            findings.push(serde_finding(FieldPath::root().field(key), &err));
            None
        }
    }
}

fn decode_builtin(kind: Kind, tree: &Node, findings: &mut Vec<Finding>) -> Option<Resource> {
    let json = tree.to_json();
    let whole = |findings: &mut Vec<Finding>| -> Option<Resource> {
        Some(match kind {
            Kind::Namespace => Resource::Namespace(builtin(&json, findings)?),
            Kind::Node => Resource::Node,
            Kind::Service => Resource::Service(builtin(&json, findings)?),
            Kind::Endpoints => Resource::Endpoints(builtin(&json, findings)?),
            Kind::EndpointSlice => Resource::EndpointSlice(builtin(&json, findings)?),
            Kind::Pod => {
                let pod: Box<k8s_openapi::api::core::v1::Pod> = builtin(&json, findings)?;
                Resource::Pod(Box::new((*pod).into()))
            }
            Kind::ServiceAccount => Resource::ServiceAccount(builtin(&json, findings)?),
            Kind::Secret => Resource::Secret(builtin(&json, findings)?),
            Kind::ConfigMap => Resource::ConfigMap(builtin(&json, findings)?),
            Kind::Deployment => Resource::Deployment(builtin(&json, findings)?),
            Kind::StatefulSet => Resource::StatefulSet(builtin(&json, findings)?),
            Kind::DaemonSet => Resource::DaemonSet(builtin(&json, findings)?),
            Kind::ReplicaSet => Resource::ReplicaSet(builtin(&json, findings)?),
            Kind::Job => Resource::Job(builtin(&json, findings)?),
            Kind::CronJob => Resource::CronJob(builtin(&json, findings)?),
            _ => return None,
        })
    };
    whole(findings)
}

fn builtin<T: DeserializeOwned>(
    json: &serde_json::Value,
    findings: &mut Vec<Finding>,
) -> Option<Box<T>> {
    match serde_path_to_error::deserialize(json) {
        Ok(typed) => Some(Box::new(typed)),
        Err(err) => {
            findings.push(serde_finding(FieldPath::root(), &err));
            None
        }
    }
}

/// Rewrites a serde error as Kubernetes would word it, pointing at the field.
fn serde_finding(base: FieldPath, err: &serde_path_to_error::Error<serde_json::Error>) -> Finding {
    let mut path = base;
    for segment in err.path().iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => path.push(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => path.push(Segment::Field(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let raw = err.inner().to_string();
    let raw = raw.split(" at line ").next().unwrap_or(&raw);
    let message = if let Some(field) = between(raw, "missing field `", "`") {
        path.push(Segment::Field(field.to_owned()));
        "Required value".to_owned()
    } else if let Some(field) = between(raw, "unknown field `", "`") {
        let known = after(raw, "expected one of ").or_else(|| after(raw, "expected "));
        unknown_field_message(field, known)
    } else if let Some(variant) = between(raw, "unknown variant `", "`") {
        let supported = after(raw, "expected one of ").or_else(|| after(raw, "expected "));
        format!(
            "Unsupported value: {variant:?}: supported values: {}",
            supported.unwrap_or_default().replace('`', "\"")
        )
    } else {
        raw.replace("invalid type: ", "invalid value: ")
    };
    Finding::error(path, message)
}

fn unknown_field_message(field: &str, known: Option<&str>) -> String {
    let names: Vec<&str> = known
        .unwrap_or_default()
        .split(", ")
        .map(|n| n.trim_matches('`'))
        .filter(|n| !n.is_empty())
        .collect();
    match crate::suggest::closest(field, &names) {
        Some(close) => format!("unknown field {field:?} (did you mean {close:?}?)"),
        None => format!("unknown field {field:?}"),
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| &text[i + marker.len()..])
}
