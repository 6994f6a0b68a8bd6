//! Rate-limit policies on routes and virtual hosts (Envoy's route `RateLimit`):
//! each is a list of actions that turn a request into one descriptor, the
//! key/value entries the local and global rate-limit filters count by. A
//! policy whose action finds nothing to say (a header that is absent) makes no
//! descriptor for that request.

use envoy_types::pb::envoy::config::route::v3::RateLimit as EnvoyRateLimit;
use envoy_types::pb::envoy::config::route::v3::rate_limit::action::ActionSpecifier;

use super::route::{HeaderMatch, header_match};

#[derive(Debug)]
pub struct Policy {
    /// Only filters of the same stage use the policy.
    pub stage: u32,
    pub actions: Vec<Action>,
}

#[derive(Debug)]
pub enum Action {
    /// `("source_cluster", <this proxy's service cluster>)`.
    SourceCluster,
    /// `("destination_cluster", <the route's cluster>)`.
    DestinationCluster,
    /// `(key, <the header's value>)`; without the header, no descriptor unless
    /// `skip_if_absent`, which leaves the entry out instead.
    RequestHeader {
        name: String,
        key: String,
        skip_if_absent: bool,
    },
    /// `("remote_address", <the client's address>)`.
    RemoteAddress,
    /// `(key, value)` always.
    GenericKey { key: String, value: String },
    /// `(key, value)` when the headers match (or, with `expect_match` false,
    /// when they do not).
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderMatch>,
    },
}

/// A rate-limit filter's config of type `type_url`, given directly or
/// wrapped in a TypedStruct.
pub(crate) fn decode<T: prost::Message + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
    type_url: &str,
) -> Result<T, String> {
    let any = oxmesh_xds::json::unwrap_typed_struct(any).map_err(|e| e.to_string())?;
    if any.type_url != type_url {
        return Err(format!("expected {type_url}, got {}", any.type_url));
    }
    T::decode(any.value.as_slice()).map_err(|e| e.to_string())
}

/// One descriptor: its entries in the order the actions made them.
pub type Descriptor = Vec<(String, String)>;

pub fn policies(list: &[EnvoyRateLimit]) -> Result<Vec<Policy>, String> {
    list.iter()
        .enumerate()
        .map(|(i, p)| policy(p).map_err(|e| format!("rate_limits[{i}]: {e}")))
        .collect()
}

fn policy(p: &EnvoyRateLimit) -> Result<Policy, String> {
    if p.limit.is_some() || p.hits_addend.is_some() || p.apply_on_stream_done {
        return Err(
            "limit overrides, hits_addend and apply_on_stream_done are not supported".to_owned(),
        );
    }
    if p.actions.is_empty() {
        return Err("a rate limit needs at least one action".to_owned());
    }
    let actions = p
        .actions
        .iter()
        .enumerate()
        .map(|(i, a)| action(a.action_specifier.as_ref()).map_err(|e| format!("actions[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        stage: p.stage.map_or(0, |s| s.value),
        actions,
    })
}

fn action(a: Option<&ActionSpecifier>) -> Result<Action, String> {
    let or = |given: &str, default: &str| {
        if given.is_empty() {
            default.to_owned()
        } else {
            given.to_owned()
        }
    };
    Ok(match a {
        Some(ActionSpecifier::SourceCluster(_)) => Action::SourceCluster,
        Some(ActionSpecifier::DestinationCluster(_)) => Action::DestinationCluster,
        Some(ActionSpecifier::RequestHeaders(h)) => {
            if h.header_name.is_empty() || h.descriptor_key.is_empty() {
                return Err("request_headers needs header_name and descriptor_key".to_owned());
            }
            Action::RequestHeader {
                name: h.header_name.to_ascii_lowercase(),
                key: h.descriptor_key.clone(),
                skip_if_absent: h.skip_if_absent,
            }
        }
        Some(ActionSpecifier::RemoteAddress(_)) => Action::RemoteAddress,
        Some(ActionSpecifier::GenericKey(g)) => {
            if g.descriptor_value.is_empty() {
                return Err("generic_key needs a descriptor_value".to_owned());
            }
            Action::GenericKey {
                key: or(&g.descriptor_key, "generic_key"),
                value: g.descriptor_value.clone(),
            }
        }
        Some(ActionSpecifier::HeaderValueMatch(m)) => {
            if m.descriptor_value.is_empty() || m.headers.is_empty() {
                return Err("header_value_match needs a descriptor_value and headers".to_owned());
            }
            Action::HeaderValueMatch {
                key: or(&m.descriptor_key, "header_match"),
                value: m.descriptor_value.clone(),
                expect_match: m.expect_match.as_ref().is_none_or(|b| b.value),
                headers: m
                    .headers
                    .iter()
                    .map(header_match)
                    .collect::<Result<_, _>>()?,
            }
        }
        Some(_) => {
            return Err("only source_cluster, destination_cluster, request_headers, remote_address, generic_key and header_value_match actions are supported".to_owned());
        }
        None => return Err("an action with nothing set".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::rate_limit::Action as EnvoyAction;
    use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{
        GenericKey, QueryParameters, RequestHeaders,
    };

    fn limit(actions: Vec<ActionSpecifier>) -> EnvoyRateLimit {
        EnvoyRateLimit {
            actions: actions
                .into_iter()
                .map(|a| EnvoyAction {
                    action_specifier: Some(a),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn actions_with_envoys_default_keys() {
        let p = policies(&[limit(vec![
            ActionSpecifier::RequestHeaders(RequestHeaders {
                header_name: ":PATH".to_owned(),
                descriptor_key: "PATH".to_owned(),
                skip_if_absent: false,
            }),
            ActionSpecifier::GenericKey(GenericKey {
                descriptor_value: "slow".to_owned(),
                ..Default::default()
            }),
        ])])
        .expect("converts");
        assert!(matches!(
            &p[0].actions[..],
            [
                Action::RequestHeader { name, key, skip_if_absent: false },
                Action::GenericKey { key: generic, value },
            ] if name == ":path" && key == "PATH" && generic == "generic_key" && value == "slow"
        ));
    }

    #[test]
    fn unsupported_actions_are_named() {
        let error = policies(&[limit(vec![ActionSpecifier::QueryParameters(
            QueryParameters::default(),
        )])])
        .expect_err("refused");
        assert!(error.starts_with("rate_limits[0]: actions[0]:"), "{error}");
    }
}
