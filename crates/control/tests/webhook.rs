//! The admission webhooks on 15017 as the Kubernetes API server calls them:
//! HTTPS (the control plane's certificate, checked against the mesh root by
//! name), an AdmissionReview in, an AdmissionReview out.

mod support;

use std::process::Command;

use base64::Engine;
use oxmesh_control::inject::{Outcome, Skip};
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
    post_raw(cp, dir, path, &review.to_string())
}

fn post_raw(
    cp: &oxmesh_control::control_plane::ControlPlane,
    dir: &support::TempDir,
    path: &str,
    body: &str,
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
            "--data-binary",
            body,
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

/// Applies the webhook's JSON Patch as the API server does.
fn apply(mut object: Value, patch: &Value) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).expect("a JSON Patch");
    json_patch::patch(&mut object, &patch).expect("the patch applies");
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

/// Garbage, a review without its parts, a kind the webhook does not inject:
/// each gets an AdmissionReview that refuses and says why (never a bare error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reviews_and_other_kinds_are_refused_with_the_reason() {
    let (cp, state, _config) = support::control_plane("webhook-malformed").await;
    let reason = |answer: &Value| {
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let garbage = reason(&post_raw(&cp, &state, "/inject", "{not json"));
    assert!(garbage.contains("not an AdmissionReview"), "{garbage}");
    let empty = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let no_request = reason(&post(&cp, &state, "/inject", &empty));
    assert!(no_request.contains("no request"), "{no_request}");
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web"}]}}}});
    let answer = post(&cp, &state, "/inject", &review(deployment));
    assert_eq!(answer["response"]["uid"], "5f2c-1");
    let other = reason(&answer);
    assert!(other.contains("injects Pods, not a Deployment"), "{other}");
    assert!(answer["response"]["patch"].is_null());
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

fn conformance() -> std::path::PathBuf {
    std::env::var_os("OXMESH_CONFORMANCE_DIR").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/conformance/istio")
        },
        std::path::PathBuf::from,
    )
}

/// The pods a file's workloads would create, as the API server sends them to
/// the webhook: each pod template becomes a Pod in the workload's namespace.
fn pods_of(documents: &[Value]) -> Vec<Value> {
    let mut pods = Vec::new();
    for doc in documents {
        let namespace = doc["metadata"]["namespace"].clone();
        let template = match doc["kind"].as_str() {
            Some("List") => {
                pods.extend(pods_of(doc["items"].as_array().map_or(&[][..], |v| v)));
                continue;
            }
            Some("Pod") => doc.clone(),
            Some("CronJob") => doc["spec"]["jobTemplate"]["spec"]["template"].clone(),
            _ => doc["spec"]["template"].clone(),
        };
        if !template["spec"].is_object() {
            continue;
        }
        let mut metadata = template["metadata"].clone();
        if metadata.is_null() {
            metadata = json!({});
        }
        if !namespace.is_null() {
            metadata["namespace"] = namespace;
        }
        pods.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}));
    }
    pods
}

/// Istio's injection inputs, sent to the webhook pod by pod: what
/// `inject-expected.tsv` says `oxmesh kube-inject` does, the webhook does too,
/// and its patch applied to the pod gives exactly the pod injected offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_injection_inputs_through_the_webhook() {
    let (cp, state, _config) = support::control_plane("webhook-corpus").await;
    let expected = std::fs::read_to_string(conformance().join("inject-expected.tsv"))
        .expect("inject-expected.tsv");
    let settings = oxmesh_control::inject::Settings::default();
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let (file, verdict) = line.split_once('\t').expect("file<TAB>verdict");
        if verdict == "needs-settings" {
            continue;
        }
        let text = std::fs::read_to_string(conformance().join("inject").join(file)).expect("input");
        let documents: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
            .expect("input YAML")
            .into_iter()
            .filter(|d| !d.is_null())
            .collect();
        let mut injected = 0;
        for pod in pods_of(&documents) {
            let response = post(&cp, &state, "/inject", &review(pod.clone()))["response"].clone();
            assert_eq!(response["uid"], "5f2c-1", "{file}");
            let message = response["status"]["message"].as_str().unwrap_or_default();
            match verdict {
                "skip" => {
                    assert_eq!(response["allowed"], true, "{file}: {message}");
                    assert!(
                        response["patch"].is_null(),
                        "{file}: a skipped pod is not patched"
                    );
                }
                "error" => {
                    assert_eq!(response["allowed"], false, "{file}");
                    assert!(
                        message.contains("annotation traffic.sidecar.istio.io/"),
                        "{file}: {message}"
                    );
                    assert!(
                        response["patch"].is_null(),
                        "{file}: nothing injected half-way"
                    );
                }
                _ => {
                    assert_eq!(response["allowed"], true, "{file}: {message}");
                    let (mut metadata, mut spec) = (pod["metadata"].clone(), pod["spec"].clone());
                    let workload = pod["metadata"]["name"].as_str().unwrap_or_default();
                    let offline = oxmesh_control::inject::inject_pod(
                        &mut metadata,
                        &mut spec,
                        workload,
                        &settings,
                    )
                    .expect("offline injection");
                    if let Outcome::Skipped(why) = offline {
                        assert!(response["patch"].is_null(), "{file}: {why:?} yet patched");
                        // Counted as kube-inject counts it: the pod has a sidecar.
                        injected += usize::from(why == Skip::AlreadyInjected);
                        continue;
                    }
                    let patch: Value = serde_json::from_slice(
                        &base64::engine::general_purpose::STANDARD
                            .decode(response["patch"].as_str().expect("a patch"))
                            .expect("base64"),
                    )
                    .expect("JSON");
                    let patched = apply(pod.clone(), &patch);
                    assert_eq!(patched["metadata"], metadata, "{file}: metadata");
                    assert_eq!(patched["spec"], spec, "{file}: spec");
                    injected += 1;
                }
            }
        }
        if let Some(count) = verdict.strip_prefix("inject:") {
            assert_eq!(injected.to_string(), count, "{file}: injected pods");
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} inputs checked");
    cp.shutdown().await;
}

/// A review larger than any the API server sends (10 MB, past the 8 MiB
/// limit) is refused without being read whole, and the webhook goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_review_is_refused_and_the_webhook_goes_on() {
    let (cp, state, _config) = support::control_plane("webhook-oversized").await;
    let root = state.0.join("root-cert.pem");
    std::fs::write(&root, cp.authority.roots_pem()).expect("root");
    let huge = state.0.join("huge.json");
    let body = format!(
        "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"pad\":\"{}\"}}",
        "x".repeat(10 << 20)
    );
    std::fs::write(&huge, body).expect("huge review");
    let port = cp.webhook_addr.port();
    let host = "istiod.istio-system.svc";
    let out = Command::new("curl")
        .args(["-sS", "-m", "20", "-w", "\n%{http_code}", "--cacert"])
        .arg(&root)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", huge.display()))
        .arg(format!("https://{host}:{port}/inject"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n400") && text.contains("cannot read the review"),
        "{text}"
    );
    let garbage = post_raw(&cp, &state, "/inject", "{not json");
    assert_eq!(garbage["kind"], "AdmissionReview", "still answering");
    cp.shutdown().await;
}
