//! `oxmesh control`: run the control plane until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use oxmesh_control::control_plane::{ControlPlane, Limits, Options};
use oxmesh_control::mesh_config::{MeshConfig, OutboundTrafficPolicy};
use oxmesh_identity::TrustDomain;
use oxmesh_identity::ca::Lifetimes;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the CA, the token key and other state kept across restarts.
    #[arg(long)]
    state_dir: PathBuf,
    /// Use a plug-in CA from this directory (Istio's cacerts layout) instead of a
    /// self-signed root.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The namespace the control plane runs in: names its identity and DNS names.
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// CA and xDS over TLS.
    #[arg(long, default_value_t = 15012)]
    secure_port: u16,
    /// xDS in plaintext.
    #[arg(long, default_value_t = 15010)]
    xds_port: u16,
    /// Metrics (`/metrics`) and debug endpoints (`/debug/syncz`, `/debug/configz`,
    /// `/debug/config_dump`).
    #[arg(long, default_value_t = 15014)]
    monitoring_port: u16,
    /// The admission webhooks over HTTPS: `/inject` (sidecar injection) and
    /// `/validate`.
    #[arg(long, default_value_t = 15017)]
    webhook_port: u16,
    /// The image injected pods run `oxmesh` from (the proxy and the iptables step).
    #[arg(long)]
    injection_image: Option<String>,
    /// Directory of mesh config (YAML/JSON, any depth), watched for changes,
    /// instead of the cluster (even in a pod).
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Watch this kubeconfig's cluster for config and review tokens with it.
    /// In a pod the cluster it runs in is used without this flag.
    #[arg(long, conflicts_with = "config_dir")]
    kubeconfig: Option<PathBuf>,
    /// The control plane's revision (`istio.io/rev`): injected proxies dial
    /// `istiod-<revision>`. `default` is the unnamed one.
    #[arg(long, default_value = "default")]
    revision: String,
    /// Where traffic to hosts the mesh does not know goes: ALLOW_ANY or REGISTRY_ONLY.
    #[arg(long, default_value = "ALLOW_ANY", value_parser = parse_outbound_policy)]
    outbound_traffic_policy: OutboundTrafficPolicy,
    /// Default lifetime of workload certificates.
    #[arg(long, default_value = "24h")]
    workload_cert_ttl: oxmesh_config::duration::Duration,
    /// Longest lifetime a workload may ask for (capped at 90 days).
    #[arg(long, default_value = "2160h")]
    max_workload_cert_ttl: oxmesh_config::duration::Duration,
    /// PEM certificates trusted, beside the system's roots, when fetching a
    /// RequestAuthentication's `jwksUri` (Istio's `/cacerts/extra.pem`, read
    /// from there when it exists and this flag is not given).
    #[arg(long)]
    jwks_extra_roots: Option<PathBuf>,
    /// How often fetched JWKS are refreshed (Istio's
    /// `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`, read when this flag is not given).
    #[arg(long)]
    jwks_refresh_interval: Option<oxmesh_config::duration::Duration>,
    /// xDS streams served at once (both ports); more are refused with
    /// RESOURCE_EXHAUSTED and the proxy retries.
    #[arg(long, default_value_t = Limits::default().xds_streams, value_parser = limit)]
    max_xds_streams: usize,
    /// Certificate requests in hand at once; more are refused with
    /// RESOURCE_EXHAUSTED and the proxy retries.
    #[arg(long, default_value_t = Limits::default().csrs_in_flight, value_parser = limit)]
    max_csrs_in_flight: usize,
    /// A Prometheus (`http://host:port`) scraping the mesh that the dashboard
    /// reads traffic from; without it, the dashboard reads the proxies'
    /// metrics itself while someone looks.
    #[arg(long)]
    prometheus: Option<String>,
    /// Accounts (`namespace/name`, comma-separated) whose node proxies may
    /// ask for the certificates of pods on their own node (istiod's
    /// `CA_TRUSTED_NODE_ACCOUNTS`; empty trusts none).
    #[arg(long, env = "CA_TRUSTED_NODE_ACCOUNTS", default_value = oxmesh_control::node_authorizer::DEFAULT_TRUSTED)]
    trusted_node_accounts: String,
}

/// A limit of at least one, and within what a semaphore holds.
fn limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("{text:?}: a number from 1 to 1000000")),
    }
}

/// Where istiod reads extra roots for JWKS fetches.
const ISTIO_EXTRA_ROOTS: &str = "/cacerts/extra.pem";

fn jwks_settings(
    extra_roots: Option<PathBuf>,
    refresh: Option<oxmesh_config::duration::Duration>,
) -> anyhow::Result<oxmesh_control::jwks::Settings> {
    let refresh = match (refresh, std::env::var("PILOT_JWT_PUB_KEY_REFRESH_INTERVAL")) {
        (Some(flag), _) => flag.as_std(),
        (None, Ok(env)) => env
            .parse::<oxmesh_config::duration::Duration>()
            .map_err(|e| anyhow::anyhow!("PILOT_JWT_PUB_KEY_REFRESH_INTERVAL: {e}"))?
            .as_std(),
        (None, Err(_)) => oxmesh_control::jwks::DEFAULT_REFRESH,
    };
    let istio_default = PathBuf::from(ISTIO_EXTRA_ROOTS);
    let extra_roots = extra_roots.or_else(|| istio_default.exists().then_some(istio_default));
    Ok(oxmesh_control::jwks::Settings {
        extra_roots,
        refresh,
    })
}

/// istiod's `DISABLE_SHADOW_HOST_SUFFIX` (default true: mirrored requests
/// keep their host); `false` brings back Envoy's `-shadow`.
fn shadow_host_suffix() -> anyhow::Result<bool> {
    match std::env::var("DISABLE_SHADOW_HOST_SUFFIX") {
        Err(_) => Ok(false),
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            // Go's ParseBool, as istiod reads it.
            "true" | "t" | "1" => Ok(false),
            "false" | "f" | "0" => Ok(true),
            _ => anyhow::bail!("DISABLE_SHADOW_HOST_SUFFIX={v:?}: use true or false"),
        },
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut injection = injection(args.injection_image, &args.namespace, &args.revision);
        // An explicit --config-dir wins over the cluster a pod happens to run
        // in (clap refuses it beside --kubeconfig).
        let kubernetes = match &args.config_dir {
            Some(_) => None,
            None => oxmesh_control::kube_api::connect(args.kubeconfig.as_deref()).await?,
        };
        if let Some(client) = &kubernetes {
            injection.native_sidecars =
                oxmesh_control::kube_api::supports_native_sidecars(client).await;
        }
        let options = Options {
            state_dir: args.state_dir,
            ca_dir: args.ca_dir,
            trust_domain: args.trust_domain.clone(),
            lifetimes: Lifetimes::new(
                args.workload_cert_ttl.as_std(),
                args.max_workload_cert_ttl.as_std(),
            ),
            namespace: args.namespace,
            revision: args.revision,
            secure_addr: SocketAddr::new(args.bind, args.secure_port),
            xds_addr: SocketAddr::new(args.bind, args.xds_port),
            monitoring_addr: SocketAddr::new(args.bind, args.monitoring_port),
            webhook_addr: SocketAddr::new(args.bind, args.webhook_port),
            injection,
            kubernetes,
            config_dir: args.config_dir,
            mesh: MeshConfig {
                trust_domain: args.trust_domain.clone(),
                outbound_traffic_policy: args.outbound_traffic_policy,
                shadow_host_suffix: shadow_host_suffix()?,
                ..MeshConfig::default()
            },
            jwks: jwks_settings(args.jwks_extra_roots, args.jwks_refresh_interval)?,
            limits: Limits {
                xds_streams: args.max_xds_streams,
                csrs_in_flight: args.max_csrs_in_flight,
            },
            dashboard_prometheus: args.prometheus,
            trusted_node_accounts: args.trusted_node_accounts,
        };
        let control_plane = ControlPlane::start(options).await?;
        crate::signal::terminated().await;
        tracing::info!("shutting down");
        control_plane.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Injected proxies dial this control plane by its Service name, which carries
/// the revision as Istio's does (`istiod-canary`).
fn injection(
    image: Option<String>,
    namespace: &str,
    revision: &str,
) -> oxmesh_control::inject::Settings {
    let defaults = oxmesh_control::inject::Settings::default();
    let service = oxmesh_control::control_plane::service_name(revision);
    oxmesh_control::inject::Settings {
        image: image.unwrap_or(defaults.image.clone()),
        discovery_address: format!("{service}.{namespace}.svc:15012"),
        ..defaults
    }
}

fn parse_outbound_policy(text: &str) -> Result<OutboundTrafficPolicy, String> {
    match text {
        "ALLOW_ANY" => Ok(OutboundTrafficPolicy::AllowAny),
        "REGISTRY_ONLY" => Ok(OutboundTrafficPolicy::RegistryOnly),
        other => Err(format!("{other:?} is not ALLOW_ANY or REGISTRY_ONLY")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_at_least_one_and_bounded() {
        assert_eq!(limit("20"), Ok(20));
        for bad in ["0", "-1", "1000001", "many"] {
            assert!(limit(bad).is_err(), "{bad}");
        }
    }
}
