//! `oxmesh install` and `uninstall` against the API server fixture (HTTPS,
//! server-side apply), and `--dry-run` as the schema check reads it.

use std::process::Output;

use oxmesh_testkit::TempDir;
use oxmesh_testkit::api_server::{self, ApiServer};

async fn oxmesh(args: Vec<String>) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(args)
        .output()
        .await
        .expect("run oxmesh")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_applies_istios_objects_and_uninstall_removes_them() {
    let dir = TempDir::new("install");
    let api = ApiServer::start(api_server::standard_types()).await;
    let kubeconfig = api.kubeconfig(&dir.0).display().to_string();
    let with = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--kubeconfig".to_owned(), kubeconfig.clone()]);
        all
    };
    let applied = ok(&oxmesh(with(&["install", "--image", "example.com/oxmesh:dev"])).await);
    assert!(
        applied.contains("Deployment istio-system/istiod applied"),
        "{applied}"
    );

    let istiod = api
        .get("apps/v1", "Deployment", "istio-system", "istiod")
        .expect("istiod deployed");
    let container = &istiod["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "example.com/oxmesh:dev");
    assert_eq!(container["args"][0], "control");
    let injector = api
        .get(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            "",
            "istio-sidecar-injector",
        )
        .expect("injector");
    let webhooks: Vec<&str> = injector["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(
        webhooks,
        [
            "rev.namespace.sidecar-injector.istio.io",
            "rev.object.sidecar-injector.istio.io",
            "namespace.sidecar-injector.istio.io",
            "object.sidecar-injector.istio.io"
        ]
    );
    let crd = "virtualservices.networking.istio.io";
    assert!(
        api.get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            crd
        )
        .is_some()
    );
    let patches = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH ") && r.contains("fieldManager=oxmesh-install"))
        .count();
    assert!(patches > 20, "server-side apply, {patches} patches");

    // Applying again changes nothing and fails nothing.
    ok(&oxmesh(with(&["install", "--image", "example.com/oxmesh:dev"])).await);

    let removed = ok(&oxmesh(with(&["uninstall"])).await);
    assert!(
        removed.contains("Deployment istio-system/istiod deleted"),
        "{removed}"
    );
    assert!(
        api.get("apps/v1", "Deployment", "istio-system", "istiod")
            .is_none()
    );
    assert!(
        api.get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            crd
        )
        .is_some(),
        "the CRDs (and users' objects) stay without --purge"
    );
    assert!(api.get("v1", "Namespace", "", "istio-system").is_some());
    // The CRDs are shared by every revision: a named one may not take them.
    let refused = oxmesh(with(&["uninstall", "--revision", "canary", "--purge"])).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("shared with every other revision"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        api.get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            crd
        )
        .is_some()
    );
    ok(&oxmesh(with(&["uninstall", "--purge"])).await);
    assert!(
        api.get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            crd
        )
        .is_none()
    );
}

#[tokio::test]
async fn dry_run_prints_a_revision_beside_the_default() {
    let out = ok(&oxmesh(vec![
        "install".into(),
        "--dry-run".into(),
        "--revision".into(),
        "canary".into(),
    ])
    .await);
    assert!(out.contains("name: istiod-canary"));
    assert!(out.contains("name: istio-sidecar-injector-canary"));
    assert!(
        !out.contains("name: istio-ingressgateway\n"),
        "no second gateway"
    );
    assert!(!out.contains("{{"));
}
