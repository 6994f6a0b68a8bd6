//! Header mutations a route configuration asks for (`request_headers_to_add`,
//! `..._to_remove`, and the response's), at the weighted-cluster, route,
//! virtual-host and route-configuration levels. Each list is applied as
//! Envoy's header parser applies it: removals first, then the entries that
//! overwrite, then those that append.

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The request's and the response's mutations at one level.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub request: Mutation,
    pub response: Mutation,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// One direction's mutations, in the order they apply.
#[derive(Debug, Default)]
pub struct Mutation {
    remove: Vec<HeaderName>,
    /// Overwriting entries first, then appending ones (each in config order).
    add: Vec<Add>,
}

#[derive(Debug)]
struct Add {
    name: HeaderName,
    value: HeaderValue,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    AppendOrAdd,
    AddIfAbsent,
    OverwriteOrAdd,
    OverwriteIfExists,
}

impl Action {
    fn overwrites(self) -> bool {
        matches!(self, Action::OverwriteOrAdd | Action::OverwriteIfExists)
    }
}

impl Mutation {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Removals first; then each entry decided on the headers as they were
    /// before any addition (as Envoy decides `ADD_IF_ABSENT` and
    /// `OVERWRITE_IF_EXISTS`), the overwrites applied before the appends.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        if self.add.is_empty() {
            return;
        }
        let present: Vec<bool> = self
            .add
            .iter()
            .map(|a| headers.contains_key(&a.name))
            .collect();
        for (add, present) in self.add.iter().zip(present) {
            match add.action {
                Action::OverwriteOrAdd => {
                    headers.insert(&add.name, add.value.clone());
                }
                Action::OverwriteIfExists if present => {
                    headers.insert(&add.name, add.value.clone());
                }
                Action::AppendOrAdd => {
                    headers.append(&add.name, add.value.clone());
                }
                Action::AddIfAbsent if !present => {
                    headers.append(&add.name, add.value.clone());
                }
                Action::OverwriteIfExists | Action::AddIfAbsent => {}
            }
        }
    }
}

/// The request's and the response's lists of one level.
pub struct Lists<'a> {
    pub request_add: &'a [HeaderValueOption],
    pub request_remove: &'a [String],
    pub response_add: &'a [HeaderValueOption],
    pub response_remove: &'a [String],
}

pub fn convert(lists: Lists<'_>) -> Result<HeaderOps, String> {
    Ok(HeaderOps {
        request: mutation(lists.request_add, lists.request_remove)?,
        response: mutation(lists.response_add, lists.response_remove)?,
    })
}

fn mutation(add: &[HeaderValueOption], remove: &[String]) -> Result<Mutation, String> {
    let remove = remove
        .iter()
        .map(|name| header_name(name))
        .collect::<Result<_, _>>()?;
    let mut entries: Vec<Add> = add
        .iter()
        .filter_map(|o| entry(o).transpose())
        .collect::<Result<_, _>>()?;
    // A stable sort keeps the config's order within each group.
    entries.sort_by_key(|a| !a.action.overwrites());
    Ok(Mutation {
        remove,
        add: entries,
    })
}

/// One entry; `None` for an empty value Envoy would not add.
fn entry(option: &HeaderValueOption) -> Result<Option<Add>, String> {
    let header = option
        .header
        .as_ref()
        .ok_or("a header entry without a header")?;
    let name = header_name(&header.key)?;
    let raw = if header.raw_value.is_empty() {
        header.value.as_bytes()
    } else {
        header.raw_value.as_slice()
    };
    let literal = literal(raw).map_err(|e| format!("header {:?}: {e}", header.key))?;
    if literal.is_empty() && !option.keep_empty_value {
        return Ok(None);
    }
    let value = HeaderValue::from_bytes(&literal).map_err(|_| {
        format!(
            "header {:?}: the value is not a valid header value",
            header.key
        )
    })?;
    Ok(Some(Add {
        name,
        value,
        action: action(option)?,
    }))
}

/// Envoy's `append` (legacy) or `append_action`; both at once is an error.
#[allow(deprecated)]
fn action(option: &HeaderValueOption) -> Result<Action, String> {
    let explicit = HeaderAppendAction::try_from(option.append_action)
        .map_err(|_| format!("unknown append_action {}", option.append_action))?;
    match (&option.append, explicit) {
        (Some(append), HeaderAppendAction::AppendIfExistsOrAdd) => Ok(if append.value {
            Action::AppendOrAdd
        } else {
            Action::OverwriteOrAdd
        }),
        (Some(_), _) => Err("both append and append_action are set".to_owned()),
        (None, HeaderAppendAction::AppendIfExistsOrAdd) => Ok(Action::AppendOrAdd),
        (None, HeaderAppendAction::AddIfAbsent) => Ok(Action::AddIfAbsent),
        (None, HeaderAppendAction::OverwriteIfExistsOrAdd) => Ok(Action::OverwriteOrAdd),
        (None, HeaderAppendAction::OverwriteIfExists) => Ok(Action::OverwriteIfExists),
    }
}

/// Pseudo-headers and `host` are refused, as Envoy refuses them.
fn header_name(name: &str) -> Result<HeaderName, String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') || lower == "host" {
        return Err(format!("header {name:?} cannot be added or removed"));
    }
    HeaderName::from_bytes(lower.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))
}

/// A value as Envoy's formatter reads it: `%%` is a literal `%`; command
/// operators (`%START_TIME%` and the like) are not supported yet.
fn literal(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'%') => out.push(b'%'),
            _ => {
                return Err(
                    "command operators (%...%) in header values are not supported yet; write a literal % as %%"
                        .to_owned(),
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
    use envoy_types::pb::google::protobuf::BoolValue;

    fn option(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(EnvoyHeader {
                key: key.to_owned(),
                value: value.to_owned(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    fn values(map: &HeaderMap, name: &str) -> Vec<String> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect()
    }

    #[test]
    fn removals_then_overwrites_then_appends() {
        use HeaderAppendAction::*;
        let add = [
            option("x-a", "appended", AppendIfExistsOrAdd),
            option("x-a", "set", OverwriteIfExistsOrAdd),
            option("x-new", "only-if-absent", AddIfAbsent),
            option("x-old", "kept", AddIfAbsent),
            option("x-missing", "never", OverwriteIfExists),
            option("x-gone", "back", AppendIfExistsOrAdd),
            option("x-empty", "", OverwriteIfExistsOrAdd),
            option("x-pct", "100%%", OverwriteIfExistsOrAdd),
        ];
        let m = mutation(&add, &["x-gone".to_owned()]).expect("converts");
        let mut h = headers(&[("x-a", "client"), ("x-old", "client"), ("x-gone", "client")]);
        m.apply(&mut h);
        // The overwrite comes first whatever the order in the config.
        assert_eq!(values(&h, "x-a"), ["set", "appended"]);
        assert_eq!(values(&h, "x-new"), ["only-if-absent"]);
        assert_eq!(values(&h, "x-old"), ["client"]);
        assert!(h.get("x-missing").is_none());
        // Removed before the additions, so added anew.
        assert_eq!(values(&h, "x-gone"), ["back"]);
        assert!(h.get("x-empty").is_none(), "an empty value is not added");
        assert_eq!(values(&h, "x-pct"), ["100%"]);
    }

    #[test]
    fn presence_is_decided_before_any_addition() {
        use HeaderAppendAction::*;
        let m = mutation(
            &[
                option("x", "1", OverwriteIfExistsOrAdd),
                option("x", "2", AddIfAbsent),
                option("y", "1", OverwriteIfExistsOrAdd),
                option("y", "2", OverwriteIfExists),
            ],
            &[],
        )
        .expect("converts");
        let mut h = HeaderMap::new();
        m.apply(&mut h);
        // x was absent when decided, so both land; y was absent, so the
        // second overwrite does not apply.
        assert_eq!(values(&h, "x"), ["1", "2"]);
        assert_eq!(values(&h, "y"), ["1"]);
    }

    #[test]
    #[allow(deprecated)]
    fn the_legacy_append_flag_and_what_is_refused() {
        let mut legacy = option("x-a", "v", HeaderAppendAction::AppendIfExistsOrAdd);
        legacy.append = Some(BoolValue { value: false });
        assert_eq!(action(&legacy), Ok(Action::OverwriteOrAdd));
        let mut both = option("x-a", "v", HeaderAppendAction::AddIfAbsent);
        both.append = Some(BoolValue { value: true });
        assert!(action(&both).is_err());
        let refused = |key: &str, value: &str| {
            mutation(
                &[option(key, value, HeaderAppendAction::AppendIfExistsOrAdd)],
                &[],
            )
            .is_err()
        };
        assert!(refused(":path", "/x"));
        assert!(refused("host", "h"));
        assert!(refused("x-a", "%START_TIME%"));
        assert!(refused("bad name", "v"));
        assert!(mutation(&[], &[":authority".to_owned()]).is_err());
    }
}
