//! Envoy resources as JSON, in protobuf's canonical JSON mapping (the form
//! `istioctl proxy-config -o json` prints): for `oxmesh proxy-config`, the debug
//! endpoints and golden tests.

use std::sync::LazyLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()));

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("the built-in Envoy descriptors are unreadable: {0}")]
    Descriptors(String),
    #[error("no descriptor for {0}")]
    UnknownType(String),
    #[error("{type_url}: {message}")]
    Decode { type_url: String, message: String },
}

/// One resource as JSON, with its `@type` first, as protobuf's JSON mapping
/// writes an `Any`.
pub fn to_json(resource: &Any) -> Result<serde_json::Value, JsonError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.clone()))?;
    let name = resource.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(resource.type_url.clone()))?;
    let decode_error = |message: String| JsonError::Decode {
        type_url: resource.type_url.clone(),
        message,
    };
    let message = DynamicMessage::decode(descriptor, resource.value.as_slice())
        .map_err(|e| decode_error(e.to_string()))?;
    let options = SerializeOptions::new().stringify_64_bit_integers(true);
    let body = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| decode_error(e.to_string()))?;
    let mut object = serde_json::Map::new();
    object.insert(
        "@type".to_owned(),
        serde_json::Value::String(resource.type_url.clone()),
    );
    if let serde_json::Value::Object(fields) = body {
        object.extend(fields);
    }
    Ok(serde_json::Value::Object(object))
}

/// The built-in descriptor of message `type_name`.
fn descriptor(type_name: &str) -> Result<prost_reflect::MessageDescriptor, JsonError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.clone()))?;
    pool.get_message_by_name(type_name)
        .ok_or_else(|| JsonError::UnknownType(type_name.to_owned()))
}

/// The protobuf encoding of `value`, a `type_name` message in protobuf's JSON
/// mapping (`typed_config` fields as `{"@type": ..., ...}`): how Envoy-style
/// bootstrap files become resources.
pub fn from_json(type_name: &str, value: &serde_json::Value) -> Result<Vec<u8>, JsonError> {
    use prost::Message;
    let descriptor = descriptor(type_name)?;
    let message =
        DynamicMessage::deserialize(descriptor, value.clone()).map_err(|e| JsonError::Decode {
            type_url: type_name.to_owned(),
            message: e.to_string(),
        })?;
    Ok(message.encode_to_vec())
}

/// `patch` merged into `target`, both `type_name` messages, as istiod merges
/// EnvoyFilter values: set scalars replace, messages merge field by field
/// except `google.protobuf.Duration`, which is replaced whole (protobuf's own
/// merge would add a patch's 0.5 s to a 15 s timeout's seconds), lists
/// append, maps insert by key.
pub fn merge(type_name: &str, target: &[u8], patch: &[u8]) -> Result<Vec<u8>, JsonError> {
    use prost::Message;
    let descriptor = descriptor(type_name)?;
    let decode = |bytes: &[u8]| {
        DynamicMessage::decode(descriptor.clone(), bytes).map_err(|e| JsonError::Decode {
            type_url: type_name.to_owned(),
            message: e.to_string(),
        })
    };
    let mut merged = decode(target)?;
    merge_into(&mut merged, &decode(patch)?);
    Ok(merged.encode_to_vec())
}

fn merge_into(target: &mut DynamicMessage, patch: &DynamicMessage) {
    use prost_reflect::{ReflectMessage, Value};
    for (field, value) in patch.fields() {
        match (target.get_field_mut(&field), value) {
            (Value::Message(into), Value::Message(from))
                if from.descriptor().full_name() != "google.protobuf.Duration" =>
            {
                merge_into(into, from);
            }
            (Value::List(into), Value::List(from)) => into.extend(from.iter().cloned()),
            (Value::Map(into), Value::Map(from)) => {
                into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => target.set_field(&field, value.clone()),
        }
    }
}

/// The type URLs of the two TypedStruct wrappers (udpa's and its xds successor).
pub const TYPED_STRUCTS: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

/// `any` itself, or when it is a TypedStruct, the message it stands for
/// (its `type_url`, its `value` encoded as that type), as Envoy reads one.
pub fn unwrap_typed_struct(any: &Any) -> Result<std::borrow::Cow<'_, Any>, JsonError> {
    if !TYPED_STRUCTS.contains(&any.type_url.as_str()) {
        return Ok(std::borrow::Cow::Borrowed(any));
    }
    let wrapper = to_json(any)?;
    let type_url = wrapper["typeUrl"].as_str().unwrap_or_default().to_owned();
    let type_name = type_url.rsplit('/').next().unwrap_or_default();
    let value = match wrapper.get("value") {
        Some(v) => v.clone(),
        None => serde_json::Value::Object(serde_json::Map::new()),
    };
    let encoded = from_json(type_name, &value)?;
    Ok(std::borrow::Cow::Owned(Any {
        type_url,
        value: encoded,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use envoy_types::util::pack_any;

    #[test]
    fn a_cluster_with_a_nested_any() {
        let tls = UpstreamTlsContext {
            sni: "outbound_.9080_._.reviews".to_owned(),
            ..Default::default()
        };
        let cluster = Cluster {
            name: "outbound|9080||reviews".to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".to_owned(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(tls))),
            }),
            ..Default::default()
        };
        let json = to_json(&pack_any(cluster)).expect("renders");
        assert_eq!(
            json["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
        assert_eq!(json["name"], "outbound|9080||reviews");
        assert_eq!(json["type"], "EDS");
        let socket = &json["transportSocket"]["typedConfig"];
        assert_eq!(
            socket["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        assert_eq!(socket["sni"], "outbound_.9080_._.reviews");
    }

    #[test]
    fn a_typed_struct_becomes_the_message_it_wraps() {
        use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
        use prost::Message;
        let wrapped = serde_json::json!({
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "value": {
                "stat_prefix": "http_local_rate_limiter",
                "token_bucket": {"max_tokens": 4, "tokens_per_fill": 4, "fill_interval": "60s"},
                "filter_enabled": {"runtime_key": "x", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            }
        });
        let any = Any {
            type_url: TYPED_STRUCTS[0].to_owned(),
            value: from_json("udpa.type.v1.TypedStruct", &{
                let mut body = wrapped.clone();
                body.as_object_mut().map(|o| o.remove("@type"));
                body
            })
            .expect("encodes"),
        };
        let inner = unwrap_typed_struct(&any).expect("unwraps");
        assert!(inner.type_url.ends_with("LocalRateLimit"));
        let config = LocalRateLimit::decode(inner.value.as_slice()).expect("decodes");
        assert_eq!(config.stat_prefix, "http_local_rate_limiter");
        let bucket = config.token_bucket.expect("bucket");
        assert_eq!(bucket.max_tokens, 4);
        assert_eq!(bucket.fill_interval.map(|d| d.seconds), Some(60));
    }

    #[test]
    fn merges_replace_durations_append_lists_and_recurse() {
        use envoy_types::pb::envoy::config::route::v3::route::Action;
        use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction};
        use envoy_types::pb::google::protobuf::Duration;
        use prost::Message;
        let action = |timeout: Duration, cluster: &str| {
            Route {
            name: "r".to_owned(),
            action: Some(Action::Route(RouteAction {
                timeout: Some(timeout),
                cluster_specifier: (!cluster.is_empty()).then(|| {
                    envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(cluster.to_owned())
                }),
                ..Default::default()
            })),
            request_headers_to_remove: vec!["a".to_owned()],
            ..Default::default()
        }
        };
        let target = action(
            Duration {
                seconds: 15,
                nanos: 0,
            },
            "c",
        );
        let mut patch = action(
            Duration {
                seconds: 0,
                nanos: 500_000_000,
            },
            "",
        );
        patch.name = String::new();
        patch.request_headers_to_remove = vec!["b".to_owned()];
        let merged = merge(
            "envoy.config.route.v3.Route",
            &target.encode_to_vec(),
            &patch.encode_to_vec(),
        )
        .expect("merges");
        let merged = Route::decode(merged.as_slice()).expect("decodes");
        assert_eq!(merged.name, "r", "unset in the patch: kept");
        assert_eq!(merged.request_headers_to_remove, ["a", "b"]);
        let Some(Action::Route(a)) = merged.action else {
            panic!("a route action")
        };
        assert_eq!(
            a.timeout,
            Some(Duration {
                seconds: 0,
                nanos: 500_000_000
            }),
            "replaced whole"
        );
        assert!(
            a.cluster_specifier.is_some(),
            "the nested message merged, not replaced"
        );
    }

    #[test]
    fn an_unknown_type_is_named() {
        let any = Any {
            type_url: "type.googleapis.com/example.Nothing".to_owned(),
            value: Vec::new(),
        };
        let error = to_json(&any).expect_err("unknown");
        assert!(error.to_string().contains("example.Nothing"));
    }
}
