//! Request mirroring over real sockets: copies reach the mirror with the
//! request's path, body and host (with or without `-shadow`), for the share
//! of requests asked; the caller only ever sees the primary's answer, and a
//! mirror that never answers delays nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use oxmesh_testkit::TempDir;

mod support;

/// What a backend received: (host, path, body) per request.
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// Answers `name` to everything after `delay`, recording what came.
async fn recording_backend(name: &'static str, delay: Duration) -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let host = req
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let path = req.uri().path().to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock().expect("log").push((
                                host,
                                path,
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(name)),
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
    (address, received)
}

/// Routes everything to `web`, mirrored as `policies` (YAML flow list) say.
fn bootstrap(policies: &str, clusters: &str) -> String {
    let listener = support::http_listener("web", "", "").replace(
        "route: {cluster: web}",
        &format!("route: {{cluster: web, request_mirror_policies: {policies}}}"),
    );
    support::bootstrap(&listener, clusters)
}

async fn post(address: SocketAddr, body: &'static str) -> (http::StatusCode, String) {
    let (status, _, body) = support::request(address, "POST", "/orders", &[], body).await;
    (status, body)
}

async fn copies(received: &Received, at_least: usize) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = received.lock().expect("log").clone();
        if now.len() >= at_least || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn copies_carry_path_body_and_shadow_host_and_never_delay_the_request() {
    let dir = TempDir::new("mirror");
    let (primary, primary_log) = recording_backend("primary", Duration::ZERO).await;
    // The plain mirror never answers within the test.
    let (shadow, shadow_log) = recording_backend("shadow", Duration::from_secs(3600)).await;
    let (same, same_log) = recording_backend("same", Duration::ZERO).await;
    let clusters = [
        support::static_cluster("web", &[primary], "ROUND_ROBIN"),
        support::static_cluster("shadow", &[shadow], "ROUND_ROBIN"),
        support::static_cluster("same", &[same], "ROUND_ROBIN"),
    ]
    .concat();
    let policies = "[{cluster: shadow}, {cluster: same, disable_shadow_host_suffix_append: true}, {cluster: nowhere}]";
    let proxy = support::start(
        &dir,
        &bootstrap(policies, &clusters),
        support::workload("foo", "sleep"),
    );
    let address = proxy.listeners.bound("web")[0];
    let answered = tokio::time::timeout(Duration::from_secs(10), post(address, "one order")).await;
    let (status, body) = answered.expect("the request does not wait for its copies");
    assert_eq!((status.as_u16(), body.as_str()), (200, "primary"));
    assert_eq!(primary_log.lock().expect("log").len(), 1);
    let shadowed = copies(&shadow_log, 1).await;
    assert_eq!(
        shadowed,
        [(
            "httpbin.foo-shadow:8000".to_owned(),
            "/orders".to_owned(),
            "one order".to_owned()
        )]
    );
    let same = copies(&same_log, 1).await;
    assert_eq!(same[0].0, "httpbin.foo:8000", "no suffix when disabled");
}

#[tokio::test]
async fn a_share_of_the_requests_is_mirrored() {
    let dir = TempDir::new("mirror-share");
    let (primary, _) = recording_backend("primary", Duration::ZERO).await;
    let (half, half_log) = recording_backend("half", Duration::ZERO).await;
    let (none, none_log) = recording_backend("none", Duration::ZERO).await;
    let clusters = [
        support::static_cluster("web", &[primary], "ROUND_ROBIN"),
        support::static_cluster("half", &[half], "ROUND_ROBIN"),
        support::static_cluster("none", &[none], "ROUND_ROBIN"),
    ]
    .concat();
    let policies = "[{cluster: half, runtime_fraction: {default_value: {numerator: 500000, denominator: MILLION}}}, {cluster: none, runtime_fraction: {default_value: {numerator: 0}}}]";
    let proxy = support::start(
        &dir,
        &bootstrap(policies, &clusters),
        support::workload("foo", "sleep"),
    );
    let address = proxy.listeners.bound("web")[0];
    for _ in 0..200 {
        assert_eq!(post(address, "x").await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mirrored = half_log.lock().expect("log").len();
    assert!(
        (60..=140).contains(&mirrored),
        "{mirrored} of 200 mirrored at 50 %"
    );
    assert!(none_log.lock().expect("log").is_empty());
}
