//! `oxmesh get`: what the running local mesh holds, as `kubectl get` shows
//! a cluster's objects: `KIND [NAME] [-n NS | -A] [-o json|yaml]`, objects
//! with the status the control plane wrote for them. Pods and Services have
//! the testbed's own tables too.

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::local::MeshArg;

#[derive(clap::Args)]
pub struct GetArgs {
    /// What to list: pods, services, all (pods and services), or any kind
    /// the mesh holds, by kubectl's names (virtualservices or vs, gateways or
    /// gw for Istio's, gtw or gateways.gateway.networking.k8s.io for the
    /// Gateway API's, httproutes, deployments or deploy, ...).
    kind: String,
    /// One object by name.
    name: Option<String>,
    /// The namespace (default: `default`).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// `json` or `yaml`: the objects themselves, as the API server has them.
    #[arg(short, long)]
    output: Option<Output>,
    #[command(flatten)]
    mesh: MeshArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Json,
    Yaml,
}

/// A kind as `get` names it: its names, its API group (`""` for core) and
/// its `kind`.
struct KindName {
    names: &'static [&'static str],
    group: &'static str,
    kind: &'static str,
}

const ISTIO: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";
const GATEWAY_API: &str = "gateway.networking.k8s.io";

const KINDS: &[KindName] = &[
    KindName {
        names: &["pods", "pod", "po"],
        group: "",
        kind: "Pod",
    },
    KindName {
        names: &["services", "service", "svc"],
        group: "",
        kind: "Service",
    },
    KindName {
        names: &["namespaces", "namespace", "ns"],
        group: "",
        kind: "Namespace",
    },
    KindName {
        names: &["secrets", "secret"],
        group: "",
        kind: "Secret",
    },
    KindName {
        names: &["configmaps", "configmap", "cm"],
        group: "",
        kind: "ConfigMap",
    },
    KindName {
        names: &["deployments", "deployment", "deploy"],
        group: "apps",
        kind: "Deployment",
    },
    KindName {
        names: &["statefulsets", "statefulset", "sts"],
        group: "apps",
        kind: "StatefulSet",
    },
    KindName {
        names: &["virtualservices", "virtualservice", "vs"],
        group: ISTIO,
        kind: "VirtualService",
    },
    KindName {
        names: &["destinationrules", "destinationrule", "dr"],
        group: ISTIO,
        kind: "DestinationRule",
    },
    KindName {
        names: &["gateways", "gateway", "gw"],
        group: ISTIO,
        kind: "Gateway",
    },
    KindName {
        names: &["serviceentries", "serviceentry", "se"],
        group: ISTIO,
        kind: "ServiceEntry",
    },
    KindName {
        names: &["sidecars", "sidecar"],
        group: ISTIO,
        kind: "Sidecar",
    },
    KindName {
        names: &["workloadentries", "workloadentry", "we"],
        group: ISTIO,
        kind: "WorkloadEntry",
    },
    KindName {
        names: &["workloadgroups", "workloadgroup", "wg"],
        group: ISTIO,
        kind: "WorkloadGroup",
    },
    KindName {
        names: &["envoyfilters", "envoyfilter"],
        group: ISTIO,
        kind: "EnvoyFilter",
    },
    KindName {
        names: &["proxyconfigs", "proxyconfig"],
        group: ISTIO,
        kind: "ProxyConfig",
    },
    KindName {
        names: &["peerauthentications", "peerauthentication", "pa"],
        group: SECURITY,
        kind: "PeerAuthentication",
    },
    KindName {
        names: &["requestauthentications", "requestauthentication", "ra"],
        group: SECURITY,
        kind: "RequestAuthentication",
    },
    KindName {
        names: &["authorizationpolicies", "authorizationpolicy", "ap"],
        group: SECURITY,
        kind: "AuthorizationPolicy",
    },
    KindName {
        names: &["telemetries", "telemetry"],
        group: "telemetry.istio.io",
        kind: "Telemetry",
    },
    KindName {
        names: &["wasmplugins", "wasmplugin"],
        group: "extensions.istio.io",
        kind: "WasmPlugin",
    },
    KindName {
        names: &["gtw", "gateways", "gateway"],
        group: GATEWAY_API,
        kind: "Gateway",
    },
    KindName {
        names: &["httproutes", "httproute"],
        group: GATEWAY_API,
        kind: "HTTPRoute",
    },
    KindName {
        names: &["grpcroutes", "grpcroute"],
        group: GATEWAY_API,
        kind: "GRPCRoute",
    },
    KindName {
        names: &["tcproutes", "tcproute"],
        group: GATEWAY_API,
        kind: "TCPRoute",
    },
    KindName {
        names: &["tlsroutes", "tlsroute"],
        group: GATEWAY_API,
        kind: "TLSRoute",
    },
    KindName {
        names: &["referencegrants", "referencegrant", "refgrant"],
        group: GATEWAY_API,
        kind: "ReferenceGrant",
    },
    KindName {
        names: &["gatewayclasses", "gatewayclass", "gc"],
        group: GATEWAY_API,
        kind: "GatewayClass",
    },
];

/// The kind `name` means: a short or plural name, or `plural.group` as
/// kubectl takes it (`gateways.gateway.networking.k8s.io`). A name two
/// kinds share means the first listed (`gateways`: Istio's).
fn kind_named(name: &str) -> Option<&'static KindName> {
    let name = name.to_ascii_lowercase();
    if let Some((plural, group)) = name.split_once('.') {
        return KINDS
            .iter()
            .find(|k| k.group == group && k.names.contains(&plural));
    }
    KINDS.iter().find(|k| k.names.contains(&name.as_str()))
}

fn group_of(object: &Value) -> &str {
    let version = object["apiVersion"].as_str().unwrap_or_default();
    version.rsplit_once('/').map_or("", |(group, _)| group)
}

pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let mesh = args.mesh.find()?;
    if args.output.is_none() && args.name.is_none() {
        match args.kind.as_str() {
            "pods" | "pod" | "po" => return pods_table(&mesh, &args),
            "services" | "service" | "svc" => return services_table(&mesh, &args),
            "all" => {
                pods_table(&mesh, &args)?;
                return services_table(&mesh, &args);
            }
            _ => {}
        }
    }
    let kind = kind_named(&args.kind).with_context(|| {
        format!(
            "the mesh holds no kind {:?} (try pods, services, vs, gw, gtw, httproutes, ...)",
            args.kind
        )
    })?;
    let objects = objects(&mesh, kind, &args)?;
    if let Some(name) = &args.name
        && objects.is_empty()
    {
        anyhow::bail!(
            "{}.{} {name:?} not found in namespace {:?}",
            kind.names[0],
            if kind.group.is_empty() {
                "core"
            } else {
                kind.group
            },
            args.namespace.as_deref().unwrap_or("default")
        );
    }
    let shown = match (&args.name, objects.as_slice()) {
        (Some(_), [one]) => one.clone(),
        _ => {
            json!({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {"resourceVersion": ""}})
        }
    };
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&shown)?),
        Some(Output::Yaml) => print!("{}", serde_saphyr::to_string(&shown)?),
        None => print!("{}", table(kind, &objects, args.all_namespaces)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The objects of `kind` the arguments select, in namespace and name order.
fn objects(
    mesh: &oxmesh_testbed::running::RunningMesh,
    kind: &KindName,
    args: &GetArgs,
) -> anyhow::Result<Vec<Value>> {
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let cluster_scoped = kind.kind == "Namespace" || kind.kind == "GatewayClass";
    let mut objects: Vec<Value> = mesh
        .objects_with_status()?
        .into_iter()
        .filter(|o| o["kind"] == kind.kind && group_of(o) == kind.group)
        .filter(|o| {
            cluster_scoped
                || args.all_namespaces
                || o["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
        })
        .filter(|o| {
            args.name
                .as_deref()
                .is_none_or(|n| o["metadata"]["name"] == n)
        })
        .collect();
    objects.sort_by_key(|o| {
        (
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    });
    Ok(objects)
}

/// kubectl's extra columns for the Gateway API kinds.
fn extra_columns(kind: &KindName) -> &'static [&'static str] {
    match (kind.group, kind.kind) {
        (GATEWAY_API, "Gateway") => &["CLASS", "ADDRESS", "PROGRAMMED"],
        (GATEWAY_API, "HTTPRoute" | "GRPCRoute" | "TLSRoute") => &["HOSTNAMES"],
        _ => &[],
    }
}

fn extra_cells(kind: &KindName, o: &Value) -> Vec<String> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match (kind.group, kind.kind) {
        (GATEWAY_API, "Gateway") => {
            let programmed = o["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
                .map_or_else(|| "Unknown".to_owned(), |c| text(&c["status"]));
            vec![
                text(&o["spec"]["gatewayClassName"]),
                text(&o["status"]["addresses"][0]["value"]),
                programmed,
            ]
        }
        (GATEWAY_API, "HTTPRoute" | "GRPCRoute" | "TLSRoute") => {
            let hosts: Vec<String> = o["spec"]["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            vec![format!("[{}]", hosts.join(","))]
        }
        _ => Vec::new(),
    }
}

/// NAME (and NAMESPACE with `-A`), then the kind's own columns.
fn table(kind: &KindName, objects: &[Value], all_namespaces: bool) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut heads: Vec<String> = Vec::new();
    if all_namespaces {
        heads.push("NAMESPACE".into());
    }
    heads.push("NAME".into());
    heads.extend(extra_columns(kind).iter().map(|h| (*h).to_owned()));
    let mut rows = vec![heads];
    for o in objects {
        let mut row = Vec::new();
        if all_namespaces {
            row.push(text(&o["metadata"]["namespace"]));
        }
        row.push(text(&o["metadata"]["name"]));
        row.extend(extra_cells(kind, o));
        rows.push(row);
    }
    crate::table::render(&rows)
}

/// The testbed's pod table: where each pod runs and whether it is ready.
fn pods_table(
    mesh: &oxmesh_testbed::running::RunningMesh,
    args: &GetArgs,
) -> anyhow::Result<ExitCode> {
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "NAME".into(),
        "READY".into(),
        "STATUS".into(),
        "IP".into(),
        "SIDECAR".into(),
    ]];
    for p in mesh.pods()? {
        if !args.all_namespaces && p.namespace != namespace {
            continue;
        }
        rows.push(vec![
            p.namespace,
            p.name,
            if p.ready { "yes" } else { "no" }.into(),
            if p.terminating {
                "Terminating"
            } else {
                "Running"
            }
            .into(),
            p.ip,
            match (p.sidecar, p.gateway) {
                (_, true) => "gateway",
                (true, false) => "yes",
                (false, false) => "no",
            }
            .into(),
        ]);
    }
    print!("{}", crate::table::render(&rows));
    Ok(ExitCode::SUCCESS)
}

fn services_table(
    mesh: &oxmesh_testbed::running::RunningMesh,
    args: &GetArgs,
) -> anyhow::Result<ExitCode> {
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "NAME".into(),
        "CLUSTER-IP".into(),
    ]];
    for (ns, name, vip) in mesh.services()? {
        if args.all_namespaces || ns == namespace {
            rows.push(vec![ns, name, vip]);
        }
    }
    print!("{}", crate::table::render(&rows));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_kubectls_names() {
        let found = |n: &str| kind_named(n).map(|k| (k.group, k.kind));
        assert_eq!(found("gtw"), Some((GATEWAY_API, "Gateway")));
        assert_eq!(
            found("gateways.gateway.networking.k8s.io"),
            Some((GATEWAY_API, "Gateway"))
        );
        assert_eq!(found("gw"), Some((ISTIO, "Gateway")));
        assert_eq!(found("HTTPRoutes"), Some((GATEWAY_API, "HTTPRoute")));
        assert_eq!(found("deploy"), Some(("apps", "Deployment")));
        assert_eq!(found("nothing"), None);
    }
}
