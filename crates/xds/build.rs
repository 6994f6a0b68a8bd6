//! Compiles Istio's protos (pure Rust protox: no protoc needed), and a descriptor
//! set of the Envoy types the control plane emits, so they can be shown as JSON.

use std::path::{Path, PathBuf};

use prost::Message;

/// The Envoy messages `oxmesh proxy-config` and the golden tests show; their
/// imports come along.
const ENVOY_PROTOS: &[&str] = &[
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/original_src/v3/original_src.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/path/match/uri_template/v3/uri_template_match.proto",
    "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
    "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/filters/network/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/access_loggers/filters/cel/v3/cel.proto",
    "envoy/extensions/formatter/req_without_query/v3/req_without_query.proto",
    "envoy/config/trace/v3/opentelemetry.proto",
    "envoy/config/trace/v3/zipkin.proto",
    "udpa/type/v1/typed_struct.proto",
    "xds/type/v3/typed_struct.proto",
    "stats/config.proto",
];

/// Compiled apart from [`ENVOY_PROTOS`] and merged after: they name
/// `common.ratelimit.v3` relative to their package, which the fault filter's
/// `envoy.extensions.filters.common` would shadow in one compilation (protoc
/// resolves names the same way; Envoy never loads the two together).
const RATE_LIMIT_PROTOS: &[&str] = &[
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/ratelimit/v3/rate_limit.proto",
    "envoy/service/ratelimit/v3/rls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(
        [
            "istio/v1/auth/ca.proto",
            "istio/workload/workload.proto",
            "istio/security/authorization.proto",
            "istio/zds/zds.proto",
            "stats/config.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        // Maps in key order: a resource's version is the hash of its
        // encoding, which a hash map would change from one push to the next.
        .btree_map(".istio.workload")
        .build_server(true)
        .build_client(true)
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto");

    let root = envoy_proto_dir()?;
    // Our own protos first: the TypedStruct wrappers are not in envoy-types.
    let own = PathBuf::from("proto");
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
    ]
    .map(|d| root.join(d));
    let includes: Vec<PathBuf> = std::iter::once(own).chain(includes).collect();
    let mut envoy = protox::compile(ENVOY_PROTOS, &includes)?;
    let rate_limit = protox::compile(RATE_LIMIT_PROTOS, &includes)?;
    for file in rate_limit.file {
        if !envoy.file.iter().any(|f| f.name == file.name) {
            envoy.file.push(file);
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptors.bin");
    std::fs::write(out, envoy.encode_to_vec())?;
    println!("cargo:rerun-if-env-changed=OXMESH_ENVOY_PROTO_DIR");
    Ok(())
}

/// The `proto/` directory the `envoy-types` crate ships: `OXMESH_ENVOY_PROTO_DIR`,
/// or the crate's source in cargo's registry, at the version Cargo.lock names.
fn envoy_proto_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("OXMESH_ENVOY_PROTO_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let lock_path = manifest.join("../../Cargo.lock");
    let lock =
        std::fs::read_to_string(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .ok_or("Cargo.lock names no envoy-types version")?;
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map_err(|_| "neither CARGO_HOME nor HOME is set")?;
    let sources = cargo_home.join("registry/src");
    let wanted = format!("envoy-types-{version}");
    std::fs::read_dir(&sources)
        .map_err(|e| format!("{}: {e}", sources.display()))?
        .flatten()
        .map(|registry| registry.path().join(&wanted).join("proto"))
        .find(|p| p.is_dir())
        .ok_or_else(|| {
            format!(
                "{wanted}/proto not found under {}; set OXMESH_ENVOY_PROTO_DIR",
                sources.display()
            )
        })
}
