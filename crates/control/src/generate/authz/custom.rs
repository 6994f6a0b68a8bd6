//! CUSTOM policies: Istio's "custom" builder. Per extension provider the
//! policies' rules go into the shadow engine of an RBAC filter (prefix
//! `istio_ext_authz_`), which only matches; the ext_authz filter after it asks
//! the external authorizer when, and only when, a rule of its provider
//! matched (`filter_enabled_metadata`). A provider that cannot be used turns
//! its rules into an enforcing DENY instead, so a broken provider never lets
//! through what it should have checked.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService, HeaderValue, HttpUri};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter as listener_filter};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as http_authz;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as network_authz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use envoy_types::util::pack_any;
use oxmesh_config::extension_provider::{
    BodyInCheck, ExtAuthzGrpc, ExtAuthzHttp, ExtensionProvider, ProviderKind,
};

use super::build_rules;
use super::filter::{self, Rules};
use super::model::Chain;
use super::trust_domain::TrustDomains;
use crate::push_context::{Authorization, PushContext, Scoped};

pub(crate) const HTTP_EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
pub(crate) const NETWORK_EXT_AUTHZ: &str = "envoy.filters.network.ext_authz";
/// Where the shadow RBAC leaves the matched CUSTOM policy's name.
const SHADOW_PREFIX: &str = "istio_ext_authz_";
const EFFECTIVE_POLICY: &str = "istio_ext_authz_shadow_effective_policy_id";
/// Istio's timeout when the provider sets none.
const DEFAULT_TIMEOUT_SECS: i64 = 600;

/// The CUSTOM policies of one proxy, by provider name.
pub(crate) struct Custom<'a> {
    by_provider: BTreeMap<&'a str, Vec<&'a Scoped<Authorization>>>,
    domains: &'a TrustDomains,
}

/// A provider ready to use: its kind and where it is.
struct Resolved<'a> {
    kind: &'a ProviderKind,
    host: String,
    cluster: String,
}

impl<'a> Custom<'a> {
    /// The enforced CUSTOM policies among `policies`. Dry-run ones are left
    /// out: they would call the authorizer for real (Istio up to 1.29 drops
    /// them too).
    pub(crate) fn new(
        policies: impl IntoIterator<Item = &'a Scoped<Authorization>>,
        domains: &'a TrustDomains,
    ) -> Self {
        let mut by_provider: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for policy in policies {
            let spec = &policy.spec.policy;
            if spec.action != oxmesh_config::security::authorization_policy::Action::Custom
                || policy.spec.dry_run
            {
                continue;
            }
            let name = spec.provider.as_ref().map_or("", |p| p.name.as_str());
            by_provider.entry(name).or_default().push(policy);
        }
        Self {
            by_provider,
            domains,
        }
    }

    /// Per provider, in name order: the shadow RBAC and ext_authz pair, or
    /// the deny filter of a provider that cannot be used.
    pub(crate) fn http(&self, ctx: &PushContext) -> Vec<HttpFilter> {
        let mut filters = Vec::new();
        for (provider, policies) in &self.by_provider {
            match self.resolve(ctx, provider) {
                Ok(resolved) => {
                    let rules = self.rules(policies, provider, Chain::Http, "");
                    filters.push(filter::http_with_prefix(None, Some(rules), SHADOW_PREFIX));
                    filters.push(http_ext_authz(&resolved, provider));
                }
                Err(reason) => {
                    tracing::warn!(
                        provider = *provider,
                        "CUSTOM policies deny what they match: {reason}"
                    );
                    let rules = self.rules(policies, provider, Chain::Http, BAD_SUFFIX);
                    filters.push(filter::http_with_prefix(Some(rules), None, ""));
                }
            }
        }
        filters
    }

    /// The same for TCP chains: only gRPC providers have a TCP form; CUSTOM
    /// policies of an HTTP provider do nothing there, as in Istio.
    pub(crate) fn tcp(&self, ctx: &PushContext) -> Vec<Filter> {
        let mut filters = Vec::new();
        for (provider, policies) in &self.by_provider {
            match self.resolve(ctx, provider) {
                Ok(resolved) => match resolved.kind {
                    ProviderKind::ExtAuthzGrpc(grpc) => {
                        let rules = self.rules(policies, provider, Chain::Tcp, "");
                        filters.push(filter::network_with_prefix(
                            None,
                            Some(rules),
                            SHADOW_PREFIX,
                        ));
                        filters.push(network_ext_authz(&resolved, grpc, provider));
                    }
                    _ => tracing::debug!(
                        provider = *provider,
                        "CUSTOM policies with an HTTP provider do not apply to TCP chains"
                    ),
                },
                Err(_) => {
                    let rules = self.rules(policies, provider, Chain::Tcp, BAD_SUFFIX);
                    filters.push(filter::network_with_prefix(Some(rules), None, ""));
                }
            }
        }
        filters
    }

    fn rules(
        &self,
        policies: &[&Scoped<Authorization>],
        provider: &str,
        chain: Chain,
        suffix: &str,
    ) -> Rules {
        let name = |policy: &Scoped<Authorization>, index: usize| {
            format!(
                "{}-ns[{}]-policy[{}]-rule[{index}]{suffix}",
                name_prefix(provider),
                policy.namespace,
                policy.name
            )
        };
        build_rules(policies, Action::Deny, chain, self.domains, name)
    }

    /// The provider as the mesh config defines it, and its service in the
    /// registry. One proxy with several providers is refused, as Istio does
    /// by default (`PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`).
    fn resolve(&self, ctx: &'a PushContext, name: &str) -> Result<Resolved<'a>, String> {
        if self.by_provider.len() > 1 {
            return Err("only one CUSTOM provider may apply to a workload".to_owned());
        }
        let provider: &ExtensionProvider = ctx
            .mesh
            .extension_providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no extension provider named {name:?} in the mesh config"))?;
        let (service, port, status) = match &provider.kind {
            ProviderKind::ExtAuthzHttp(h) => {
                if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
                    return Err(format!("pathPrefix {:?} must start with /", h.path_prefix));
                }
                (&h.service, h.port, &h.status_on_error)
            }
            ProviderKind::ExtAuthzGrpc(g) => (&g.service, g.port, &g.status_on_error),
            _ => {
                return Err(format!(
                    "extension provider {name:?} is not an ext_authz provider"
                ));
            }
        };
        let body = match &provider.kind {
            ProviderKind::ExtAuthzHttp(h) => h.include_request_body_in_check.is_some(),
            ProviderKind::ExtAuthzGrpc(g) => g.include_request_body_in_check.is_some(),
            _ => false,
        };
        if body {
            return Err("includeRequestBodyInCheck is not supported by the proxy yet".to_owned());
        }
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {port} is not 1..65535"))?;
        status_code(status)?;
        let host = ctx.provider_host(service)?;
        Ok(Resolved {
            kind: &provider.kind,
            cluster: format!("outbound|{port}||{host}"),
            host,
        })
    }
}

const BAD_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";

/// `istio-ext-authz-<provider>` (`istio-ext-authz` for an unnamed one): what
/// policy names start with and what the ext_authz filter waits for.
fn name_prefix(provider: &str) -> String {
    if provider.is_empty() {
        "istio-ext-authz".to_owned()
    } else {
        format!("istio-ext-authz-{provider}")
    }
}

/// `statusOnError`: empty, or an HTTP status Envoy knows.
fn status_code(text: &str) -> Result<Option<HttpStatus>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let code: i32 = text
        .parse()
        .map_err(|_| format!("statusOnError {text:?} is not a number"))?;
    StatusCode::try_from(code)
        .ok()
        .filter(|c| *c != StatusCode::Empty)
        .map(|c| Some(HttpStatus { code: c as i32 }))
        .ok_or_else(|| format!("statusOnError {code} is not an HTTP status Envoy knows"))
}

fn timeout(t: Option<oxmesh_config::duration::Duration>) -> ProtoDuration {
    let d = t.map_or(
        std::time::Duration::from_secs(DEFAULT_TIMEOUT_SECS as u64),
        |t| t.as_std(),
    );
    ProtoDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Call the authorizer only when this provider's shadow rules matched.
fn enabled_metadata(rbac_filter: &str, provider: &str) -> MetadataMatcher {
    MetadataMatcher {
        filter: rbac_filter.to_owned(),
        path: vec![PathSegment {
            segment: Some(Segment::Key(EFFECTIVE_POLICY.to_owned())),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(name_prefix(provider))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

fn body(b: Option<&BodyInCheck>) -> Option<http_authz::BufferSettings> {
    b.map(|b| http_authz::BufferSettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

fn grpc_service(
    resolved: &Resolved<'_>,
    t: Option<oxmesh_config::duration::Duration>,
) -> GrpcService {
    GrpcService {
        timeout: Some(timeout(t)),
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: resolved.cluster.clone(),
            authority: resolved.host.clone(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn http_ext_authz(resolved: &Resolved<'_>, provider: &str) -> HttpFilter {
    let rbac = filter::HTTP_RBAC;
    let mut config = http_authz::ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        filter_enabled_metadata: Some(enabled_metadata(rbac, provider)),
        ..Default::default()
    };
    match resolved.kind {
        ProviderKind::ExtAuthzHttp(h) => http_provider(&mut config, resolved, h),
        ProviderKind::ExtAuthzGrpc(g) => {
            config.services = Some(http_authz::ext_authz::Services::GrpcService(grpc_service(
                resolved, g.timeout,
            )));
            config.failure_mode_allow = g.fail_open;
            config.status_on_error = status_code(&g.status_on_error).ok().flatten();
            config.with_request_body = body(g.include_request_body_in_check.as_ref());
        }
        _ => {}
    }
    HttpFilter {
        name: HTTP_EXT_AUTHZ.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

fn http_provider(config: &mut http_authz::ExtAuthz, resolved: &Resolved<'_>, h: &ExtAuthzHttp) {
    let request_headers = if h.include_request_headers_in_check.is_empty() {
        &h.include_headers_in_check
    } else {
        &h.include_request_headers_in_check
    };
    config.allowed_headers = header_list(request_headers);
    let lists = [
        &h.headers_to_upstream_on_allow,
        &h.headers_to_downstream_on_deny,
        &h.headers_to_downstream_on_allow,
    ];
    let authorization_response =
        lists
            .iter()
            .any(|l| !l.is_empty())
            .then(|| http_authz::AuthorizationResponse {
                allowed_upstream_headers: header_list(&h.headers_to_upstream_on_allow),
                allowed_client_headers: header_list(&h.headers_to_downstream_on_deny),
                allowed_client_headers_on_success: header_list(&h.headers_to_downstream_on_allow),
                ..Default::default()
            });
    let authorization_request = (!h.include_additional_headers_in_check.is_empty()).then(|| {
        http_authz::AuthorizationRequest {
            headers_to_add: h
                .include_additional_headers_in_check
                .iter()
                .map(|(key, value)| HeaderValue {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    });
    config.services = Some(http_authz::ext_authz::Services::HttpService(
        http_authz::HttpService {
            server_uri: Some(HttpUri {
                uri: format!("http://{}", resolved.host),
                timeout: Some(timeout(h.timeout)),
                http_upstream_type: Some(HttpUpstreamType::Cluster(resolved.cluster.clone())),
            }),
            path_prefix: h.path_prefix.clone(),
            authorization_request,
            authorization_response,
            ..Default::default()
        },
    ));
    config.failure_mode_allow = h.fail_open;
    config.status_on_error = status_code(&h.status_on_error).ok().flatten();
    config.with_request_body = body(h.include_request_body_in_check.as_ref());
}

/// Header names as Istio matches them: case-insensitive, `*` at either end
/// for a suffix or prefix.
fn header_list(names: &[String]) -> Option<ListStringMatcher> {
    (!names.is_empty()).then(|| ListStringMatcher {
        patterns: names
            .iter()
            .map(|n| {
                let pattern = if let Some(suffix) = n.strip_prefix('*') {
                    MatchPattern::Suffix(suffix.to_owned())
                } else if let Some(prefix) = n.strip_suffix('*') {
                    MatchPattern::Prefix(prefix.to_owned())
                } else {
                    MatchPattern::Exact(n.clone())
                };
                StringMatcher {
                    match_pattern: Some(pattern),
                    ignore_case: true,
                }
            })
            .collect(),
    })
}

fn network_ext_authz(resolved: &Resolved<'_>, grpc: &ExtAuthzGrpc, provider: &str) -> Filter {
    let config = network_authz::ExtAuthz {
        stat_prefix: "tcp.".to_owned(),
        grpc_service: Some(grpc_service(resolved, grpc.timeout)),
        failure_mode_allow: grpc.fail_open,
        transport_api_version: ApiVersion::V3 as i32,
        filter_enabled_metadata: Some(enabled_metadata(filter::NETWORK_RBAC, provider)),
        ..Default::default()
    };
    Filter {
        name: NETWORK_EXT_AUTHZ.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(config))),
    }
}
