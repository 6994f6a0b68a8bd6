//! `oxmesh proxy-config {clusters|listeners|routes|endpoints|secrets|authz|all} <proxy>`:
//! the Envoy resources the control plane sends a connected proxy, as a summary
//! table (the default) or as JSON (`-o json`), like `istioctl proxy-config`; with
//! `--admin ADDR`, what a proxy itself holds, from its admin port's config dump.

mod authz;

use std::process::ExitCode;

use serde_json::Value;

use crate::debug_client::{Target, get_json};
use crate::table;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    Clusters,
    Listeners,
    Routes,
    Endpoints,
    Secrets,
    /// The authentication and authorization steps of each filter chain, in
    /// order (from the listeners).
    Authz,
    All,
}

impl Kind {
    fn short(self) -> &'static str {
        match self {
            Kind::Clusters => "cds",
            Kind::Listeners => "lds",
            Kind::Routes => "rds",
            Kind::Endpoints => "eds",
            Kind::Secrets => "sds",
            Kind::Authz => "lds",
            Kind::All => "all",
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Short,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    kind: Kind,
    /// The proxy as `proxy-status` names it: `<pod>.<namespace>`.
    #[arg(required_unless_present = "admin")]
    proxy: Option<String>,
    #[arg(short, long, value_enum, default_value = "short")]
    output: Output,
    /// Read what the proxy holds from its admin port (15000, localhost only: run
    /// this in the pod's network namespace) instead of asking the control plane.
    #[arg(long, conflicts_with = "control_plane")]
    admin: Option<String>,
    #[command(flatten)]
    target: Target,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let resources = match (&args.admin, &args.proxy) {
        (Some(admin), _) => held_by_proxy(admin, args.kind)?,
        (None, Some(proxy)) => {
            let path = format!(
                "/debug/config_dump?proxyID={}&type={}",
                encode(proxy),
                args.kind.short()
            );
            get_json(&args.target, &path)?["resources"].take()
        }
        (None, None) => anyhow::bail!("name a proxy, or give --admin"),
    };
    let resources = &resources;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(resources)?),
        Output::Short if matches!(args.kind, Kind::Authz) => {
            let listeners = resources["lds"].as_array().map(Vec::as_slice);
            let rows = authz::summary(listeners.unwrap_or_default());
            if rows.len() == 1 {
                println!("No RequestAuthentication or AuthorizationPolicy applies to this proxy.");
            } else {
                print!("{}", table::render(&rows));
            }
        }
        Output::Short => {
            for (short, title, summarize) in SUMMARIES {
                if let Some(items) = resources[short].as_array() {
                    if matches!(args.kind, Kind::All) {
                        println!("{title}:");
                    }
                    print!("{}", table::render(&summarize(items)));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The proxy's Envoy-shaped config dump, as the control plane's per-type lists.
fn held_by_proxy(admin: &str, kind: Kind) -> anyhow::Result<Value> {
    let target = Target {
        control_plane: admin.to_owned(),
    };
    let dump = get_json(&target, "/config_dump")?;
    let mut out = serde_json::Map::new();
    let sections = [
        ("cds", "dynamic_active_clusters", "/cluster"),
        ("lds", "dynamic_listeners", "/active_state/listener"),
        ("rds", "dynamic_route_configs", "/route_config"),
        ("eds", "dynamic_endpoint_configs", "/endpoint_config"),
        ("sds", "dynamic_active_secrets", "/secret"),
    ];
    for (short, field, pointer) in sections {
        if !matches!(kind, Kind::All) && kind.short() != short {
            continue;
        }
        let items: Vec<Value> = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c[field].as_array())
            .flatten()
            .filter_map(|item| item.pointer(pointer).cloned())
            .collect();
        out.insert(short.to_owned(), Value::Array(items));
    }
    Ok(Value::Object(out))
}

type Summary = fn(&[Value]) -> Vec<Vec<String>>;

const SUMMARIES: [(&str, &str, Summary); 5] = [
    ("cds", "CLUSTERS", clusters),
    ("lds", "LISTENERS", listeners),
    ("rds", "ROUTES", routes),
    ("eds", "ENDPOINTS", endpoints),
    ("sds", "SECRETS", secrets),
];

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

fn clusters(items: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![row(&[
        "SERVICE FQDN",
        "PORT",
        "SUBSET",
        "DIRECTION",
        "TYPE",
    ])];
    for cluster in items {
        let name = text(&cluster["name"]);
        let kind = text(&cluster["type"]);
        let parts: Vec<&str> = name.split('|').collect();
        rows.push(match parts.as_slice() {
            [direction, port, subset, host] => row(&[host, port, subset, direction, &kind]),
            _ => row(&[&name, "-", "-", "-", &kind]),
        });
    }
    rows
}

fn listeners(items: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![row(&[
        "LISTENER",
        "ADDRESS",
        "PORT",
        "MATCH",
        "DESTINATION",
    ])];
    for listener in items {
        let address = &listener["address"]["socketAddress"];
        let (ip, port) = (text(&address["address"]), text(&address["portValue"]));
        let name = text(&listener["name"]);
        for chain in listener["filterChains"].as_array().into_iter().flatten() {
            let matching = chain_match(&chain["filterChainMatch"]);
            rows.push(vec![
                name.clone(),
                ip.clone(),
                port.clone(),
                matching,
                destination(chain),
            ]);
        }
        if listener.get("defaultFilterChain").is_some() {
            rows.push(vec![
                name.clone(),
                ip.clone(),
                port.clone(),
                "ALL".to_owned(),
                destination(&listener["defaultFilterChain"]),
            ]);
        }
    }
    rows
}

fn chain_match(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(port) = m.get("destinationPort") {
        parts.push(format!("port {}", text(port)));
    }
    for range in m["prefixRanges"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{}/{}",
            text(&range["addressPrefix"]),
            text(&range["prefixLen"])
        ));
    }
    if let Some(transport) = m.get("transportProtocol") {
        parts.push(text(transport));
    }
    if let Some(alpn) = m["applicationProtocols"].as_array() {
        parts.push(alpn.iter().map(text).collect::<Vec<_>>().join(","));
    }
    if parts.is_empty() {
        "ALL".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Where a chain sends traffic: `Route: <name>`, `Cluster: <name>`, or inline routes.
fn destination(chain: &Value) -> String {
    let Some(filter) = chain["filters"].as_array().and_then(|f| f.last()) else {
        return String::new();
    };
    let config = &filter["typedConfig"];
    if let Some(cluster) = config.get("cluster") {
        return format!("Cluster: {}", text(cluster));
    }
    if let Some(rds) = config.get("rds") {
        return format!("Route: {}", text(&rds["routeConfigName"]));
    }
    if let Some(routes) = config.get("routeConfig") {
        return format!("Inline Route: {}", text(&routes["name"]));
    }
    text(&filter["name"])
}

fn routes(items: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![row(&[
        "NAME",
        "VHOST NAME",
        "DOMAINS",
        "MATCH",
        "DESTINATION",
    ])];
    for config in items {
        let name = text(&config["name"]);
        for host in config["virtualHosts"].as_array().into_iter().flatten() {
            let domains = host["domains"].as_array().map_or(0, Vec::len);
            let first = host["domains"].get(0).map(text).unwrap_or_default();
            let domains = if domains > 1 {
                format!("{first} + {}", domains - 1)
            } else {
                first
            };
            for route in host["routes"].as_array().into_iter().flatten() {
                rows.push(vec![
                    name.clone(),
                    text(&host["name"]),
                    domains.clone(),
                    route_match(&route["match"]),
                    route_destination(route),
                ]);
            }
        }
    }
    rows
}

fn route_match(m: &Value) -> String {
    let path = ["prefix", "path"]
        .iter()
        .find_map(|k| m.get(*k).map(|v| format!("{k} {}", text(v))));
    let path = path
        .or_else(|| {
            m.get("safeRegex")
                .map(|r| format!("regex {}", text(&r["regex"])))
        })
        .unwrap_or_default();
    let headers = m["headers"].as_array().map_or(0, Vec::len);
    if headers > 0 {
        format!("{path} + {headers} header(s)")
    } else {
        path
    }
}

fn route_destination(route: &Value) -> String {
    let action = &route["route"];
    if let Some(cluster) = action.get("cluster") {
        return text(cluster);
    }
    if let Some(weighted) = action["weightedClusters"]["clusters"].as_array() {
        return weighted
            .iter()
            .map(|c| format!("{} ({})", text(&c["name"]), text(&c["weight"])))
            .collect::<Vec<_>>()
            .join(", ");
    }
    if route.get("redirect").is_some() {
        return "redirect".to_owned();
    }
    if let Some(direct) = route.get("directResponse") {
        return format!("direct response {}", text(&direct["status"]));
    }
    String::new()
}

fn endpoints(items: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![row(&["ENDPOINT", "STATUS", "CLUSTER"])];
    for assignment in items {
        let cluster = text(&assignment["clusterName"]);
        for locality in assignment["endpoints"].as_array().into_iter().flatten() {
            for endpoint in locality["lbEndpoints"].as_array().into_iter().flatten() {
                let address = &endpoint["endpoint"]["address"]["socketAddress"];
                let at = format!(
                    "{}:{}",
                    text(&address["address"]),
                    text(&address["portValue"])
                );
                rows.push(vec![at, text(&endpoint["healthStatus"]), cluster.clone()]);
            }
        }
    }
    rows
}

fn secrets(items: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![row(&["RESOURCE NAME", "TYPE"])];
    for secret in items {
        let kind = if secret.get("validationContext").is_some() {
            "Trusted CA"
        } else {
            "Certificate"
        };
        rows.push(row(&[&text(&secret["name"]), kind]));
    }
    rows
}

/// Percent-encodes what a query value cannot hold as is.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_split_into_columns() {
        let items = vec![
            serde_json::json!({"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "type": "EDS"}),
            serde_json::json!({"name": "PassthroughCluster", "type": "ORIGINAL_DST"}),
        ];
        let rows = clusters(&items);
        assert_eq!(
            rows[1],
            row(&[
                "reviews.default.svc.cluster.local",
                "9080",
                "v1",
                "outbound",
                "EDS"
            ])
        );
        assert_eq!(
            rows[2],
            row(&["PassthroughCluster", "-", "-", "-", "ORIGINAL_DST"])
        );
    }

    #[test]
    fn weighted_routes_show_weights() {
        let route = serde_json::json!({"match": {"prefix": "/"}, "route": {"weightedClusters": {"clusters": [
            {"name": "a", "weight": 90}, {"name": "b", "weight": 10}]}}});
        assert_eq!(route_destination(&route), "a (90), b (10)");
        assert_eq!(route_match(&route["match"]), "prefix /");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
