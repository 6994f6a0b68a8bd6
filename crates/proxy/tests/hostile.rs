//! Hostile HTTP/2 clients against the proxy's listener, in raw frames: a
//! rapid-reset flood (CVE-2023-44487's pattern) and a header block grown past
//! the header limit with CONTINUATION frames. The attacker's connection is
//! closed, and the proxy keeps serving everyone else.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// GET / with authority `a`, from HPACK's static table and one literal.
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a']
}

async fn proxy(dir: &TempDir) -> Proxy {
    let backend = support::header_backend().await;
    let text = support::bootstrap(
        &support::http_listener("web", "", ""),
        &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
    );
    support::start(dir, &text, support::workload("foo", "httpbin"))
}

/// Reads frames until the peer closes; whether a GOAWAY came first.
async fn closed(stream: &mut TcpStream) -> Result<bool, &'static str> {
    let mut goaway = false;
    let mut header = [0u8; 9];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header));
        match read.await {
            Err(_) => return Err("the connection stayed open"),
            Ok(Err(_)) => return Ok(goaway),
            Ok(Ok(_)) => {}
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        goaway |= header[3] == GOAWAY;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return Ok(goaway);
        }
    }
}

async fn still_serves(address: SocketAddr) {
    let (status, _, _) = support::get(address, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "other clients are still served");
}

#[tokio::test]
async fn a_rapid_reset_flood_is_cut_off() {
    let dir = TempDir::new("proxy-hostile-reset");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..20_000u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &get_block(),
        ));
        flood.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    // The proxy may close before it has read everything.
    let _ = attacker.write_all(&flood).await;
    let outcome = closed(&mut attacker).await;
    assert_eq!(outcome, Ok(true), "told to go away, then closed");
    still_serves(address).await;
}

#[tokio::test]
async fn a_header_block_past_the_limit_is_refused() {
    let dir = TempDir::new("proxy-hostile-headers");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(HEADERS, END_STREAM, 1, &get_block()));
    // A literal header `x: <15,000 bytes>` per frame (under the 16 KiB frame
    // size), 7.5 MB in all: far past the 60 KiB limit, never ending the block.
    let mut literal = vec![0x00, 0x01, b'x', 0x7f];
    let value_len = 15_000usize;
    let mut n = value_len - 127;
    while n >= 128 {
        literal.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    literal.push(n as u8);
    literal.extend(std::iter::repeat_n(b'v', value_len));
    for _ in 0..512 {
        bytes.extend(frame(CONTINUATION, 0, 1, &literal));
    }
    let _ = attacker.write_all(&bytes).await;
    let outcome = closed(&mut attacker).await;
    assert!(outcome.is_ok(), "the connection is closed: {outcome:?}");
    still_serves(address).await;
}
