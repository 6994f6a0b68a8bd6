//! Rules of a VirtualService that can never match, because an earlier rule takes all
//! their traffic (Istio's IST0130 and IST0131).

use std::collections::HashSet;

use crate::networking::virtual_service::{HttpMatchRequest, VirtualService};
use crate::path::FieldPath;
use crate::validation::Report;

/// Analysis codes: a rule that is never used, a match that is never used.
pub const UNREACHABLE: &str = "IST0130";
pub const INEFFECTIVE: &str = "IST0131";

/// Warns about rules that can never match because an earlier rule takes their traffic.
pub fn check(vs: &VirtualService, at: &FieldPath, report: &mut Report) {
    let http: Vec<(String, Vec<(String, String)>)> = vs
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let matches = r
                .matches
                .iter()
                .enumerate()
                .map(|(j, m)| (match_name(&m.name, j), format!("{:?}", HttpMatchKey(m))))
                .collect();
            (rule_name(&r.name, i), matches)
        })
        .collect();
    shadowed(&http, &at.field("http"), report);
    let tcp = unnamed_rules(vs.tcp.iter().map(|r| r.matches.as_slice()));
    shadowed(&tcp, &at.field("tcp"), report);
    let tls = unnamed_rules(vs.tls.iter().map(|r| r.matches.as_slice()));
    shadowed(&tls, &at.field("tls"), report);
}

/// TCP and TLS rules, which have no names: each with its matches, as compared.
fn unnamed_rules<'a, M: std::fmt::Debug + 'a>(
    rules: impl Iterator<Item = &'a [M]>,
) -> Vec<(String, Vec<(String, String)>)> {
    rules
        .enumerate()
        .map(|(i, matches)| {
            let matches = matches
                .iter()
                .enumerate()
                .map(|(j, m)| (match_name("", j), format!("{m:?}")))
                .collect();
            (rule_name("", i), matches)
        })
        .collect()
}

fn rule_name(name: &str, i: usize) -> String {
    if name.is_empty() {
        format!("#{i}")
    } else {
        format!("{name:?}")
    }
}

fn match_name(name: &str, j: usize) -> String {
    if name.is_empty() {
        format!("#{j}")
    } else {
        format!("{name:?}")
    }
}

/// An HTTP match compared without its `name`.
struct HttpMatchKey<'a>(&'a HttpMatchRequest);

impl std::fmt::Debug for HttpMatchKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = HttpMatchRequest {
            name: String::new(),
            ..self.0.clone()
        };
        write!(f, "{m:?}")
    }
}

fn shadowed(rules: &[(String, Vec<(String, String)>)], at: &FieldPath, report: &mut Report) {
    let mut catch_all: Option<&str> = None;
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (i, (rule, matches)) in rules.iter().enumerate() {
        let here = at.index(i);
        if matches.is_empty() {
            if catch_all.is_some() {
                report.warn_coded(&here, UNREACHABLE, format!("virtualService rule {rule} not used (only the last rule can have no matches)"));
            }
            catch_all = Some(rule);
            continue;
        }
        if catch_all.is_some() {
            report.warn_coded(
                &here,
                UNREACHABLE,
                format!(
                    "virtualService rule {rule} not used (route without matches defined before)"
                ),
            );
            continue;
        }
        let mut duplicates = 0;
        let mut unique: HashSet<&str> = HashSet::new();
        for (name, key) in matches {
            if let Some((earlier, _)) = seen.iter().find(|(_, k)| k == key) {
                duplicates += 1;
                report.warn_coded(&here, INEFFECTIVE, format!("virtualService rule {rule} match {name} is not used (duplicate/overlapping match in rule {earlier})"));
            }
            unique.insert(key);
        }
        if duplicates == matches.len() {
            report.warn_coded(
                &here,
                UNREACHABLE,
                format!("virtualService rule {rule} not used (all matches used by prior rules)"),
            );
        }
        seen.extend(unique.into_iter().map(|k| (rule.as_str(), k)));
    }
}
