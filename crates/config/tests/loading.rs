//! Bad input of every kind gets an error naming the file, line, object and field,
//! and never a panic; good input comes back as typed objects.

use std::path::Path;

use oxmesh_config::load::{load_bytes, load_paths};
use oxmesh_config::{Diagnostic, Kind, Resource, Severity};
use oxmesh_testkit::TempDir;

fn load(text: &str) -> oxmesh_config::Loaded {
    load_bytes(Path::new("in.yaml"), text.as_bytes())
}

fn lines(loaded: &oxmesh_config::Loaded, severity: Severity) -> Vec<String> {
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .map(Diagnostic::to_string)
        .collect()
}

fn only_error(text: &str) -> String {
    let loaded = load(text);
    let errors = lines(&loaded, Severity::Error);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
";

#[test]
fn a_valid_object_is_typed() {
    let loaded = load(VS);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let [sourced] = loaded.objects.as_slice() else {
        panic!("one object expected")
    };
    let Resource::VirtualService(vs) = &sourced.object.resource else {
        panic!("a VirtualService")
    };
    assert_eq!(vs.http[0].route[0].destination.subset, "v1");
    assert_eq!(
        sourced.object.reference().to_string(),
        "VirtualService bookinfo/reviews"
    );
    assert_eq!(sourced.object.origin.to_string(), "in.yaml:1");
}

#[test]
fn unknown_field_names_file_line_object_path_and_a_hint() {
    let text = VS.replace("        subset: v1\n", "        subst: v1\n");
    assert_eq!(
        only_error(&text),
        "error: in.yaml:12: VirtualService bookinfo/reviews: spec.http[0].route[0].destination.subst: unknown field \"subst\" (did you mean \"subset\"?)"
    );
}

#[test]
fn wrong_type_points_at_the_field() {
    let text = VS.replace("  hosts: [reviews]", "  hosts: reviews");
    let error = only_error(&text);
    assert!(
        error.starts_with(
            "error: in.yaml:7: VirtualService bookinfo/reviews: spec.hosts: invalid value"
        ),
        "{error}"
    );
}

#[test]
fn missing_required_field_is_named() {
    let text = VS.replace(
        "    - destination:\n        host: reviews\n",
        "    - destination:\n",
    );
    let error = only_error(&text);
    assert!(
        error.contains("spec.http[0].route[0].destination.host: Required value"),
        "{error}"
    );
}

#[test]
fn unknown_enum_value_lists_the_supported_ones() {
    let text = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRCT}
";
    let error = only_error(text);
    assert!(
        error.contains("spec.mtls.mode: Unsupported value: \"STRCT\""),
        "{error}"
    );
    assert!(error.contains("\"STRICT\""), "{error}");
}

#[test]
fn validation_errors_land_on_the_line_of_the_field() {
    let text = VS.replace("subset: v1", "subset: v_1");
    assert_eq!(
        only_error(&text),
        "error: in.yaml:12: VirtualService bookinfo/reviews: spec.http[0].route[0].destination.subset: subset name is invalid: v_1"
    );
}

#[test]
fn missing_api_version_or_kind() {
    assert!(
        only_error("kind: Service\nmetadata: {name: a}\n")
            .contains("in.yaml:1: apiVersion: Required value")
    );
    assert!(only_error("apiVersion: v1\nmetadata: {name: a}\n").contains("kind: Required value"));
    assert!(only_error("apiVersion: v1\nkind: 7\n").contains("kind: must be a non-empty string"));
}

#[test]
fn malformed_yaml_does_not_hide_the_next_document() {
    let text = format!("a: [1\nb: 2\n---\n{VS}");
    let loaded = load(&text);
    let errors = lines(&loaded, Severity::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("error: in.yaml:2: malformed YAML"),
        "{}",
        errors[0]
    );
    assert_eq!(loaded.objects.len(), 1);
    assert_eq!(loaded.objects[0].object.origin.line, Some(4));
}

#[test]
fn not_an_object() {
    assert!(only_error("- a\n- b\n").contains("expected a Kubernetes object"));
    assert!(only_error("just text\n").contains("found a string"));
}

#[test]
fn binary_non_utf8_and_empty_input() {
    let binary = load_bytes(Path::new("x.bin"), b"\x7fELF\0\0\x01");
    assert_eq!(
        lines(&binary, Severity::Error),
        vec!["error: x.bin: binary file (contains NUL bytes); expected YAML or JSON"]
    );
    let latin1 = load_bytes(Path::new("l.yaml"), b"kind: caf\xe9\n");
    assert!(lines(&latin1, Severity::Error)[0].contains("not UTF-8"));
    let empty = load("");
    assert_eq!(
        lines(&empty, Severity::Error),
        vec!["error: in.yaml: empty file: no objects in it"]
    );
    let comments = load("# nothing\n---\n# here\n");
    assert_eq!(lines(&comments, Severity::Error).len(), 1);
}

#[test]
fn duplicates_in_one_file_are_errors() {
    let text = format!("{VS}---\n{VS}");
    let error = only_error(&text);
    assert!(error.contains("in.yaml:14: VirtualService bookinfo/reviews: duplicate object: already defined at in.yaml:1"), "{error}");
}

#[test]
fn lists_are_expanded_and_unread_kinds_skipped() {
    let text = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: reviews}
  spec:
    ports: [{port: 9080, name: http}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata: {name: reader}
";
    let loaded = load(text);
    assert_eq!(loaded.objects.len(), 1);
    assert_eq!(loaded.objects[0].object.kind, Kind::Service);
    let infos = lines(&loaded, Severity::Info);
    assert_eq!(
        infos,
        vec![
            "info: in.yaml:9: skipping ClusterRole (rbac.authorization.k8s.io/v1): not a kind the mesh reads"
        ]
    );
}

#[test]
fn kubernetes_objects_are_lenient_istio_objects_strict() {
    let service = "apiVersion: v1
kind: Service
metadata: {name: a}
spec:
  ports: [{port: 80}]
  someFutureField: true
";
    assert!(load(service).diagnostics.is_empty());
    let istio = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: a}
spec:
  egress: [{hosts: ['./*']}]
  someFutureField: true
";
    assert!(only_error(istio).contains("spec.someFutureField: unknown field"));
    let top = istio.replace("  someFutureField: true\n", "") + "extra: 1\n";
    assert!(only_error(&top).contains("extra: unknown field \"extra\""));
}

#[test]
fn versions_and_kinds_are_checked() {
    let wrong_version = VS.replace("networking.istio.io/v1\n", "networking.istio.io/v2\n");
    assert!(
        only_error(&wrong_version)
            .contains("VirtualService is not served at networking.istio.io/v2")
    );
    let typo = VS.replace("kind: VirtualService", "kind: VirtualServce");
    assert!(only_error(&typo).contains("no kind \"VirtualServce\" in networking.istio.io/v1"));
}

#[test]
fn retired_fields_warn_and_are_dropped() {
    let text = VS.replace("  - route:\n", "  - websocketUpgrade: true\n    route:\n");
    let loaded = load(&text);
    assert!(lines(&loaded, Severity::Error).is_empty());
    assert_eq!(
        lines(&loaded, Severity::Warning),
        vec![
            "warning: in.yaml:9: VirtualService bookinfo/reviews: spec.http[0].websocketUpgrade: field is retired in Istio and is ignored: WebSocket upgrades are always allowed; remove the field"
        ]
    );
    assert_eq!(loaded.objects.len(), 1);
}

#[test]
fn json_reads_like_yaml() {
    let json = r#"{
  "apiVersion": "networking.istio.io/v1",
  "kind": "DestinationRule",
  "metadata": {"name": "reviews"},
  "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
           "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}
}"#;
    let loaded = load_bytes(Path::new("dr.json"), json.as_bytes());
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let bad = json.replace("\"v1\", \"labels\"", "\"v1\", \"lables\"");
    let loaded = load_bytes(Path::new("dr.json"), bad.as_bytes());
    assert!(
        lines(&loaded, Severity::Error)[0].starts_with(
            "error: dr.json:5: DestinationRule default/reviews: spec.subsets[0].lables"
        )
    );
}

#[test]
fn directories_of_many_files_load_in_order() {
    let dir = TempDir::new("many");
    for i in 0..2000 {
        let text = VS.replace("name: reviews", &format!("name: r{i:04}"));
        std::fs::write(dir.0.join(format!("vs-{i:04}.yaml")), text).expect("write");
    }
    std::fs::write(dir.0.join("notes.txt"), "not yaml").expect("write");
    std::fs::create_dir(dir.0.join(".hidden")).expect("mkdir");
    std::fs::write(dir.0.join(".hidden/bad.yaml"), "{").expect("write");
    let loaded = load_paths(std::slice::from_ref(&dir.0));
    assert!(
        loaded.diagnostics.is_empty(),
        "{:?}",
        &loaded.diagnostics[..1]
    );
    assert_eq!(loaded.objects.len(), 2000);
    assert_eq!(loaded.objects[0].object.name(), "r0000");
    let missing = load_paths(&[dir.0.join("nope.yaml")]);
    assert!(lines(&missing, Severity::Error)[0].contains("nope.yaml: cannot read"));
}
