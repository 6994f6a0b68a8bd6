//! Istio's TCP metadata exchange as a peer's bytes reach it: a frame (magic,
//! length, protobuf) taken off the front, everything else passed on. No input
//! may panic; what reaches the application is the input's tail, and nothing
//! at all when the frame is refused.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oxmesh_proxy::exchange::Stripped;
use tokio::io::AsyncReadExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut stream, _told) = Stripped::new(data);
        let mut out = Vec::new();
        match stream.read_to_end(&mut out).await {
            Ok(_) => assert!(data.ends_with(&out), "bytes the peer never sent"),
            Err(_) => assert!(out.is_empty(), "part of a refused frame delivered"),
        }
    });
});
