//! Istio's analysis message codes, names and levels.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warning" => Some(Level::Warning),
            "info" => Some(Level::Info),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    ReferencedResourceNotFound,
    NamespaceNotInjected,
    SchemaValidationError,
    ConflictingMeshGatewayVirtualServiceHosts,
    ConflictingSidecarWorkloadSelectors,
    MultipleSidecarsWithoutWorkloadSelectors,
    VirtualServiceDestinationPortSelectorRequired,
    PortNameIsNotUnderNamingConvention,
    NoMatchingWorkloadsFound,
    NoServerCertificateVerificationDestinationLevel,
    NoServerCertificateVerificationPortLevel,
    VirtualServiceUnreachableRule,
    VirtualServiceIneffectiveMatch,
    VirtualServiceHostNotFoundInGateway,
    SchemaValidationWarning,
    ConflictingGateways,
}

impl Code {
    pub const ALL: [Code; 16] = [
        Code::ReferencedResourceNotFound,
        Code::NamespaceNotInjected,
        Code::SchemaValidationError,
        Code::ConflictingMeshGatewayVirtualServiceHosts,
        Code::ConflictingSidecarWorkloadSelectors,
        Code::MultipleSidecarsWithoutWorkloadSelectors,
        Code::VirtualServiceDestinationPortSelectorRequired,
        Code::PortNameIsNotUnderNamingConvention,
        Code::NoMatchingWorkloadsFound,
        Code::NoServerCertificateVerificationDestinationLevel,
        Code::NoServerCertificateVerificationPortLevel,
        Code::VirtualServiceUnreachableRule,
        Code::VirtualServiceIneffectiveMatch,
        Code::VirtualServiceHostNotFoundInGateway,
        Code::SchemaValidationWarning,
        Code::ConflictingGateways,
    ];

    pub fn id(self) -> &'static str {
        self.facts().0
    }

    pub fn name(self) -> &'static str {
        self.facts().1
    }

    pub fn level(self) -> Level {
        self.facts().2
    }

    pub fn from_id(id: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Where Istio documents the message.
    pub fn documentation_url(self) -> String {
        format!(
            "https://istio.io/latest/docs/reference/config/analysis/{}/",
            self.id().to_ascii_lowercase()
        )
    }

    fn facts(self) -> (&'static str, &'static str, Level) {
        match self {
            Code::ReferencedResourceNotFound => {
                ("IST0101", "ReferencedResourceNotFound", Level::Error)
            }
            Code::NamespaceNotInjected => ("IST0102", "NamespaceNotInjected", Level::Info),
            Code::SchemaValidationError => ("IST0106", "SchemaValidationError", Level::Error),
            Code::ConflictingMeshGatewayVirtualServiceHosts => (
                "IST0109",
                "ConflictingMeshGatewayVirtualServiceHosts",
                Level::Error,
            ),
            Code::ConflictingSidecarWorkloadSelectors => (
                "IST0110",
                "ConflictingSidecarWorkloadSelectors",
                Level::Error,
            ),
            Code::MultipleSidecarsWithoutWorkloadSelectors => (
                "IST0111",
                "MultipleSidecarsWithoutWorkloadSelectors",
                Level::Error,
            ),
            Code::VirtualServiceDestinationPortSelectorRequired => (
                "IST0112",
                "VirtualServiceDestinationPortSelectorRequired",
                Level::Error,
            ),
            Code::PortNameIsNotUnderNamingConvention => {
                ("IST0118", "PortNameIsNotUnderNamingConvention", Level::Info)
            }
            Code::NoMatchingWorkloadsFound => {
                ("IST0127", "NoMatchingWorkloadsFound", Level::Warning)
            }
            Code::NoServerCertificateVerificationDestinationLevel => (
                "IST0128",
                "NoServerCertificateVerificationDestinationLevel",
                Level::Warning,
            ),
            Code::NoServerCertificateVerificationPortLevel => (
                "IST0129",
                "NoServerCertificateVerificationPortLevel",
                Level::Warning,
            ),
            Code::VirtualServiceUnreachableRule => {
                ("IST0130", "VirtualServiceUnreachableRule", Level::Warning)
            }
            Code::VirtualServiceIneffectiveMatch => {
                ("IST0131", "VirtualServiceIneffectiveMatch", Level::Info)
            }
            Code::VirtualServiceHostNotFoundInGateway => (
                "IST0132",
                "VirtualServiceHostNotFoundInGateway",
                Level::Warning,
            ),
            Code::SchemaValidationWarning => ("IST0133", "SchemaValidationWarning", Level::Warning),
            Code::ConflictingGateways => ("IST0145", "ConflictingGateways", Level::Error),
        }
    }
}
