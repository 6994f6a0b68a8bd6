//! Responses of the control plane's HTTP ports (monitoring, webhooks).

use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::Value;

/// `body` as indented JSON.
pub fn json(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text =
        serde_json::to_string_pretty(body).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub fn text(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}
