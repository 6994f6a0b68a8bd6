//! Deployments and StatefulSets as the testbed runs them: the desired state
//! (replicas, the pod template and its hash, the rollout strategy) and the
//! pods made from it, each named as Kubernetes names them.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;

use super::{
    Check, Container, DEFAULT_REVISION, Injection, PodPlan, Probe, REVISION_LABEL, stable, strings,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
        }
    }
}

/// A workload's desired state.
#[derive(Clone, Debug)]
pub struct WorkloadPlan {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    pub replicas: usize,
    /// The pod template's hash (Kubernetes' `pod-template-hash`): a pod with
    /// another is replaced by a rollout.
    pub revision: String,
    /// RollingUpdate's `maxSurge` and `maxUnavailable`, in pods.
    pub max_surge: usize,
    pub max_unavailable: usize,
    /// The Recreate strategy: every old pod gone before a new one starts.
    pub recreate: bool,
    /// The object as applied.
    pub doc: Value,
}

impl WorkloadPlan {
    /// From a Deployment or StatefulSet document; checks what pods need,
    /// with `injected` naming the namespaces whose pods get sidecars.
    pub fn from_doc(doc: &Value, injected: &Injection) -> Result<Self, String> {
        let kind = match doc["kind"].as_str() {
            Some("Deployment") => WorkloadKind::Deployment,
            Some("StatefulSet") => WorkloadKind::StatefulSet,
            other => return Err(format!("{other:?} is not a Deployment or StatefulSet")),
        };
        let name = doc["metadata"]["name"]
            .as_str()
            .ok_or("a workload without metadata.name")?
            .to_owned();
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let replicas =
            usize::try_from(doc["spec"]["replicas"].as_u64().unwrap_or(1)).map_err(|_| {
                format!(
                    "{} {namespace}/{name}: spec.replicas is too large",
                    kind.as_str()
                )
            })?;
        let template = &doc["spec"]["template"];
        let revision = format!("{:010x}", stable(&template.to_string()) & 0xff_ffff_ffff);
        let (max_surge, max_unavailable) = strategy(doc, replicas)
            .map_err(|e| format!("{} {namespace}/{name}: {e}", kind.as_str()))?;
        let workload = Self {
            kind,
            namespace,
            name,
            replicas,
            revision,
            max_surge,
            max_unavailable,
            recreate: doc["spec"]["strategy"]["type"] == "Recreate",
            doc: doc.clone(),
        };
        // A template that cannot make a pod is refused now, not at each rollout step.
        workload.pod("check", Ipv4Addr::UNSPECIFIED, injected)?;
        Ok(workload)
    }

    /// The name a new pod gets: `<name>-<ordinal>` for a StatefulSet;
    /// `<name>-<template hash>-<five characters>` for a Deployment, the first
    /// such name `taken` does not hold.
    pub fn pod_name(&self, ordinal: usize, taken: impl Fn(&str) -> bool) -> String {
        if self.kind == WorkloadKind::StatefulSet {
            return format!("{}-{ordinal}", self.name);
        }
        (0u64..)
            .map(|n| {
                let seed = format!("{}/{}/{}/{n}", self.namespace, self.name, self.revision);
                format!("{}-{}-{}", self.name, self.revision, suffix(stable(&seed)))
            })
            .find(|name| !taken(name))
            .unwrap_or_default()
    }

    /// A pod of this workload named `pod_name` at `ip`; `injected` names the
    /// namespaces whose pods get sidecars, and the revision injecting each.
    pub fn pod(
        &self,
        pod_name: &str,
        ip: Ipv4Addr,
        injected: &Injection,
    ) -> Result<PodPlan, String> {
        let (kind, namespace, name) = (self.kind.as_str(), &self.namespace, &self.name);
        let template = &self.doc["spec"]["template"];
        let labels = strings(&template["metadata"]["labels"]);
        let annotations = strings(&template["metadata"]["annotations"]);
        // The pod's label wins over its annotation, as Istio's injector decides.
        let opt = labels
            .get("sidecar.istio.io/inject")
            .or_else(|| annotations.get("sidecar.istio.io/inject"));
        // A labelled namespace names the revision; in one without labels a
        // pod may name its own (`istio.io/rev`), as Istio's webhooks select.
        let revision = match injected.get(namespace) {
            Some(labelled) => labelled.as_ref(),
            None => labels.get(REVISION_LABEL),
        };
        let sidecar = match opt.map(String::as_str) {
            Some("false") => false,
            Some("true") => true,
            _ => revision.is_some(),
        } && template["spec"]["hostNetwork"] != true;
        let control_plane = revision.map_or(DEFAULT_REVISION, String::as_str).to_owned();
        // Istio's gateway injection: the pod's own `istio-proxy` container is
        // the gateway (`oxmesh proxy --mode gateway`), with no interception.
        let gateway = sidecar
            && annotations
                .get("inject.istio.io/templates")
                .is_some_and(|t| t.split(',').any(|t| t.trim() == "gateway"));
        let tproxy = match annotations
            .get("sidecar.istio.io/interceptionMode")
            .map(String::as_str)
        {
            None | Some("REDIRECT") => false,
            Some("TPROXY") => true,
            Some(other) => {
                return Err(format!(
                    "{kind} {namespace}/{name}: spec.template.metadata.annotations[sidecar.istio.io/interceptionMode]: {other:?} is not REDIRECT or TPROXY"
                ));
            }
        };
        let account = template["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let grace = template["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        Ok(PodPlan {
            containers: containers(&template["spec"], pod_name, namespace, gateway)
                .map_err(|e| format!("{kind} {namespace}/{name}: {e}"))?,
            name: pod_name.to_owned(),
            namespace: namespace.clone(),
            workload: name.clone(),
            ip,
            labels,
            annotations,
            service_account: account.to_owned(),
            injected: sidecar && !gateway,
            control_plane,
            tproxy,
            gateway,
            revision: self.revision.clone(),
            grace,
            terminating: false,
        })
    }
}

/// Kubernetes' terminationGracePeriodSeconds default.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// RollingUpdate's limits in pods: `maxSurge` rounds up, `maxUnavailable`
/// down, both 25 % by default, and never both 0. A StatefulSet replaces one
/// pod at a time.
fn strategy(doc: &Value, replicas: usize) -> Result<(usize, usize), String> {
    if doc["kind"] == "StatefulSet" {
        return Ok((0, 1));
    }
    let rolling = &doc["spec"]["strategy"]["rollingUpdate"];
    if doc["spec"]["strategy"]["type"] == "Recreate" {
        return Ok((0, replicas.max(1)));
    }
    let amount = |v: &Value, field: &str, round_up: bool| -> Result<usize, String> {
        match v {
            Value::Null => Ok(percent(replicas, 25, round_up)),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("spec.strategy.rollingUpdate.{field}: {n} is not a count")),
            Value::String(s) => s
                .strip_suffix('%')
                .and_then(|p| p.parse::<usize>().ok())
                .map(|p| percent(replicas, p, round_up))
                .ok_or_else(|| {
                    format!(
                        "spec.strategy.rollingUpdate.{field}: {s:?} is not a count or a percentage"
                    )
                }),
            other => Err(format!(
                "spec.strategy.rollingUpdate.{field}: {other} is not a count or a percentage"
            )),
        }
    };
    let surge = amount(&rolling["maxSurge"], "maxSurge", true)?;
    let unavailable = amount(&rolling["maxUnavailable"], "maxUnavailable", false)?;
    if surge == 0 && unavailable == 0 {
        // Kubernetes refuses both 0 when given; when rounding makes them so,
        // it lets one pod be unavailable.
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

fn percent(replicas: usize, percent: usize, round_up: bool) -> usize {
    let scaled = replicas * percent;
    if round_up {
        scaled.div_ceil(100)
    } else {
        scaled / 100
    }
}

/// Kubernetes' five characters from its safe alphabet.
pub(super) fn suffix(mut n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The pod's containers; a gateway's own `istio-proxy` is the proxy the
/// testbed runs itself.
fn containers(
    spec: &Value,
    pod: &str,
    namespace: &str,
    gateway: bool,
) -> Result<Vec<Container>, String> {
    let list = spec["containers"]
        .as_array()
        .ok_or("a pod template without containers")?;
    list.iter()
        .filter(|c| !(gateway && c["name"] == "istio-proxy"))
        .map(|c| {
            let name = c["name"].as_str().unwrap_or("app").to_owned();
            let mut env: Vec<(String, String)> = vec![
                ("HOSTNAME".into(), pod.to_owned()),
                ("POD_NAME".into(), pod.to_owned()),
                ("POD_NAMESPACE".into(), namespace.to_owned()),
            ];
            for e in c["env"].as_array().into_iter().flatten() {
                if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                    env.push((k.to_owned(), v.to_owned()));
                }
            }
            let strings = |key: &str| -> Vec<String> {
                c[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w.as_str().map(|w| expand(w, &env)))
                    .collect()
            };
            let (command, args) = (strings("command"), strings("args"));
            // No command: the image's own program, with `args` as its
            // arguments, as Kubernetes runs it: a built-in demo reads them.
            let words = match (command.is_empty(), demo_command(c)) {
                (false, _) => command.into_iter().chain(args).collect(),
                (true, Some(demo)) => demo,
                (true, None) if !args.is_empty() => args,
                (true, None) => {
                    return Err(format!(
                        "container {name:?} has no command and its image {:?} is not a built-in demo: the testbed runs commands, not images",
                        c["image"].as_str().unwrap_or_default()
                    ));
                }
            };
            Ok(Container {
                readiness: probe(&c["readinessProbe"], c)?,
                name,
                argv: words,
                env,
            })
        })
        .collect()
}

/// The program `oxmesh up` runs for the images it knows: bookinfo's
/// (`.../examples-bookinfo-<service>-v<N>`), `echo` (or `httpbin`, and the
/// `go-httpbin` of Istio's httpbin sample), `tcp-echo`
/// (or Istio's `tcp-echo-server`), `greeter`, Istio's `ext-authz` sample
/// (HTTP on 8000, gRPC on 9000) and the OpenTelemetry Collector or Zipkin
/// (OTLP on 4317 and 4318, Zipkin on 9411), under any registry and tag.
/// `oxmesh` stands for the running binary.
fn demo_command(container: &Value) -> Option<Vec<String>> {
    let image = container["image"].as_str()?;
    let name = image.rsplit('/').next()?.split(':').next()?;
    let port = container["ports"][0]["containerPort"].as_u64();
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if let Some(rest) = name.strip_prefix("examples-bookinfo-") {
        let (service, version) = rest.rsplit_once('-')?;
        let port = port.unwrap_or(9080).to_string();
        return Some(words(&[
            "oxmesh",
            "demo",
            "bookinfo",
            service,
            "--version",
            version,
            "--port",
            &port,
        ]));
    }
    if name == "ext-authz" {
        return Some(words(&["oxmesh", "demo", "ext-authz"]));
    }
    if matches!(
        name,
        "opentelemetry-collector"
            | "opentelemetry-collector-contrib"
            | "otel-collector"
            | "zipkin"
            | "zipkin-slim"
    ) {
        return Some(words(&["oxmesh", "demo", "otel-collector"]));
    }
    let (app, default_port) = match name {
        "echo" | "httpbin" | "go-httpbin" => ("echo", 8080),
        "tcp-echo" | "tcp-echo-server" => ("tcp-echo", 9000),
        "greeter" | "grpc-greeter" => ("greeter", 50051),
        _ => return None,
    };
    let port = port.unwrap_or(default_port).to_string();
    let mut command = words(&["oxmesh", "demo", app, "--port", &port]);
    // Istio's tcp-echo-server takes `PORTS PREFIX` (`"9000,9001" one`).
    if app == "tcp-echo"
        && let Some(prefix) = container["args"][1].as_str()
    {
        command.extend(words(&["--prefix", prefix]));
    }
    Some(command)
}

/// A container's `readinessProbe`; a named port is looked up in its `ports`.
fn probe(p: &Value, container: &Value) -> Result<Option<Probe>, String> {
    if p.is_null() {
        return Ok(None);
    }
    let port = |v: &Value| -> Result<u16, String> {
        if let Some(n) = v.as_u64() {
            return u16::try_from(n).map_err(|_| format!("probe port {n} is out of range"));
        }
        let name = v.as_str().unwrap_or_default();
        container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| {
                format!("readinessProbe names port {name:?}, which the container does not declare")
            })
    };
    let check = if !p["httpGet"].is_null() {
        Check::Http {
            port: port(&p["httpGet"]["port"])?,
            path: p["httpGet"]["path"].as_str().unwrap_or("/").to_owned(),
        }
    } else if !p["tcpSocket"].is_null() {
        Check::Tcp {
            port: port(&p["tcpSocket"]["port"])?,
        }
    } else if let Some(command) = p["exec"]["command"].as_array() {
        Check::Exec(
            command
                .iter()
                .filter_map(|w| w.as_str().map(str::to_owned))
                .collect(),
        )
    } else {
        return Err("readinessProbe: only httpGet, tcpSocket and exec are supported".to_owned());
    };
    let seconds = |key: &str, default: u64| {
        std::time::Duration::from_secs(p[key].as_u64().unwrap_or(default))
    };
    Ok(Some(Probe {
        check,
        period: seconds("periodSeconds", 10),
        initial_delay: seconds("initialDelaySeconds", 0),
    }))
}

/// `$(VAR)` as Kubernetes expands it in commands.
fn expand(word: &str, env: &[(String, String)]) -> String {
    let mut out = word.to_owned();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(strategy: Value, replicas: u64) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "echo", "namespace": "demo"},
            "spec": {
                "replicas": replicas,
                "strategy": strategy,
                "template": {
                    "metadata": {"labels": {"app": "echo"}},
                    "spec": {"containers": [{"name": "echo", "image": "echo"}]},
                },
            },
        })
    }

    #[test]
    fn rolling_update_limits_follow_kubernetes_rounding() {
        let limits = |strategy: Value, replicas| {
            let w = WorkloadPlan::from_doc(&deployment(strategy, replicas), &Injection::new())
                .expect("plan");
            (w.max_surge, w.max_unavailable)
        };
        assert_eq!(limits(Value::Null, 4), (1, 1));
        assert_eq!(
            limits(Value::Null, 3),
            (1, 0),
            "25 % of 3: surge up, unavailable down"
        );
        assert_eq!(limits(Value::Null, 1), (1, 0));
        assert_eq!(
            limits(
                json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "50%"}}),
                4
            ),
            (0, 2)
        );
        assert_eq!(limits(json!({"type": "Recreate"}), 3), (0, 3));
        let bad = WorkloadPlan::from_doc(
            &deployment(json!({"rollingUpdate": {"maxSurge": "lots"}}), 2),
            &Injection::new(),
        )
        .expect_err("refused");
        assert!(
            bad.contains("spec.strategy.rollingUpdate.maxSurge"),
            "{bad}"
        );
    }

    #[test]
    fn pods_are_named_by_template_and_never_twice() {
        let w =
            WorkloadPlan::from_doc(&deployment(Value::Null, 2), &Injection::new()).expect("plan");
        let first = w.pod_name(0, |_| false);
        assert!(
            first.starts_with(&format!("echo-{}-", w.revision)),
            "{first}"
        );
        let second = w.pod_name(1, |n| n == first);
        assert_ne!(first, second);
        let mut changed = deployment(Value::Null, 2);
        changed["spec"]["template"]["metadata"]["annotations"] =
            json!({"kubectl.kubernetes.io/restartedAt": "now"});
        let restarted = WorkloadPlan::from_doc(&changed, &Injection::new()).expect("plan");
        assert_ne!(restarted.revision, w.revision, "a new template, a new hash");
        let scaled =
            WorkloadPlan::from_doc(&deployment(Value::Null, 5), &Injection::new()).expect("plan");
        assert_eq!(scaled.revision, w.revision, "replicas are not the template");
    }

    #[test]
    fn a_pod_with_the_gateway_template_is_a_gateway_without_a_sidecar() {
        let mut doc = deployment(Value::Null, 1);
        doc["spec"]["template"]["metadata"]["annotations"] =
            json!({"inject.istio.io/templates": "gateway"});
        doc["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "istio-proxy", "image": "auto"},
            {"name": "echo", "image": "echo"},
        ]);
        let injected: Injection = [("demo".to_owned(), Some(DEFAULT_REVISION.to_owned()))].into();
        let w = WorkloadPlan::from_doc(&doc, &injected).expect("plan");
        let pod = w
            .pod("echo-1", Ipv4Addr::new(198, 18, 0, 20), &injected)
            .expect("pod");
        assert!(pod.gateway && !pod.injected);
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["echo"], "its own istio-proxy is the gateway proxy");
        // Without injection for it, the template asks for nothing.
        let pod = w
            .pod("echo-2", Ipv4Addr::new(198, 18, 0, 21), &Injection::new())
            .expect_err("an istio-proxy container with no command is no app");
        assert!(pod.contains("istio-proxy"), "{pod}");
    }
}
