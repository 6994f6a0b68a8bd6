//! `access_log` entries of connection managers, TCP proxies and listeners:
//! Envoy's file and stdout/stderr loggers, their formats and filters. What
//! the proxy cannot honour refuses the resource, naming the part.

use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog as EnvoyAccessLog, AccessLogFilter, access_log, access_log_filter, comparison_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use prost::Message;

use crate::access_log::filter::{Compare, Filter};
use crate::access_log::format::{Format, LogFormat, Template};
use crate::access_log::{AccessLog, AccessLogs};

const FILE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
/// The formatter extension for `%REQ_WITHOUT_QUERY%`, built in here.
const REQ_WITHOUT_QUERY: &str =
    "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery";

/// Envoy's format when a logger sets none.
const ENVOY_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// The logs of one resource part; `None` when it has none, so nothing is kept
/// per request.
pub fn convert(logs: &[EnvoyAccessLog]) -> Result<Option<Arc<AccessLogs>>, String> {
    if logs.is_empty() {
        return Ok(None);
    }
    let converted = logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            let label = format!("access_log[{i}] ({})", log.name);
            one(log, &label).map_err(|e| format!("{label}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Arc::new(AccessLogs::new(converted))))
}

fn one(log: &EnvoyAccessLog, label: &str) -> Result<AccessLog, String> {
    let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
        return Err("no typed_config".to_owned());
    };
    let decode_error = |e: prost::DecodeError| e.to_string();
    let (path, format) = match any.type_url.as_str() {
        FILE => {
            let file = FileAccessLog::decode(any.value.as_slice()).map_err(decode_error)?;
            let path = if file.path.is_empty() {
                return Err("a file logger without a path".to_owned());
            } else {
                file.path.clone()
            };
            (path, file_format(&file)?)
        }
        STDOUT => {
            let stdout = StdoutAccessLog::decode(any.value.as_slice()).map_err(decode_error)?;
            let format = stdout
                .access_log_format
                .map(|stdout_access_log::AccessLogFormat::LogFormat(f)| f);
            (
                "/dev/stdout".to_owned(),
                substitution(&format.unwrap_or_default())?,
            )
        }
        STDERR => {
            let stderr = StderrAccessLog::decode(any.value.as_slice()).map_err(decode_error)?;
            let format = stderr
                .access_log_format
                .map(|stderr_access_log::AccessLogFormat::LogFormat(f)| f);
            (
                "/dev/stderr".to_owned(),
                substitution(&format.unwrap_or_default())?,
            )
        }
        other => return Err(format!("access logger {other} is not supported")),
    };
    let filter = log.filter.as_ref().map(filter).transpose()?;
    Ok(AccessLog {
        label: label.to_owned(),
        path,
        format,
        filter,
        sink: std::sync::OnceLock::new(),
    })
}

fn default_format() -> Result<LogFormat, String> {
    text(ENVOY_DEFAULT, false)
}

fn text(format: &str, omit_empty: bool) -> Result<LogFormat, String> {
    let template = Template::parse(format).map_err(|e| e.to_string())?;
    Ok(LogFormat {
        format: Format::Text(template),
        omit_empty,
    })
}

#[allow(deprecated)]
fn file_format(file: &FileAccessLog) -> Result<LogFormat, String> {
    use file_access_log::AccessLogFormat as F;
    match &file.access_log_format {
        None => default_format(),
        Some(F::Format(f)) if f.is_empty() => default_format(),
        Some(F::Format(f)) => text(f, false),
        Some(F::JsonFormat(s) | F::TypedJsonFormat(s)) => json(s, false),
        Some(F::LogFormat(f)) => substitution(f),
    }
}

#[allow(deprecated)]
fn substitution(format: &SubstitutionFormatString) -> Result<LogFormat, String> {
    use substitution_format_string::Format as F;
    if let Some(other) = format
        .formatters
        .iter()
        .filter_map(|f| f.typed_config.as_ref())
        .find(|any| any.type_url != REQ_WITHOUT_QUERY)
    {
        return Err(format!("formatter {} is not supported", other.type_url));
    }
    let omit = format.omit_empty_values;
    match &format.format {
        None => default_format(),
        Some(F::TextFormat(f)) => text(f, omit),
        Some(F::JsonFormat(s)) => json(s, omit),
        Some(F::TextFormatSource(source)) => match &source.specifier {
            Some(data_source::Specifier::InlineString(f)) => text(f, omit),
            Some(data_source::Specifier::InlineBytes(b)) => {
                let f = std::str::from_utf8(b).map_err(|_| "a format that is not UTF-8")?;
                text(f, omit)
            }
            Some(data_source::Specifier::Filename(path)) => {
                let f = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the format file {path}: {e}"))?;
                text(&f, omit)
            }
            _ => Err("text_format_source must be inline or a file".to_owned()),
        },
    }
}

/// A JSON format: every value a string template (nested objects and
/// literals other than strings are not taken).
fn json(fields: &Struct, omit_empty: bool) -> Result<LogFormat, String> {
    let mut templates = Vec::with_capacity(fields.fields.len());
    // A Struct's keys come unordered: print them sorted, the same each time.
    let mut sorted: Vec<_> = fields.fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in sorted {
        let Some(Kind::StringValue(s)) = &value.kind else {
            return Err(format!(
                "json_format.{key}: only string values (with command operators) are supported"
            ));
        };
        let template = Template::parse(s).map_err(|e| format!("json_format.{key}: {e}"))?;
        templates.push((key.clone(), template));
    }
    Ok(LogFormat {
        format: Format::Json(templates),
        omit_empty,
    })
}

fn filter(spec: &AccessLogFilter) -> Result<Filter, String> {
    use access_log_filter::FilterSpecifier as F;
    match &spec.filter_specifier {
        Some(F::StatusCodeFilter(f)) => {
            let (op, value) = comparison(f.comparison.as_ref())?;
            Ok(Filter::StatusCode(op, value))
        }
        Some(F::DurationFilter(f)) => {
            let (op, value) = comparison(f.comparison.as_ref())?;
            Ok(Filter::Duration(op, value))
        }
        Some(F::ResponseFlagFilter(f)) => Ok(Filter::ResponseFlags(f.flags.clone())),
        Some(F::NotHealthCheckFilter(_)) => Ok(Filter::NotHealthCheck),
        Some(F::AndFilter(f)) => f.filters.iter().map(filter).collect::<Result<_, _>>().map(Filter::And),
        Some(F::OrFilter(f)) => f.filters.iter().map(filter).collect::<Result<_, _>>().map(Filter::Or),
        Some(F::HeaderFilter(f)) => header_filter(f.header.as_ref()),
        Some(F::ExtensionFilter(f)) => cel_filter(f),
        Some(_) => Err("only status code, duration, response flag, header, health check and and/or filters are supported".to_owned()),
        None => Err("an empty filter".to_owned()),
    }
}

const CEL: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter";

fn cel_filter(
    f: &envoy_types::pb::envoy::config::accesslog::v3::ExtensionFilter,
) -> Result<Filter, String> {
    use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
    let any = match &f.config_type {
        Some(ConfigType::TypedConfig(any)) if any.type_url == CEL => any,
        Some(ConfigType::TypedConfig(any)) => {
            return Err(format!(
                "filter {} ({}) is not supported",
                f.name, any.type_url
            ));
        }
        None => return Err(format!("filter {} has no typed_config", f.name)),
    };
    let cel = ExpressionFilter::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
    crate::access_log::cel::compile(&cel.expression)
        .map(Filter::Cel)
        .map_err(|e| format!("CEL expression {:?}: {e}", cel.expression))
}

fn comparison(
    f: Option<&envoy_types::pb::envoy::config::accesslog::v3::ComparisonFilter>,
) -> Result<(Compare, u64), String> {
    let f = f.ok_or("a comparison filter without a comparison")?;
    let op = match comparison_filter::Op::try_from(f.op) {
        Ok(comparison_filter::Op::Eq) => Compare::Eq,
        Ok(comparison_filter::Op::Ge) => Compare::Ge,
        Ok(comparison_filter::Op::Le) => Compare::Le,
        Ok(comparison_filter::Op::Ne) => Compare::Ne,
        Err(_) => return Err(format!("comparison op {} is not EQ, GE, LE or NE", f.op)),
    };
    Ok((
        op,
        u64::from(f.value.as_ref().map_or(0, |v| v.default_value)),
    ))
}

#[allow(deprecated)]
fn header_filter(
    matcher: Option<&envoy_types::pb::envoy::config::route::v3::HeaderMatcher>,
) -> Result<Filter, String> {
    let matcher = matcher.ok_or("a header filter without a header")?;
    let name = http::HeaderName::from_bytes(matcher.name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{:?} is not a header name", matcher.name))?;
    let value = match &matcher.header_match_specifier {
        None | Some(HeaderMatchSpecifier::PresentMatch(true)) => None,
        Some(HeaderMatchSpecifier::ExactMatch(v)) => Some(v.clone()),
        Some(_) => return Err("header filters match presence or an exact value only".to_owned()),
    };
    Ok(Filter::Header(name, value, matcher.invert_match))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::accesslog::v3::ExtensionFilter;
    use envoy_types::pb::envoy::config::core::v3::DataSource;
    use envoy_types::pb::google::protobuf::Any;

    fn file_log(path: &str, format: &str) -> EnvoyAccessLog {
        let file = FileAccessLog {
            path: path.to_owned(),
            access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::TextFormatSource(
                        DataSource {
                            specifier: Some(data_source::Specifier::InlineString(
                                format.to_owned(),
                            )),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            )),
        };
        EnvoyAccessLog {
            name: "envoy.access_loggers.file".to_owned(),
            filter: None,
            config_type: Some(access_log::ConfigType::TypedConfig(Any {
                type_url: FILE.to_owned(),
                value: file.encode_to_vec(),
            })),
        }
    }

    fn refusal(log: EnvoyAccessLog) -> String {
        convert(&[log]).expect_err("refused")
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_part() {
        assert_eq!(
            refusal(file_log("/dev/null", "%NOT_AN_OPERATOR%")),
            "access_log[0] (envoy.access_loggers.file): unknown command operator %NOT_AN_OPERATOR%"
        );
        let unwritable = convert(&[file_log("/proc/no/such/dir/log", "%DURATION%")])
            .expect("converted without touching the file")
            .expect("some")
            .open()
            .expect_err("refused when opened");
        assert!(
            unwritable.starts_with(
                "access_log[0] (envoy.access_loggers.file): cannot open /proc/no/such/dir/log"
            ),
            "{unwritable}"
        );
        let mut cel = file_log("/dev/null", "%DURATION%");
        cel.filter = Some(AccessLogFilter {
            filter_specifier: Some(access_log_filter::FilterSpecifier::ExtensionFilter(
                ExtensionFilter {
                    name: "envoy.access_loggers.extension_filters.cel".to_owned(),
                    config_type: None,
                },
            )),
        });
        assert!(refusal(cel).contains("has no typed_config"));
        let mut grpc = file_log("/dev/null", "%DURATION%");
        if let Some(access_log::ConfigType::TypedConfig(any)) = &mut grpc.config_type {
            any.type_url =
                "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
                    .to_owned();
        }
        assert!(refusal(grpc).contains("HttpGrpcAccessLogConfig is not supported"));
    }

    #[test]
    fn none_configured_keeps_nothing() {
        assert!(convert(&[]).expect("fine").is_none());
        let logs = convert(&[file_log("/dev/null", "%REQ(USER-AGENT)% %RESP(X-FOO)%")])
            .expect("fine")
            .expect("some");
        assert_eq!(logs.request_headers(), ["user-agent"]);
        assert_eq!(logs.response_headers(), ["x-foo"]);
    }
}
