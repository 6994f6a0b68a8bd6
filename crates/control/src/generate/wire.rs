//! Small builders for the Envoy messages every generator needs.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, SocketAddress,
    TypedExtensionConfig,
};
use envoy_types::pb::google::protobuf::{self, Struct, UInt32Value, Value, value::Kind};
use envoy_types::util::pack_any;
use prost::{Message, Name};

/// Resources of a named type come over the same ADS stream.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn duration(d: std::time::Duration) -> protobuf::Duration {
    protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// Filter metadata: `{filter: {key: value, ...}}`, string values only.
pub fn metadata<'a>(
    entries: impl IntoIterator<Item = (&'a str, Vec<(&'a str, String)>)>,
) -> Metadata {
    Metadata {
        filter_metadata: entries
            .into_iter()
            .map(|(filter, fields)| {
                let fields = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), string_value(&v)))
                    .collect();
                (filter.to_owned(), Struct { fields })
            })
            .collect(),
        ..Default::default()
    }
}

/// A named extension with its typed config, as filters and transport sockets take.
pub fn extension<T: Message + Name>(name: &str, config: T) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(pack_any(config)),
    }
}
