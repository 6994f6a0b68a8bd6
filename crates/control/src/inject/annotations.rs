//! What a pod's annotations ask of its sidecar, read and checked as Istio's
//! injector reads them. A value Istio refuses is refused here, with its name.

use oxmesh_config::validation::syntax::{self, Check};
use serde_json::{Map, Value};

use super::InjectError;

/// Interception settings from the `traffic.sidecar.istio.io/*` annotations,
/// as `oxmesh iptables` flags take them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub include_inbound_ports: Option<String>,
    pub exclude_inbound_ports: Option<String>,
    pub include_outbound_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub include_outbound_ranges: Option<String>,
    pub exclude_outbound_ranges: Option<String>,
    pub interception_mode: Option<String>,
    /// Interfaces whose incoming traffic is the pod's outbound (KubeVirt VMs).
    pub reroute_interfaces: Option<String>,
}

/// The proxy's readiness probe (`status.sidecar.istio.io/port` and
/// `readiness.status.sidecar.istio.io/*`); port 0 turns it off.
#[derive(Debug, PartialEq, Eq)]
pub struct Readiness {
    pub port: u16,
    pub initial_delay_seconds: u64,
    pub period_seconds: u64,
    pub failure_threshold: u64,
}

/// `sidecar.istio.io/proxyCPU` and friends: Kubernetes quantities.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

pub struct Annotations<'a> {
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Annotations<'a> {
    pub fn of(metadata: &'a Value) -> Self {
        Self {
            map: metadata.get("annotations").and_then(Value::as_object),
        }
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.map?.get(name)?.as_str()
    }

    pub fn traffic(&self) -> Result<Traffic, InjectError> {
        let ports = |name: &str, star: bool| -> Result<Option<String>, InjectError> {
            self.checked(name, |v| each(v, star, port))
        };
        let ranges = |name: &str, star: bool| -> Result<Option<String>, InjectError> {
            self.checked(name, |v| each(v, star, cidr))
        };
        let interfaces = |v: &str| each(v, false, syntax::interface_name);
        const T: &str = "traffic.sidecar.istio.io/";
        Ok(Traffic {
            include_inbound_ports: ports(&format!("{T}includeInboundPorts"), true)?,
            exclude_inbound_ports: ports(&format!("{T}excludeInboundPorts"), false)?,
            include_outbound_ports: ports(&format!("{T}includeOutboundPorts"), false)?,
            exclude_outbound_ports: ports(&format!("{T}excludeOutboundPorts"), false)?,
            include_outbound_ranges: ranges(&format!("{T}includeOutboundIPRanges"), true)?,
            exclude_outbound_ranges: ranges(&format!("{T}excludeOutboundIPRanges"), false)?,
            // Istio's current name first, then the older one.
            reroute_interfaces: match self
                .checked("istio.io/reroute-virtual-interfaces", interfaces)?
            {
                Some(list) => Some(list),
                None => self.checked(&format!("{T}kubevirtInterfaces"), interfaces)?,
            },
            interception_mode: self.checked("sidecar.istio.io/interceptionMode", |v| match v {
                "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
                _ => Err("use REDIRECT, TPROXY or NONE".into()),
            })?,
        })
    }

    pub fn readiness(&self) -> Result<Readiness, InjectError> {
        let number = |name: &str, default: u64| -> Result<u64, InjectError> {
            match self.get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| invalid(name, v, "not a whole number")),
            }
        };
        const R: &str = "readiness.status.sidecar.istio.io/";
        let port = number("status.sidecar.istio.io/port", 15021)?;
        let port = u16::try_from(port).map_err(|_| {
            invalid(
                "status.sidecar.istio.io/port",
                &port.to_string(),
                "not a port",
            )
        })?;
        Ok(Readiness {
            port,
            initial_delay_seconds: number(&format!("{R}initialDelaySeconds"), 0)?,
            period_seconds: number(&format!("{R}periodSeconds"), 15)?,
            failure_threshold: number(&format!("{R}failureThreshold"), 4)?,
        })
    }

    pub fn resources(&self) -> Result<Resources, InjectError> {
        let quantity = |name: &str| self.checked(name, check_quantity);
        const S: &str = "sidecar.istio.io/";
        Ok(Resources {
            cpu: quantity(&format!("{S}proxyCPU"))?,
            memory: quantity(&format!("{S}proxyMemory"))?,
            cpu_limit: quantity(&format!("{S}proxyCPULimit"))?,
            memory_limit: quantity(&format!("{S}proxyMemoryLimit"))?,
        })
    }

    /// The annotation's value once `check` accepts it.
    fn checked(
        &self,
        name: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Option<String>, InjectError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                check(v).map_err(|reason| invalid(name, v, &reason))?;
                Ok(Some(v.trim().to_owned()))
            }
        }
    }
}

fn invalid(name: &str, value: &str, reason: &str) -> InjectError {
    InjectError::Annotation {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Comma-separated items, each passing `check`; `*` (everything) where the
/// annotation allows it; empty is none.
fn each(value: &str, star: bool, check: impl Fn(&str) -> Check) -> Check {
    let value = value.trim();
    if star && value == "*" {
        return Ok(());
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .try_for_each(check)
}

fn port(item: &str) -> Check {
    let number = item
        .parse::<u32>()
        .map_err(|_| format!("{item:?} is not a port (1-65535)"))?;
    syntax::port(number)
}

/// A CIDR block: Istio's annotations take no bare address.
fn cidr(item: &str) -> Check {
    if !item.contains('/') {
        return Err(format!("{item:?} is not a CIDR (address/prefix)"));
    }
    syntax::ip_subnet(item)
}

/// A Kubernetes quantity: a number with an optional SI or binary suffix.
fn check_quantity(value: &str) -> Result<(), String> {
    quantity(value).map(|_| ()).ok_or_else(|| {
        format!(
            "{:?} is not a Kubernetes quantity (like 100m, 128Mi)",
            value.trim()
        )
    })
}

/// A Kubernetes quantity's value in base units (cores, bytes).
pub fn quantity(value: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let value = value.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, scale)| value.strip_suffix(s).map(|n| (n, *scale)))
        .unwrap_or((value, 1.0));
    number
        .parse::<f64>()
        .ok()
        .filter(|n| *n >= 0.0)
        .map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(name: &str, value: &str) -> Value {
        json!({"annotations": {name: value}})
    }

    #[test]
    fn traffic_annotations_are_checked_as_istio_does() {
        let ok = with("traffic.sidecar.istio.io/includeInboundPorts", "1,2,3");
        assert_eq!(
            Annotations::of(&ok)
                .traffic()
                .map(|t| t.include_inbound_ports),
            Ok(Some("1,2,3".into()))
        );
        let star_in = with("traffic.sidecar.istio.io/includeOutboundIPRanges", "*");
        assert!(Annotations::of(&star_in).traffic().is_ok());
        // Exclusions take no `*`: Istio refuses it.
        let star_out = with("traffic.sidecar.istio.io/excludeOutboundIPRanges", "*");
        let err = Annotations::of(&star_out).traffic().map(|_| ());
        assert!(
            matches!(&err, Err(InjectError::Annotation { name, .. }) if name.ends_with("excludeOutboundIPRanges")),
            "{err:?}"
        );
        let bad_port = with("traffic.sidecar.istio.io/includeInboundPorts", "bad");
        assert!(Annotations::of(&bad_port).traffic().is_err());
        let vm = with("istio.io/reroute-virtual-interfaces", "net1,..");
        assert!(
            Annotations::of(&vm).traffic().is_err(),
            "`..` is refused as `oxmesh iptables -k` refuses it"
        );
        let near_miss = with(
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.0/8, ::1/128",
        );
        assert!(Annotations::of(&near_miss).traffic().is_ok());
    }

    #[test]
    fn quantities_and_probe_settings() {
        let cpu = with("sidecar.istio.io/proxyCPU", "4000m");
        assert_eq!(
            Annotations::of(&cpu).resources().map(|r| r.cpu),
            Ok(Some("4000m".into()))
        );
        let bad = with("sidecar.istio.io/proxyMemory", "lots");
        assert!(Annotations::of(&bad).resources().is_err());
        let off = with("status.sidecar.istio.io/port", "0");
        assert_eq!(Annotations::of(&off).readiness().map(|r| r.port), Ok(0));
    }
}
