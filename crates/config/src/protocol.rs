//! Which protocol a service port speaks: from its name prefix (`http-web`), its
//! `appProtocol`, or the protocol field of Istio objects. Unknown means the proxy
//! detects it from the first bytes.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Mysql,
    Redis,
    /// Not named: detected from traffic.
    Unknown,
}

impl Protocol {
    /// A protocol name as Istio spells it (case-insensitive).
    pub fn parse(name: &str) -> Protocol {
        match name.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" => Protocol::Http,
            "http2" | "h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "mysql" => Protocol::Mysql,
            "redis" => Protocol::Redis,
            _ => Protocol::Unknown,
        }
    }

    /// Istio's port naming convention: `<protocol>[-<suffix>]`.
    pub fn from_port_name(name: &str) -> Protocol {
        let lower = name.to_ascii_lowercase();
        if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            return Protocol::GrpcWeb;
        }
        Protocol::parse(lower.split('-').next().unwrap_or_default())
    }

    /// A Kubernetes `appProtocol`, which wins over the port name.
    pub fn from_app_protocol(app_protocol: &str) -> Protocol {
        match app_protocol {
            "kubernetes.io/h2c" => Protocol::Http2,
            "kubernetes.io/ws" | "kubernetes.io/wss" => Protocol::Http,
            other => Protocol::parse(other),
        }
    }

    /// The protocol of a Kubernetes service port.
    pub fn of_service_port(name: Option<&str>, app_protocol: Option<&str>) -> Protocol {
        match app_protocol.map(Protocol::from_app_protocol) {
            Some(p) if p != Protocol::Unknown => p,
            _ => name.map_or(Protocol::Unknown, Protocol::from_port_name),
        }
    }

    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Protocols carried over TCP that Istio treats as opaque streams.
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::Mysql
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Mongo => "Mongo",
            Protocol::Mysql => "MySQL",
            Protocol::Redis => "Redis",
            Protocol::Unknown => "UnsupportedProtocol",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_names() {
        assert_eq!(Protocol::from_port_name("http"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("http-web"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("HTTP2"), Protocol::Http2);
        assert_eq!(Protocol::from_port_name("grpc-web-ui"), Protocol::GrpcWeb);
        assert_eq!(Protocol::from_port_name("grpc-api"), Protocol::Grpc);
        assert_eq!(Protocol::from_port_name("tcp-db"), Protocol::Tcp);
        assert_eq!(Protocol::from_port_name("web"), Protocol::Unknown);
        assert_eq!(
            Protocol::of_service_port(Some("web"), Some("http")),
            Protocol::Http
        );
        assert_eq!(
            Protocol::of_service_port(Some("tcp"), Some("kubernetes.io/h2c")),
            Protocol::Http2
        );
    }
}
