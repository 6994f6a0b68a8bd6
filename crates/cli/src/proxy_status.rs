//! `oxmesh proxy-status`: every connected proxy and whether it holds what the
//! control plane last sent it, per type, as `istioctl proxy-status` shows it.

use std::process::ExitCode;

use crate::debug_client::{Target, get_json};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
}

/// Envoy's types, then the workload API's (Istio's names for them): a node
/// proxy takes only the last two, a sidecar never does.
const TYPES: [(&str, &str); 7] = [
    ("cds", "CDS"),
    ("lds", "LDS"),
    ("eds", "EDS"),
    ("rds", "RDS"),
    ("sds", "SDS"),
    ("wds", "WDS"),
    ("wads", "WADS"),
];

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let syncz = get_json(&args.target, "/debug/syncz")?;
    print!("{}", table(&syncz));
    Ok(ExitCode::SUCCESS)
}

fn table(syncz: &serde_json::Value) -> String {
    let version = syncz["control_plane_version"].as_str().unwrap_or_default();
    let mut rows = vec![
        std::iter::once("NAME".to_owned())
            .chain(TYPES.iter().map(|(_, title)| (*title).to_owned()))
            .chain(std::iter::once("VERSION".to_owned()))
            .collect::<Vec<_>>(),
    ];
    let mut nacks = Vec::new();
    for proxy in syncz["proxies"].as_array().into_iter().flatten() {
        let name = proxy["proxy"].as_str().unwrap_or_default().to_owned();
        let mut row = vec![name.clone()];
        for (short, title) in TYPES {
            let status = &proxy["types"][short];
            row.push(status["state"].as_str().unwrap_or("NOT SENT").to_owned());
            if let Some(nack) = status["nack"].as_str() {
                nacks.push(format!("{name} rejected {title}: {nack}"));
            }
        }
        row.push(version.to_owned());
        rows.push(row);
    }
    let mut out = crate::table::render(&rows);
    for nack in nacks {
        out.push_str(&nack);
        out.push('\n');
    }
    for skipped in syncz["envoy_filters_unapplied"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(skipped.as_str().unwrap_or_default());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_states_and_nacks() {
        let syncz = serde_json::json!({
            "control_plane_version": "42",
            "proxies": [{
                "proxy": "reviews-v1.default",
                "types": {
                    "cds": {"state": "SYNCED"}, "lds": {"state": "SYNCED"}, "eds": {"state": "SYNCED"},
                    "rds": {"state": "STALE", "nack": "route 9080: bad regex"}, "sds": {"state": "NOT SENT"}
                }
            }, {
                "proxy": "ztunnel-1.istio-system",
                "types": {"wds": {"state": "SYNCED"}, "wads": {"state": "SYNCED"}}
            }],
            "envoy_filters_unapplied": ["EnvoyFilter foo/lua: configPatches[0]: applyTo LISTENER with operation MERGE is not applied by oxmesh; not applied"]
        });
        let text = table(&syncz);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("reviews-v1.default"));
        assert!(
            lines[1].contains("STALE") && lines[1].contains("NOT SENT") && lines[1].ends_with("42")
        );
        let ztunnel: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(ztunnel[0], "ztunnel-1.istio-system");
        assert_eq!(ztunnel[ztunnel.len() - 3..], ["SYNCED", "SYNCED", "42"]);
        assert_eq!(
            lines[3],
            "reviews-v1.default rejected RDS: route 9080: bad regex"
        );
        assert!(lines[4].starts_with("EnvoyFilter foo/lua: configPatches[0]"));
    }
}
