//! ztunnel's evaluation of L4 policies, case by case.

use super::*;

fn id(s: &str) -> SpiffeId {
    s.parse().expect("id")
}

fn conn(source: Option<&str>, port: u16) -> Connection {
    Connection {
        source: source.map(id),
        source_ip: "198.18.0.7".parse().expect("ip"),
        destination: SocketAddr::new("198.18.0.9".parse().expect("ip"), port),
    }
}

fn policy(action: Action, rules: Vec<Vec<Vec<Match>>>) -> Policy {
    Policy {
        name: "p".into(),
        namespace: "default".into(),
        scope: Scope::WorkloadSelector,
        action,
        dry_run: false,
        rules,
    }
}

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

#[test]
fn strict_mtls_denies_plaintext_only() {
    let strict = policy(
        Action::Deny,
        vec![vec![vec![Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        }]]],
    );
    assert!(check([&strict], &conn(None, 80)).is_err(), "plaintext");
    assert_eq!(check([&strict], &conn(Some(CLIENT), 80)), Ok(()));
}

#[test]
fn an_allow_admits_what_it_names_and_nothing_else() {
    let allow = policy(
        Action::Allow,
        vec![vec![vec![Match {
            principals: vec![StringMatch::Exact(
                "cluster.local/ns/default/sa/client".into(),
            )],
            ..Match::default()
        }]]],
    );
    assert_eq!(check([&allow], &conn(Some(CLIENT), 80)), Ok(()));
    let other = conn(Some("spiffe://cluster.local/ns/default/sa/other"), 80);
    assert_eq!(
        check([&allow], &other),
        Err("no ALLOW policy matches".into())
    );
    assert!(check([&allow], &conn(None, 80)).is_err());
}

#[test]
fn an_allow_without_rules_denies_and_an_empty_rule_allows() {
    let nothing = policy(Action::Allow, vec![]);
    assert!(check([&nothing], &conn(Some(CLIENT), 80)).is_err());
    let everything = policy(Action::Allow, vec![vec![]]);
    assert_eq!(check([&everything], &conn(None, 80)), Ok(()));
    let empty_match = policy(Action::Allow, vec![vec![vec![Match::default()]]]);
    assert!(
        check([&empty_match], &conn(Some(CLIENT), 80)).is_err(),
        "a match that sets nothing holds for nothing"
    );
}

#[test]
fn deny_wins_and_clauses_must_all_hold() {
    let deny_port = policy(
        Action::Deny,
        vec![vec![
            vec![Match {
                destination_ports: vec![9090],
                ..Match::default()
            }],
            vec![Match {
                namespaces: vec![StringMatch::Exact("default".into())],
                ..Match::default()
            }],
        ]],
    );
    let allow_all = policy(Action::Allow, vec![vec![]]);
    assert!(check([&allow_all, &deny_port], &conn(Some(CLIENT), 9090)).is_err());
    assert_eq!(
        check([&allow_all, &deny_port], &conn(Some(CLIENT), 80)),
        Ok(())
    );
    let elsewhere = conn(Some("spiffe://cluster.local/ns/other/sa/x"), 9090);
    assert_eq!(
        check([&deny_port], &elsewhere),
        Ok(()),
        "both clauses must hold"
    );
}

#[test]
fn scope_decides_which_workloads_a_policy_reaches_unnamed() {
    let mut p = policy(Action::Allow, vec![]);
    p.scope = Scope::Global;
    assert!(p.applies_by_scope("anything"));
    p.scope = Scope::Namespace;
    assert!(p.applies_by_scope("default") && !p.applies_by_scope("other"));
    p.scope = Scope::WorkloadSelector;
    assert!(!p.applies_by_scope("default"));
}
