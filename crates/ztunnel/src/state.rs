//! What the node proxy knows of the mesh, converted from the workload API at
//! the edge (a resource that does not convert is refused, naming it) and
//! held as one immutable snapshot: a connection looks up its workloads,
//! services and policies in the snapshot it started with.

mod convert;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use oxmesh_identity::SpiffeId;

pub(crate) use convert::ip as convert_ip;
pub use convert::{ConvertError, Converted};

use crate::rbac::Policy;

/// How a workload takes mesh traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Plain TCP: it is not in ambient (or has a sidecar that speaks mTLS
    /// itself).
    Tcp,
    /// Its node proxy (or the workload itself) takes HBONE on 15008.
    Hbone,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    pub protocol: Protocol,
    pub identity: SpiffeId,
    pub node: String,
    /// `namespace/name` of the selector policies that select it.
    pub policies: Vec<String>,
    /// Service `namespace/hostname` to its (service port, target port) pairs.
    pub services: HashMap<String, Vec<(u16, u16)>>,
    pub healthy: bool,
    /// What telemetry names it by.
    pub workload_name: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub cluster_id: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    /// Service port to target port (0: the workload's own, per workload).
    pub ports: Vec<(u16, u16)>,
}

impl Service {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// One consistent view of the mesh.
#[derive(Debug, Default)]
pub struct State {
    workloads: HashMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    policies: HashMap<String, Arc<Policy>>,
}

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Destination {
    /// To a workload through its node proxy: HBONE to `hbone` (its address,
    /// 15008) for `authority` (its address and the target port).
    Hbone {
        workload: Arc<Workload>,
        hbone: SocketAddr,
        authority: SocketAddr,
    },
    /// Plaintext to this address: not in the mesh, or not in ambient
    /// (`workload` when it is a known one).
    Direct {
        to: SocketAddr,
        workload: Option<Arc<Workload>>,
    },
}

impl State {
    pub fn new(
        workloads: impl IntoIterator<Item = Workload>,
        services: impl IntoIterator<Item = Service>,
        policies: impl IntoIterator<Item = Policy>,
    ) -> Self {
        let mut state = State::default();
        for w in workloads {
            let w = Arc::new(w);
            for ip in &w.addresses {
                state.by_ip.insert(*ip, w.clone());
            }
            state.workloads.insert(w.uid.clone(), w);
        }
        for s in services {
            let s = Arc::new(s);
            for vip in &s.vips {
                state.by_vip.insert(*vip, s.clone());
            }
            state.services.insert(s.key(), s);
        }
        for p in policies {
            state.policies.insert(p.key(), Arc::new(p));
        }
        state
    }

    pub fn workload_at(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// The service whose VIP `ip` is.
    pub fn service_at(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// A service by `namespace/hostname`.
    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// The policies that apply to a workload, as ztunnel gathers them: the
    /// mesh-wide ones, its namespace's, and the selector ones it names.
    pub fn policies_for<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Policy> {
        let named = workload
            .policies
            .iter()
            .filter_map(|key| self.policies.get(key));
        let scoped = self
            .policies
            .values()
            .filter(|p| p.applies_by_scope(&workload.namespace));
        scoped.chain(named).map(AsRef::as_ref)
    }

    /// Where a connection to `dst` goes: a service VIP is resolved to one
    /// of its healthy workloads (`pick` chooses among them), a workload
    /// address to that workload; HBONE when the workload takes it.
    pub fn destination(&self, dst: SocketAddr, pick: impl FnOnce(usize) -> usize) -> Destination {
        if let Some(service) = self.by_vip.get(&dst.ip()) {
            let port = dst.port();
            let target = service
                .ports
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, t)| *t);
            let key = service.key();
            let mut backends: Vec<(&Arc<Workload>, u16)> = self
                .workloads
                .values()
                .filter(|w| w.healthy && !w.addresses.is_empty())
                .filter_map(|w| {
                    let ports = w.services.get(&key)?;
                    let own = ports.iter().find(|(p, _)| *p == port).map(|(_, t)| *t);
                    Some((w, own.or(target).filter(|t| *t != 0)?))
                })
                .collect();
            backends.sort_by(|a, b| a.0.uid.cmp(&b.0.uid));
            let chosen =
                (!backends.is_empty()).then(|| backends[pick(backends.len()) % backends.len()]);
            return chosen
                .and_then(|(workload, port)| {
                    let ip = workload.addresses.first().copied()?;
                    Some(to_workload(workload, ip, port))
                })
                .unwrap_or(Destination::Direct {
                    to: dst,
                    workload: None,
                });
        }
        match self.by_ip.get(&dst.ip()) {
            Some(workload) => to_workload(workload, dst.ip(), dst.port()),
            None => Destination::Direct {
                to: dst,
                workload: None,
            },
        }
    }
}

fn to_workload(workload: &Arc<Workload>, ip: IpAddr, port: u16) -> Destination {
    match workload.protocol {
        Protocol::Hbone => Destination::Hbone {
            workload: workload.clone(),
            hbone: SocketAddr::new(ip, oxmesh_proxy::hbone::PORT),
            authority: SocketAddr::new(ip, port),
        },
        Protocol::Tcp => Destination::Direct {
            to: SocketAddr::new(ip, port),
            workload: Some(workload.clone()),
        },
    }
}

#[cfg(test)]
mod tests;
