//! `oxmesh demo`: the sample apps `oxmesh up` runs for bookinfo's images and for
//! the echo server.

use std::process::ExitCode;

use oxmesh_demo::bookinfo::{self, Role};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Answers every request with what it received, as JSON.
    Echo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Istio's tcp-echo: each line comes back with a prefix.
    TcpEcho {
        #[arg(long, default_value_t = 9000)]
        port: u16,
        #[arg(long, default_value = "hello")]
        prefix: String,
    },
    /// A gRPC greeter (helloworld.Greeter) with a server stream, in plaintext.
    Greeter {
        #[arg(long, default_value_t = 50051)]
        port: u16,
    },
    /// One of bookinfo's services: productpage, details, reviews or ratings.
    Bookinfo {
        service: String,
        /// For reviews: v1 (no stars), v2 (black) or v3 (red).
        #[arg(long, default_value = "v1")]
        version: String,
        #[arg(long, default_value_t = bookinfo::PORT)]
        port: u16,
    },
    /// A load client for tests (fortio's job): a fixed rate for a fixed time;
    /// prints a JSON report of statuses, failures and which backend answered.
    Load {
        url: http::Uri,
        /// Requests per second, over all connections; 0: each connection
        /// sends its next request as soon as the last is answered.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// How long, e.g. 30s or 500ms.
        #[arg(long, default_value = "10s")]
        duration: oxmesh_config::duration::Duration,
        /// Stop after this many requests (fortio's `-n`).
        #[arg(long)]
        requests: Option<u64>,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// keepalive, new-connection or http2.
        #[arg(long, default_value = "keepalive")]
        mode: oxmesh_demo::load::Mode,
        /// A field of the JSON answers naming the backend (the echo app's
        /// `server`), counted per value.
        #[arg(long)]
        marker: Option<String>,
        /// How long one request may take.
        #[arg(long, default_value = "5s")]
        timeout: oxmesh_config::duration::Duration,
    },
    /// An external authorizer for CUSTOM policies, as Istio's ext-authz
    /// sample: allows requests with `x-ext-authz: allow`, over HTTP and gRPC.
    ExtAuthz {
        #[arg(long, default_value_t = 8000)]
        http_port: u16,
        #[arg(long, default_value_t = 9000)]
        grpc_port: u16,
        /// Deny connections (TCP checks) from identities ending with this.
        #[arg(long)]
        deny_principal_suffix: Vec<String>,
    },
    /// A trace collector, in place of the OpenTelemetry Collector of Istio's
    /// sample and of its Zipkin addon: OTLP over gRPC and HTTP and Zipkin's
    /// JSON in, one JSON line per span out, and Zipkin's query API.
    OtelCollector {
        #[arg(long, default_value_t = 4317)]
        grpc_port: u16,
        #[arg(long, default_value_t = 4318)]
        http_port: u16,
        #[arg(long, default_value_t = 9411)]
        zipkin_port: u16,
    },
    /// A rate limit service (`envoy.service.ratelimit.v3`) for global rate
    /// limits, in place of the envoyproxy/ratelimit of Istio's sample.
    Ratelimit {
        #[arg(long, default_value_t = 8081)]
        port: u16,
        #[arg(long, default_value = "ratelimit")]
        domain: String,
        /// `KEY[=VALUE][,KEY[=VALUE]...]:LIMIT/second|minute|hour|day`; a
        /// rule naming the value wins over one that does not.
        #[arg(long = "rule")]
        rules: Vec<oxmesh_demo::rate_limit::Rule>,
    },
    /// Tokens for trying RequestAuthentication, as Istio's `gen-jwt.py`:
    /// signed with the demo key (issuer `testing@secure.istio.io`), which is
    /// in oxmesh's source and so for demos only. `--jwks` prints the key set
    /// to put in a RequestAuthentication's `jwks`.
    Jwt {
        /// Print the demo key set instead of a token.
        #[arg(long)]
        jwks: bool,
        /// The subject (default: the issuer, as Istio's demo token).
        #[arg(long)]
        sub: Option<String>,
        /// More claims, as a JSON object (`{"groups": ["group1"]}`).
        #[arg(long)]
        claims: Option<String>,
        /// Lifetime from now.
        #[arg(long, default_value = "1h")]
        expires: oxmesh_config::duration::Duration,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        Command::Echo { port } => runtime.block_on(oxmesh_demo::echo::run(port))?,
        Command::TcpEcho { port, prefix } => {
            runtime.block_on(oxmesh_demo::tcp_echo::run(port, prefix))?
        }
        Command::Greeter { port } => runtime.block_on(oxmesh_demo::greeter::run(port))?,
        Command::Ratelimit {
            port,
            domain,
            rules,
        } => runtime.block_on(oxmesh_demo::rate_limit::run(port, domain, rules))?,
        Command::Bookinfo {
            service,
            version,
            port,
        } => {
            let role = Role::parse(&service, &version).ok_or_else(|| {
                anyhow::anyhow!("{service:?}: use productpage, details, reviews or ratings")
            })?;
            runtime.block_on(bookinfo::run(role, port))?;
        }
        Command::Load {
            url,
            rate,
            duration,
            requests,
            connections,
            mode,
            marker,
            timeout,
        } => {
            let options = oxmesh_demo::load::Options {
                url,
                rate,
                duration: duration.as_std(),
                requests,
                connections,
                mode,
                marker,
                timeout: timeout.as_std(),
            };
            let report = runtime.block_on(oxmesh_demo::load::run(options))?;
            println!("{report}");
        }
        Command::ExtAuthz {
            http_port,
            grpc_port,
            deny_principal_suffix,
        } => runtime.block_on(oxmesh_demo::ext_authz::run(
            http_port,
            grpc_port,
            deny_principal_suffix,
        ))?,
        Command::OtelCollector {
            grpc_port,
            http_port,
            zipkin_port,
        } => runtime.block_on(oxmesh_demo::otel_collector::run(
            grpc_port,
            http_port,
            zipkin_port,
        ))?,
        Command::Jwt {
            jwks,
            sub,
            claims,
            expires,
        } => println!("{}", jwt(jwks, sub, claims, expires)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn jwt(
    jwks: bool,
    sub: Option<String>,
    claims: Option<String>,
    expires: oxmesh_config::duration::Duration,
) -> anyhow::Result<String> {
    let issuer = oxmesh_demo::jwt::Issuer::demo()?;
    if jwks {
        return Ok(issuer.jwks());
    }
    let mut extra: serde_json::Value = match claims {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("--claims is not a JSON object: {e}"))?,
        None => serde_json::json!({}),
    };
    let Some(fields) = extra.as_object_mut() else {
        anyhow::bail!("--claims must be a JSON object");
    };
    if let Some(sub) = sub {
        fields.insert("sub".to_owned(), sub.into());
    }
    let mut claims = issuer.claims(&extra);
    if extra.get("exp").is_none() {
        let iat = claims["iat"].as_u64().unwrap_or_default();
        claims["exp"] = (iat + expires.as_std().as_secs()).into();
    }
    Ok(issuer.sign(issuer.default_algorithm(), &claims)?)
}
