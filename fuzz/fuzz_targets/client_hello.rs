//! A connection's first bytes as the listener's inspector reads them: TLS
//! ClientHello (SNI, ALPN) or HTTP/1.x / h2c. No input may panic, and what it
//! reports comes from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxmesh_proxy::inspect::{Wanted, sniff};

fuzz_target!(|data: &[u8]| {
    for (tls, http) in [(true, true), (true, false), (false, true)] {
        let Some(detected) = sniff(data, Wanted { tls, http }) else {
            continue;
        };
        if let Some(sni) = &detected.sni {
            assert!(sni.len() <= data.len(), "an SNI longer than the hello");
        }
        let alpn: usize = detected.alpn.iter().map(String::len).sum();
        assert!(
            alpn <= data.len().max(8),
            "ALPN names longer than the hello"
        );
    }
});
