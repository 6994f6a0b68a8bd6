//! A connection manager's `tracing`: sampling shares, custom tags, the path
//! length kept in `http.url`, and the tracer (`provider`): Envoy's
//! OpenTelemetry tracer (OTLP over gRPC or HTTP) or its Zipkin tracer (v2
//! JSON). Without a provider requests are still decided and marked, as with
//! Istio's default install, but no span is made.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, HttpService, http_uri};
use envoy_types::pb::envoy::config::trace::v3::{
    OpenTelemetryConfig, ZipkinConfig, zipkin_config,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as EnvoyTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag as EnvoyTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use http::{HeaderName, HeaderValue};
use prost::Message;

use crate::trace::reporter::HttpCollector;
use crate::trace::{Collector, Reporter, ReporterConfig, Sampling};

const OPENTELEMETRY: &str = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";
const ZIPKIN: &str = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig";

/// Envoy's default for `max_path_tag_length`.
const MAX_PATH_TAG: usize = 256;
/// Spans a reporter holds unless `max_cache_size` says otherwise.
const MAX_QUEUED: usize = 1024;
/// How long a report may take unless the service says.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Tracing {
    pub sampling: Sampling,
    pub custom_tags: Vec<CustomTag>,
    pub max_path_tag_length: usize,
    /// `None`: decisions only, no spans.
    pub tracer: Option<Tracer>,
}

#[derive(Debug)]
pub struct Tracer {
    pub reporter: Arc<Reporter>,
    pub propagation: Propagation,
}

/// The trace-context headers a tracer reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// OpenTelemetry: `traceparent` and `tracestate`.
    W3c,
    /// Zipkin: B3 in, `x-b3-*` out; with `w3c` also `traceparent`.
    B3 { w3c: bool },
}

/// A tag every span of the connection manager gets, when it has a value.
#[derive(Debug)]
pub enum CustomTag {
    /// A literal, or an environment variable read when the config came.
    Fixed { tag: String, value: String },
    /// A request header's value, else the default (none when empty).
    RequestHeader {
        tag: String,
        header: HeaderName,
        default: String,
    },
}

pub fn convert(t: &EnvoyTracing) -> Result<Tracing, String> {
    let share =
        |p: Option<&Percent>, name: &str| percent(p).map_err(|e| format!("tracing.{name}: {e}"));
    let sampling = Sampling {
        random: share(t.random_sampling.as_ref(), "random_sampling")?,
        client: share(t.client_sampling.as_ref(), "client_sampling")?,
        overall: share(t.overall_sampling.as_ref(), "overall_sampling")?,
    };
    let custom_tags = t
        .custom_tags
        .iter()
        .filter_map(|tag| custom_tag(tag).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let max_path_tag_length = t
        .max_path_tag_length
        .as_ref()
        .map_or(MAX_PATH_TAG, |v| v.value as usize);
    let tracer = t
        .provider
        .as_ref()
        .map(|p| tracer(p).map_err(|e| format!("tracing.provider {:?}: {e}", p.name)))
        .transpose()?;
    Ok(Tracing {
        sampling,
        custom_tags,
        max_path_tag_length,
        tracer,
    })
}

/// A percentage in Envoy's hundredths; unset is everything.
fn percent(p: Option<&Percent>) -> Result<u32, String> {
    let Some(p) = p else {
        return Ok(Sampling::ALL);
    };
    if !(0.0..=100.0).contains(&p.value) {
        return Err(format!("{} is not a percentage", p.value));
    }
    Ok((p.value * 100.0).round() as u32)
}

/// `None` for tags that have nothing here: metadata tags (Istio's RBAC
/// dry-run tags) without a default.
fn custom_tag(t: &EnvoyTag) -> Result<Option<CustomTag>, String> {
    let fixed = |value: String| {
        Some(CustomTag::Fixed {
            tag: t.tag.clone(),
            value,
        })
    };
    Ok(match &t.r#type {
        Some(custom_tag::Type::Literal(l)) => fixed(l.value.clone()),
        Some(custom_tag::Type::Environment(e)) => {
            fixed(std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()))
        }
        Some(custom_tag::Type::RequestHeader(h)) => Some(CustomTag::RequestHeader {
            tag: t.tag.clone(),
            header: HeaderName::try_from(h.name.as_str())
                .map_err(|e| format!("custom tag {:?}: header {:?}: {e}", t.tag, h.name))?,
            default: h.default_value.clone(),
        }),
        Some(custom_tag::Type::Metadata(m)) if m.default_value.is_empty() => None,
        Some(custom_tag::Type::Metadata(m)) => fixed(m.default_value.clone()),
        Some(custom_tag::Type::Value(_)) => {
            return Err(format!(
                "custom tag {:?}: formatter values are not supported yet",
                t.tag
            ));
        }
        None => return Err(format!("custom tag {:?} has no type", t.tag)),
    })
}

fn tracer(
    provider: &envoy_types::pb::envoy::config::trace::v3::tracing::Http,
) -> Result<Tracer, String> {
    use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &provider.config_type else {
        return Err("no typed_config".to_owned());
    };
    let (config, propagation) = match any.type_url.as_str() {
        OPENTELEMETRY => {
            let c = OpenTelemetryConfig::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
            (opentelemetry(&c)?, Propagation::W3c)
        }
        ZIPKIN => {
            let c = ZipkinConfig::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
            let w3c = c.trace_context_option
                == zipkin_config::TraceContextOption::UseB3WithW3cPropagation as i32;
            (zipkin(&c)?, Propagation::B3 { w3c })
        }
        other => return Err(format!("tracer {other} is not supported")),
    };
    Ok(Tracer {
        reporter: Arc::new(Reporter::new(config)),
        propagation,
    })
}

fn opentelemetry(c: &OpenTelemetryConfig) -> Result<ReporterConfig, String> {
    let collector = match (&c.grpc_service, &c.http_service) {
        (Some(grpc), None) => {
            let mut service = super::ext_authz::grpc_service(grpc)?;
            if grpc.timeout.is_none() {
                service.timeout = REPORT_TIMEOUT;
            }
            Collector::OtlpGrpc(service)
        }
        (None, Some(http)) => Collector::OtlpHttp(http_collector(http)?),
        (Some(_), Some(_)) => return Err("both grpc_service and http_service".to_owned()),
        (None, None) => return Err("neither grpc_service nor http_service".to_owned()),
    };
    if c.sampler.is_some() {
        return Err("samplers are not supported yet".to_owned());
    }
    Ok(ReporterConfig {
        collector,
        service_name: c.service_name.clone(),
        max_queued: c
            .max_cache_size
            .as_ref()
            .map_or(MAX_QUEUED, |v| v.value as usize),
    })
}

fn zipkin(c: &ZipkinConfig) -> Result<ReporterConfig, String> {
    if c.collector_endpoint_version != zipkin_config::CollectorEndpointVersion::HttpJson as i32 {
        return Err("only the HTTP_JSON collector endpoint version is supported".to_owned());
    }
    if c.collector_cluster.is_empty() {
        return Err("no collector_cluster".to_owned());
    }
    let path = if c.collector_endpoint.is_empty() {
        "/api/v2/spans".to_owned()
    } else {
        c.collector_endpoint.clone()
    };
    let authority = if c.collector_hostname.is_empty() {
        c.collector_cluster.clone()
    } else {
        c.collector_hostname.clone()
    };
    let collector = HttpCollector {
        cluster: c.collector_cluster.clone(),
        authority,
        path,
        timeout: REPORT_TIMEOUT,
        headers: Vec::new(),
    };
    Ok(ReporterConfig {
        collector: Collector::Zipkin(collector),
        // The proxy's own service cluster (`<app>.<namespace>`), as Envoy's
        // local cluster name.
        service_name: String::new(),
        max_queued: MAX_QUEUED,
    })
}

/// `http_uri.uri` as Istio writes it (`host/path`, scheme optional).
fn http_collector(s: &HttpService) -> Result<HttpCollector, String> {
    let uri = s.http_uri.as_ref().ok_or("http_service without http_uri")?;
    let Some(http_uri::HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
        return Err("http_uri names no cluster".to_owned());
    };
    let rest = uri
        .uri
        .split_once("://")
        .map_or(uri.uri.as_str(), |(_, rest)| rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let timeout = uri
        .timeout
        .as_ref()
        .map(super::duration)
        .transpose()
        .map_err(|e| format!("http_uri.timeout: {e}"))?
        .unwrap_or(REPORT_TIMEOUT);
    Ok(HttpCollector {
        cluster: cluster.clone(),
        authority: authority.to_owned(),
        path: path.to_owned(),
        timeout,
        headers: headers(&s.request_headers_to_add)?,
    })
}

fn headers(options: &[HeaderValueOption]) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| {
            let name = HeaderName::try_from(h.key.as_str())
                .map_err(|e| format!("header {:?}: {e}", h.key))?;
            let value =
                HeaderValue::from_str(&h.value).map_err(|e| format!("header {:?}: {e}", h.key))?;
            Ok((name, value))
        })
        .collect()
}

impl Tracing {
    /// Keeps the running reporter of `old` when the tracer is the same, so a
    /// push does not lose the spans waiting in it.
    pub fn carry_over(&mut self, old: &Tracing) {
        if let (Some(new), Some(was)) = (&mut self.tracer, &old.tracer)
            && new.reporter.config() == was.reporter.config()
        {
            new.reporter = was.reporter.clone();
        }
    }
}
