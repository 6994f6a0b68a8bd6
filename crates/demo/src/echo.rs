//! An echo server: every request is answered with what arrived (method, path,
//! headers) and which pod answered, as JSON.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::body::Incoming;

use crate::server::response;

pub async fn run(port: u16) -> std::io::Result<()> {
    let name = std::env::var("HOSTNAME").unwrap_or_else(|_| "echo".into());
    crate::serve(port, move |req| {
        let name = name.clone();
        async move { answer(&name, &req) }
    })
    .await
}

fn answer(name: &str, req: &Request<Incoming>) -> http::Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "server": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    response(200, "application/json", body.to_string())
}
