//! Reading the control plane's debug endpoints (port 15014): one HTTP/1.1 GET.

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The control plane's monitoring address, as `--control-plane` takes it.
#[derive(clap::Args)]
pub struct Target {
    /// The control plane's monitoring address (its `--monitoring-port`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub control_plane: String,
}

/// GETs `path_and_query` and parses the JSON answer; an error answer's message
/// becomes the error.
pub fn get_json(target: &Target, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(get(&target.control_plane, path_and_query))?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("{path_and_query}: the answer is not JSON"))?;
    if !status.is_success() {
        let message = value["error"].as_str().unwrap_or("no reason given");
        bail!("{path_and_query}: {status}: {message}");
    }
    Ok(value)
}

async fn get(address: &str, path_and_query: &str) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach the control plane at {address} (is `oxmesh control` running? see --control-plane)"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path_and_query)
        .header(http::header::HOST, address)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The status of a GET: what `oxmesh proxy wait` polls.
pub async fn get_status(address: &str, path: &str) -> anyhow::Result<u16> {
    Ok(get(address, path).await?.0.as_u16())
}
