//! One HTTP/1.1 GET on a connection the caller made (plain TCP or TLS):
//! what the control plane fetches for itself (JWKS, the proxies' metrics
//! for the dashboard, Prometheus queries). No keep-alive, no redirects, and
//! a bounded body.

use std::time::Duration;

use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use tokio::net::TcpStream;

/// `GET url` (plain `http://`) on a new connection, answered within
/// `timeout`: the body of a 2xx answer.
pub async fn get_url(
    url: &str,
    accept: &str,
    max_body: usize,
    timeout: Duration,
) -> Result<Bytes, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// is supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let fetch = async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        get(stream, &uri, accept, max_body).await
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer in {timeout:?}"))?
}

/// Sends `GET uri` over `io` and returns the body of a 2xx answer.
pub async fn get<S>(io: S, uri: &Uri, accept: &str, max_body: usize) -> Result<Bytes, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, accept)
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    Ok(body)
}
