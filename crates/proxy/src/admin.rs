//! The operator's endpoints: readiness on 15021, Prometheus on 15090 and 15020,
//! and the admin API on 15000 (localhost only): `/config_dump`, `/stats`,
//! `/clusters`, `/quitquitquit`, `/drain_listeners`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::context::Context;
use crate::listeners::Listeners;

/// What an admin request asks of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `/quitquitquit`: exit now (Jobs finish; Istio's way to end a sidecar).
    Quit,
}

#[derive(Clone)]
pub struct Admin {
    ctx: Arc<Context>,
    listeners: Arc<Listeners>,
    commands: mpsc::Sender<Command>,
}

#[derive(Clone, Copy)]
enum Role {
    Admin,
    Health,
    Metrics,
}

impl Admin {
    pub fn new(
        ctx: Arc<Context>,
        listeners: Arc<Listeners>,
        commands: mpsc::Sender<Command>,
    ) -> Self {
        Self {
            ctx,
            listeners,
            commands,
        }
    }

    /// Binds the admin, health and metrics ports.
    pub async fn serve(
        self,
        admin: SocketAddr,
        health: SocketAddr,
        metrics: &[SocketAddr],
    ) -> std::io::Result<()> {
        let mut bound = vec![
            (TcpListener::bind(admin).await?, Role::Admin),
            (TcpListener::bind(health).await?, Role::Health),
        ];
        for address in metrics {
            bound.push((TcpListener::bind(address).await?, Role::Metrics));
        }
        for (listener, role) in bound {
            tokio::spawn(self.clone().accept(listener, role));
        }
        Ok(())
    }

    async fn accept(self, listener: TcpListener, role: Role) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(role, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, role: Role, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        match (role, req.method(), path) {
            (Role::Health, _, "/healthz/ready") => {
                if self.ctx.is_ready() {
                    text(StatusCode::OK, String::new())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: waiting for config and certificate\n".into(),
                    )
                }
            }
            (Role::Metrics | Role::Health, _, "/stats/prometheus") => {
                text(StatusCode::OK, self.ctx.metrics.encode())
            }
            (Role::Admin, _, "/stats/prometheus") => {
                text(StatusCode::OK, self.ctx.metrics.encode())
            }
            (Role::Admin, _, "/stats") => text(StatusCode::OK, self.ctx.metrics.encode()),
            (Role::Admin, _, "/config_dump") => json(self.config_dump()),
            (Role::Admin, _, "/clusters") => text(StatusCode::OK, self.clusters()),
            (Role::Admin, &Method::POST, "/quitquitquit") => {
                let _ = self.commands.send(Command::Quit).await;
                text(StatusCode::OK, "OK\n".into())
            }
            (Role::Admin, &Method::POST, "/drain_listeners") => {
                self.ctx.start_draining();
                self.listeners.stop_all();
                text(StatusCode::OK, "OK\n".into())
            }
            (Role::Admin, _, "/quitquitquit" | "/drain_listeners") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into())
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    /// What the proxy holds: names and versions per type (not yet the full
    /// resources in Envoy's shape).
    fn config_dump(&self) -> serde_json::Value {
        let s = self.ctx.snapshot();
        let sorted = |names: Vec<String>| {
            let mut names = names;
            names.sort();
            names
        };
        serde_json::json!({
            "versions": s.versions,
            "listeners": sorted(s.listeners.keys().cloned().collect()),
            "clusters": sorted(s.clusters.keys().map(ToString::to_string).collect()),
            "routes": sorted(s.routes.keys().cloned().collect()),
            "endpoints": sorted(s.endpoints.keys().cloned().collect()),
            "identity": self.ctx.credentials.identity().to_string(),
            "certificate_ready": self.ctx.credentials.is_ready(),
        })
    }

    /// Envoy's `/clusters` text: `cluster::address::field::value` lines.
    fn clusters(&self) -> String {
        let s = self.ctx.snapshot();
        let mut out = String::new();
        let mut names: Vec<_> = s.clusters.keys().collect();
        names.sort();
        for name in names {
            let Some(cluster) = s.clusters.get(name) else {
                continue;
            };
            if let Some(set) = s.endpoints_of(cluster) {
                for (i, e) in set.endpoints.iter().enumerate() {
                    let active = set.active[i].load(std::sync::atomic::Ordering::Relaxed);
                    let _ = writeln!(out, "{name}::{}::rq_active::{active}", e.address);
                    let _ = writeln!(out, "{name}::{}::health_flags::healthy", e.address);
                }
            }
        }
        out
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, format!("{value:#}\n"));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
