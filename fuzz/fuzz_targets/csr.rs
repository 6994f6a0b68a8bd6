//! The CA's input path: bytes → CSR (PEM or DER) → identity check → signature. No
//! input may panic, and a request that passed the checks must sign.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oxmesh_identity::ca::{Authority, Lifetimes};
use oxmesh_identity::csr::SigningRequest;
use oxmesh_identity::{SpiffeId, TrustDomain};

fn ca() -> &'static (Authority, SpiffeId) {
    static CA: OnceLock<(Authority, SpiffeId)> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("oxmesh-fuzz-csr-{}", std::process::id()));
        let authority =
            Authority::self_signed(&dir, &TrustDomain::cluster_local(), Lifetimes::default())
                .expect("a CA in a fresh directory");
        let identity = "spiffe://cluster.local/ns/fuzz/sa/fuzz"
            .parse()
            .expect("valid id");
        (authority, identity)
    })
}

fn exercise(request: &SigningRequest) {
    let (authority, identity) = ca();
    let _ = request.identity();
    if request.check_identity(identity).is_ok() {
        authority
            .sign(request, identity, None)
            .expect("a checked request signs");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = SigningRequest::from_der(data) {
        exercise(&request);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(request) = SigningRequest::from_pem(text) {
            exercise(&request);
        }
    }
});
