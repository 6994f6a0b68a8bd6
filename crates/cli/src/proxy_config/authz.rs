//! `oxmesh proxy-config authz <proxy>`: the authentication and authorization
//! steps each of a proxy's filter chains runs, in the order it runs them: JWT
//! providers, then RBAC filters (AUDIT, DENY, ALLOW) with their policies in
//! the order Envoy reports a match, dry-run ones marked.

use serde_json::Value;

use super::{row, text};

const JWT: &str = "envoy.filters.http.jwt_authn";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// One step: filter, action, what it holds.
type Step = [String; 3];

pub(super) fn summary(listeners: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![row(&[
        "LISTENER", "CHAINS", "STEP", "FILTER", "ACTION", "POLICIES",
    ])];
    for listener in listeners {
        let name = text(&listener["name"]);
        let chains = listener["filterChains"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(listener.get("defaultFilterChain"));
        // Chains with the same steps are shown once.
        let mut groups: Vec<(Vec<Step>, Vec<String>)> = Vec::new();
        for chain in chains {
            let steps = chain_steps(chain);
            if steps.is_empty() {
                continue;
            }
            let chain_name = text(&chain["name"]);
            match groups.iter_mut().find(|(s, _)| *s == steps) {
                Some((_, names)) => names.push(chain_name),
                None => groups.push((steps, vec![chain_name])),
            }
        }
        for (steps, names) in groups {
            let chains = match names.len() {
                1 => names[0].clone(),
                n => format!("{} (+{} more)", names[0], n - 1),
            };
            for (i, [filter, action, policies]) in steps.into_iter().enumerate() {
                let step = (i + 1).to_string();
                rows.push(vec![
                    name.clone(),
                    chains.clone(),
                    step,
                    filter,
                    action,
                    policies,
                ]);
            }
        }
    }
    rows
}

fn chain_steps(chain: &Value) -> Vec<Step> {
    let mut steps = Vec::new();
    for filter in chain["filters"].as_array().into_iter().flatten() {
        let config = &filter["typedConfig"];
        match text(&filter["name"]).as_str() {
            NETWORK_RBAC => steps.extend(rbac_steps("network rbac", config)),
            _ => {
                for http in config["httpFilters"].as_array().into_iter().flatten() {
                    let config = &http["typedConfig"];
                    match text(&http["name"]).as_str() {
                        JWT => steps.push(jwt_step(config)),
                        HTTP_RBAC => steps.extend(rbac_steps("rbac", config)),
                        _ => {}
                    }
                }
            }
        }
    }
    steps
}

fn jwt_step(config: &Value) -> Step {
    let mut providers: Vec<String> = config["providers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, p)| format!("{name} ({})", text(&p["issuer"])))
        .collect();
    providers.sort();
    [
        "jwt_authn".to_owned(),
        "AUTHN".to_owned(),
        providers.join(", "),
    ]
}

/// The enforced and the dry-run engines of one RBAC filter.
fn rbac_steps(filter: &str, config: &Value) -> Vec<Step> {
    [("rules", ""), ("shadowRules", " (dry-run)")]
        .into_iter()
        .filter_map(|(field, mark)| {
            let engine = config.get(field)?;
            let action = match engine["action"].as_str().unwrap_or("ALLOW") {
                "LOG" => "AUDIT",
                other => other,
            };
            let mut policies: Vec<&String> = engine["policies"]
                .as_object()
                .map(|p| p.keys().collect())
                .unwrap_or_default();
            policies.sort();
            let policies = if policies.is_empty() {
                "(none: nothing matches)".to_owned()
            } else {
                policies
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Some([filter.to_owned(), format!("{action}{mark}"), policies])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_follow_the_filter_order_and_group_chains() {
        let hcm = json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "httpFilters": [
            {"name": JWT, "typedConfig": {"providers": {"origins-0": {"issuer": "a"}}}},
            {"name": HTTP_RBAC, "typedConfig": {"rules": {"action": "DENY", "policies": {"ns[foo]-policy[d]-rule[0]": {}}}}},
            {"name": HTTP_RBAC, "typedConfig": {"rules": {"policies": {"ns[foo]-policy[b]-rule[0]": {}, "ns[foo]-policy[a]-rule[0]": {}}},
                "shadowRules": {"policies": {"ns[foo]-policy[x]-rule[0]": {}}}}},
            {"name": "envoy.filters.http.router"}
        ]}});
        let listener = json!({"name": "virtualInbound", "filterChains": [
            {"name": "one", "filters": [hcm.clone()]},
            {"name": "two", "filters": [hcm]},
            {"name": "plain", "filters": [{"name": "envoy.filters.network.tcp_proxy"}]}
        ]});
        let rows = summary(&[listener]);
        let got: Vec<Vec<&str>> = rows[1..]
            .iter()
            .map(|r| r[1..].iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            got,
            [
                vec!["one (+1 more)", "1", "jwt_authn", "AUTHN", "origins-0 (a)"],
                vec![
                    "one (+1 more)",
                    "2",
                    "rbac",
                    "DENY",
                    "ns[foo]-policy[d]-rule[0]"
                ],
                vec![
                    "one (+1 more)",
                    "3",
                    "rbac",
                    "ALLOW",
                    "ns[foo]-policy[a]-rule[0], ns[foo]-policy[b]-rule[0]"
                ],
                vec![
                    "one (+1 more)",
                    "4",
                    "rbac",
                    "ALLOW (dry-run)",
                    "ns[foo]-policy[x]-rule[0]"
                ],
            ]
        );
    }
}
