//! Fault injection (Envoy's `envoy.filters.http.fault`, as VirtualService `fault`
//! produces it): a fixed delay and an HTTP or gRPC abort, each for a share of
//! requests.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

pub const FILTER: &str = "envoy.filters.http.fault";
const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// A share of requests, in millionths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share(pub u32);

impl Share {
    /// Whether this request is one of them.
    pub fn hits(self) -> bool {
        self.0 >= 1_000_000 || (crate::balance::random_u64() % 1_000_000) < u64::from(self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortWith {
    Http(u16),
    /// A gRPC status, answered as a trailers-only response.
    Grpc(u32),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<(Duration, Share)>,
    pub abort: Option<(AbortWith, Share)>,
}

impl Fault {
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

pub fn convert(any: &Any) -> Result<Fault, String> {
    if any.type_url != TYPE_URL {
        return Err(format!("{FILTER}: unexpected config type {}", any.type_url));
    }
    let f = HttpFault::decode(any.value.as_slice()).map_err(|e| format!("{FILTER}: {e}"))?;
    if !f.headers.is_empty() || !f.downstream_nodes.is_empty() || !f.upstream_cluster.is_empty() {
        return Err("fault matching on headers, nodes or clusters is not supported".to_owned());
    }
    let delay = match f.delay {
        Some(d) => match d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fixed)) => {
                Some((super::duration(&fixed)?, share(d.percentage)?))
            }
            _ => return Err("only fixed fault delays are supported".to_owned()),
        },
        None => None,
    };
    let abort = match f.abort {
        Some(a) => {
            let with = match a.error_type {
                Some(ErrorType::HttpStatus(s)) => AbortWith::Http(
                    u16::try_from(s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| format!("fault abort status {s} is not an HTTP status"))?,
                ),
                Some(ErrorType::GrpcStatus(s)) => AbortWith::Grpc(s),
                _ => return Err("header-controlled fault aborts are not supported".to_owned()),
            };
            Some((with, share(a.percentage)?))
        }
        None => None,
    };
    Ok(Fault { delay, abort })
}

/// Envoy's default when no percentage is given is all requests.
pub(crate) fn share(p: Option<FractionalPercent>) -> Result<Share, String> {
    let Some(p) = p else {
        return Ok(Share(1_000_000));
    };
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => return Err(format!("unknown percentage denominator {}", p.denominator)),
    };
    Ok(Share(p.numerator.saturating_mul(scale).min(1_000_000)))
}
