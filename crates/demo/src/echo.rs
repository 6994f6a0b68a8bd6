//! An echo server, httpbin-like: `/headers`, `/ip`, `/status/<code>`,
//! `/delay/<seconds>` (at most 10), and on any other path what arrived (method,
//! path, headers) and which pod answered, as JSON.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::server::response;

const MAX_DELAY: u64 = 10;

pub async fn run(port: u16) -> std::io::Result<()> {
    let name = std::env::var("HOSTNAME").unwrap_or_else(|_| "echo".into());
    crate::serve(port, move |req, peer| {
        let name = name.clone();
        async move { answer(&name, &req, peer).await }
    })
    .await
}

async fn answer(
    name: &str,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> http::Response<Full<Bytes>> {
    // A header that came several times is shown once, its values joined by
    // commas, as HTTP allows.
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .keys()
        .map(|k| {
            let values: Vec<String> = req
                .headers()
                .get_all(k)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (k.to_string(), values.join(",").into())
        })
        .collect();
    let path = req.uri().path();
    if path == "/headers" {
        return response(
            200,
            "application/json",
            json!({ "headers": headers }).to_string(),
        );
    }
    if path == "/ip" {
        return response(
            200,
            "application/json",
            json!({ "origin": peer.ip().to_string() }).to_string(),
        );
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return response(code, "text/plain", "");
    }
    if let Some(seconds) = path
        .strip_prefix("/delay/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_secs(seconds.min(MAX_DELAY))).await;
    }
    let body = json!({
        "server": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    response(200, "application/json", body.to_string())
}
