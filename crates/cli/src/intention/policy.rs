//! Intentions written as AuthorizationPolicies that decide exactly as the
//! intentions do, using ALLOW rules only (so nothing depends on how DENY and
//! ALLOW policies combine): per destination one ALLOW policy whose rules are
//! the requests the intentions allow, each allow intention narrowed by the
//! more specific deny intentions before it (`notPrincipals`,
//! `notNamespaces`, `notPorts`, ...), and when the namespace's default is
//! allow, a rule for what no deny intention matches. A namespace whose
//! default is deny gets an ALLOW policy without rules for all its workloads,
//! which allows nothing by itself.

use serde_json::{Value, json};

use super::model::{Action, Caller, Intention, Request, Source, path_matches};

/// One ALLOW rule: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub account: Option<(String, String)>,
    pub namespace: Option<String>,
    pub not_accounts: Vec<(String, String)>,
    pub not_namespaces: Vec<String>,
    pub port: Option<u16>,
    pub not_ports: Vec<u16>,
    pub path: Option<String>,
    pub not_paths: Vec<String>,
    pub method: Option<String>,
    pub not_methods: Vec<String>,
    /// The allow intention it carries out; `None`: the namespace default.
    pub carries: Option<Intention>,
}

/// What one condition of a deny intention excludes.
enum Not {
    Account(String, String),
    Namespace(String),
    Port(u16),
    Path(String),
    Method(String),
}

impl Rule {
    fn of(intention: &Intention) -> Self {
        let mut rule = Rule {
            carries: Some(intention.clone()),
            port: intention.requests.port,
            path: intention.requests.path.clone(),
            method: intention.requests.method.clone(),
            ..Default::default()
        };
        match &intention.source {
            Source::Account { namespace, name } => {
                rule.account = Some((namespace.clone(), name.clone()))
            }
            Source::Namespace(ns) => rule.namespace = Some(ns.clone()),
            Source::Any => {}
        }
        rule
    }

    /// Whether a request satisfies the rule, as the proxy's RBAC decides:
    /// identity conditions need a mesh identity, their negations hold for a
    /// caller without one.
    pub fn matches(&self, r: &Request) -> bool {
        let caller = r.caller.as_ref();
        let is = |ns: &str, sa: &str, c: &Caller| c.namespace == ns && c.account == sa;
        self.account
            .as_ref()
            .is_none_or(|(ns, sa)| caller.is_some_and(|c| is(ns, sa, c)))
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| caller.is_some_and(|c| &c.namespace == ns))
            && !self
                .not_accounts
                .iter()
                .any(|(ns, sa)| caller.is_some_and(|c| is(ns, sa, c)))
            && !self
                .not_namespaces
                .iter()
                .any(|ns| caller.is_some_and(|c| &c.namespace == ns))
            && self.port.is_none_or(|p| p == r.port)
            && !self.not_ports.contains(&r.port)
            && self
                .path
                .as_deref()
                .is_none_or(|p| path_matches(p, &r.path))
            && !self.not_paths.iter().any(|p| path_matches(p, &r.path))
            && self.method.as_deref().is_none_or(|m| m == r.method)
            && !self.not_methods.contains(&r.method)
    }

    /// This rule without what `deny` matches: one rule per condition of the
    /// deny (not A and B = not A or not B), none when the deny matches all of
    /// this rule's requests.
    fn without(&self, deny: &Intention) -> Vec<Rule> {
        if self.disjoint(deny) {
            return vec![self.clone()];
        }
        let mut nots = Vec::new();
        match &deny.source {
            Source::Account { namespace, name } => {
                nots.push(Not::Account(namespace.clone(), name.clone()))
            }
            Source::Namespace(ns) => nots.push(Not::Namespace(ns.clone())),
            Source::Any => {}
        }
        nots.extend(deny.requests.port.map(Not::Port));
        nots.extend(deny.requests.path.clone().map(Not::Path));
        nots.extend(deny.requests.method.clone().map(Not::Method));
        nots.into_iter()
            .filter_map(|not| self.and_not(not))
            .collect()
    }

    /// Whether no request can match both this rule and `deny`.
    fn disjoint(&self, deny: &Intention) -> bool {
        let source = match (&deny.source, &self.account, &self.namespace) {
            (Source::Account { namespace, name }, Some((ns, sa)), _) => {
                ns != namespace || sa != name
            }
            (Source::Account { namespace, .. }, None, Some(ns)) => ns != namespace,
            (Source::Namespace(n), Some((ns, _)), _) => ns != n,
            (Source::Namespace(n), None, Some(ns)) => ns != n,
            _ => false,
        };
        let excluded = match &deny.source {
            Source::Account { namespace, name } => {
                self.not_accounts
                    .contains(&(namespace.clone(), name.clone()))
                    || self.not_namespaces.contains(namespace)
            }
            Source::Namespace(n) => self.not_namespaces.contains(n),
            Source::Any => false,
        };
        let r = &deny.requests;
        let differ = |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b && !a.ends_with('*') && !b.ends_with('*'));
        source
            || excluded
            || matches!((self.port, r.port), (Some(a), Some(b)) if a != b)
            || differ(&self.method, &r.method)
            || differ(&self.path, &r.path)
    }

    /// This rule and `not`; `None` when they contradict.
    fn and_not(&self, not: Not) -> Option<Rule> {
        let mut rule = self.clone();
        match not {
            Not::Account(ns, sa) => {
                if self.account.as_ref() == Some(&(ns.clone(), sa.clone())) {
                    return None;
                }
                rule.not_accounts.push((ns, sa));
            }
            Not::Namespace(ns) => {
                let own = self
                    .account
                    .as_ref()
                    .map(|(n, _)| n)
                    .or(self.namespace.as_ref());
                if own == Some(&ns) {
                    return None;
                }
                rule.not_namespaces.push(ns);
            }
            Not::Port(p) => match self.port {
                Some(own) if own == p => return None,
                Some(_) => {}
                None => rule.not_ports.push(p),
            },
            Not::Method(m) => match &self.method {
                Some(own) if *own == m => return None,
                Some(_) => {}
                None => rule.not_methods.push(m),
            },
            Not::Path(p) => match &self.path {
                Some(own) if !own.ends_with('*') && path_matches(&p, own) => return None,
                Some(own) if !own.ends_with('*') => {}
                _ => rule.not_paths.push(p),
            },
        }
        Some(rule)
    }

    /// The rule as AuthorizationPolicy YAML writes it.
    pub fn to_json(&self) -> Value {
        let mut source = serde_json::Map::new();
        let principal = |(ns, sa): &(String, String)| json!(format!("*/ns/{ns}/sa/{sa}"));
        if let Some(account) = &self.account {
            source.insert("principals".into(), json!([principal(account)]));
        }
        if let Some(ns) = &self.namespace {
            source.insert("namespaces".into(), json!([ns]));
        }
        if !self.not_accounts.is_empty() {
            let list: Vec<Value> = self.not_accounts.iter().map(principal).collect();
            source.insert("notPrincipals".into(), json!(list));
        }
        if !self.not_namespaces.is_empty() {
            source.insert("notNamespaces".into(), json!(self.not_namespaces));
        }
        let mut operation = serde_json::Map::new();
        let ports = |p: &[u16]| json!(p.iter().map(u16::to_string).collect::<Vec<_>>());
        if let Some(p) = self.port {
            operation.insert("ports".into(), ports(&[p]));
        }
        if !self.not_ports.is_empty() {
            operation.insert("notPorts".into(), ports(&self.not_ports));
        }
        if let Some(p) = &self.path {
            operation.insert("paths".into(), json!([p]));
        }
        if !self.not_paths.is_empty() {
            operation.insert("notPaths".into(), json!(self.not_paths));
        }
        if let Some(m) = &self.method {
            operation.insert("methods".into(), json!([m]));
        }
        if !self.not_methods.is_empty() {
            operation.insert("notMethods".into(), json!(self.not_methods));
        }
        let mut rule = serde_json::Map::new();
        if !source.is_empty() {
            rule.insert("from".into(), json!([{ "source": source }]));
        }
        if !operation.is_empty() {
            rule.insert("to".into(), json!([{ "operation": operation }]));
        }
        Value::Object(rule)
    }
}

/// The ALLOW rules for one destination's intentions (most specific first)
/// under its namespace's default.
pub fn allow_rules(sorted: &[&Intention], default_allow: bool) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, intention) in sorted.iter().enumerate() {
        if intention.action != Action::Allow {
            continue;
        }
        let denies_before = sorted[..i].iter().filter(|j| j.action == Action::Deny);
        rules.extend(narrowed(Rule::of(intention), denies_before));
    }
    if default_allow {
        let denies = sorted.iter().filter(|j| j.action == Action::Deny);
        rules.extend(narrowed(Rule::default(), denies));
    }
    rules
}

fn narrowed<'a>(start: Rule, denies: impl Iterator<Item = &'a &'a Intention>) -> Vec<Rule> {
    let mut rules = vec![start];
    for deny in denies {
        rules = rules.iter().flat_map(|r| r.without(deny)).collect();
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::super::model::{Destination, Requests, by_precedence, decide};
    use super::*;

    fn intention(source: &str, action: Action, requests: Requests) -> Intention {
        Intention {
            source: Source::parse(source).expect("source"),
            destination: Destination::parse("shop/web").expect("destination"),
            action,
            requests,
        }
    }

    /// Small deterministic generator, so the test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            &items[((self.0 >> 33) as usize) % items.len()]
        }
    }

    /// Random intention sets and requests: the generated ALLOW rules
    /// (with the namespace default as the policies write it) decide every
    /// request exactly as the intentions do.
    #[test]
    fn generated_rules_decide_as_the_intentions() {
        let sources = ["shop/a", "shop/b", "shop/*", "ops/a", "ops/*", "*"];
        let ports = [None, Some(8080), Some(9090)];
        let paths = [None, Some("/admin"), Some("/api/*")];
        let methods = [None, Some("GET"), Some("POST")];
        let callers = [
            None,
            Some(("shop", "a")),
            Some(("shop", "b")),
            Some(("shop", "c")),
            Some(("ops", "a")),
            Some(("dev", "a")),
        ];
        let request_paths = ["/", "/admin", "/api/x", "/apix"];
        let mut rng = Lcg(7);
        for round in 0..400 {
            let count = 1 + round % 6;
            let mut intentions: Vec<Intention> = Vec::new();
            for _ in 0..count {
                let action = if *rng.pick(&[true, false]) {
                    Action::Allow
                } else {
                    Action::Deny
                };
                let requests = Requests {
                    port: *rng.pick(&ports),
                    path: rng.pick(&paths).map(str::to_owned),
                    method: rng.pick(&methods).map(str::to_owned),
                };
                let source = *rng.pick(&sources);
                let new = intention(source, action, requests);
                intentions.retain(|i| !i.same_subject(&new));
                intentions.push(new);
            }
            let default_allow = *rng.pick(&[true, false]);
            let sorted = by_precedence(&intentions);
            let rules = allow_rules(&sorted, default_allow);
            for caller in callers {
                for port in [8080, 9090] {
                    for path in request_paths {
                        for method in ["GET", "POST"] {
                            let request = Request {
                                caller: caller.map(|(ns, sa)| Caller {
                                    namespace: ns.to_owned(),
                                    account: sa.to_owned(),
                                }),
                                port,
                                path: path.to_owned(),
                                method: method.to_owned(),
                            };
                            let (_, want) = decide(&sorted, default_allow, &request);
                            let got = rules.iter().any(|r| r.matches(&request));
                            assert_eq!(
                                got, want,
                                "round {round}: {request:?} under {intentions:?} (default allow {default_allow}); rules {rules:#?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_specific_allow_under_a_wildcard_deny_narrows_nothing_else() {
        let deny = intention("shop/*", Action::Deny, Requests::default());
        let allow = intention("shop/a", Action::Allow, Requests::default());
        let sorted = by_precedence([&deny, &allow]);
        let rules = allow_rules(&sorted, true);
        let json: Vec<Value> = rules.iter().map(Rule::to_json).collect();
        assert_eq!(
            json,
            [
                json!({"from": [{"source": {"principals": ["*/ns/shop/sa/a"]}}]}),
                json!({"from": [{"source": {"notNamespaces": ["shop"]}}]}),
            ]
        );
    }
}
