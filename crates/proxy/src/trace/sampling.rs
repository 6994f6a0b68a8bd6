//! Whether a request is traced, decided once at the first proxy and carried
//! in its `x-request-id` as Envoy's UUID request-id extension does: the
//! UUID's version digit (index 14) becomes `9` when sampled, `a` when forced
//! by `x-envoy-force-trace`, `b` when forced by `x-client-trace-id`. Every
//! later proxy reads the mark instead of rolling again, so a trace is whole.

use http::{HeaderMap, HeaderName, HeaderValue};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
pub static CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");

/// Where the mark sits in a UUID's text.
const MARK: usize = 14;

/// The connection manager's sampling percentages, in hundredths of a percent
/// (Envoy's resolution: 10,000 is everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// Requests with no mark yet that are traced at random.
    pub random: u32,
    /// Requests carrying `x-client-trace-id` that are traced.
    pub client: u32,
    /// A cap applied after the others.
    pub overall: u32,
}

impl Sampling {
    pub const ALL: u32 = 10_000;

    /// Envoy's defaults: every request traced.
    pub const fn everything() -> Self {
        Self {
            random: Self::ALL,
            client: Self::ALL,
            overall: Self::ALL,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    NotTraced,
    Sampled,
    ServiceForced,
    ClientForced,
}

impl Decision {
    pub fn traced(self) -> bool {
        self != Decision::NotTraced
    }

    fn mark(self) -> u8 {
        match self {
            Decision::NotTraced => b'4',
            Decision::Sampled => b'9',
            Decision::ServiceForced => b'a',
            Decision::ClientForced => b'b',
        }
    }

    fn from_mark(mark: u8) -> Option<Self> {
        match mark {
            b'9' => Some(Decision::Sampled),
            b'a' => Some(Decision::ServiceForced),
            b'b' => Some(Decision::ClientForced),
            _ => None,
        }
    }
}

/// Decides for the request and marks its `x-request-id`. A request id that
/// is not a UUID is never traced (Envoy's rule); `roll` is a uniform draw
/// below 10,000 for the client-sampling check.
pub fn decide(headers: &mut HeaderMap, sampling: &Sampling, roll: u32) -> Decision {
    let id: Option<[u8; 36]> = headers
        .get(&REQUEST_ID)
        .and_then(|v| v.as_bytes().try_into().ok());
    let Some((id, bucket)) = id.and_then(|id| Some((id, bucket(&id)?))) else {
        return Decision::NotTraced;
    };
    let decided = match Decision::from_mark(id[MARK]) {
        Some(marked) => marked,
        None if headers.contains_key(&CLIENT_TRACE_ID) && roll < sampling.client => {
            Decision::ClientForced
        }
        None if headers.contains_key(&FORCE_TRACE) => Decision::ServiceForced,
        None if bucket < sampling.random => Decision::Sampled,
        None => Decision::NotTraced,
    };
    let decided = if decided.traced() && bucket >= sampling.overall {
        Decision::NotTraced
    } else {
        decided
    };
    mark(headers, &id, decided);
    decided
}

/// The request id's stable place among 10,000: its first eight hex digits.
fn bucket(id: &[u8; 36]) -> Option<u32> {
    if id[8] != b'-' {
        return None;
    }
    let text = std::str::from_utf8(&id[..8]).ok()?;
    let value = u32::from_str_radix(text, 16).ok()?;
    Some(value % 10_000)
}

fn mark(headers: &mut HeaderMap, id: &[u8; 36], decided: Decision) {
    if id[MARK] == decided.mark() {
        return;
    }
    let mut marked = *id;
    marked[MARK] = decided.mark();
    if let Ok(value) = HeaderValue::from_bytes(&marked) {
        headers.insert(REQUEST_ID.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static(id));
        h
    }

    // 0x00001388 = 5,000: bucket 5,000 of 10,000.
    const MIDDLE: &str = "00001388-0000-4000-8000-000000000000";

    #[test]
    fn a_fresh_id_is_traced_when_its_bucket_is_under_the_random_share() {
        let half = Sampling {
            random: 5_001,
            ..Sampling::everything()
        };
        let mut h = with_id(MIDDLE);
        assert_eq!(decide(&mut h, &half, 0), Decision::Sampled);
        assert_eq!(h["x-request-id"], "00001388-0000-9000-8000-000000000000");
        let under = Sampling {
            random: 5_000,
            ..half
        };
        let mut h = with_id(MIDDLE);
        assert_eq!(decide(&mut h, &under, 0), Decision::NotTraced);
        assert_eq!(h["x-request-id"], MIDDLE);
    }

    #[test]
    fn a_marked_id_keeps_its_decision_whatever_the_share() {
        let none = Sampling {
            random: 0,
            ..Sampling::everything()
        };
        let mut h = with_id("00001388-0000-9000-8000-000000000000");
        assert_eq!(decide(&mut h, &none, 0), Decision::Sampled);
    }

    #[test]
    fn forcing_headers_trace_what_the_share_would_not() {
        let none = Sampling {
            random: 0,
            ..Sampling::everything()
        };
        let mut h = with_id(MIDDLE);
        h.insert("x-envoy-force-trace", HeaderValue::from_static("1"));
        assert_eq!(decide(&mut h, &none, 0), Decision::ServiceForced);
        assert_eq!(h["x-request-id"], "00001388-0000-a000-8000-000000000000");
        let mut h = with_id(MIDDLE);
        h.insert("x-client-trace-id", HeaderValue::from_static("mine"));
        assert_eq!(decide(&mut h, &none, 0), Decision::ClientForced);
    }

    #[test]
    fn the_overall_cap_and_ids_that_are_not_uuids_untrace() {
        let capped = Sampling {
            overall: 100,
            ..Sampling::everything()
        };
        let mut h = with_id("00001388-0000-9000-8000-000000000000");
        assert_eq!(decide(&mut h, &capped, 0), Decision::NotTraced);
        assert_eq!(h["x-request-id"], MIDDLE);
        let mut h = with_id("my-own-request-id");
        assert_eq!(
            decide(&mut h, &Sampling::everything(), 0),
            Decision::NotTraced
        );
        assert_eq!(
            decide(&mut HeaderMap::new(), &Sampling::everything(), 0),
            Decision::NotTraced
        );
    }
}
