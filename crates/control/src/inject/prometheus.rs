//! Prometheus scraping of an injected pod, as Istio's metrics merging sets it
//! up: the pod's `prometheus.io/*` annotations point at the proxy's 15020,
//! which serves the proxy's metrics and the app's; the app's own settings move
//! to `ISTIO_PROMETHEUS_ANNOTATIONS` so the proxy knows where to fetch them. A
//! pod that says `prometheus.io/scrape: "false"` is left as it is.

use serde_json::{Map, Value, json};

use super::annotations::Annotations;

/// The environment variable the proxy reads the app's settings from.
pub const ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
const KEYS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "scrape"),
    ("prometheus.io/port", "port"),
    ("prometheus.io/path", "path"),
];

/// Points the annotations at the proxy; returns the app's own, as the
/// environment variable's JSON, when it had any.
pub fn redirect(metadata: &mut Value) -> Option<String> {
    let notes = Annotations::of(metadata);
    let off = |name: &str| {
        notes
            .get(name)
            .is_some_and(|s| s.eq_ignore_ascii_case("false"))
    };
    if off("prometheus.io/scrape") || off("prometheus.istio.io/merge-metrics") {
        return None;
    }
    let mut originals = Map::new();
    // Already the proxy's port: there is no app endpoint to remember.
    if notes.get("prometheus.io/port") != Some("15020") {
        for (annotation, key) in KEYS {
            if let Some(value) = notes.get(annotation) {
                originals.insert(key.to_owned(), json!(value));
            }
        }
    }
    if !metadata.is_object() {
        *metadata = json!({});
    }
    if !metadata.get("annotations").is_some_and(Value::is_object) {
        metadata["annotations"] = json!({});
    }
    let annotations = &mut metadata["annotations"];
    annotations["prometheus.io/scrape"] = json!("true");
    annotations["prometheus.io/port"] = json!("15020");
    annotations["prometheus.io/path"] = json!("/stats/prometheus");
    (!originals.is_empty()).then(|| Value::Object(originals).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_settings_move_to_the_proxy() {
        let mut metadata =
            json!({"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9102"}});
        let saved = redirect(&mut metadata).expect("the app's settings");
        assert_eq!(
            serde_json::from_str::<Value>(&saved).expect("JSON"),
            json!({"scrape": "true", "port": "9102"})
        );
        assert_eq!(metadata["annotations"]["prometheus.io/port"], "15020");
        assert_eq!(
            metadata["annotations"]["prometheus.io/path"],
            "/stats/prometheus"
        );

        let mut plain = json!({});
        assert_eq!(redirect(&mut plain), None);
        assert_eq!(plain["annotations"]["prometheus.io/scrape"], "true");

        for opt_out in ["prometheus.io/scrape", "prometheus.istio.io/merge-metrics"] {
            let mut off = json!({"annotations": {opt_out: "false"}});
            let before = off.clone();
            assert_eq!(redirect(&mut off), None);
            assert_eq!(off, before, "a pod that opts out is left alone");
        }
        let mut copied =
            json!({"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "15020"}});
        assert_eq!(redirect(&mut copied), None, "never told to scrape itself");
    }
}
