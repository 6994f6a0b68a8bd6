//! Hostile clients against the proxy's listeners, in raw bytes: HTTP/2 floods
//! and malformed frames (rapid reset, CONTINUATION past the header limit, an
//! HPACK bomb, a DATA frame on stream 0), HTTP/1.1 slowloris, oversized and
//! malformed heads, a body too big to hold, hundreds of idle connections, and
//! TLS ClientHellos that are truncated or huge. Each attacker is answered with
//! the right code or closed, and the proxy keeps serving everyone else.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use oxmesh_proxy::process::Proxy;
use oxmesh_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
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
    proxy_with(dir, "").await
}

/// A proxy whose connection manager has `options` (ten spaces in).
async fn proxy_with(dir: &TempDir, options: &str) -> Proxy {
    let backend = support::header_backend().await;
    let text = support::bootstrap(
        &support::http_listener("web", options, ""),
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

/// How the proxy answered a request on stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    /// RST_STREAM with this error code.
    Reset(u32),
    /// A response head; whether it said 431.
    Head { status_431: bool },
    /// GOAWAY or a close before any answer.
    Closed,
    /// Nothing within 10 s: the proxy hangs on it.
    Silent,
}

/// Reads frames until stream 1 is answered or the connection ends.
async fn answer_to_stream_1(stream: &mut TcpStream) -> Answer {
    let mut header = [0u8; 9];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header));
        match read.await {
            Err(_) => return Answer::Silent,
            Ok(Err(_)) => return Answer::Closed,
            Ok(Ok(_)) => {}
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return Answer::Closed;
        }
        match (header[3], id) {
            (GOAWAY, _) => return Answer::Closed,
            (RST_STREAM, 1) => {
                let code = payload
                    .get(..4)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return Answer::Reset(code);
            }
            (HEADERS, 1) => {
                let status_431 = payload.windows(3).any(|w| w == b"431");
                return Answer::Head { status_431 };
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn an_hpack_bomb_is_refused_without_expanding_it() {
    let dir = TempDir::new("proxy-hostile-hpack");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    // One 4,000-byte header put in the dynamic table, then referred to 2,000
    // times by its one-byte index: 4 KB on the wire, 8 MB decoded.
    let mut block = get_block();
    block.extend([0x40, 0x01, b'x', 0x7f]);
    let mut n = 4_000usize - 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
    block.extend(std::iter::repeat_n(b'v', 4_000));
    block.extend(std::iter::repeat_n(0xbe, 2_000));
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    attacker.write_all(&bytes).await.expect("write");
    let answer = answer_to_stream_1(&mut attacker).await;
    assert!(
        matches!(
            answer,
            Answer::Head { status_431: true } | Answer::Reset(_) | Answer::Closed
        ),
        "the request is refused, never served: {answer:?}"
    );
    still_serves(address).await;
}

#[tokio::test]
async fn a_data_frame_on_the_connection_stream_is_a_protocol_error() {
    let dir = TempDir::new("proxy-hostile-frame");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(DATA, 0, 0, b"not on stream 0"));
    attacker.write_all(&bytes).await.expect("write");
    let outcome = closed(&mut attacker).await;
    assert_eq!(outcome, Ok(true), "told to go away, then closed");
    still_serves(address).await;
}

/// Writes `head` as one client, then reads what the proxy answers until it
/// closes the connection; `Err` when it is still open after 15 s.
async fn answer_to(address: SocketAddr, head: &[u8]) -> Result<String, &'static str> {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    // The proxy may answer and close before it has read everything.
    let _ = stream.write_all(head).await;
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> Result<String, &'static str> {
    let mut answer = Vec::new();
    // Past the proxy's own 10 s handshake and head timeouts, so a busy
    // machine never races them.
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer));
    match read.await {
        Err(_) => Err("the connection stayed open"),
        // A reset after the answer still delivered the answer.
        Ok(_) => Ok(String::from_utf8_lossy(&answer).into_owned()),
    }
}

#[tokio::test]
async fn a_head_past_60_kib_gets_431() {
    let dir = TempDir::new("proxy-hostile-big-head");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    let mut head = b"GET / HTTP/1.1\r\nhost: a\r\nx-big: ".to_vec();
    head.extend(std::iter::repeat_n(b'v', 70 * 1024));
    head.extend(b"\r\n\r\n");
    let answer = answer_to(address, &head).await.expect("closed");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.40}");
    still_serves(address).await;
}

#[tokio::test]
async fn a_malformed_head_gets_400() {
    let dir = TempDir::new("proxy-hostile-malformed");
    let proxy = proxy(&dir).await;
    let address = proxy.listeners.bound("web")[0];
    for head in [
        b"GET / HTTP/1.1\r\nhost: a\r\nno colon in this line\r\n\r\n".as_slice(),
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabc",
        b"GET /\x01path HTTP/1.1\r\nhost: a\r\n\r\n",
    ] {
        let answer = answer_to(address, head).await.expect("closed");
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} → {answer:.40}",
            String::from_utf8_lossy(head)
        );
    }
    still_serves(address).await;
}

#[tokio::test]
async fn a_client_trickling_its_head_is_cut_off() {
    let dir = TempDir::new("proxy-hostile-slowloris");
    let proxy = proxy_with(&dir, "          request_headers_timeout: 1s\n").await;
    let address = proxy.listeners.bound("web")[0];
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // A header byte every 100 ms, forever: the head never ends.
    let trickle = tokio::spawn(async move {
        let _ = writer
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ")
            .await;
        while writer.write_all(b"v").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer));
    assert!(read.await.is_ok(), "the trickling client was cut off");
    let took = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "closed, or told 408: {answer:.40}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );
    still_serves(address).await;
}

/// A GET on an open HTTP/1.1 connection, read to its end: the status.
async fn get_on(sender: &mut hyper::client::conn::http1::SendRequest<String>) -> StatusCode {
    use http_body_util::BodyExt;
    let request = hyper::Request::get("/")
        .header("host", "httpbin.foo:8000")
        .body(String::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    status
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_head_timeout_until_the_idle_timeout() {
    let dir = TempDir::new("proxy-hostile-keepalive");
    let options = "          request_headers_timeout: 1s
          common_http_protocol_options: {idle_timeout: 3s}
";
    let proxy = proxy_with(&dir, options).await;
    let address = proxy.listeners.bound("web")[0];
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    let connection = tokio::spawn(connection);
    assert_eq!(get_on(&mut sender).await, StatusCode::OK);
    // Quiet for twice the head timeout: a keep-alive wait, not a slow head.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!connection.is_finished(), "still open after 2 s idle");
    assert_eq!(get_on(&mut sender).await, StatusCode::OK);
    // Quiet past the idle timeout: the proxy closes it.
    let last = tokio::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(closed.is_ok(), "closed once idle for the idle timeout");
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_millis(2900),
        "not before the idle timeout: {idle:?}"
    );
}

/// Streams what it is sent and answers with the byte count; `first` fires
/// when the first bytes of a body arrive.
async fn counting_backend(first: tokio::sync::mpsc::Sender<()>) -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first = first.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let first = first.clone();
                        async move {
                            let mut body = req.into_body();
                            let mut count = 0usize;
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Some(data) = frame.data_ref() {
                                    if count == 0 {
                                        let _ = first.try_send(());
                                    }
                                    count += data.len();
                                }
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(count.to_string())),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn a_body_too_big_to_hold_streams_through() {
    use http_body_util::BodyExt;
    let dir = TempDir::new("proxy-hostile-body");
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel(1);
    let backend = counting_backend(first_tx).await;
    let text = support::bootstrap(
        &support::http_listener("web", "", ""),
        &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
    );
    let proxy = support::start(&dir, &text, support::workload("foo", "httpbin"));
    let address = proxy.listeners.bound("web")[0];
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let (chunks, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = hyper::Request::post("/upload")
        .header("host", "httpbin.foo:8000")
        .body(body)
        .expect("request");
    let response = tokio::spawn(sender.send_request(request));
    let chunk = bytes::Bytes::from(vec![b'b'; 1024 * 1024]);
    let _ = chunks
        .send(Ok(hyper::body::Frame::data(chunk.clone())))
        .await;
    // The first megabyte reaches the app before the rest is sent: the proxy
    // passes a body on as it comes and never holds it whole.
    let reached = tokio::time::timeout(Duration::from_secs(10), first_rx.recv()).await;
    assert!(
        matches!(reached, Ok(Some(()))),
        "the body streamed to the app"
    );
    for _ in 1..64 {
        let _ = chunks
            .send(Ok(hyper::body::Frame::data(chunk.clone())))
            .await;
    }
    drop(chunks);
    let response = response.await.expect("task").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body.as_ref(), (64 * 1024 * 1024).to_string().as_bytes());
}

/// Two thousand when the descriptor limit holds them (each takes two here,
/// the proxy's side too, in this one process; the proxy raises its limit as
/// `oxmesh proxy` does), else what fits under the usual soft limit of 1,024.
fn idle_connections() -> usize {
    match oxmesh_proxy::descriptors::raise_to_hard_limit() {
        Ok(limit) if limit >= 4_500 => 2_000,
        _ => 300,
    }
}

#[tokio::test]
async fn idle_connections_leave_others_served_and_are_closed() {
    let dir = TempDir::new("proxy-hostile-idle");
    let proxy = proxy_with(&dir, "          request_headers_timeout: 2s\n").await;
    let address = proxy.listeners.bound("web")[0];
    let mut idle = Vec::new();
    for _ in 0..idle_connections() {
        idle.push(TcpStream::connect(address).await.expect("connect"));
    }
    still_serves(address).await;
    // None of them ever sends a byte: each is closed once the time to send a
    // request head has passed, so they cannot pin the proxy's descriptors.
    for stream in &mut idle {
        let outcome = read_to_close(stream).await;
        assert!(outcome.is_ok(), "an idle connection was closed");
    }
    still_serves(address).await;
}

/// A proxy terminating TLS for `a.example` (its certificate in `dir`) behind
/// a TLS inspector that gives up after a second; the certificate's PEM.
async fn tls_proxy(dir: &TempDir) -> (Proxy, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["a.example".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    dir.write("cert.pem", &cert.pem());
    dir.write("key.pem", &key.serialize_pem());
    let backend = support::header_backend().await;
    let listener = format!(
        r#"  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    listener_filters_timeout: 1s
    filter_chains:
    - filter_chain_match: {{transport_protocol: tls}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: web}}}}]
"#,
        cert = dir.path("cert.pem").display(),
        key = dir.path("key.pem").display(),
    );
    let text = support::bootstrap(
        &listener,
        &support::static_cluster("web", &[backend], "ROUND_ROBIN"),
    );
    let proxy = support::start(dir, &text, support::workload("foo", "httpbin"));
    (proxy, cert.pem())
}

/// A GET over TLS to `a.example`, trusting `ca`: the status.
async fn tls_get(address: SocketAddr, ca: &str) -> StatusCode {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(address).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.example").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let request = hyper::Request::get("/")
        .header("host", "a.example")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    sender
        .send_request(request)
        .await
        .expect("response")
        .status()
}

/// A TLS record of type handshake around `payload`.
fn handshake_record(payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("a record's length");
    let mut out = vec![0x16, 0x03, 0x01];
    out.extend(len.to_be_bytes());
    out.extend(payload);
    out
}

#[tokio::test]
async fn a_truncated_client_hello_is_closed_while_others_are_served() {
    let dir = TempDir::new("proxy-hostile-hello-short");
    let (proxy, ca) = tls_proxy(&dir).await;
    let address = proxy.listeners.bound("tls")[0];
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    // A record promising 16 KiB of ClientHello, then 100 bytes, then nothing.
    let mut start = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
    start.extend([0u8; 100]);
    attacker.write_all(&start).await.expect("write");
    assert_eq!(
        tls_get(address, &ca).await,
        StatusCode::OK,
        "served meanwhile"
    );
    let outcome = read_to_close(&mut attacker).await;
    assert_eq!(outcome, Ok(String::new()), "closed without a word");
    assert_eq!(tls_get(address, &ca).await, StatusCode::OK);
}

#[tokio::test]
async fn a_huge_client_hello_is_closed_while_others_are_served() {
    let dir = TempDir::new("proxy-hostile-hello-huge");
    let (proxy, ca) = tls_proxy(&dir).await;
    let address = proxy.listeners.bound("tls")[0];
    let mut attacker = TcpStream::connect(address).await.expect("connect");
    // A ClientHello claiming 16 MiB, sent as full records as fast as the
    // proxy takes them.
    let mut hello = vec![0x01, 0xff, 0xff, 0xff, 0x03, 0x03];
    hello.resize(16 * 1024, 0xaa);
    let mut bytes = handshake_record(&hello);
    for _ in 0..64 {
        bytes.extend(handshake_record(&[0xaa; 16 * 1024]));
    }
    let _ = attacker.write_all(&bytes).await;
    let outcome = read_to_close(&mut attacker).await;
    assert!(outcome.is_ok(), "the connection is closed: {outcome:?}");
    assert_eq!(tls_get(address, &ca).await, StatusCode::OK);
}
