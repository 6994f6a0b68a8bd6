//! Looks at a connection's first bytes without consuming them: TLS or plaintext,
//! for TLS the SNI and ALPN of the ClientHello (Envoy's tls_inspector), and for
//! plaintext whether it is HTTP/1.x or h2c (Envoy's http_inspector, reported as
//! the ALPN `http/1.1`, `http/1.0` or `h2c`). A client that says nothing (a
//! server-first protocol) is plain TCP once the listener's timeout passes,
//! rather than hanging.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::listener::Transport;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detected {
    pub transport: Option<Transport>,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

/// The largest ClientHello looked at; a bigger one is treated as TLS without
/// SNI or ALPN.
const MAX_HELLO: usize = 16 * 1024;
/// Between peeks while a ClientHello is still arriving.
const PEEK_INTERVAL: Duration = Duration::from_millis(2);

/// What to look for.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub tls: bool,
    pub http: bool,
}

/// `None` when the timeout passed before anything could be decided.
pub async fn detect(
    stream: &TcpStream,
    timeout: Duration,
    wanted: Wanted,
) -> std::io::Result<Option<Detected>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_HELLO];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(result) => result?,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Ok(Some(plaintext(Vec::new())));
        }
        if let Some(detected) = sniff(&buf[..n], wanted) {
            return Ok(Some(detected));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(PEEK_INTERVAL).await;
    }
}

/// What a connection's first bytes (`data`, not empty; at most the
/// largest ClientHello looked at) say; `None` while more bytes could still
/// decide. Fed by the network: it must take any bytes.
pub fn sniff(data: &[u8], wanted: Wanted) -> Option<Detected> {
    let more_may_come = data.len() < MAX_HELLO;
    if data.first() == Some(&HANDSHAKE) && wanted.tls {
        match parse_client_hello(data) {
            Parse::NotTls => Some(plaintext(Vec::new())),
            Parse::Hello { sni, alpn } => Some(Detected {
                transport: Some(Transport::Tls),
                sni,
                alpn,
            }),
            Parse::Incomplete if more_may_come => None,
            Parse::Incomplete => Some(Detected {
                transport: Some(Transport::Tls),
                ..Default::default()
            }),
        }
    } else if wanted.http && !data.is_empty() {
        match http_protocol(data) {
            Sniff::Http(alpn) => Some(plaintext(vec![alpn.to_owned()])),
            Sniff::NotHttp => Some(plaintext(Vec::new())),
            Sniff::Incomplete if more_may_come => None,
            Sniff::Incomplete => Some(plaintext(Vec::new())),
        }
    } else {
        Some(plaintext(Vec::new()))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    Http(&'static str),
    NotHttp,
    Incomplete,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1.x by its request line (`METHOD SP target SP HTTP/1.x`), h2c by the
/// connection preface.
fn http_protocol(data: &[u8]) -> Sniff {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::Http("h2c")
        } else {
            Sniff::Incomplete
        };
    }
    let line_end = data.iter().position(|b| *b == b'\n');
    let line = &data[..line_end.unwrap_or(data.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.is_empty() || !method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-') {
        // A partial method is still possibly HTTP.
        return if line_end.is_none()
            && parts.next().is_none()
            && method.iter().all(u8::is_ascii_uppercase)
        {
            Sniff::Incomplete
        } else {
            Sniff::NotHttp
        };
    }
    match (parts.next(), parts.next(), line_end) {
        (Some(_), Some(version), Some(_)) => match version {
            b"HTTP/1.1" => Sniff::Http("http/1.1"),
            b"HTTP/1.0" => Sniff::Http("http/1.0"),
            _ => Sniff::NotHttp,
        },
        (_, _, None) => Sniff::Incomplete,
        _ => Sniff::NotHttp,
    }
}

fn plaintext(alpn: Vec<String>) -> Detected {
    Detected {
        transport: Some(Transport::RawBuffer),
        sni: None,
        alpn,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    NotTls,
    Incomplete,
    Hello {
        sni: Option<String>,
        alpn: Vec<String>,
    },
}

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

fn parse_client_hello(data: &[u8]) -> Parse {
    match data {
        [] => return Parse::Incomplete,
        [first, ..] if *first != HANDSHAKE => return Parse::NotTls,
        [_] => return Parse::Incomplete,
        [_, major, ..] if *major != 3 => return Parse::NotTls,
        _ => {}
    }
    let Some(record_len) = data
        .get(3..5)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return Parse::Incomplete;
    };
    // The whole ClientHello may span records; the first record is enough for
    // every client seen in practice, and extensions past it are ignored.
    let end = (5 + record_len).min(data.len());
    let mut r = Reader(&data[5..end]);
    if r.u8() != Some(CLIENT_HELLO) {
        return if data.len() < 6 {
            Parse::Incomplete
        } else {
            Parse::NotTls
        };
    }
    match hello_body(&mut r) {
        Some(hello) => hello,
        None if data.len() < 5 + record_len => Parse::Incomplete,
        None => Parse::Hello {
            sni: None,
            alpn: Vec::new(),
        },
    }
}

fn hello_body(r: &mut Reader<'_>) -> Option<Parse> {
    r.skip(3)?; // handshake length
    r.skip(2 + 32)?; // client version, random
    let session = usize::from(r.u8()?);
    r.skip(session)?;
    let suites = usize::from(r.u16()?);
    r.skip(suites)?;
    let compression = usize::from(r.u8()?);
    r.skip(compression)?;
    let mut sni = None;
    let mut alpn = Vec::new();
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let mut body = Reader(exts.take(len)?);
        match kind {
            EXT_SERVER_NAME => sni = server_name(&mut body),
            EXT_ALPN => alpn = protocols(&mut body)?,
            _ => {}
        }
    }
    Some(Parse::Hello { sni, alpn })
}

fn server_name(r: &mut Reader<'_>) -> Option<String> {
    let list = usize::from(r.u16()?);
    let mut list = Reader(r.take(list)?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let len = usize::from(list.u16()?);
        let name = list.take(len)?;
        if kind == 0 {
            return std::str::from_utf8(name).ok().map(str::to_owned);
        }
    }
    None
}

fn protocols(r: &mut Reader<'_>) -> Option<Vec<String>> {
    let list = usize::from(r.u16()?);
    let mut list = Reader(r.take(list)?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let len = usize::from(list.u8()?);
        // A name that is not UTF-8 matches no configured protocol: left out,
        // not replaced by what the client never sent.
        if let Ok(name) = std::str::from_utf8(list.take(len)?) {
            out.push(name.to_owned());
        }
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it.
    fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.roots.clear();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn alpn_names_that_are_not_utf8_are_left_out() {
        // Found by the client_hello fuzz target: a name of 0xa2 bytes once
        // came back three times longer, each byte a replacement character.
        let hello = [
            22, 3, 1, 1, 113, 1, 0, 1, 109, 3, 3, 199, 132, 115, 245, 151, 145, 0, 0, 0, 40, 80,
            32, 178, 84, 84, 80, 32, 254, 23, 0, 30, 0, 25, 0, 24, 1, 0, 1, 1, 1, 2, 0, 0, 0, 0, 0,
            0, 42, 0, 16, 0, 38, 0, 36, 0, 0, 33, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162,
            162, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162, 162,
            162, 162, 162, 162, 162, 162, 4, 118,
        ];
        let wanted = Wanted {
            tls: true,
            http: true,
        };
        let alpn = sniff(&hello, wanted).map(|d| d.alpn).unwrap_or_default();
        assert!(
            alpn.iter().all(|name| !name.contains('\u{fffd}')),
            "{alpn:?}"
        );
        let long = protocols(&mut Reader(&[0, 4, 3, 0xa2, 0xa2, 0xa2])).unwrap_or_default();
        assert!(long.is_empty(), "{long:?}");
        let named = protocols(&mut Reader(&[0, 3, 2, b'h', b'2'])).unwrap_or_default();
        assert_eq!(named, ["h2"]);
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_client_hello() {
        let hello = client_hello(
            "outbound_.9080_._.reviews.default.svc.cluster.local",
            &["istio-peer-exchange", "istio"],
        );
        assert_eq!(
            parse_client_hello(&hello),
            Parse::Hello {
                sni: Some("outbound_.9080_._.reviews.default.svc.cluster.local".to_owned()),
                alpn: vec!["istio-peer-exchange".to_owned(), "istio".to_owned()],
            }
        );
        assert_eq!(parse_client_hello(&hello[..40]), Parse::Incomplete);
    }

    #[test]
    fn http_is_recognised_by_its_first_line() {
        assert_eq!(
            http_protocol(b"GET /a HTTP/1.1\r\nHost: x\r\n"),
            Sniff::Http("http/1.1")
        );
        assert_eq!(http_protocol(b"POST / HTTP/1.0\n"), Sniff::Http("http/1.0"));
        assert_eq!(http_protocol(H2_PREFACE), Sniff::Http("h2c"));
        assert_eq!(http_protocol(b"PRI * HT"), Sniff::Incomplete);
        assert_eq!(
            http_protocol(b"GET /long/path/still/arriv"),
            Sniff::Incomplete
        );
        assert_eq!(http_protocol(b"GE"), Sniff::Incomplete);
        // MySQL's client greeting, Redis' RESP, random bytes: not HTTP.
        assert_eq!(http_protocol(b"\x85\xa6\xff\x01"), Sniff::NotHttp);
        assert_eq!(http_protocol(b"*1\r\n$4\r\nPING\r\n"), Sniff::NotHttp);
        assert_eq!(http_protocol(b"HELLO world\r\n"), Sniff::NotHttp);
    }

    #[test]
    fn plaintext_is_not_tls() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(parse_client_hello(b"\x16\x01garbage"), Parse::NotTls);
        assert_eq!(parse_client_hello(b""), Parse::Incomplete);
    }
}
