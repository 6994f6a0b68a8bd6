//! The JWKS resolver against a real HTTPS server on loopback: keys fetched by
//! URI and by OIDC discovery, a rotation noticed by the refresh, and every
//! failure answered with the fail-closed key set.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oxmesh_control::jwks::{FAIL_CLOSED_JWKS, JwksResolver, JwksSource, Settings};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `/jwks.json` (whatever `keys` holds now), an OIDC discovery
/// document pointing at it, and 404 for the rest.
struct Issuer {
    addr: SocketAddr,
    keys: Arc<Mutex<String>>,
    root: CertificateDer<'static>,
    root_pem: String,
    /// Requests served, by path.
    hits: Arc<Mutex<Vec<String>>>,
}

impl Issuer {
    async fn start(keys: &str) -> Self {
        let (tls, pem_text) = oxmesh_testkit::tls::self_signed(&["localhost"]);
        let root = CertificateDer::from(pem::parse(&pem_text).expect("pem").into_contents());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let keys = Arc::new(Mutex::new(keys.to_owned()));
        let served = keys.clone();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, served, seen) = (acceptor.clone(), served.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let served = served.clone();
                        seen.lock().expect("lock").push(req.uri().path().to_owned());
                        async move { Ok::<_, Infallible>(answer(&req, addr, &served)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            keys,
            root,
            root_pem: pem_text,
            hits,
        }
    }

    fn base(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn source(&self, path: &str) -> JwksSource {
        JwksSource {
            issuer: self.base(),
            uri: if path.is_empty() {
                String::new()
            } else {
                format!("{}{path}", self.base())
            },
        }
    }
}

fn answer(
    req: &Request<Incoming>,
    addr: SocketAddr,
    keys: &Mutex<String>,
) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/jwks.json" => keys.lock().expect("lock").clone(),
        "/.well-known/openid-configuration" => format!(
            r#"{{"issuer":"https://localhost:{0}","jwks_uri":"https://localhost:{0}/jwks.json"}}"#,
            addr.port()
        ),
        "/not-json" => "<html>hello</html>".to_owned(),
        _ => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    Response::new(Full::new(Bytes::from(body)))
}

fn key(kid: &str) -> String {
    oxmesh_demo::jwt::Issuer::p256("test", kid)
        .expect("key")
        .jwks()
}

#[tokio::test]
async fn keys_are_fetched_by_uri_and_by_discovery_and_failures_fail_closed() {
    let first = key("one");
    let issuer = Issuer::start(&first).await;
    // The issuer's CA as `--jwks-extra-roots` gives it: a PEM file.
    let dir = oxmesh_testkit::TempDir::new("jwks-roots");
    dir.write("extra.pem", &issuer.root_pem);
    let settings = Settings {
        extra_roots: Some(dir.path("extra.pem")),
        refresh: Duration::from_secs(3600),
    };
    let resolver = JwksResolver::from_settings(&settings).expect("roots");
    let missing_file = Settings {
        extra_roots: Some(dir.path("absent.pem")),
        ..settings
    };
    let error = JwksResolver::from_settings(&missing_file)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("absent.pem"), "{error}");
    let by_uri = issuer.source("/jwks.json");
    let by_discovery = issuer.source("");
    let missing = issuer.source("/missing.json");
    let not_json = issuer.source("/not-json");
    let refused = JwksSource {
        issuer: "closed".to_owned(),
        uri: "https://127.0.0.1:1/jwks.json".to_owned(),
    };
    let keys = resolver
        .resolve(
            [&by_uri, &by_discovery, &missing, &not_json, &refused].map(|s| (s.clone(), TIMEOUT)),
        )
        .await;
    assert_eq!(keys.get(&by_uri), first);
    assert_eq!(keys.get(&by_discovery), first);
    for failed in [&missing, &not_json, &refused] {
        assert_eq!(keys.get(failed), FAIL_CLOSED_JWKS, "{failed:?}");
    }
    // The next push does not wait for what failed: the refresh retries it.
    let asked = |issuer: &Issuer| {
        let hits = issuer.hits.lock().expect("lock");
        hits.iter().filter(|p| *p == "/missing.json").count()
    };
    assert_eq!(asked(&issuer), 1);
    resolver.resolve([(missing.clone(), TIMEOUT)]).await;
    assert_eq!(
        asked(&issuer),
        1,
        "a failed source is not fetched by every push"
    );

    // A server whose certificate nobody vouches for is not trusted.
    let untrusting = JwksResolver::new(Vec::new(), Duration::from_secs(3600));
    let keys = untrusting.resolve([(by_uri.clone(), TIMEOUT)]).await;
    assert_eq!(keys.get(&by_uri), FAIL_CLOSED_JWKS);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_the_refresh() {
    let issuer = Issuer::start(&key("old")).await;
    let resolver = JwksResolver::new(vec![issuer.root.clone()], Duration::from_millis(300));
    let source = issuer.source("/jwks.json");
    let mut changed = resolver.changed();
    let _refresh = resolver.spawn_refresh();
    resolver.resolve([(source.clone(), TIMEOUT)]).await;

    let rotated = key("new");
    *issuer.keys.lock().expect("lock") = rotated.clone();
    tokio::time::timeout(Duration::from_secs(10), changed.changed())
        .await
        .expect("the refresh signals the change")
        .expect("resolver alive");
    let keys = resolver.resolve([(source.clone(), TIMEOUT)]).await;
    assert_eq!(keys.get(&source), rotated);
}

#[test]
fn the_fail_closed_key_set_is_a_usable_rsa_key() {
    let parsed: serde_json::Value = serde_json::from_str(FAIL_CLOSED_JWKS).expect("json");
    let n = parsed["keys"][0]["n"].as_str().expect("modulus");
    assert_eq!(n.len(), 342, "a 2048-bit modulus, base64url");
}
