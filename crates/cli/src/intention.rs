//! `oxmesh intention`: Consul's intentions on Istio's API. Intentions are
//! kept as ordinary AuthorizationPolicies (labelled `oxmesh.io/intentions`,
//! the intentions themselves in an annotation), one per destination Service
//! and one per namespace whose default is deny, in the running local mesh, in
//! a directory of YAML, or in a cluster through its API server.
//! See [`policy`] for how they decide exactly as the intentions do.

mod cluster;
mod model;
mod policy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use self::model::{Action, Caller, Destination, Intention, Request, Requests, Source};

const LABEL: &str = "oxmesh.io/intentions";
const ANNOTATION: &str = "oxmesh.io/intentions";
/// A Service cannot have a dot in its name, so this never collides with a
/// destination's `intentions-<service>`.
const DEFAULT_POLICY: &str = "intentions.default";
/// The file a directory target keeps the policies in.
const FILE: &str = "intentions.yaml";

#[derive(clap::Subcommand)]
pub enum Command {
    /// What happens to requests no intention matches in a namespace:
    /// `deny` (only what intentions allow gets through) or `allow` (Istio's
    /// default).
    Default {
        action: ActionArg,
        #[arg(short, long)]
        namespace: String,
        #[command(flatten)]
        target: Target,
    },
    /// Allow SRC (ns/serviceaccount, ns/* or *) to call DST (ns/service).
    Allow(Subject),
    /// Deny SRC to call DST.
    Deny(Subject),
    /// Remove the intention for SRC, DST and the same request conditions.
    Delete(Subject),
    /// The intentions and namespace defaults, most specific first.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Whether SRC may call DST, and which intention and policy decide.
    Check(Subject),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ActionArg {
    Allow,
    Deny,
}

#[derive(clap::Args)]
pub struct Subject {
    source: String,
    destination: String,
    /// One of the Service's ports (the policy holds its target port).
    #[arg(long)]
    port: Option<u16>,
    /// A path, exact or a prefix ending in `*`.
    #[arg(long)]
    path: Option<String>,
    #[arg(long)]
    method: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct Target {
    /// The local mesh `oxmesh up` runs from this directory (by default the
    /// only one running).
    #[arg(long, conflicts_with_all = ["dir", "kubeconfig"])]
    mesh: Option<PathBuf>,
    /// A cluster instead: Services read and policies applied through the API
    /// server this kubeconfig names.
    #[arg(long, conflicts_with = "dir")]
    kubeconfig: Option<PathBuf>,
    /// A directory of YAML instead: Services are read from it and the
    /// policies written to `intentions.yaml` in it.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Default {
            action,
            namespace,
            target,
        } => {
            let mut store = Store::open(&target)?;
            store.defaults.insert(namespace.clone(), action.into());
            store.save(&target)?;
            println!(
                "default for namespace {namespace}: {}",
                Action::from(action)
            );
        }
        Command::Allow(s) => set(s, Action::Allow)?,
        Command::Deny(s) => set(s, Action::Deny)?,
        Command::Delete(s) => {
            let mut store = Store::open(&s.target)?;
            let subject = s.intention(&store, Action::Allow, false)?;
            let before = store.intentions.len();
            store.intentions.retain(|i| !i.same_subject(&subject));
            anyhow::ensure!(store.intentions.len() < before, "no such intention");
            store.save(&s.target)?;
            println!("removed {} -> {}", subject.source, subject.destination);
        }
        Command::List { target } => list(&Store::open(&target)?),
        Command::Check(s) => return check(s),
    }
    Ok(ExitCode::SUCCESS)
}

impl From<ActionArg> for Action {
    fn from(a: ActionArg) -> Self {
        match a {
            ActionArg::Allow => Action::Allow,
            ActionArg::Deny => Action::Deny,
        }
    }
}

fn set(s: Subject, action: Action) -> anyhow::Result<()> {
    let mut store = Store::open(&s.target)?;
    let intention = s.intention(&store, action, true)?;
    store.intentions.retain(|i| !i.same_subject(&intention));
    store.intentions.push(intention.clone());
    store.save(&s.target)?;
    println!("{intention}");
    Ok(())
}

impl Subject {
    /// The intention these arguments describe, its port turned into the
    /// Service's target port. A new one needs its Service; one to delete
    /// may name a Service that is gone, when it names no port.
    fn intention(&self, store: &Store, action: Action, new: bool) -> anyhow::Result<Intention> {
        let destination = Destination::parse(&self.destination).map_err(anyhow::Error::msg)?;
        let port = match (store.service(&destination), self.port) {
            (Ok(service), Some(p)) => Some(service.target_port(p)?),
            (Err(e), Some(_)) => return Err(e),
            (Err(e), None) if new => return Err(e),
            _ => None,
        };
        if let Some(path) = &self.path {
            let star = path.find('*');
            anyhow::ensure!(
                path.starts_with('/') && star.is_none_or(|i| i == path.len() - 1),
                "--path {path:?}: write an exact path, or a prefix ending in * (such as /api/*)"
            );
        }
        if new && (self.path.is_some() || self.method.is_some()) {
            let service = store.service(&destination)?;
            if let Some(port) = service.non_http_port() {
                anyhow::bail!(
                    "Service {destination} port {port} is not HTTP: --path and --method \
                     intentions would leave it no rule Istio keeps on TCP, so every caller \
                     would be refused there"
                );
            }
        }
        Ok(Intention {
            source: Source::parse(&self.source).map_err(anyhow::Error::msg)?,
            destination,
            action,
            requests: Requests {
                port,
                path: self.path.clone(),
                method: self.method.clone(),
            },
        })
    }
}

fn list(store: &Store) {
    let mut rows = vec![vec![
        "ACTION".to_owned(),
        "SOURCE".into(),
        "DESTINATION".into(),
        "REQUESTS".into(),
        "POLICY".into(),
    ]];
    for (ns, action) in &store.defaults {
        rows.push(vec![
            action.to_string(),
            "*".into(),
            format!("{ns}/* (default)"),
            String::new(),
            format!("{ns}/{DEFAULT_POLICY}"),
        ]);
    }
    for destination in store.destinations() {
        for i in model::by_precedence(store.of(&destination)) {
            rows.push(vec![
                i.action.to_string(),
                i.source.to_string(),
                i.destination.to_string(),
                i.requests.to_string(),
                format!("{}/{}", destination.namespace, policy_name(&destination)),
            ]);
        }
    }
    print!("{}", crate::table::render(&rows));
}

fn check(s: Subject) -> anyhow::Result<ExitCode> {
    let store = Store::open(&s.target)?;
    let destination = Destination::parse(&s.destination).map_err(anyhow::Error::msg)?;
    let service = store.service(&destination)?;
    let caller = match Source::parse(&s.source).map_err(anyhow::Error::msg)? {
        Source::Account { namespace, name } => Some(Caller {
            namespace,
            account: name,
        }),
        Source::Any if s.source == "*" => None,
        _ => anyhow::bail!("check a service account (ns/name), or * for a caller without one"),
    };
    let port = match s.port {
        Some(p) => service.target_port(p)?,
        None => service.first_target_port()?,
    };
    let request = Request {
        caller,
        port,
        path: s.path.clone().unwrap_or_else(|| "/".to_owned()),
        method: s.method.clone().unwrap_or_else(|| "GET".to_owned()),
    };
    let sorted = model::by_precedence(store.of(&destination));
    let default_allow = store.default_allows(&destination.namespace);
    let (deciding, allowed) = model::decide(&sorted, default_allow, &request);
    let by = match deciding {
        Some(i) => format!("intention \"{i}\""),
        None => format!(
            "the default of namespace {} ({})",
            destination.namespace,
            if default_allow { "allow" } else { "deny" }
        ),
    };
    let verdict = if allowed { "allowed" } else { "denied" };
    println!("{verdict} by {by}");
    let policy = format!("{}/{}", destination.namespace, policy_name(&destination));
    if sorted.is_empty() {
        if default_allow {
            println!("no intention policy applies to {destination}");
        } else {
            println!(
                "policy {}/{DEFAULT_POLICY} allows nothing",
                destination.namespace
            );
        }
    } else {
        let rules = policy::allow_rules(&sorted, default_allow);
        match rules.iter().position(|r| r.matches(&request)) {
            Some(i) => println!("policy {policy}: rules[{i}] allows it"),
            None => println!("policy {policy}: no rule allows it"),
        }
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A Service's selector and ports, for policies and port numbers.
struct ServiceInfo {
    selector: serde_json::Map<String, Value>,
    ports: Vec<Value>,
}

impl ServiceInfo {
    /// The workload port behind Service port `port`. A named target port
    /// is refused: which number it is depends on each pod.
    fn target_port(&self, port: u16) -> anyhow::Result<u16> {
        let found = self
            .ports
            .iter()
            .find(|p| p["port"].as_u64() == Some(u64::from(port)))
            .with_context(|| format!("the Service has no port {port}"))?;
        match &found["targetPort"] {
            Value::Null => Ok(port),
            Value::Number(n) => n
                .as_u64()
                .and_then(|t| u16::try_from(t).ok())
                .context("targetPort out of range"),
            named => anyhow::bail!(
                "port {port} has the named targetPort {named}: give --port the number the workload listens on through a Service port with a numeric targetPort"
            ),
        }
    }

    /// A port whose protocol (by name or `appProtocol`) is not HTTP.
    fn non_http_port(&self) -> Option<u64> {
        let http = |p: &str| {
            let p = p.to_ascii_lowercase();
            ["http", "http2", "grpc", "grpc-web"].contains(&p.as_str())
        };
        self.ports.iter().find_map(|p| {
            let protocol = p["appProtocol"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    p["name"]
                        .as_str()
                        .map(|n| n.split('-').next().unwrap_or(n).to_owned())
                })
                .unwrap_or_default();
            (!http(&protocol)).then(|| p["port"].as_u64().unwrap_or_default())
        })
    }

    fn first_target_port(&self) -> anyhow::Result<u16> {
        let port = self
            .ports
            .first()
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .context("the Service has no ports")?;
        self.target_port(port)
    }
}

/// The intentions and defaults as the target holds them, with its Services.
struct Store {
    intentions: Vec<Intention>,
    defaults: BTreeMap<String, Action>,
    services: BTreeMap<Destination, ServiceInfo>,
    /// The intention policies found, to remove those no longer needed.
    existing: Vec<Value>,
}

impl Store {
    fn open(target: &Target) -> anyhow::Result<Self> {
        let objects = target.objects()?;
        let mut store = Store {
            intentions: Vec::new(),
            defaults: BTreeMap::new(),
            services: BTreeMap::new(),
            existing: Vec::new(),
        };
        for o in objects {
            let (kind, meta) = (o["kind"].as_str(), &o["metadata"]);
            let ns = meta["namespace"].as_str().unwrap_or("default").to_owned();
            let name = meta["name"].as_str().unwrap_or_default().to_owned();
            if kind == Some("Service") {
                store.services.insert(
                    Destination {
                        namespace: ns,
                        name,
                    },
                    ServiceInfo {
                        selector: o["spec"]["selector"]
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                        ports: o["spec"]["ports"].as_array().cloned().unwrap_or_default(),
                    },
                );
            } else if kind == Some("AuthorizationPolicy") && meta["labels"][LABEL].is_string() {
                store.read_policy(&ns, &name, meta)?;
                store.existing.push(o);
            }
        }
        Ok(store)
    }

    fn read_policy(&mut self, ns: &str, name: &str, meta: &Value) -> anyhow::Result<()> {
        let text = meta["annotations"][ANNOTATION].as_str().unwrap_or("[]");
        if name == DEFAULT_POLICY {
            let v: Value = serde_json::from_str(text)
                .with_context(|| format!("{ns}/{name}: annotation {ANNOTATION}"))?;
            if v["default"] == "deny" {
                self.defaults.insert(ns.to_owned(), Action::Deny);
            }
            return Ok(());
        }
        let list: Vec<Intention> = serde_json::from_str(text)
            .with_context(|| format!("{ns}/{name}: annotation {ANNOTATION}"))?;
        self.intentions.extend(list);
        Ok(())
    }

    fn service(&self, d: &Destination) -> anyhow::Result<&ServiceInfo> {
        let service = self
            .services
            .get(d)
            .with_context(|| format!("there is no Service {d}"))?;
        anyhow::ensure!(
            !service.selector.is_empty(),
            "Service {d} has no selector: intentions select its workloads by it"
        );
        Ok(service)
    }

    fn of<'a>(&'a self, d: &'a Destination) -> impl Iterator<Item = &'a Intention> + 'a {
        self.intentions.iter().filter(move |i| &i.destination == d)
    }

    fn destinations(&self) -> Vec<Destination> {
        let mut all: Vec<Destination> = self
            .intentions
            .iter()
            .map(|i| i.destination.clone())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    fn default_allows(&self, ns: &str) -> bool {
        self.defaults.get(ns) != Some(&Action::Deny)
    }

    /// The policies the intentions make now. A destination whose Service is
    /// gone keeps the policy it had.
    fn policies(&self) -> anyhow::Result<Vec<Value>> {
        self.refuse_overlaps()?;
        let mut out = Vec::new();
        for (ns, action) in &self.defaults {
            if *action == Action::Deny {
                out.push(policy_object(
                    ns,
                    DEFAULT_POLICY,
                    json!({"default": "deny"}),
                    json!({}),
                ));
            }
        }
        for d in self.destinations() {
            let Ok(service) = self.service(&d) else {
                let kept = self.existing.iter().find(|p| {
                    p["metadata"]["namespace"] == d.namespace.as_str()
                        && p["metadata"]["name"] == policy_name(&d).as_str()
                });
                eprintln!("Service {d} is gone: its intentions' policy is left as it was");
                out.extend(kept.cloned());
                continue;
            };
            let intentions: Vec<&Intention> = self.of(&d).collect();
            let sorted = model::by_precedence(intentions.iter().copied());
            let rules = policy::allow_rules(&sorted, self.default_allows(&d.namespace));
            let spec = json!({
                "selector": {"matchLabels": service.selector},
                "action": "ALLOW",
                "rules": rules.iter().map(policy::Rule::to_json).collect::<Vec<_>>(),
            });
            out.push(policy_object(
                &d.namespace,
                &policy_name(&d),
                json!(intentions),
                spec,
            ));
        }
        Ok(out)
    }

    /// Two destinations whose selectors can pick the same pod would each
    /// allow what the other's intentions deny (ALLOW policies add up), so
    /// they are refused.
    fn refuse_overlaps(&self) -> anyhow::Result<()> {
        let destinations = self.destinations();
        for (i, a) in destinations.iter().enumerate() {
            for b in &destinations[i + 1..] {
                let (Ok(sa), Ok(sb)) = (self.service(a), self.service(b)) else {
                    continue;
                };
                let compatible = a.namespace == b.namespace
                    && sa
                        .selector
                        .iter()
                        .all(|(k, v)| sb.selector.get(k).is_none_or(|w| w == v));
                anyhow::ensure!(
                    !compatible,
                    "Services {a} and {b} may select the same pods: intentions for both would let each allow what the other denies; keep intentions on one of them"
                );
            }
        }
        Ok(())
    }

    /// Writes the policies; those no longer needed are removed.
    fn save(&self, target: &Target) -> anyhow::Result<()> {
        let policies = self.policies()?;
        let key = |o: &Value| {
            (
                o["metadata"]["namespace"].clone(),
                o["metadata"]["name"].clone(),
            )
        };
        let stale: Vec<Value> = self
            .existing
            .iter()
            .filter(|old| !policies.iter().any(|p| key(p) == key(old)))
            .cloned()
            .collect();
        target.write(&policies, &stale)
    }
}

fn policy_name(d: &Destination) -> String {
    format!("intentions-{}", d.name)
}

fn policy_object(ns: &str, name: &str, annotation: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {LABEL: "true"},
            "annotations": {ANNOTATION: annotation.to_string()},
        },
        "spec": spec,
    })
}

impl Target {
    /// Every object the target holds.
    fn objects(&self) -> anyhow::Result<Vec<Value>> {
        if let Some(kubeconfig) = &self.kubeconfig {
            return cluster::objects(kubeconfig, LABEL);
        }
        match &self.dir {
            Some(dir) => {
                let documents = oxmesh_testbed::manifest::read_files(std::slice::from_ref(dir))?;
                Ok(documents.into_iter().map(|(_, v)| v).collect())
            }
            None => Ok(self.mesh()?.config_objects()?),
        }
    }

    fn mesh(&self) -> anyhow::Result<oxmesh_testbed::running::RunningMesh> {
        Ok(oxmesh_testbed::running::RunningMesh::find(
            self.mesh.as_deref(),
        )?)
    }

    fn write(&self, policies: &[Value], stale: &[Value]) -> anyhow::Result<()> {
        if let Some(kubeconfig) = &self.kubeconfig {
            return cluster::write(kubeconfig, policies, stale);
        }
        match &self.dir {
            Some(dir) => {
                let path = dir.join(FILE);
                let mut text = String::from(
                    "# Written by `oxmesh intention`: AuthorizationPolicies carrying intentions.\n",
                );
                for p in policies {
                    text.push_str("---\n");
                    text.push_str(&serde_saphyr::to_string(p)?);
                }
                std::fs::write(&path, text).with_context(|| path.display().to_string())?;
            }
            None => {
                let mesh = self.mesh()?;
                if !stale.is_empty() {
                    mesh.delete(stale)?;
                }
                if !policies.is_empty() {
                    mesh.apply(policies)?;
                }
            }
        }
        Ok(())
    }
}
