//! `oxmesh ca root|sign|inspect`: the mesh CA from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use oxmesh_identity::ca::{Authority, Lifetimes};
use oxmesh_identity::certificate::pem_certificates;
use oxmesh_identity::csr::SigningRequest;
use oxmesh_identity::token::TokenAuthority;
use oxmesh_identity::{SpiffeId, TrustDomain};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the root certificate(s) PEM.
    Root {
        /// The control plane's state directory (its self-signed CA).
        #[arg(long, conflicts_with = "ca_dir", required_unless_present = "ca_dir")]
        state_dir: Option<PathBuf>,
        /// A CA directory in Istio's cacerts layout.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// Sign a CSR offline and print the chain, leaf first.
    Sign {
        /// A CA directory in Istio's cacerts layout (or a state dir's `ca/`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The PEM certificate signing request.
        #[arg(long)]
        csr: PathBuf,
        /// The identity to certify; the CSR must name exactly this SPIFFE id.
        #[arg(long)]
        identity: SpiffeId,
        /// Certificate lifetime (Go syntax: 24h, 90m); at most 90 days.
        #[arg(long, default_value = "24h")]
        ttl: oxmesh_config::duration::Duration,
    },
    /// Describe the certificates in a PEM file.
    Inspect { file: PathBuf },
    /// Mint a bearer token the control plane at --state-dir accepts for a service
    /// account (what Kubernetes' projected tokens are, without Kubernetes).
    Token {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, short = 'n')]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: TrustDomain,
        #[arg(long, default_value = oxmesh_identity::token::CA_AUDIENCE)]
        audience: String,
        #[arg(long, default_value = "24h")]
        ttl: oxmesh_config::duration::Duration,
        /// Bind the token to a node, as Kubernetes binds a pod's token: a node
        /// proxy's token must name its node to get its pods' certificates.
        #[arg(long)]
        node: Option<String>,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Root { state_dir, ca_dir } => {
            let ca = match (state_dir, ca_dir) {
                (Some(state), _) => Authority::existing(&state, Lifetimes::default())
                    .with_context(|| {
                        format!(
                            "no usable CA in {}: has `oxmesh control --state-dir` run there?",
                            state.display()
                        )
                    })?,
                (None, Some(dir)) => Authority::plug_in(&dir, Lifetimes::default())?,
                (None, None) => bail!("give --state-dir or --ca-dir"),
            };
            print!("{}", ca.roots_pem());
        }
        Command::Sign {
            ca_dir,
            csr,
            identity,
            ttl,
        } => {
            let ca = Authority::plug_in(&ca_dir, Lifetimes::default())?;
            let pem = std::fs::read_to_string(&csr)
                .with_context(|| format!("cannot read {}", csr.display()))?;
            let request =
                SigningRequest::from_pem(&pem).with_context(|| format!("{}", csr.display()))?;
            request
                .check_identity(&identity)
                .with_context(|| format!("{}: refused", csr.display()))?;
            let chain = ca.sign(&request, &identity, Some(ttl.as_std()))?;
            print!("{}", chain.to_pem_elements().concat());
        }
        Command::Inspect { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let certs = pem_certificates(&bytes).with_context(|| format!("{}", file.display()))?;
            print!(
                "{}",
                oxmesh_identity::inspect::describe(&certs, std::time::SystemTime::now())?
            );
        }
        Command::Token {
            state_dir,
            namespace,
            service_account,
            trust_domain,
            audience,
            ttl,
            node,
        } => {
            let tokens = TokenAuthority::load_or_create(&state_dir, trust_domain)?;
            let token = tokens.mint_on_node(
                &namespace,
                &service_account,
                &audience,
                ttl.as_std(),
                node.as_deref(),
            )?;
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
