//! SPIFFE identities as Istio uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an Istio SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE id: it must start with spiffe://")]
    Scheme(String),
    #[error("{id:?} has an invalid trust domain: {reason}")]
    TrustDomain {
        id: String,
        reason: TrustDomainError,
    },
    #[error(
        "{0:?} is not an Istio workload identity: the path must be /ns/<namespace>/sa/<service-account>"
    )]
    Path(String),
    #[error("{id:?} has an invalid {what} {value:?}: {reason}")]
    Segment {
        id: String,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("SPIFFE id is longer than 2048 bytes")]
    TooLong,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustDomainError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than 255 characters")]
    TooLong,
    #[error("{0:?} is not allowed (lower-case letters, digits, '.', '-' and '_' only)")]
    Character(char),
}

/// A SPIFFE trust domain, such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(name: &str) -> Result<Self, TrustDomainError> {
        if name.is_empty() {
            return Err(TrustDomainError::Empty);
        }
        if name.len() > 255 {
            return Err(TrustDomainError::TooLong);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(TrustDomainError::Character(c));
        }
        Ok(Self(name.to_owned()))
    }

    /// Istio's default trust domain.
    pub fn cluster_local() -> Self {
        Self("cluster.local".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = TrustDomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A workload identity: trust domain, namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let id = || format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_segment(namespace, "namespace", &id)?;
        check_segment(service_account, "service account", &id)?;
        Ok(Self {
            trust_domain,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The same workload in another trust domain (for trust-domain aliases).
    pub fn with_trust_domain(&self, trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            ..self.clone()
        }
    }
}

fn check_segment(
    value: &str,
    what: &'static str,
    id: &dyn Fn() -> String,
) -> Result<(), SpiffeIdError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value == "." || value == ".." {
        Some("'.' and '..' are not allowed")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        Some("only letters, digits, '.', '-' and '_' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpiffeIdError::Segment {
            id: id(),
            what,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let trust_domain =
            TrustDomain::new(domain).map_err(|reason| SpiffeIdError::TrustDomain {
                id: s.to_owned(),
                reason,
            })?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", namespace, "sa", account] => Self::new(trust_domain, namespace, account),
            _ => Err(SpiffeIdError::Path(s.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_istio_identities() {
        let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/bar"
            .parse()
            .expect("valid");
        assert_eq!(id.namespace(), "foo");
        assert_eq!(id.service_account(), "bar");
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/bar");
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases = [
            (
                "http://cluster.local/ns/a/sa/b",
                "must start with spiffe://",
            ),
            ("spiffe:///ns/a/sa/b", "it is empty"),
            ("spiffe://Cluster.local/ns/a/sa/b", "'C' is not allowed"),
            (
                "spiffe://cluster.local/ns/a",
                "the path must be /ns/<namespace>/sa/<service-account>",
            ),
            ("spiffe://cluster.local/ns/a/sa/b/", "the path must be"),
            ("spiffe://cluster.local/ns//sa/b", "invalid namespace \"\""),
            (
                "spiffe://cluster.local/ns/a/sa/..",
                "'.' and '..' are not allowed",
            ),
            ("spiffe://cluster.local/ns/a/sa/b%20c", "only letters"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<SpiffeId>().expect_err(input).to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }
}
