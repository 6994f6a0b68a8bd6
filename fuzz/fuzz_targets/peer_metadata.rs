//! The peer-metadata headers another proxy sends (`x-envoy-peer-metadata`, a
//! base64 protobuf Struct): taken off the request whatever they hold, never a
//! panic, whether the value is raw bytes or base64 of them.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use oxmesh_proxy::peer;

fn check(value: HeaderValue) {
    let mut headers = HeaderMap::new();
    headers.insert(peer::METADATA.clone(), value.clone());
    headers.insert(peer::METADATA_ID.clone(), value);
    let _ = peer::take(&mut headers);
    assert!(
        headers.is_empty(),
        "the metadata headers never reach the app"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = HeaderValue::from_bytes(data) {
        check(raw);
    }
    if let Ok(encoded) = HeaderValue::from_str(&STANDARD.encode(data)) {
        check(encoded);
    }
});
