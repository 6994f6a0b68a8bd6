//! `oxmesh intention` on a directory of YAML: the AuthorizationPolicies it
//! writes are valid Istio objects, read back by `list`, with ports turned into
//! the Service's target ports.

use std::process::Command;

use oxmesh_testkit::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

fn oxmesh(dir: &TempDir, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--dir")
        .arg(&dir.0)
        .output()
        .expect("oxmesh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn intentions_in_a_directory_are_policies_that_validate() {
    let dir = TempDir::new("intention-dir");
    dir.write("web.yaml", SERVICE);
    let run = |args: &[&str]| {
        let (ok, text) = oxmesh(&dir, args);
        assert!(ok, "{args:?}: {text}");
        text
    };
    run(&["intention", "default", "deny", "-n", "shop"]);
    run(&["intention", "allow", "ops/*", "shop/web", "--port", "80"]);
    run(&["intention", "deny", "ops/intruder", "shop/web"]);

    let written = std::fs::read_to_string(dir.path("intentions.yaml")).expect("written");
    assert!(written.contains("name: intentions-web"), "{written}");
    assert!(written.contains("name: intentions.default"), "{written}");
    assert!(
        written.contains("'8080'") || written.contains("\"8080\""),
        "target port: {written}"
    );
    assert!(
        written.contains("*/ns/ops/sa/intruder"),
        "the deny narrows the allow: {written}"
    );
    let validate = Command::new(BIN)
        .arg("validate")
        .arg(dir.path("intentions.yaml"))
        .output()
        .expect("validate");
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );

    let list = run(&["intention", "list"]);
    assert!(
        list.contains("ops/intruder") && list.contains("ops/*"),
        "{list}"
    );
    let (allowed, text) = oxmesh(&dir, &["intention", "check", "ops/intruder", "shop/web"]);
    assert!(
        !allowed && text.contains("deny ops/intruder -> shop/web"),
        "{text}"
    );
    let (allowed, text) = oxmesh(&dir, &["intention", "check", "ops/a", "shop/web"]);
    assert!(allowed && text.contains("rules[0]"), "{text}");

    // Refused with a reason, nothing written.
    let (ok, text) = oxmesh(&dir, &["intention", "allow", "ops", "shop/web"]);
    assert!(!ok && text.contains("ns/serviceaccount"), "{text}");
    let (ok, text) = oxmesh(&dir, &["intention", "allow", "ops/a", "shop/nope"]);
    assert!(!ok && text.contains("no Service shop/nope"), "{text}");
    let (ok, text) = oxmesh(
        &dir,
        &["intention", "deny", "ops/a", "shop/web", "--path", "*.php"],
    );
    assert!(
        !ok && text.contains("--path"),
        "Istio would read it as a suffix: {text}"
    );

    // A second Service over the same pods: each policy would allow what the
    // other's intentions deny.
    dir.write(
        "web-alias.yaml",
        &SERVICE.replace("name: web,", "name: web-alias,"),
    );
    let (ok, text) = oxmesh(&dir, &["intention", "allow", "dev/*", "shop/web-alias"]);
    assert!(!ok && text.contains("may select the same pods"), "{text}");
}

/// The same against an API server (the testkit's): the policies are applied
/// there and removed from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intentions_in_a_cluster_go_through_its_api_server() {
    use oxmesh_testkit::api_server::{self, ApiServer};
    let dir = TempDir::new("intention-cluster");
    let api = ApiServer::start(api_server::standard_types()).await;
    api.apply_yaml(SERVICE);
    let kubeconfig = api.kubeconfig(&dir.0);
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("intention")
            .args(args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .expect("oxmesh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = tokio::task::block_in_place(|| run(&["allow", "ops/*", "shop/web"]));
    assert!(ok, "{text}");
    let policy = api
        .get(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "shop",
            "intentions-web",
        )
        .expect("applied");
    assert_eq!(policy["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(
        policy["spec"]["rules"][0]["from"][0]["source"]["namespaces"][0],
        "ops"
    );

    let (ok, list) = tokio::task::block_in_place(|| run(&["list"]));
    assert!(ok && list.contains("ops/*"), "{list}");
    let (ok, text) = tokio::task::block_in_place(|| run(&["delete", "ops/*", "shop/web"]));
    assert!(ok, "{text}");
    assert!(
        api.get(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "shop",
            "intentions-web"
        )
        .is_none(),
        "removed with its last intention"
    );
}
