//! A Kubernetes API server for tests: real HTTPS, real list and watch streams.
//!
//! It keeps objects in memory and speaks the parts of the API that clients of the
//! mesh use: discovery (`/api/v1`, `/apis/{group}/{version}`), list with a
//! `resourceVersion`, watch as a chunked stream of JSON events (bookmarks when
//! asked, `410 Gone` as an `ERROR` event once history is compacted), get, create,
//! replace with optimistic concurrency, merge and server-side-apply patches, and
//! delete. Field selectors on `metadata.name`, `metadata.namespace` and `type`
//! work; label selectors are ignored. Every request needs the bearer token.
//!
//! The test drives the cluster through it: `apply`, `delete`, `compact` (old
//! resource versions become `410 Gone`), `drop_watches`, `send_garbage`, and
//! `set_down` (every request fails with 503 and open watches close).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The bearer token the fixture accepts.
pub const TOKEN: &str = "fixture-token";

/// One kind of object the fixture serves.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    pub const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> Self {
        Self {
            group,
            version,
            kind,
            plural,
            namespaced: true,
        }
    }

    pub const fn cluster_scoped(mut self) -> Self {
        self.namespaced = false;
        self
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The kinds a mesh control plane reads, at the versions a current cluster serves.
pub fn standard_types() -> Vec<ResourceType> {
    let mut types = vec![
        ResourceType::new("", "v1", "Namespace", "namespaces").cluster_scoped(),
        ResourceType::new("", "v1", "Node", "nodes").cluster_scoped(),
        ResourceType::new("", "v1", "Service", "services"),
        ResourceType::new("", "v1", "Endpoints", "endpoints"),
        ResourceType::new("", "v1", "Pod", "pods"),
        ResourceType::new("", "v1", "ServiceAccount", "serviceaccounts"),
        ResourceType::new("", "v1", "Secret", "secrets"),
        ResourceType::new("", "v1", "ConfigMap", "configmaps"),
        ResourceType::new("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        ResourceType::new("coordination.k8s.io", "v1", "Lease", "leases"),
        ResourceType::new("apps", "v1", "Deployment", "deployments"),
        ResourceType::new(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        )
        .cluster_scoped(),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
        )
        .cluster_scoped(),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
        )
        .cluster_scoped(),
        ResourceType::new("rbac.authorization.k8s.io", "v1", "Role", "roles"),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
        ),
        ResourceType::new(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        )
        .cluster_scoped(),
        ResourceType::new(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
        )
        .cluster_scoped(),
    ];
    let networking = [
        ("VirtualService", "virtualservices"),
        ("DestinationRule", "destinationrules"),
        ("Gateway", "gateways"),
        ("ServiceEntry", "serviceentries"),
        ("Sidecar", "sidecars"),
        ("WorkloadEntry", "workloadentries"),
        ("WorkloadGroup", "workloadgroups"),
    ];
    for version in ["v1", "v1beta1", "v1alpha3"] {
        for (kind, plural) in networking {
            types.push(ResourceType::new(
                "networking.istio.io",
                version,
                kind,
                plural,
            ));
        }
    }
    for (kind, plural) in [
        ("PeerAuthentication", "peerauthentications"),
        ("RequestAuthentication", "requestauthentications"),
        ("AuthorizationPolicy", "authorizationpolicies"),
    ] {
        types.push(ResourceType::new("security.istio.io", "v1", kind, plural));
    }
    types.push(ResourceType::new(
        "telemetry.istio.io",
        "v1",
        "Telemetry",
        "telemetries",
    ));
    for (kind, plural) in [
        ("Gateway", "gateways"),
        ("HTTPRoute", "httproutes"),
        ("GRPCRoute", "grpcroutes"),
        ("ReferenceGrant", "referencegrants"),
    ] {
        types.push(ResourceType::new(
            "gateway.networking.k8s.io",
            "v1",
            kind,
            plural,
        ));
    }
    types.push(
        ResourceType::new(
            "gateway.networking.k8s.io",
            "v1",
            "GatewayClass",
            "gatewayclasses",
        )
        .cluster_scoped(),
    );
    types
}

#[derive(Clone)]
struct Stored {
    resource_version: u64,
    object: Value,
}

/// One change, as a watch sends it.
#[derive(Clone)]
struct Change {
    resource_version: u64,
    kind: &'static str,
    group: &'static str,
    event: &'static str,
    object: Value,
}

struct Watcher {
    kind: &'static str,
    group: &'static str,
    namespace: Option<String>,
    fields: Vec<FieldTerm>,
    sender: mpsc::UnboundedSender<Bytes>,
}

/// (kind, group): one stored kind, whatever version it is asked in.
type TypeKey = (&'static str, &'static str);

#[derive(Default)]
struct State {
    types: Vec<ResourceType>,
    /// (kind, group) -> (namespace, name) -> object.
    objects: BTreeMap<TypeKey, BTreeMap<(String, String), Stored>>,
    history: Vec<Change>,
    /// Watches from at or below this resource version get 410 Gone.
    compacted: u64,
    resource_version: u64,
    watchers: Vec<Watcher>,
    down: bool,
    requests: Vec<String>,
    /// TokenReview answers: token -> (username, audiences).
    tokens: BTreeMap<String, (String, Vec<String>)>,
    /// The Kubernetes minor version `/version` reports (1.x).
    minor: u32,
}

/// The running fixture; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.lock().watchers.clear();
    }
}

impl ApiServer {
    /// Serves `types` on a fresh loopback port, over TLS with its own CA.
    pub async fn start(types: Vec<ResourceType>) -> Self {
        let (tls, ca_pem) = crate::tls::self_signed(&["127.0.0.1", "localhost"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            types,
            minor: 33,
            ..State::default()
        }));
        let task = tokio::spawn(serve(listener, acceptor, state.clone()));
        Self {
            addr,
            ca_pem,
            state,
            task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster:\n    server: https://{}\n    certificate-authority-data: {ca}\nusers:\n- name: fixture\n  user:\n    token: {TOKEN}\ncontexts:\n- name: fixture\n  context:\n    cluster: fixture\n    user: fixture\ncurrent-context: fixture\n",
            self.addr
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Creates or replaces an object (with `apiVersion`, `kind` and `metadata`)
    /// and tells the watches.
    pub fn apply(&self, object: Value) {
        let mut state = self.lock();
        let Some(ty) = state.type_of_object(&object) else {
            panic!("the fixture does not serve {object}");
        };
        let (namespace, name) = key_of(&object);
        state.store(&ty, namespace, name, object);
    }

    /// Applies every document of a YAML text.
    pub fn apply_yaml(&self, text: &str) {
        let documents: Vec<Value> = serde_saphyr::from_multiple(text).expect("yaml");
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            self.apply(document);
        }
    }

    /// Deletes an object and tells the watches.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let mut state = self.lock();
        let probe = json!({"apiVersion": api_version, "kind": kind});
        let ty = state.type_of_object(&probe).expect("served type");
        state.remove(&ty, namespace, name);
    }

    /// The stored object, as a client would read it.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.lock();
        let probe = json!({"apiVersion": api_version, "kind": kind});
        let ty = state.type_of_object(&probe)?;
        state
            .objects
            .get(&(ty.kind, ty.group))?
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| s.object.clone())
    }

    /// Forgets the change history: a watch from any resource version seen so
    /// far gets `410 Gone` and has to list again.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.resource_version;
        state.history.clear();
    }

    /// Closes every open watch stream, as an API server restart would.
    pub fn drop_watches(&self) {
        self.lock().watchers.clear();
    }

    /// Writes a line that is not JSON into every open watch stream.
    pub fn send_garbage(&self) {
        let mut state = self.lock();
        state.watchers.retain(|w| {
            w.sender
                .send(Bytes::from_static(b"{\"type\": garbage\n"))
                .is_ok()
        });
    }

    /// While down, every request fails with 503 and open watches are closed.
    pub fn set_down(&self, down: bool) {
        let mut state = self.lock();
        state.down = down;
        if down {
            state.watchers.clear();
        }
    }

    /// Makes TokenReview vouch for `token` as `username`, valid for `audiences`.
    pub fn review_token(&self, token: &str, username: &str, audiences: &[&str]) {
        let audiences = audiences.iter().map(|a| (*a).to_owned()).collect();
        self.lock()
            .tokens
            .insert(token.to_owned(), (username.to_owned(), audiences));
    }

    /// Makes `/version` report Kubernetes 1.`minor`.
    pub fn set_minor_version(&self, minor: u32) {
        self.lock().minor = minor;
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.sender.is_closed());
        state.watchers.len()
    }
}

fn key_of(object: &Value) -> (String, String) {
    let metadata = &object["metadata"];
    (
        metadata["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        metadata["name"].as_str().expect("metadata.name").to_owned(),
    )
}

impl State {
    fn type_of_object(&self, object: &Value) -> Option<ResourceType> {
        let api_version = object["apiVersion"].as_str()?;
        let kind = object["kind"].as_str()?;
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        self.types
            .iter()
            .find(|t| t.kind == kind && t.group == group)
            .cloned()
    }

    fn type_of_path(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    fn store(&mut self, ty: &ResourceType, namespace: String, name: String, mut object: Value) {
        self.resource_version += 1;
        let rv = self.resource_version;
        let objects = self.objects.entry((ty.kind, ty.group)).or_default();
        let key = (namespace, name);
        let event = if objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let metadata = object["metadata"].as_object_mut().expect("metadata");
        metadata.insert("resourceVersion".to_owned(), json!(rv.to_string()));
        metadata
            .entry("uid")
            .or_insert_with(|| json!(format!("uid-{rv}")));
        objects.insert(
            key,
            Stored {
                resource_version: rv,
                object: object.clone(),
            },
        );
        self.publish(ty, event, object);
    }

    fn remove(&mut self, ty: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let objects = self.objects.get_mut(&(ty.kind, ty.group))?;
        let mut stored = objects.remove(&(namespace.to_owned(), name.to_owned()))?;
        self.resource_version += 1;
        stored.object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.publish(ty, "DELETED", stored.object.clone());
        Some(stored.object)
    }

    fn publish(&mut self, ty: &ResourceType, event: &'static str, object: Value) {
        let change = Change {
            resource_version: self.resource_version,
            kind: ty.kind,
            group: ty.group,
            event,
            object,
        };
        self.watchers.retain(|w| {
            if !w.wants(&change) {
                return true;
            }
            w.sender.send(event_line(ty, &change)).is_ok()
        });
        self.history.push(change);
    }
}

impl Watcher {
    fn wants(&self, change: &Change) -> bool {
        change.kind == self.kind
            && change.group == self.group
            && in_namespace(&change.object, self.namespace.as_deref())
            && self.fields.iter().all(|f| f.matches(&change.object))
    }
}

fn in_namespace(object: &Value, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
}

/// One line of a watch stream, in the version the watch asked for.
fn event_line(ty: &ResourceType, change: &Change) -> Bytes {
    let mut object = change.object.clone();
    object["apiVersion"] = json!(ty.api_version());
    let line = json!({"type": change.event, "object": object});
    Bytes::from(format!("{line}\n"))
}

/// `metadata.name=x`, `type!=y`: the field selector terms the fixture knows.
#[derive(Clone, Debug)]
struct FieldTerm {
    path: String,
    value: String,
    equal: bool,
}

impl FieldTerm {
    fn parse(selector: &str) -> Vec<FieldTerm> {
        selector
            .split(',')
            .filter(|t| !t.is_empty())
            .filter_map(|term| {
                let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
                    (p, v, false)
                } else {
                    let (p, v) = term.split_once('=')?;
                    (p.trim_end_matches('='), v, true)
                };
                Some(FieldTerm {
                    path: path.to_owned(),
                    value: value.to_owned(),
                    equal,
                })
            })
            .collect()
    }

    fn matches(&self, object: &Value) -> bool {
        let actual = self
            .path
            .split('.')
            .fold(object, |v, part| &v[part])
            .as_str()
            .unwrap_or_default();
        (actual == self.value) == self.equal
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<State>>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

/// A `Status` failure as the API server writes it.
fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// What a request's path names.
struct Target {
    ty: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    /// The `status` subresource of the named object.
    status: bool,
}

enum Route {
    Discovery(String, String),
    Resource(Target),
    Unknown,
}

fn route(state: &State, path: &str) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::Unknown,
    };
    let (rest, status) = match rest {
        [before @ .., "status"] if before.len() == 2 || before.len() == 4 => (before, true),
        all => (all, false),
    };
    let (namespace, plural, name) = match rest {
        [] => return Route::Discovery(group.to_owned(), version.to_owned()),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return Route::Unknown,
    };
    match state.type_of_path(group, version, plural) {
        Some(ty) => Route::Resource(Target {
            ty,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            status,
        }),
        None => Route::Unknown,
    }
}

fn query(request: &Request<Incoming>) -> BTreeMap<String, String> {
    let query = request.uri().query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Body> {
    let line = format!(
        "{} {}",
        request.method(),
        request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default()
    );
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    {
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        guard.requests.push(line);
        if guard.down {
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the API server is down",
            );
        }
    }
    if !authorized {
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let method = request.method().clone();
    let query = query(&request);
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
    if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return token_review(&guard, &body);
    }
    if path == "/version" {
        let minor = guard.minor;
        return full(
            StatusCode::OK,
            &json!({"major": "1", "minor": minor.to_string(), "gitVersion": format!("v1.{minor}.0")}),
        );
    }
    match route(&guard, &path) {
        Route::Discovery(group, version) => discovery(&guard, &group, &version),
        Route::Unknown => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ),
        Route::Resource(target) => match (method, &target.name) {
            (Method::GET, None) if is_watch(&query) => watch(&mut guard, &target, &query),
            (Method::GET, None) => list(&guard, &target, &query),
            (Method::GET, Some(name)) => match find(&guard, &target, name) {
                Some(stored) => full(StatusCode::OK, &with_version(&target.ty, &stored.object)),
                None => not_found(&target.ty, name),
            },
            (Method::POST, None) => create(&mut guard, &target, &body),
            (Method::PUT, Some(name)) => replace(&mut guard, &target, name, &body),
            (Method::PATCH, Some(name)) if target.status => {
                patch_status(&mut guard, &target, name, &body, &content_type)
            }
            (Method::PATCH, Some(name)) => patch(&mut guard, &target, name, &body, &content_type),
            (Method::DELETE, Some(name)) => {
                let namespace = target.namespace.clone().unwrap_or_default();
                match guard.remove(&target.ty, &namespace, name) {
                    Some(object) => full(StatusCode::OK, &object),
                    None => not_found(&target.ty, name),
                }
            }
            _ => failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the fixture does not do that",
            ),
        },
    }
}

/// Reviews a token as the API server does: who it is, for which audiences.
fn token_review(state: &State, body: &[u8]) -> Response<Body> {
    let review: Value = serde_json::from_slice(body).unwrap_or_default();
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let status = match state.tokens.get(token) {
        Some((username, audiences)) => {
            json!({"authenticated": true, "audiences": audiences, "user": {"username": username}})
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    full(
        StatusCode::CREATED,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}),
    )
}

fn is_watch(query: &BTreeMap<String, String>) -> bool {
    query.get("watch").is_some_and(|v| v == "true" || v == "1")
}

fn not_found(ty: &ResourceType, name: &str) -> Response<Body> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{}.{} \"{name}\" not found", ty.plural, ty.group),
    )
}

fn with_version(ty: &ResourceType, object: &Value) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = json!(ty.api_version());
    object
}

fn find<'a>(state: &'a State, target: &Target, name: &str) -> Option<&'a Stored> {
    state
        .objects
        .get(&(target.ty.kind, target.ty.group))?
        .get(&(
            target.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        ))
}

fn discovery(state: &State, group: &str, version: &str) -> Response<Body> {
    let resources: Vec<Value> = state
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| {
            json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                   "kind": t.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
        })
        .collect();
    if resources.is_empty() {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    full(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

fn selected<'a>(
    state: &'a State,
    target: &'a Target,
    query: &BTreeMap<String, String>,
) -> impl Iterator<Item = &'a Stored> {
    let fields = FieldTerm::parse(query.get("fieldSelector").map_or("", String::as_str));
    state
        .objects
        .get(&(target.ty.kind, target.ty.group))
        .into_iter()
        .flat_map(|m| m.values())
        .filter(move |s| in_namespace(&s.object, target.namespace.as_deref()))
        .filter(move |s| fields.iter().all(|f| f.matches(&s.object)))
}

fn list(state: &State, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
    let items: Vec<Value> = selected(state, target, query)
        .map(|s| {
            // As a real API server does, list items carry no apiVersion/kind.
            let mut object = s.object.clone();
            if let Some(map) = object.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            object
        })
        .collect();
    full(
        StatusCode::OK,
        &json!({"kind": format!("{}List", target.ty.kind), "apiVersion": target.ty.api_version(),
                "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
    )
}

fn watch(state: &mut State, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
    let (sender, receiver) = mpsc::unbounded_channel::<Bytes>();
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let watcher = Watcher {
        kind: target.ty.kind,
        group: target.ty.group,
        namespace: target.namespace.clone(),
        fields: FieldTerm::parse(query.get("fieldSelector").map_or("", String::as_str)),
        sender,
    };
    if from == 0 {
        // "Any" semantics: start with every current object, then changes.
        for stored in selected(state, target, query) {
            let change = Change {
                resource_version: stored.resource_version,
                kind: target.ty.kind,
                group: target.ty.group,
                event: "ADDED",
                object: stored.object.clone(),
            };
            let _ = watcher.sender.send(event_line(&target.ty, &change));
        }
    } else if from < state.compacted {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {from} ({})", state.compacted),
            "reason": "Expired", "code": 410}});
        let _ = watcher.sender.send(Bytes::from(format!("{gone}\n")));
        return stream(receiver, None);
    } else {
        for change in state
            .history
            .iter()
            .filter(|c| c.resource_version > from && watcher.wants(c))
        {
            let _ = watcher.sender.send(event_line(&target.ty, change));
        }
    }
    if query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true")
    {
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": target.ty.kind, "apiVersion": target.ty.api_version(),
            "metadata": {"resourceVersion": state.resource_version.to_string()}}});
        let _ = watcher.sender.send(Bytes::from(format!("{bookmark}\n")));
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs);
    state.watchers.push(watcher);
    stream(receiver, timeout)
}

/// A chunked body fed by a channel; it ends when the sender goes or at `timeout`.
fn stream(
    mut receiver: mpsc::UnboundedReceiver<Bytes>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
    let (sender, frames) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        while let Ok(Some(bytes)) = tokio::time::timeout_at(deadline, receiver.recv()).await {
            if sender.send(Ok(Frame::data(bytes))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(frames));
    let mut response = Response::new(body.boxed());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

fn parse_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_slice::<Value>(body))
        .map_err(|e| e.to_string())
}

fn bad_request(message: &str) -> Response<Body> {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn create(state: &mut State, target: &Target, body: &[u8]) -> Response<Body> {
    let mut object = match parse_body(body) {
        Ok(object) => object,
        Err(message) => return bad_request(&message),
    };
    if let Some(ns) = &target.namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    if find(state, target, &name).is_some() {
        return failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!(
                "{}.{} \"{name}\" already exists",
                target.ty.plural, target.ty.group
            ),
        );
    }
    object["apiVersion"] = json!(target.ty.api_version());
    object["kind"] = json!(target.ty.kind);
    let namespace = target.namespace.clone().unwrap_or_default();
    state.store(&target.ty, namespace.clone(), name.clone(), object);
    let stored = find(state, target, &name).map(|s| s.object.clone());
    full(StatusCode::CREATED, &stored.unwrap_or_default())
}

fn replace(state: &mut State, target: &Target, name: &str, body: &[u8]) -> Response<Body> {
    let object = match parse_body(body) {
        Ok(object) => object,
        Err(message) => return bad_request(&message),
    };
    let Some(current) = find(state, target, name) else {
        return not_found(&target.ty, name);
    };
    let asked = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !asked.is_empty() && asked != current.resource_version.to_string() {
        return failure(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                target.ty.plural, target.ty.group
            ),
        );
    }
    write(state, target, name, object, StatusCode::OK)
}

fn write(
    state: &mut State,
    target: &Target,
    name: &str,
    mut object: Value,
    status: StatusCode,
) -> Response<Body> {
    object["apiVersion"] = json!(target.ty.api_version());
    object["kind"] = json!(target.ty.kind);
    let namespace = target.namespace.clone().unwrap_or_default();
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    state.store(&target.ty, namespace, name.to_owned(), object);
    let stored = find(state, target, name).map(|s| s.object.clone());
    full(status, &stored.unwrap_or_default())
}

/// Merge patches and server-side apply (as a merge of the applied fields: the
/// fixture keeps no field managers).
fn patch(
    state: &mut State,
    target: &Target,
    name: &str,
    body: &[u8],
    content_type: &str,
) -> Response<Body> {
    let patch = match parse_body(body) {
        Ok(patch) => patch,
        Err(message) => return bad_request(&message),
    };
    let apply = content_type.starts_with("application/apply-patch");
    if !apply && !content_type.starts_with("application/merge-patch") {
        return failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the fixture does not take {content_type} patches"),
        );
    }
    let (mut object, status) = match find(state, target, name) {
        Some(stored) => (stored.object.clone(), StatusCode::OK),
        None if apply => (json!({"metadata": {"name": name}}), StatusCode::CREATED),
        None => return not_found(&target.ty, name),
    };
    merge(&mut object, &patch);
    write(state, target, name, object, status)
}

/// A patch of the `status` subresource: only `status` changes, and only on
/// an object that exists, as the API server does it.
fn patch_status(
    state: &mut State,
    target: &Target,
    name: &str,
    body: &[u8],
    content_type: &str,
) -> Response<Body> {
    let patch = match parse_body(body) {
        Ok(patch) => patch,
        Err(message) => return bad_request(&message),
    };
    let known = ["application/apply-patch", "application/merge-patch"];
    if !known.iter().any(|k| content_type.starts_with(k)) {
        return failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the fixture does not take {content_type} patches"),
        );
    }
    let Some(stored) = find(state, target, name) else {
        return not_found(&target.ty, name);
    };
    let mut object = stored.object.clone();
    merge(&mut object["status"], &patch["status"]);
    write(state, target, name, object, StatusCode::OK)
}

/// RFC 7386 JSON merge.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    for (key, value) in fields {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}
