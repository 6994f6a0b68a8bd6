//! The operator's endpoints: readiness on 15021, Prometheus on 15090, Istio's
//! agent port 15020 (metrics with the app's merged in, the app's probes and
//! lifecycle hooks: `/app-health/...`, `/app-lifecycle/...`),
//! and the admin API on 15000 (localhost only): `/config_dump`, `/stats`,
//! `/clusters`, `/runtime`, `/quitquitquit`, `/drain_listeners`.

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

use crate::app_metrics::AppMetrics;
use crate::app_probe::AppProbers;
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
    app_probes: Arc<AppProbers>,
    app_metrics: Option<Arc<AppMetrics>>,
}

#[derive(Clone, Copy)]
enum Role {
    Admin,
    Health,
    Metrics,
    /// Istio's agent port (15020): metrics with the app's merged in, and the
    /// app's probes and lifecycle hooks.
    Status,
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
            app_probes: Arc::default(),
            app_metrics: None,
        }
    }

    /// Answers the app's probes and serves its metrics beside the proxy's.
    pub fn with_app(mut self, probes: Arc<AppProbers>, metrics: Option<Arc<AppMetrics>>) -> Self {
        self.app_probes = probes;
        self.app_metrics = metrics;
        self
    }

    /// Binds the admin, health, metrics and status ports.
    pub async fn serve(
        self,
        admin: SocketAddr,
        health: SocketAddr,
        metrics: &[SocketAddr],
        status: Option<SocketAddr>,
    ) -> std::io::Result<()> {
        let mut bound = vec![
            (TcpListener::bind(admin).await?, Role::Admin),
            (TcpListener::bind(health).await?, Role::Health),
        ];
        for address in metrics.iter().filter(|a| Some(**a) != status) {
            bound.push((TcpListener::bind(address).await?, Role::Metrics));
        }
        if let Some(address) = status {
            bound.push((TcpListener::bind(address).await?, Role::Status));
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
            (Role::Status, _, "/stats/prometheus") => self.merged_metrics().await,
            (Role::Metrics | Role::Health, _, "/stats/prometheus") => {
                text(StatusCode::OK, self.ctx.metrics.encode())
            }
            (Role::Status, _, p) if is_app_path(p) => {
                let (status, body) = self.app_probes.probe(p, req.headers()).await;
                let mut response = Response::new(Full::new(body));
                *response.status_mut() = status;
                response
            }
            (Role::Admin, _, "/stats/prometheus") => {
                text(StatusCode::OK, self.ctx.metrics.encode())
            }
            (Role::Admin, _, "/stats") => text(StatusCode::OK, self.ctx.metrics.encode()),
            (Role::Admin, _, "/runtime") => json(runtime(self.listeners.workers())),
            (Role::Admin, _, "/config_dump") => json(self.config_dump()),
            (Role::Admin, _, "/clusters") => text(StatusCode::OK, self.clusters()),
            (Role::Admin, &Method::POST, "/quitquitquit") => {
                // Answer first: the process ends once the command arrives.
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let _ = commands.send(Command::Quit).await;
                });
                text(StatusCode::OK, "OK\n".into())
            }
            (Role::Admin, &Method::POST, "/drain_listeners") => {
                self.ctx.start_draining();
                // Envoy's `?inboundonly`, as Istio's agent asks for it.
                let inbound_only = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "inboundonly"));
                if inbound_only {
                    self.listeners.stop_inbound();
                } else {
                    self.listeners.stop_all();
                }
                text(StatusCode::OK, "OK\n".into())
            }
            (Role::Admin, _, "/quitquitquit" | "/drain_listeners") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into())
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    /// The proxy's metrics, then the app's when injection asked to merge them.
    async fn merged_metrics(&self) -> Response<Full<Bytes>> {
        let mut body = self.ctx.metrics.encode();
        if let Some(app) = &self.app_metrics
            && let Some(theirs) = app.scrape().await
        {
            // One `# EOF`, after both: the end of the whole exposition.
            let ours = body.trim_end().strip_suffix("# EOF").map(str::len);
            if let Some(len) = ours {
                body.truncate(len);
            }
            body.push_str(&String::from_utf8_lossy(&theirs));
            if !body.ends_with('\n') {
                body.push('\n');
            }
            if ours.is_some() {
                body.push_str("# EOF\n");
            }
        }
        text(StatusCode::OK, body)
    }

    /// What the proxy holds, in the shape of Envoy's `/config_dump`: every
    /// resource serving, with its type's version; resources in protobuf's JSON
    /// mapping, as `istioctl proxy-config -o json` prints them. The workload key
    /// is redacted, as Envoy redacts it.
    fn config_dump(&self) -> serde_json::Value {
        use oxmesh_xds::ads::types;
        let s = self.ctx.snapshot();
        let version = |t: &str| s.versions.get(t).cloned().unwrap_or_default();
        let resources =
            |t: &str,
             field: &str,
             wrap: &dyn Fn(serde_json::Value, String) -> serde_json::Value| {
                let list: Vec<serde_json::Value> = s
                    .raw
                    .get(t)
                    .into_iter()
                    .flat_map(|m| m.iter())
                    .filter_map(|(name, any)| {
                        let json = oxmesh_xds::json::to_json(any).ok()?;
                        Some(wrap(json, name.clone()))
                    })
                    .collect();
                serde_json::json!({ field: list })
            };
        let dump_type = |kind: &str| format!("type.googleapis.com/envoy.admin.v3.{kind}ConfigDump");
        let with_type = |mut v: serde_json::Value, kind: &str, t: &str| {
            v["@type"] = dump_type(kind).into();
            v["version_info"] = version(t).into();
            v
        };
        let v_cds = version(types::CLUSTER);
        let v_lds = version(types::LISTENER);
        let v_rds = version(types::ROUTE);
        let v_eds = version(types::ENDPOINT);
        let mut secrets: Vec<serde_json::Value> = Vec::new();
        if let Some(svid) = self.ctx.credentials.svid() {
            let chain: Vec<_> = svid
                .certified
                .cert
                .iter()
                .map(|c| c.clone().into_owned())
                .collect();
            let pem = oxmesh_identity::certificate::to_pem(&chain);
            secrets.push(serde_json::json!({
                "name": "default",
                "secret": {
                    "name": "default",
                    "tlsCertificate": {
                        "certificateChain": { "inlineString": pem },
                        "privateKey": { "inlineString": "[redacted]" },
                    },
                },
            }));
        }
        for (name, any) in s.raw.get(types::SECRET).into_iter().flat_map(|m| m.iter()) {
            if let Ok(json) = oxmesh_xds::json::to_json(any) {
                secrets.push(serde_json::json!({ "name": name, "version_info": version(types::SECRET), "secret": json }));
            }
        }
        serde_json::json!({
            "configs": [
                with_type(resources(types::CLUSTER, "dynamic_active_clusters",
                    &|c, _| serde_json::json!({ "version_info": v_cds, "cluster": c })), "Clusters", types::CLUSTER),
                with_type(resources(types::LISTENER, "dynamic_listeners",
                    &|l, name| serde_json::json!({ "name": name, "active_state": { "version_info": v_lds, "listener": l } })), "Listeners", types::LISTENER),
                with_type(resources(types::ROUTE, "dynamic_route_configs",
                    &|r, _| serde_json::json!({ "version_info": v_rds, "route_config": r })), "Routes", types::ROUTE),
                with_type(resources(types::ENDPOINT, "dynamic_endpoint_configs",
                    &|e, _| serde_json::json!({ "version_info": v_eds, "endpoint_config": e })), "Endpoints", types::ENDPOINT),
                { "@type": dump_type("Secrets"), "dynamic_active_secrets": secrets },
            ],
            "identity": self.ctx.credentials.identity().to_string(),
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
            // A DNS cluster's hosts are what it last resolved, as Envoy lists them.
            let resolved = match &cluster.discovery {
                crate::config::cluster::Discovery::Dns(dns) => dns.resolved(),
                _ => None,
            };
            if let Some(set) = resolved.as_ref().or_else(|| s.endpoints_of(cluster)) {
                let endpoints = set.set.endpoints.iter().zip(set.states.iter());
                for (i, (e, state)) in endpoints.enumerate() {
                    let active = state.active.load(std::sync::atomic::Ordering::Relaxed);
                    let _ = writeln!(out, "{name}::{}::rq_active::{active}", e.address);
                    let priority = set
                        .set
                        .levels
                        .iter()
                        .find(|l| l.endpoints.contains(&i))
                        .map_or(0, |l| l.priority);
                    let _ = writeln!(out, "{name}::{}::priority::{priority}", e.address);
                    let health = if state.health.is_ejected() {
                        "/failed_outlier_check"
                    } else {
                        "healthy"
                    };
                    let _ = writeln!(out, "{name}::{}::health_flags::{health}", e.address);
                }
            }
        }
        out
    }
}

/// The app's probes and lifecycle hooks, as injection rewrites them.
pub fn is_app_path(path: &str) -> bool {
    path.starts_with("/app-health/") || path.starts_with("/app-lifecycle/")
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// `/runtime`: the data-plane runtimes' live tasks (connections, requests,
/// pool connections) and worker threads, so a soak can tell a task leak from a
/// memory one. The admin port's own runtime is not counted.
fn runtime(workers: &[tokio::runtime::Handle]) -> serde_json::Value {
    let (tasks, threads) = workers.iter().fold((0, 0), |(tasks, threads), handle| {
        let metrics = handle.metrics();
        (
            tasks + metrics.num_alive_tasks(),
            threads + metrics.num_workers(),
        )
    });
    serde_json::json!({"aliveTasks": tasks, "workers": threads})
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, format!("{value:#}\n"));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
