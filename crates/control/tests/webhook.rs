//! The admission webhooks on 15017 as the Kubernetes API server calls them:
//! HTTPS (the control plane's certificate, checked against the mesh root by
//! name), an AdmissionReview in, an AdmissionReview out.

mod support;

use std::process::Command;

use base64::Engine;
use serde_json::{Value, json};

/// POSTs `review` to `path` with curl, trusting only the mesh root and
/// reaching the control plane by its Service name, as the API server does.
/// (It blocks: the tests run on a multi-threaded runtime so the server runs.)
fn post(
    cp: &oxmesh_control::control_plane::ControlPlane,
    dir: &support::TempDir,
    path: &str,
    review: &Value,
) -> Value {
    let root = dir.0.join("root-cert.pem");
    std::fs::write(&root, cp.authority.roots_pem()).expect("root");
    let port = cp.webhook_addr.port();
    let host = "istiod.istio-system.svc";
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-m", "10", "--cacert"])
        .arg(&root)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            &review.to_string(),
        ])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON AdmissionReview")
}

fn review(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "5f2c-1", "kind": {"kind": object["kind"]}, "namespace": "default", "operation": "CREATE", "object": object},
    })
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-7d4b9c8f6-",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7d4b9c8f6"},
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": "reviews", "image": "reviews", "ports": [{"containerPort": 9080}]}]},
    })
}

/// Applies a JSON Patch of `add` operations (what the webhook sends).
fn apply(mut object: Value, patch: &Value) -> Value {
    for op in patch.as_array().expect("a patch is a list") {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().expect("path");
        let tokens: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens.split_last().expect("a token");
        let mut target = &mut object;
        for t in parents {
            target = target.get_mut(t.as_str()).expect("the parent exists");
        }
        target[last.as_str()] = op["value"].clone();
    }
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_answers_with_a_patch_that_adds_the_sidecar() {
    let (cp, state, _config) = support::control_plane("webhook-inject").await;
    let original = pod(json!({}));
    let answer = post(&cp, &state, "/inject", &review(original.clone()));
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "5f2c-1", "the answer names the request");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("patch"))
            .expect("base64"),
    )
    .expect("JSON");
    let injected = apply(original, &patch);
    let names: Vec<&str> = injected["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["istio-init", "istio-proxy"]);
    assert_eq!(
        injected["spec"]["containers"][0]["name"], "reviews",
        "the app is untouched"
    );
    assert!(injected["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
    let proxy = &injected["spec"]["initContainers"][1];
    let env = proxy["env"].as_array().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "ISTIO_META_WORKLOAD_NAME" && e["value"] == "reviews-v1"),
        "the workload is the Deployment, not the ReplicaSet"
    );
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--discovery-address", "istiod.istio-system.svc:15012"])
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_opts_out_is_allowed_unchanged_and_a_bad_annotation_is_refused() {
    let (cp, state, _config) = support::control_plane("webhook-refuse").await;
    let out = post(
        &cp,
        &state,
        "/inject",
        &review(pod(json!({"sidecar.istio.io/inject": "false"}))),
    );
    assert_eq!(out["response"]["allowed"], true);
    assert!(
        out["response"]["patch"].is_null(),
        "no patch for an opted-out pod"
    );

    let bad = pod(json!({"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/33"}));
    let out = post(&cp, &state, "/inject", &review(bad));
    assert_eq!(out["response"]["allowed"], false);
    let message = out["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("traffic.sidecar.istio.io/excludeOutboundIPRanges")
            && message.contains("10.0.0.0/33"),
        "{message}"
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_refuses_what_oxmesh_validate_refuses() {
    let (cp, state, _config) = support::control_plane("webhook-validate").await;
    let virtual_service = |subset: &str| {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}]},
        })
    };
    let good = post(&cp, &state, "/validate", &review(virtual_service("v1")));
    assert_eq!(good["response"]["allowed"], true);
    let bad = post(&cp, &state, "/validate", &review(virtual_service("v_1")));
    assert_eq!(bad["response"]["allowed"], false);
    let message = bad["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("spec.http[0].route[0].destination.subset"),
        "{message}"
    );
    cp.shutdown().await;
}
