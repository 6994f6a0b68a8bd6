//! A VirtualService's `headers` as Envoy's header mutations, the way istiod
//! writes them: `set` entries overwrite (or add), `add` entries append, each
//! group sorted by name, `set` first; `:authority` / `host` in a request's
//! `set` or `add` become the route's host rewrite instead, and internal
//! headers (`:`-prefixed, `host`) are dropped from the removals.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use oxmesh_config::networking::virtual_service::{HeaderOperations, Headers};

/// What one `headers` stanza asks of a route or a weighted cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderMutations {
    pub request_add: Vec<HeaderValueOption>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<HeaderValueOption>,
    pub response_remove: Vec<String>,
    /// The request's `:authority` (or `host`), as a host rewrite.
    pub authority: Option<String>,
}

pub fn translate(headers: Option<&Headers>) -> HeaderMutations {
    let Some(headers) = headers else {
        return HeaderMutations::default();
    };
    let request = headers.request.as_ref();
    let response = headers.response.as_ref();
    HeaderMutations {
        request_add: additions(request),
        request_remove: removals(request),
        response_add: additions(response),
        response_remove: removals(response),
        // A `set` authority wins over an `add` one, as in istiod.
        authority: request.and_then(|r| authority(&r.set).or_else(|| authority(&r.add))),
    }
}

fn additions(ops: Option<&HeaderOperations>) -> Vec<HeaderValueOption> {
    let Some(ops) = ops else {
        return Vec::new();
    };
    let entries = |map: &std::collections::BTreeMap<String, String>, action: HeaderAppendAction| {
        map.iter()
            .filter(|(name, _)| !is_internal(name))
            .map(move |(name, value)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: name.clone(),
                    value: value.clone(),
                    ..Default::default()
                }),
                append_action: action as i32,
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    // The maps are sorted by name, as istiod sorts each group.
    let mut out = entries(&ops.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
    out.extend(entries(&ops.add, HeaderAppendAction::AppendIfExistsOrAdd));
    out
}

fn removals(ops: Option<&HeaderOperations>) -> Vec<String> {
    ops.map(|o| {
        o.remove
            .iter()
            .filter(|name| !is_internal(name))
            .cloned()
            .collect()
    })
    .unwrap_or_default()
}

fn authority(map: &std::collections::BTreeMap<String, String>) -> Option<String> {
    map.iter()
        .find(|(name, _)| {
            name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
        })
        .map(|(_, value)| value.clone())
}

/// Pseudo-headers and `host`, which Envoy refuses to add or remove.
fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(json: serde_json::Value) -> Headers {
        serde_json::from_value(json).expect("headers")
    }

    #[test]
    fn set_overwrites_add_appends_and_authority_rewrites_the_host() {
        let h = headers(serde_json::json!({
            "request": {
                "set": {"x-b": "2", "x-a": "1", ":authority": "set.example"},
                "add": {"x-c": "3", "host": "add.example"},
                "remove": ["x-gone", "host", ":path"],
            },
            "response": {"add": {"x-r": "r"}, "remove": ["server"]},
        }));
        let m = translate(Some(&h));
        let keys: Vec<(&str, i32)> = m
            .request_add
            .iter()
            .map(|o| {
                (
                    o.header.as_ref().map_or("", |h| h.key.as_str()),
                    o.append_action,
                )
            })
            .collect();
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
        assert_eq!(
            keys,
            [("x-a", overwrite), ("x-b", overwrite), ("x-c", append)]
        );
        assert_eq!(m.request_remove, ["x-gone"]);
        assert_eq!(m.authority.as_deref(), Some("set.example"));
        assert_eq!(m.response_add.len(), 1);
        assert_eq!(m.response_remove, ["server"]);
    }

    #[test]
    fn no_headers_ask_for_nothing() {
        assert_eq!(translate(None), HeaderMutations::default());
    }
}
