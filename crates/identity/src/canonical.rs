//! Istio's canonical service and revision: the name telemetry knows a
//! workload by (metric labels `*_canonical_service` / `*_canonical_revision`,
//! span tags, the dashboard's nodes), taken from the pod's labels with
//! Istio's fallbacks.

/// Labels naming the canonical service, most specific first.
pub const SERVICE_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];

/// Labels naming the canonical revision, most specific first.
pub const REVISION_LABELS: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

/// What a revision is without any of its labels.
pub const DEFAULT_REVISION: &str = "latest";

/// The first non-empty value among `keys`, by `label`.
pub fn first_label<'a>(keys: &[&str], label: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    keys.iter().find_map(|k| label(k).filter(|v| !v.is_empty()))
}

/// The canonical service from the labels; `None` when none names it (Istio
/// then uses the workload's name).
pub fn service<'a>(label: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    first_label(&SERVICE_LABELS, label)
}

/// The canonical revision from the labels, else `latest`.
pub fn revision<'a>(label: impl Fn(&str) -> Option<&'a str>) -> &'a str {
    first_label(&REVISION_LABELS, label).unwrap_or(DEFAULT_REVISION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_most_specific_label_wins_and_empty_ones_do_not_count() {
        let labels = BTreeMap::from([
            ("app", "reviews"),
            ("app.kubernetes.io/name", ""),
            ("version", "v2"),
        ]);
        let label = |k: &str| labels.get(k).copied();
        assert_eq!(service(label), Some("reviews"));
        assert_eq!(revision(label), "v2");
        let none = |_: &str| None;
        assert_eq!(service(none), None);
        assert_eq!(revision(none), "latest");
    }
}
