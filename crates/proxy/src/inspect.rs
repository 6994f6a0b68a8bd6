//! Looks at a connection's first bytes without consuming them: TLS or plaintext,
//! and for TLS the SNI and ALPN of the ClientHello (Envoy's tls_inspector). A
//! client that says nothing (a server-first protocol) is plaintext once the
//! listener's timeout passes, rather than hanging.

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

pub async fn detect(stream: &TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_HELLO];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(result) => result?,
            Err(_) => return Ok(plaintext()),
        };
        if n == 0 {
            return Ok(plaintext());
        }
        match parse_client_hello(&buf[..n]) {
            Parse::NotTls => return Ok(plaintext()),
            Parse::Hello { sni, alpn } => {
                return Ok(Detected {
                    transport: Some(Transport::Tls),
                    sni,
                    alpn,
                });
            }
            Parse::Incomplete if n < MAX_HELLO && Instant::now() < deadline => {
                tokio::time::sleep(PEEK_INTERVAL).await;
            }
            Parse::Incomplete => {
                return Ok(Detected {
                    transport: Some(Transport::Tls),
                    ..Default::default()
                });
            }
        }
    }
}

fn plaintext() -> Detected {
    Detected {
        transport: Some(Transport::RawBuffer),
        ..Default::default()
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
        out.push(String::from_utf8_lossy(list.take(len)?).into_owned());
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
    fn plaintext_is_not_tls() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(parse_client_hello(b"\x16\x01garbage"), Parse::NotTls);
        assert_eq!(parse_client_hello(b""), Parse::Incomplete);
    }
}
