//! Prometheus on the testbed (`oxmesh up --prometheus`): Debian's
//! `prometheus` runs as the pod `istio-system/prometheus` behind the Service
//! `prometheus:9090`, the names of Istio's addon, and scrapes the mesh with
//! the addon's `kubernetes-pods` job: the same relabelling of each pod's
//! `prometheus.io/*` annotations, so sidecars and gateways are scraped on
//! 15020 (the proxy's metrics merged with the app's) and istiod on 15014.
//!
//! The testbed has no API server for `kubernetes_sd_configs`, so `oxmesh up`
//! lists the pods in a `file_sd_configs` target file, with the meta labels
//! Kubernetes' pod discovery gives them, and rewrites it whole whenever pods
//! change; Prometheus watches the file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::plan::PodPlan;

/// Debian's package puts the server here.
pub const BINARY: &str = "/usr/bin/prometheus";
/// Where it listens in its pod, and its Service's port.
pub const PORT: u16 = 9090;
/// Istio's addon scrapes every 15 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// The pod's namespace and the Service's name, as Istio's addon has them.
pub const NAMESPACE: &str = "istio-system";
pub const NAME: &str = "prometheus";
/// The node every testbed pod is on, for the `node` label.
const NODE: &str = "testbed";

/// Where the mesh's pods (istiod's dashboard) reach it: its Service.
pub fn in_cluster_url() -> String {
    format!("http://{NAME}.{NAMESPACE}.svc.cluster.local:{PORT}")
}

/// How the mesh is scraped.
#[derive(Clone, Debug)]
pub struct Scraping {
    pub interval: Duration,
}

/// Prometheus's files under the mesh's state directory: emptied at each
/// start, as the addon's `emptyDir` is.
#[derive(Clone, Debug)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("prometheus.yml")
    }

    pub fn targets(&self) -> PathBuf {
        self.dir.join("targets.json")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A fresh directory holding the configuration and an empty target list.
    pub fn prepare(&self, scraping: &Scraping) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(self.data())?;
        std::fs::write(self.targets(), "[]")?;
        std::fs::write(self.config(), config(&self.targets(), scraping))
    }
}

/// The Service and Deployment that run Prometheus, as if from a manifest:
/// no sidecar (the addon's pod has none), ready once `/-/ready` answers, and
/// a relay container through which the host's port reaches it.
pub fn documents(files: &Files, relay_socket: &Path) -> Vec<(String, Value)> {
    let source = "oxmesh up --prometheus".to_owned();
    let labels = json!({"app": NAME, "sidecar.istio.io/inject": "false"});
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {"app": NAME}},
        "spec": {
            "selector": {"app": NAME},
            "ports": [{"name": "http", "port": PORT, "targetPort": PORT}],
        },
    });
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let server = json!({
        "name": "prometheus-server",
        "image": "prom/prometheus",
        "command": [
            BINARY,
            format!("--config.file={}", path(files.config())),
            format!("--storage.tsdb.path={}", path(files.data())),
            format!("--web.listen-address=0.0.0.0:{PORT}"),
            "--web.enable-lifecycle",
        ],
        "ports": [{"containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/-/ready", "port": PORT}, "periodSeconds": 1},
    });
    let relay = json!({
        "name": "relay",
        "image": "oxmesh",
        "command": [
            "oxmesh", "testbed-relay",
            "--socket", path(relay_socket.to_owned()),
            "--to", format!("127.0.0.1:{PORT}"),
        ],
    });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {"app": NAME}},
        "spec": {
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [server, relay]},
            },
        },
    });
    vec![(source.clone(), service), (source, deployment)]
}

/// `prometheus.yml`: the addon's `kubernetes-pods` job, its relabelling
/// unchanged, reading the target file; and Prometheus scraping itself.
pub fn config(targets: &Path, scraping: &Scraping) -> String {
    let interval = scraping.interval.as_millis().max(1);
    // A scrape may not outlast the interval; the addon's is 10 s.
    let timeout = interval.min(10_000);
    format!(
        r#"# Written by `oxmesh up --prometheus`: Istio's addon configuration
# (samples/addons/prometheus.yaml, job kubernetes-pods) with the target file
# standing in for the Kubernetes API.
global:
  scrape_interval: {interval}ms
  scrape_timeout: {timeout}ms
  evaluation_interval: 1m
scrape_configs:
- job_name: kubernetes-pods
  honor_labels: true
  file_sd_configs:
  - files: ['{targets}']
    refresh_interval: 5s
  relabel_configs:
  - action: keep
    regex: true
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
  - action: drop
    regex: true
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape_slow]
  - action: replace
    regex: (https?)
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scheme]
    target_label: __scheme__
  - action: replace
    regex: (.+)
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
    target_label: __metrics_path__
  - action: replace
    regex: (\d+);(([A-Fa-f0-9]{{1,4}}::?){{1,7}}[A-Fa-f0-9]{{1,4}})
    replacement: '[$2]:$1'
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_ip]
    target_label: __address__
  - action: replace
    regex: (\d+);((([0-9]+?)(\.|$)){{4}})
    replacement: $2:$1
    source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_ip]
    target_label: __address__
  - action: labelmap
    regex: __meta_kubernetes_pod_annotation_prometheus_io_param_(.+)
    replacement: __param_$1
  - action: labelmap
    regex: __meta_kubernetes_pod_label_(.+)
  - action: replace
    source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - action: replace
    source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
  - action: drop
    regex: Pending|Succeeded|Failed|Completed
    source_labels: [__meta_kubernetes_pod_phase]
  - action: replace
    source_labels: [__meta_kubernetes_pod_node_name]
    target_label: node
- job_name: prometheus
  static_configs:
  - targets: ['localhost:{PORT}']
"#,
        targets = targets.display(),
    )
}

/// A pod as Kubernetes' pod discovery describes it.
#[derive(Clone, Debug)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// As the pod has them once admitted (injection points a sidecar's at
    /// 15020).
    pub annotations: BTreeMap<String, String>,
    pub ready: bool,
}

impl Target {
    /// A planned pod, with the annotations Istio's injection would give it.
    pub fn of_pod(pod: &PodPlan, ready: bool) -> Self {
        Self {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ip: pod.ip,
            labels: pod.labels.clone(),
            annotations: admitted_annotations(pod),
            ready,
        }
    }

    /// A control plane's pod: istiod's Deployment asks to be scraped on 15014.
    pub fn control_plane(name: &str, ip: Ipv4Addr, ready: bool) -> Self {
        let annotations = [
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "15014"),
        ];
        Self {
            namespace: NAMESPACE.to_owned(),
            name: name.to_owned(),
            ip,
            labels: BTreeMap::from([("app".to_owned(), "istiod".to_owned())]),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ready,
        }
    }

    /// The target group: the pod's address (it declares no ports here, so
    /// one target, as Kubernetes gives a portless pod) and its meta labels.
    fn group(&self) -> Value {
        let mut meta = Map::new();
        let mut put = |k: String, v: &str| {
            meta.insert(k, Value::String(v.to_owned()));
        };
        put("__meta_kubernetes_namespace".into(), &self.namespace);
        put("__meta_kubernetes_pod_name".into(), &self.name);
        put("__meta_kubernetes_pod_ip".into(), &self.ip.to_string());
        put("__meta_kubernetes_pod_phase".into(), "Running");
        put(
            "__meta_kubernetes_pod_ready".into(),
            if self.ready { "true" } else { "false" },
        );
        put("__meta_kubernetes_pod_node_name".into(), NODE);
        for (kind, map) in [("label", &self.labels), ("annotation", &self.annotations)] {
            for (key, value) in map {
                let key = label_name(key);
                put(format!("__meta_kubernetes_pod_{kind}_{key}"), value);
                put(format!("__meta_kubernetes_pod_{kind}present_{key}"), "true");
            }
        }
        json!({"targets": [self.ip.to_string()], "labels": meta})
    }
}

/// The target file's content.
pub fn target_file(targets: &[Target]) -> String {
    Value::Array(targets.iter().map(Target::group).collect()).to_string()
}

/// A pod's annotations after Istio's injection: a sidecar's or gateway's
/// point Prometheus at the proxy's 15020 (metrics merging), unless the pod
/// turned scraping or merging off.
fn admitted_annotations(pod: &PodPlan) -> BTreeMap<String, String> {
    let mut notes = pod.annotations.clone();
    let off = |key: &str| {
        notes
            .get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    };
    if !(pod.injected || pod.gateway)
        || off("prometheus.io/scrape")
        || off("prometheus.istio.io/merge-metrics")
    {
        return notes;
    }
    for (key, value) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "15020"),
        ("prometheus.io/path", "/stats/prometheus"),
    ] {
        notes.insert(key.to_owned(), value.to_owned());
    }
    notes
}

/// Kubernetes discovery's label names: anything but `[a-zA-Z0-9_]` becomes
/// `_` (`prometheus.io/scrape` is `prometheus_io_scrape`).
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(injected: bool, annotations: &[(&str, &str)]) -> PodPlan {
        PodPlan {
            name: "reviews-v1-abc".into(),
            namespace: "default".into(),
            workload: "reviews-v1".into(),
            ip: Ipv4Addr::new(198, 18, 0, 11),
            labels: BTreeMap::from([("app".into(), "reviews".into())]),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            service_account: "default".into(),
            injected,
            control_plane: "default".into(),
            tproxy: false,
            gateway: false,
            containers: Vec::new(),
            revision: String::new(),
            grace: Duration::from_secs(1),
            terminating: false,
        }
    }

    fn labels(target: &Target) -> Value {
        serde_json::from_str::<Value>(&target_file(std::slice::from_ref(target))).expect("JSON")[0]
            ["labels"]
            .clone()
    }

    #[test]
    fn a_sidecar_is_scraped_on_the_proxys_merged_port() {
        let meta = labels(&Target::of_pod(&pod(true, &[]), true));
        assert_eq!(
            meta["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
            "true"
        );
        assert_eq!(
            meta["__meta_kubernetes_pod_annotation_prometheus_io_port"],
            "15020"
        );
        assert_eq!(
            meta["__meta_kubernetes_pod_annotation_prometheus_io_path"],
            "/stats/prometheus"
        );
        assert_eq!(meta["__meta_kubernetes_pod_label_app"], "reviews");
        assert_eq!(meta["__meta_kubernetes_pod_labelpresent_app"], "true");
        assert_eq!(meta["__meta_kubernetes_pod_ip"], "198.18.0.11");
        assert_eq!(meta["__meta_kubernetes_namespace"], "default");
    }

    #[test]
    fn a_pod_that_turns_merging_off_keeps_its_own_annotations() {
        let own = [
            ("prometheus.istio.io/merge-metrics", "false"),
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9102"),
        ];
        let meta = labels(&Target::of_pod(&pod(true, &own), true));
        assert_eq!(
            meta["__meta_kubernetes_pod_annotation_prometheus_io_port"],
            "9102"
        );
        let plain = labels(&Target::of_pod(&pod(false, &[]), false));
        assert!(plain["__meta_kubernetes_pod_annotation_prometheus_io_scrape"].is_null());
        assert_eq!(plain["__meta_kubernetes_pod_ready"], "false");
    }

    #[test]
    fn the_config_reads_the_target_file_at_the_chosen_interval() {
        let text = config(
            Path::new("/state/prometheus/targets.json"),
            &Scraping {
                interval: Duration::from_secs(1),
            },
        );
        assert!(text.contains("scrape_interval: 1000ms"));
        assert!(text.contains("scrape_timeout: 1000ms"));
        assert!(text.contains("files: ['/state/prometheus/targets.json']"));
        assert!(text.contains(r"regex: (\d+);((([0-9]+?)(\.|$)){4})"));
        let parsed: Value = serde_saphyr::from_str(&text).expect("YAML");
        assert_eq!(parsed["scrape_configs"][0]["job_name"], "kubernetes-pods");
    }
}
