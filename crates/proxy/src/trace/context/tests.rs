use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanId, TraceId};

use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn trace_id() -> TraceId {
    TraceId::from_hex(TRACE).expect("hex")
}

fn span_id() -> SpanId {
    SpanId::from_hex(SPAN).expect("hex")
}

#[test]
fn a_traceparent_is_the_parent_with_its_sampled_flag_and_every_tracestate() {
    let h = headers(&[
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "a=1"),
        ("tracestate", "b=2"),
    ]);
    let Extracted::Parent(parent) = extract_w3c(&h) else {
        panic!("a parent");
    };
    assert_eq!(parent.trace_id, trace_id());
    assert_eq!(parent.span_id, span_id());
    assert!(parent.sampled);
    assert_eq!(
        parent.trace_state,
        Some(HeaderValue::from_static("a=1,b=2"))
    );
    let unsampled = headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    )]);
    assert!(matches!(extract_w3c(&unsampled), Extracted::Parent(p) if !p.sampled));
}

#[test]
fn a_traceparent_that_does_not_parse_is_invalid_and_none_is_a_root() {
    assert_eq!(extract_w3c(&HeaderMap::new()), Extracted::Root);
    for bad in [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(bad));
        assert_eq!(extract_w3c(&h), Extracted::Invalid, "{bad}");
    }
}

#[test]
fn w3c_injection_writes_version_00_and_the_state() {
    let span = SpanContext {
        trace_id: trace_id(),
        span_id: span_id(),
        sampled: true,
        trace_state: Some(HeaderValue::from_static("a=1")),
    };
    let mut h = headers(&[("tracestate", "old=1")]);
    inject_w3c(&mut h, &span);
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(h["tracestate"], "a=1");
    let Extracted::Parent(read) = extract_w3c(&h) else {
        panic!("reads back");
    };
    assert_eq!(read, span);
}

#[test]
fn b3_single_comes_before_the_multi_headers() {
    let h = headers(&[
        ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ("x-b3-traceid", "1111111111111111"),
        ("x-b3-spanid", "2222222222222222"),
    ]);
    let Extracted::Parent(parent) = extract_b3(&h, false, false) else {
        panic!("a parent");
    };
    assert_eq!((parent.trace_id, parent.span_id), (trace_id(), span_id()));
    assert!(parent.sampled);
    assert_eq!(
        extract_b3(&headers(&[("b3", "0")]), false, false),
        Extracted::Invalid
    );
}

#[test]
fn b3_multi_headers_need_both_ids_and_take_64_bit_trace_ids() {
    let h = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-sampled", "1"),
    ]);
    let Extracted::Parent(parent) = extract_b3(&h, false, false) else {
        panic!("a parent");
    };
    assert_eq!(parent.trace_id, TraceId::from(0xa3ce_929d_0e0e_4736_u128));
    assert!(parent.sampled);
    // No sampling state: the proxy's own decision stands.
    let undecided = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
    ]);
    assert!(matches!(extract_b3(&undecided, false, true), Extracted::Parent(p) if p.sampled));
    assert!(matches!(extract_b3(&undecided, false, false), Extracted::Parent(p) if !p.sampled));
    assert_eq!(
        extract_b3(
            &headers(&[("x-b3-traceid", "a3ce929d0e0e4736")]),
            false,
            false
        ),
        Extracted::Root
    );
    let w3c = headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    assert_eq!(extract_b3(&w3c, false, false), Extracted::Root);
    assert!(matches!(
        extract_b3(&w3c, true, false),
        Extracted::Parent(_)
    ));
}

#[test]
fn b3_injection_writes_the_multi_headers_and_drops_the_single_one() {
    let span = SpanContext {
        trace_id: TraceId::from(0xa3ce_929d_0e0e_4736_u128),
        span_id: span_id(),
        sampled: false,
        trace_state: None,
    };
    let mut h = headers(&[("b3", "0")]);
    inject_b3(&mut h, &span, Some(SpanId::from(0x1234_u64)));
    assert_eq!(h["x-b3-traceid"], "a3ce929d0e0e4736");
    assert_eq!(h["x-b3-spanid"], SPAN);
    assert_eq!(h["x-b3-parentspanid"], "0000000000001234");
    assert_eq!(h["x-b3-sampled"], "0");
    assert!(h.get("b3").is_none());
    let wide = SpanContext {
        trace_id: trace_id(),
        ..span
    };
    inject_b3(&mut h, &wide, None);
    assert_eq!(h["x-b3-traceid"], TRACE);
    assert!(h.get("x-b3-parentspanid").is_none());
}
