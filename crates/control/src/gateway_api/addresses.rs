//! Which Services' pods serve a Gateway, and what its status says of them:
//! a managed Gateway (no address, or one IP address) is served by its
//! `<name>-istio` Service, an unmanaged one by the Services its `Hostname`
//! addresses name, in its own namespace (as istiod looks them up; a short
//! name is in that namespace too).

use std::sync::Arc;

use oxmesh_config::gateway_api as api;
use oxmesh_config::hostname::Hostname;
use oxmesh_config::selector::Labels;
use oxmesh_config::service::Service;

use super::World;
use super::status::Condition;

pub(super) struct Addressing<'a> {
    /// The Services asked for, by host name.
    hosts: Vec<String>,
    /// Those found in the Gateway's namespace.
    pub services: Vec<&'a Arc<Service>>,
    /// Why some asked-for Service cannot serve (yet).
    warnings: Vec<String>,
    /// Addresses of a type other than `Hostname`, skipped.
    unsupported: Vec<String>,
}

impl<'a> Addressing<'a> {
    pub fn of(world: &World<'a>, namespace: &str, name: &str, gateway: &api::Gateway) -> Self {
        let is_hostname = |a: &&api::GatewayAddress| a.address_type.as_deref() == Some("Hostname");
        // Istio's `IsManaged`: no address, or one IP address (the
        // deployment's Service is asked for it).
        let managed = match gateway.addresses.as_slice() {
            [] => true,
            [only] => matches!(only.address_type.as_deref(), None | Some("IPAddress")),
            _ => false,
        };
        let hosts: Vec<String> = if managed {
            vec![format!("{name}-istio.{namespace}.svc.{}", world.domain)]
        } else {
            gateway
                .addresses
                .iter()
                .filter(is_hostname)
                .filter_map(|a| a.value.as_deref())
                .map(|v| {
                    if v.contains('.') {
                        v.to_owned()
                    } else {
                        format!("{v}.{namespace}.svc.{}", world.domain)
                    }
                })
                .collect()
        };
        let unsupported = if managed {
            Vec::new()
        } else {
            gateway
                .addresses
                .iter()
                .filter(|a| !is_hostname(a))
                .filter_map(|a| a.value.clone())
                .collect()
        };
        let mut addressing = Addressing {
            hosts: Vec::new(),
            services: Vec::new(),
            warnings: Vec::new(),
            unsupported,
        };
        for host in hosts {
            addressing.look_up(world, namespace, host);
        }
        addressing
    }

    fn look_up(&mut self, world: &World<'a>, namespace: &str, host: String) {
        let everywhere: Vec<&'a Arc<Service>> =
            world.registry.services_for(&Hostname::new(&host)).collect();
        match everywhere.iter().find(|s| s.namespace == namespace) {
            Some(service) => {
                let has_instances = service
                    .ports
                    .iter()
                    .any(|p| !world.registry.endpoints(service, p.number).is_empty());
                if !has_instances {
                    self.warnings
                        .push(format!("no instances found for hostname {host:?}"));
                }
                self.services.push(service);
            }
            None if everywhere.is_empty() => {
                self.warnings.push(format!("hostname {host:?} not found"));
            }
            None => {
                let elsewhere: Vec<&str> =
                    everywhere.iter().map(|s| s.namespace.as_str()).collect();
                self.warnings.push(format!(
                    "hostname {host:?} not found in namespace {namespace:?}, but it was found in namespace(s) {elsewhere:?}"
                ));
            }
        }
        self.hosts.push(host);
    }

    /// The labels of the pods that serve the Gateway: the first Service's
    /// selector (none: no pod serves it).
    pub fn selector(&self) -> Labels {
        self.services
            .iter()
            .find_map(|s| s.selector.clone())
            .unwrap_or_default()
    }

    /// `status.addresses`: the Services' cluster IPs, or their host names.
    pub fn addresses(&self) -> Vec<(&'static str, String)> {
        self.services
            .iter()
            .flat_map(|s| {
                if s.addresses.is_empty() {
                    vec![("Hostname", s.hostname.to_string())]
                } else {
                    s.addresses
                        .iter()
                        .map(|a| ("IPAddress", a.to_string()))
                        .collect()
                }
            })
            .collect()
    }

    /// Accepted is refused for addresses of an unsupported type.
    pub fn unsupported(&self) -> Option<Condition> {
        (!self.unsupported.is_empty()).then(|| {
            Condition::fails(
                "Accepted",
                "UnsupportedAddress",
                format!(
                    "only Hostname is supported, ignoring {:?}",
                    self.unsupported
                ),
            )
        })
    }

    /// `Programmed`, as istiod words it: assigned to each Service's ports
    /// the listeners use, or why not.
    pub fn programmed(&self, ports: &[u16]) -> Condition {
        let assigned: Vec<String> = self
            .services
            .iter()
            .flat_map(|s| ports.iter().map(move |p| format!("{}:{p}", s.hostname)))
            .collect();
        if self.hosts.is_empty() {
            return Condition::fails(
                "Programmed",
                "UnsupportedAddress",
                "Failed to assign to any requested addresses",
            );
        }
        if !self.warnings.is_empty() {
            let warnings = self.warnings.join("; ");
            let message = if assigned.is_empty() {
                format!("Failed to assign to any requested addresses: {warnings}")
            } else {
                format!(
                    "Assigned to service(s) {}, but failed to assign to all requested addresses: {warnings}",
                    human_join(&assigned)
                )
            };
            return Condition::fails("Programmed", "AddressNotAssigned", message);
        }
        let message = if assigned.is_empty() {
            "Resource programmed".to_owned()
        } else {
            format!(
                "Resource programmed, assigned to service(s) {}",
                human_join(&assigned)
            )
        };
        Condition::holds("Programmed", "Programmed", message)
    }
}

/// `a`, `a and b`, `a, b, and c`.
fn human_join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}
