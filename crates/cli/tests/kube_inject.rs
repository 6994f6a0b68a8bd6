//! `oxmesh kube-inject` on Istio's own injection inputs and on what users
//! notice: the containers added, the interception they ask for, refusals.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn conformance() -> PathBuf {
    std::env::var_os("OXMESH_CONFORMANCE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/istio"),
        PathBuf::from,
    )
}

fn oxmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(args)
        .output()
        .expect("run oxmesh")
}

fn inject(file: &str, extra: &[&str]) -> Output {
    let path = conformance().join("inject").join(file);
    let mut args = vec!["kube-inject", "-f", path.to_str().expect("utf-8 path")];
    args.extend(extra);
    oxmesh(&args)
}

fn documents(out: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("output is not YAML: {e}\n{text}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Every pod template (metadata and spec) in the documents.
fn pods(docs: &[Value]) -> Vec<(Value, Value)> {
    let mut pods = Vec::new();
    for doc in docs {
        match doc["kind"].as_str() {
            Some("List") => pods.extend(self::pods(doc["items"].as_array().map_or(&[][..], |v| v))),
            Some("Pod") => pods.push((doc["metadata"].clone(), doc["spec"].clone())),
            Some("CronJob") => {
                let t = &doc["spec"]["jobTemplate"]["spec"]["template"];
                pods.push((t["metadata"].clone(), t["spec"].clone()));
            }
            _ => {
                let t = &doc["spec"]["template"];
                if t.is_object() {
                    pods.push((t["metadata"].clone(), t["spec"].clone()));
                }
            }
        }
    }
    pods
}

fn injected(metadata: &Value) -> bool {
    metadata["annotations"]["sidecar.istio.io/status"].is_string()
}

fn container<'a>(spec: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    spec[list]
        .as_array()?
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
}

/// The first pod of a successful run's output.
fn first_pod(out: &Output) -> (Value, Value) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pods(&documents(out)).remove(0)
}

/// The value after `name` in an argument list.
fn flag(args: &[String], name: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn istios_injection_inputs_are_injected_skipped_or_refused_as_istio_does() {
    let expected = std::fs::read_to_string(conformance().join("inject-expected.tsv"))
        .expect("inject-expected.tsv");
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let (file, verdict) = line.split_once('\t').expect("file<TAB>verdict");
        let out = inject(file, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match verdict {
            "skip" => {
                assert!(out.status.success(), "{file}: {stderr}");
                let input = std::fs::read_to_string(conformance().join("inject").join(file))
                    .expect("input");
                let before: Vec<Value> = serde_saphyr::from_multiple::<Value>(&input)
                    .expect("input YAML")
                    .into_iter()
                    .filter(|d| !d.is_null())
                    .collect();
                assert_eq!(
                    documents(&out),
                    before,
                    "{file}: a skipped pod is left as it was"
                );
            }
            "error" => {
                assert_eq!(out.status.code(), Some(1), "{file}");
                assert!(
                    stderr.contains("annotation traffic.sidecar.istio.io/"),
                    "{file}: {stderr}"
                );
                assert!(
                    out.stdout.is_empty(),
                    "{file}: nothing is written on a refusal"
                );
            }
            "needs-settings" => {}
            other => {
                let count: usize = other
                    .strip_prefix("inject:")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{file}: unknown verdict {other}"));
                assert!(out.status.success(), "{file}: {stderr}");
                let pods = pods(&documents(&out));
                let done: Vec<_> = pods.iter().filter(|(m, _)| injected(m)).collect();
                assert_eq!(done.len(), count, "{file}: injected pod templates");
                for (_, spec) in done {
                    let proxy = container(spec, "initContainers", "istio-proxy")
                        .or_else(|| container(spec, "containers", "istio-proxy"));
                    assert!(proxy.is_some(), "{file}: no istio-proxy");
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} inputs checked");
}

#[test]
fn traffic_annotations_become_the_init_steps_flags_and_the_proxys_settings() {
    let out = inject("traffic-annotations.yaml", &[]);
    let (metadata, spec) = first_pod(&out);
    let init = container(&spec, "initContainers", "istio-init").expect("istio-init");
    let args = strings(&init["args"]);
    assert_eq!(flag(&args, "-b"), "1,2,3", "includeInboundPorts");
    assert_eq!(
        flag(&args, "-d"),
        "15090,15021,15020,4,5,6",
        "excludeInboundPorts and the proxy's own"
    );
    assert_eq!(flag(&args, "-o"), "7,8,9", "excludeOutboundPorts");
    assert_eq!(flag(&args, "-i"), "127.0.0.1/24,10.96.0.1/24");
    assert_eq!(flag(&args, "-x"), "10.96.0.2/24,10.96.0.3/24");
    assert_eq!(
        strings(&init["securityContext"]["capabilities"]["add"]),
        ["NET_ADMIN", "NET_RAW"]
    );

    // The same flags are ones `oxmesh iptables` takes: it prints their rules.
    let mut dry_run: Vec<&str> = args.iter().map(String::as_str).collect();
    dry_run.push("--dry-run");
    let rules = oxmesh(&dry_run);
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stderr)
    );
    let script = String::from_utf8_lossy(&rules.stdout);
    for rule in [
        "-A ISTIO_OUTPUT -p tcp --dport 7 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 1 -j ISTIO_IN_REDIRECT",
    ] {
        assert!(script.contains(rule), "{rule} missing from\n{script}");
    }

    let proxy = container(&spec, "initContainers", "istio-proxy").expect("native sidecar");
    assert_eq!(proxy["restartPolicy"], "Always");
    let proxy_args = strings(&proxy["args"]);
    assert_eq!(
        flag(&proxy_args, "--discovery-address"),
        "foo:123",
        "proxy.istio.io/config"
    );
    assert_eq!(
        flag(&proxy_args, "--concurrency"),
        "4",
        "concurrency 0 follows the 4 CPUs asked"
    );
    assert_eq!(proxy["resources"]["requests"]["cpu"], "4000m");
    assert_eq!(
        proxy["resources"]["limits"]["cpu"], "4000m",
        "a limit never under the request"
    );
    let env = proxy["env"].as_array().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "FOO" && e["value"] == "bar"),
        "proxyMetadata"
    );
    assert_eq!(metadata["labels"]["security.istio.io/tlsMode"], "istio");
    assert_eq!(
        metadata["labels"]["service.istio.io/canonical-name"],
        "traffic"
    );
}

#[test]
fn without_native_sidecars_the_proxy_starts_first_and_holds_the_app() {
    for (file, extra) in [
        ("native-sidecar-opt-out.yaml", &[][..]),
        ("hello.yaml", &["--native-sidecars", "false"][..]),
    ] {
        let out = inject(file, extra);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, spec) = pods(&documents(&out)).remove(0);
        assert!(
            container(&spec, "initContainers", "istio-proxy").is_none(),
            "{file}"
        );
        let first = &spec["containers"][0];
        assert_eq!(first["name"], "istio-proxy", "{file}: the proxy goes first");
        assert_eq!(
            strings(&first["lifecycle"]["postStart"]["exec"]["command"]),
            ["oxmesh", "proxy", "wait"],
            "{file}"
        );
        assert!(
            container(&spec, "initContainers", "istio-init").is_some(),
            "{file}"
        );
    }
}

#[test]
fn a_gateway_pod_keeps_its_own_proxy_container_filled_in() {
    let out = inject(
        "gateway-with-default-container.yaml",
        &["--image", "example/oxmesh:1"],
    );
    let (metadata, spec) = first_pod(&out);
    let proxy = container(&spec, "containers", "istio-proxy").expect("istio-proxy");
    assert_eq!(
        proxy["image"], "example/oxmesh:1",
        "image: auto takes the injected image"
    );
    assert_eq!(
        proxy["imagePullPolicy"], "IfNotPresent",
        "the pod's own fields stay"
    );
    assert!(
        strings(&proxy["args"])
            .windows(2)
            .any(|w| w == ["--mode", "gateway"])
    );
    assert!(
        spec["initContainers"].is_null(),
        "a gateway gets no interception"
    );
    assert!(container(&spec, "containers", "httpbin").is_some());
    assert_eq!(
        metadata["annotations"]["kubectl.kubernetes.io/default-container"], "istio-proxy",
        "the pod's own annotation stays"
    );
    assert!(
        metadata["labels"]["security.istio.io/tlsMode"].is_null(),
        "a gateway takes plaintext: no tlsMode label, as Istio's template"
    );
}

#[test]
fn a_pods_own_istio_proxy_and_istio_init_are_merged_never_doubled() {
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: app}\nspec:\n  containers:\n  - {name: app, image: app}\n  - name: istio-proxy\n    image: auto\n    resources: {limits: {memory: 1Gi}}\n    securityContext: {readOnlyRootFilesystem: true}\n  - name: istio-init\n    resources: {limits: {cpu: 50m}}\n";
    for extra in [&[][..], &["--native-sidecars", "false"][..]] {
        let mut args = vec!["kube-inject", "-f", "-"];
        args.extend(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run oxmesh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("kube-inject");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, spec) = first_pod(&out);
        let all: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .flat_map(|list| spec[*list].as_array().into_iter().flatten())
            .collect();
        for name in ["istio-proxy", "istio-init"] {
            let count = all.iter().filter(|c| c["name"] == name).count();
            assert_eq!(count, 1, "{extra:?}: one {name}, not {count}");
        }
        let (list, other) = if extra.is_empty() {
            ("initContainers", "containers")
        } else {
            ("containers", "initContainers")
        };
        let proxy = container(&spec, list, "istio-proxy").expect("the proxy");
        assert!(container(&spec, other, "istio-proxy").is_none());
        assert_eq!(
            proxy["resources"]["limits"]["memory"], "1Gi",
            "the pod's own fields win"
        );
        assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
        assert_ne!(
            proxy["image"], "auto",
            "image: auto takes the injected image"
        );
        assert!(strings(&proxy["args"]).contains(&"--discovery-address".to_owned()));
        let init = container(&spec, "initContainers", "istio-init").expect("istio-init");
        assert_eq!(init["resources"]["limits"]["cpu"], "50m");
        assert_eq!(strings(&init["args"])[0], "iptables");
    }
}

#[test]
fn proxyless_grpc_gets_a_bootstrap_and_no_proxy() {
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  annotations: {inject.istio.io/templates: grpc-simple}\nspec:\n  containers: [{name: app, image: app}]\n";
    let out = inject_text(manifest);
    let (_, spec) = first_pod(&out);
    assert!(container(&spec, "containers", "istio-proxy").is_none());
    assert!(container(&spec, "initContainers", "istio-proxy").is_none());
    let init = container(&spec, "initContainers", "grpc-bootstrap-init").expect("bootstrap step");
    assert_eq!(strings(&init["args"])[0], "grpc-bootstrap");
    let app = container(&spec, "containers", "app").expect("app");
    let env = app["env"].as_array().expect("env");
    assert!(env.iter().any(|e| e["name"] == "GRPC_XDS_BOOTSTRAP"));

    // The init step writes what a stock gRPC client reads.
    let dir = std::env::temp_dir().join(format!("oxmesh-grpc-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bootstrap.json");
    let mut args: Vec<String> = strings(&init["args"]);
    let i = args.iter().position(|a| a == "--output").expect("--output");
    args[i + 1] = file.display().to_string();
    let written = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(&args)
        .env("POD_NAME", "client")
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", "198.18.0.9")
        .output()
        .expect("grpc-bootstrap");
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let bootstrap: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("bootstrap")).expect("JSON");
    assert_eq!(
        bootstrap["node"]["id"],
        "sidecar~198.18.0.9~client.default~default.svc.cluster.local"
    );
    assert_eq!(bootstrap["node"]["metadata"]["GENERATOR"], "grpc");
    assert_eq!(
        bootstrap["xds_servers"][0]["server_uri"],
        "istiod.istio-system.svc:15010"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pod_that_is_already_injected_or_opts_out_is_left_alone() {
    let out = inject("hello.yaml", &[]);
    let once = String::from_utf8_lossy(&out.stdout).into_owned();
    let twice = inject_text(&once);
    assert!(twice.status.success());
    assert_eq!(
        documents(&twice),
        documents(&out),
        "injecting twice changes nothing"
    );
    let (_, spec) = pods(&documents(&twice)).remove(0);
    let proxies = spec["initContainers"].as_array().map_or(0, |a| {
        a.iter().filter(|c| c["name"] == "istio-proxy").count()
    });
    assert_eq!(proxies, 1);
}

fn inject_text(manifest: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oxmesh"))
        .args(["kube-inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oxmesh");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("write");
    child.wait_with_output().expect("kube-inject")
}

#[test]
fn malformed_workloads_are_refused_by_name_and_odd_ones_do_not_crash() {
    let out = inject_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\nspec: {replicas: 1}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Deployment broken") && stderr.contains("spec.template"),
        "{stderr}"
    );

    let odd = inject_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: odd}\nspec: {containers: [just-a-string]}\n",
    );
    assert!(
        odd.status.success(),
        "{}",
        String::from_utf8_lossy(&odd.stderr)
    );
    let (_, spec) = pods(&documents(&odd)).remove(0);
    assert!(container(&spec, "initContainers", "istio-proxy").is_some());

    let text = inject_text("{not yaml");
    assert_eq!(
        text.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
}

#[test]
fn a_vms_interfaces_and_included_ports_reach_the_init_step() {
    for (file, interfaces) in [
        ("kubevirtInterfaces.yaml", "net1"),
        ("reroute-virtual-interfaces_list.yaml", "net1ps5,net2qr9"),
    ] {
        let (_, spec) = first_pod(&inject(file, &[]));
        let init = container(&spec, "initContainers", "istio-init").expect("istio-init");
        assert_eq!(flag(&strings(&init["args"]), "-k"), interfaces, "{file}");
    }
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db-client\n  annotations: {traffic.sidecar.istio.io/includeOutboundPorts: \"5432\", traffic.sidecar.istio.io/includeOutboundIPRanges: \"\"}\nspec:\n  containers: [{name: app, image: app}]\n";
    let (_, spec) = first_pod(&inject_text(manifest));
    let init = container(&spec, "initContainers", "istio-init").expect("istio-init");
    let args = strings(&init["args"]);
    assert_eq!(flag(&args, "-q"), "5432");
    assert_eq!(flag(&args, "-i"), "");
}

#[test]
fn the_start_up_probe_asks_the_proxys_own_health_port() {
    for (annotation, port) in [("\"0\"", 15021), ("\"8888\"", 8888)] {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {{status.sidecar.istio.io/port: {annotation}}}\nspec:\n  containers: [{{name: app, image: app}}]\n"
        );
        let (_, spec) = first_pod(&inject_text(&manifest));
        let proxy = container(&spec, "initContainers", "istio-proxy").expect("istio-proxy");
        assert_eq!(
            proxy["startupProbe"]["httpGet"]["port"], port,
            "{annotation}"
        );
        let args = strings(&proxy["args"]);
        if port != 15021 {
            assert_eq!(flag(&args, "--health-port"), port.to_string());
            assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], port);
        } else {
            assert!(
                proxy["readinessProbe"].is_null(),
                "port 0 turns the readiness probe off"
            );
        }
    }
}

/// The value of a container's environment variable.
fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

fn proxy_of(spec: &Value) -> Value {
    container(spec, "initContainers", "istio-proxy")
        .or_else(|| container(spec, "containers", "istio-proxy"))
        .expect("istio-proxy")
        .clone()
}

#[test]
fn app_probes_go_through_the_proxy_unless_the_pod_says_no() {
    let (_, spec) = first_pod(&inject("tcp-probes.yaml", &[]));
    let hello = container(&spec, "containers", "hello").expect("hello");
    assert_eq!(
        hello["livenessProbe"],
        serde_json::json!({"httpGet": {"path": "/app-health/hello/livez", "port": 15020}})
    );
    assert_eq!(
        hello["readinessProbe"]["httpGet"]["path"],
        "/app-health/hello/readyz"
    );
    let originals: Value = serde_json::from_str(
        &env_value(&proxy_of(&spec), "ISTIO_KUBE_APP_PROBERS").expect("the originals"),
    )
    .expect("JSON");
    assert_eq!(
        originals,
        serde_json::json!({
            "/app-health/hello/livez": {"tcpSocket": {"port": 80}},
            "/app-health/hello/readyz": {"tcpSocket": {"port": 3333}},
        }),
        "the named port is resolved for the proxy"
    );

    let (_, spec) = first_pod(&inject(
        "hello-probes-with-flag-unset-in-annotation.yaml",
        &[],
    ));
    let hello = container(&spec, "containers", "hello").expect("hello");
    assert_ne!(hello["livenessProbe"]["httpGet"]["port"], 15020);
    assert_eq!(
        env_value(&proxy_of(&spec), "ISTIO_KUBE_APP_PROBERS"),
        None,
        "rewriteAppHTTPProbers: false"
    );
}

#[test]
fn the_apps_metrics_are_scraped_through_the_proxy() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: {prometheus.io/scrape: \"true\", prometheus.io/port: \"9102\"}\nspec:\n  containers: [{name: web, image: web}]\n";
    let (metadata, spec) = first_pod(&inject_text(pod));
    let annotations = &metadata["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "15020");
    assert_eq!(annotations["prometheus.io/path"], "/stats/prometheus");
    let saved: Value = serde_json::from_str(
        &env_value(&proxy_of(&spec), "ISTIO_PROMETHEUS_ANNOTATIONS").expect("saved"),
    )
    .expect("JSON");
    assert_eq!(saved, serde_json::json!({"scrape": "true", "port": "9102"}));
}

#[test]
fn grpc_agent_puts_the_agent_alone_beside_the_app() {
    let (_, spec) = first_pod(&inject("grpc-agent.yaml", &[]));
    assert!(
        container(&spec, "initContainers", "istio-init").is_none(),
        "no interception without a proxy"
    );
    let agent = proxy_of(&spec);
    assert_eq!(strings(&agent["args"])[0], "grpc-agent");
    let app = container(&spec, "containers", "traffic").expect("the app");
    assert_eq!(
        env_value(app, "GRPC_XDS_BOOTSTRAP").as_deref(),
        Some("/etc/istio/proxy/grpc-bootstrap.json")
    );
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        mounts(app).contains(&"/var/lib/istio/data".to_owned()),
        "the certificate files"
    );
    let agent_mounts = mounts(&agent);
    let mut unique = agent_mounts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        agent_mounts.len(),
        "one volume per path: {agent_mounts:?}"
    );
    assert_eq!(
        app["readinessProbe"]["httpGet"]["path"], "/app-health/traffic/readyz",
        "the agent answers the app's probes"
    );
}
