//! Bytes → documents → typed objects → validation: any input, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let loaded = oxmesh_config::load::load_bytes(Path::new("fuzz.yaml"), data);
    for diagnostic in &loaded.diagnostics {
        // Every finding must render (and name where it is).
        assert!(!diagnostic.to_string().is_empty());
    }
});
