use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};

use super::*;
use crate::access_log::entry::RequestHead;

/// Istio's default text format (`meshConfig.accessLogFormat` unset).
const ISTIO: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

fn head() -> RequestHead {
    let header = |n: &str, v: &str| {
        (
            HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        )
    };
    RequestHead {
        method: "GET".to_owned(),
        path: "/status/418?x=1".to_owned(),
        authority: Some("httpbin:8000".to_owned()),
        scheme: Some("http"),
        protocol: "HTTP/1.1",
        headers: vec![
            header("user-agent", "curl/8.5.0"),
            header("x-request-id", "5f1c0c6e-0000-4000-8000-000000000001"),
        ],
    }
}

fn entry<'a>(
    request: Option<&'a RequestHead>,
    response: &'a [(HeaderName, HeaderValue)],
) -> Entry<'a> {
    Entry {
        start: UNIX_EPOCH + Duration::new(1_660_622_670, 174_000_000),
        duration: Duration::from_millis(3),
        request,
        response_headers: response,
        response_code: 418,
        flags: "",
        details: Some("via_upstream"),
        termination_details: None,
        transport_failure: None,
        bytes_received: 0,
        bytes_sent: 135,
        upstream_host: Some("10.44.1.27:80".parse().expect("address")),
        upstream_local: Some("10.44.1.23:37652".parse().expect("address")),
        upstream_cluster: Some("outbound|8000||httpbin.foo.svc.cluster.local"),
        upstream_peer_uri: None,
        downstream_local: "10.0.45.184:8000".parse().expect("address"),
        downstream_remote: "10.44.1.23:46520".parse().expect("address"),
        downstream_direct: "10.44.1.23:46520".parse().expect("address"),
        downstream_peer_uri: None,
        local_uri: None,
        sni: None,
        route_name: Some("default"),
    }
}

#[test]
fn istios_default_format_renders_as_envoy_prints_it() {
    let format = LogFormat {
        format: Format::Text(Template::parse(ISTIO).expect("parse")),
        omit_empty: false,
    };
    let request = head();
    let line = format.render(&entry(Some(&request), &[]));
    assert_eq!(
        line,
        "[2022-08-16T04:04:30.174Z] \"GET /status/418?x=1 HTTP/1.1\" 418 - via_upstream - \"-\" 0 135 3 - \"-\" \"curl/8.5.0\" \"5f1c0c6e-0000-4000-8000-000000000001\" \"httpbin:8000\" \"10.44.1.27:80\" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default\n"
    );
}

#[test]
fn json_keeps_numbers_typed_and_absent_values_null() {
    let fields = [
        ("response_code", "%RESPONSE_CODE%"),
        ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
        ("flags", "%RESPONSE_FLAGS%"),
        ("sni", "%REQUESTED_SERVER_NAME%"),
        ("mixed", "code=%RESPONSE_CODE% sni=%REQUESTED_SERVER_NAME%"),
        (
            "upstream_service_time",
            "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        ),
    ];
    let json = Format::Json(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Template::parse(v).expect("parse")))
            .collect(),
    );
    let request = head();
    let response = [(
        HeaderName::from_static("x-envoy-upstream-service-time"),
        HeaderValue::from_static("1"),
    )];
    let format = LogFormat {
        format: json.clone(),
        omit_empty: false,
    };
    let line = format.render(&entry(Some(&request), &response));
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
    assert_eq!(parsed["response_code"], 418);
    assert_eq!(parsed["path"], "/status/418?x=1");
    assert_eq!(parsed["flags"], "-");
    assert!(parsed["sni"].is_null());
    assert_eq!(parsed["mixed"], "code=418 sni=-");
    assert_eq!(parsed["upstream_service_time"], "1");
    assert!(line.ends_with("}\n"));

    let omitting = LogFormat {
        format: json,
        omit_empty: true,
    };
    let parsed: serde_json::Value =
        serde_json::from_str(&omitting.render(&entry(Some(&request), &response))).expect("json");
    assert!(parsed.get("sni").is_none(), "{parsed}");
}

#[test]
fn operators_take_alternatives_lengths_and_escapes() {
    let template = Template::parse("%REQ(X-MISSING?USER-AGENT):4% 100%% %REQ_WITHOUT_QUERY(:PATH)% %START_TIME(%H:%M)% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%").expect("parse");
    let request = head();
    let mut out = String::new();
    template.render_text(&entry(Some(&request), &[]), &mut out);
    assert_eq!(out, "curl 100% /status/418 04:04 10.44.1.23");
}

#[test]
fn a_tcp_entry_prints_dashes_for_what_http_would_have() {
    let template =
        Template::parse("\"%REQ(:METHOD)% %PROTOCOL%\" %RESPONSE_CODE% %UPSTREAM_CLUSTER%")
            .expect("parse");
    let mut tcp = entry(None, &[]);
    tcp.response_code = 0;
    let mut out = String::new();
    template.render_text(&tcp, &mut out);
    assert_eq!(
        out,
        "\"- -\" 0 outbound|8000||httpbin.foo.svc.cluster.local"
    );
}

#[test]
fn envoys_other_operators_print_as_absent_and_omit_empty_prints_nothing() {
    let template = Template::parse(
        "%GRPC_STATUS% %DYNAMIC_METADATA(istio.mixer:status)% %REQUESTED_SERVER_NAME%|",
    )
    .expect("parse");
    let request = head();
    let format = |omit_empty| LogFormat {
        format: Format::Text(template.clone()),
        omit_empty,
    };
    let e = entry(Some(&request), &[]);
    assert_eq!(format(false).render(&e), "- - -|\n");
    assert_eq!(format(true).render(&e), "  |\n");
    assert_eq!(
        Template::parse("%DYNAMIC_METADATA%"),
        Err(FormatError::MissingArgument("DYNAMIC_METADATA".to_owned()))
    );
}

#[test]
fn bad_formats_say_what_is_wrong() {
    assert_eq!(
        Template::parse("%NO_SUCH_THING%"),
        Err(FormatError::Unknown("NO_SUCH_THING".to_owned()))
    );
    assert_eq!(Template::parse("50% off"), Err(FormatError::Unclosed(2)));
    assert_eq!(
        Template::parse("%REQ%"),
        Err(FormatError::MissingArgument("REQ".to_owned()))
    );
    assert_eq!(
        Template::parse("%DURATION(x)%"),
        Err(FormatError::UnexpectedArgument("DURATION".to_owned()))
    );
    assert!(matches!(
        Template::parse("%START_TIME(%Q)%"),
        Err(FormatError::Invalid { .. })
    ));
}
