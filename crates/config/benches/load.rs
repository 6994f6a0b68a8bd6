//! Load + validate throughput over one 10,000-object file (bench/RESULTS.md).
//!
//! The mix is what a mesh of 1,000 services holds: per service a Service, a
//! Deployment, a VirtualService, a DestinationRule, an AuthorizationPolicy, a
//! PeerAuthentication, a ServiceEntry, a Sidecar, a Gateway and a Telemetry.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;

const SERVICES: usize = 1_000;
const KINDS_PER_SERVICE: usize = 10;

fn objects_for(i: usize) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: ns-{ns}, labels: {{app: svc-{i}}}}}
spec:
  selector: {{app: svc-{i}}}
  ports: [{{name: http, port: 9080, targetPort: 9080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: svc-{i}-v1, namespace: ns-{ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: svc-{i}, version: v1}}}}
  template:
    metadata: {{labels: {{app: svc-{i}, version: v1}}}}
    spec:
      serviceAccountName: svc-{i}
      containers:
      - name: app
        image: docker.io/istio/examples-bookinfo-reviews-v1:1.20.3
        ports: [{{containerPort: 9080}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: ns-{ns}}}
spec:
  hosts: [svc-{i}]
  http:
  - match:
    - headers: {{end-user: {{exact: jason}}}}
      uri: {{prefix: /api/v1}}
    route:
    - destination: {{host: svc-{i}, subset: v2}}
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}}
  - route:
    - destination: {{host: svc-{i}, subset: v1}}
      weight: 90
    - destination: {{host: svc-{i}, subset: v2}}
      weight: 10
    timeout: 10s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}, namespace: ns-{ns}}}
spec:
  host: svc-{i}
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 100}}, http: {{http2MaxRequests: 1000}}}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
    tls: {{mode: ISTIO_MUTUAL}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: svc-{i}, namespace: ns-{ns}}}
spec:
  selector: {{matchLabels: {{app: svc-{i}}}}}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/ns-{ns}/sa/frontend"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/api/{{*}}/items"]}}}}]
    when: [{{key: "request.headers[x-tenant]", values: [acme]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: svc-{i}, namespace: ns-{ns}}}
spec:
  selector: {{matchLabels: {{app: svc-{i}}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls: {{"9090": {{mode: PERMISSIVE}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-{i}, namespace: ns-{ns}}}
spec:
  hosts: [api-{i}.example.com]
  ports: [{{number: 443, name: https, protocol: TLS}}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: svc-{i}, namespace: ns-{ns}}}
spec:
  workloadSelector: {{labels: {{app: svc-{i}}}}}
  egress: [{{hosts: ["./*", "istio-system/*"]}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw-{i}, namespace: ns-{ns}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["svc-{i}.example.com"]
    tls: {{mode: SIMPLE, credentialName: svc-{i}-cert}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: svc-{i}, namespace: ns-{ns}}}
spec:
  tracing: [{{randomSamplingPercentage: 10}}]
---
"#,
        ns = i % 50
    )
}

fn bench_load(c: &mut Criterion) {
    let text: String = (0..SERVICES).map(objects_for).collect();
    let objects = SERVICES * KINDS_PER_SERVICE;
    let check = oxmesh_config::load::load_bytes(Path::new("mesh.yaml"), text.as_bytes());
    assert!(
        check.diagnostics.is_empty(),
        "{:?}",
        check.diagnostics.first()
    );
    assert_eq!(check.objects.len(), objects);

    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.throughput(Throughput::Elements(objects as u64));
    group.bench_function("load_and_validate_10k_objects", |b| {
        b.iter(|| {
            oxmesh_config::load::load_bytes(Path::new("mesh.yaml"), black_box(text.as_bytes()))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
