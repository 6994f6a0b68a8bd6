//! The local testbed's network: a private "cluster" namespace holding a bridge, and
//! one network namespace per pod joined to it by a veth pair. Pod addresses come
//! from 198.18.0.0/16, and 2001:2::/64 for IPv6, and Service VIPs from
//! 198.19.0.0/16 (ranges reserved for benchmarking networks); nothing is routed
//! or NATed to the host's network.
//! Everything created is removed on drop, also when a test fails.
//!
//! [`Network`] is the network half; [`cluster`] runs manifests on it (`oxmesh
//! up`), with [`plan`] deciding pods and VIPs and [`dns`] answering for Services.
//! End-to-end tests use both.

pub mod cluster;
pub mod dns;
pub mod istio_ztunnel;
pub mod manifest;
mod netns;
pub mod plan;
pub mod probe;
pub mod prometheus;
mod readiness;
pub mod relay;
pub mod running;

pub use netns::{Netns, TestbedError};

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Pod addresses: 198.18.0.0/16.
pub const POD_PREFIX_LEN: u8 = 16;
/// Service VIPs, reached through each pod's route into the bridge.
pub const SERVICE_RANGE: &str = "198.19.0.0/16";

const BRIDGE: &str = "br0";

/// A cluster network. Pods are dropped before the hub, so their veths go first.
pub struct Network {
    tag: String,
    pods: Vec<(String, Netns)>,
    hub: Netns,
}

impl Network {
    /// A new, empty network; `tag` keeps names apart between tests.
    pub fn new(tag: &str) -> Result<Self, TestbedError> {
        let tag = format!("{tag}-{}", std::process::id());
        let hub = Netns::create(&format!("oxm-{tag}-hub"))?;
        hub.run("ip", &["link", "set", "lo", "up"])?;
        hub.run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        hub.run("ip", &["link", "set", BRIDGE, "up"])?;
        Ok(Self {
            tag,
            pods: Vec::new(),
            hub,
        })
    }

    /// A pod namespace at `ip` on the bridge, with loopback up and a route to the
    /// Service range.
    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr) -> Result<&Netns, TestbedError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pod = Netns::create(&format!("oxm-{}-{name}", self.tag))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes.
        let outside = format!("oxv{}x{n}", std::process::id() % 100_000);
        let inside = format!("{outside}p");
        run_host(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ],
        )?;
        run_host("ip", &["link", "set", &outside, "netns", self.hub.name()])?;
        run_host("ip", &["link", "set", &inside, "netns", pod.name()])?;
        self.hub
            .run("ip", &["link", "set", &outside, "master", BRIDGE])?;
        self.hub.run("ip", &["link", "set", &outside, "up"])?;
        pod.run("ip", &["link", "set", "lo", "up"])?;
        pod.run("ip", &["link", "set", &inside, "name", "eth0"])?;
        pod.run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{ip}/{POD_PREFIX_LEN}"),
                "dev",
                "eth0",
            ],
        )?;
        // Dual stack: the same pod in 2001:2::/64 (no duplicate-address wait).
        pod.run(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{}/64", ipv6_of(ip)),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        pod.run("ip", &["link", "set", "eth0", "up"])?;
        pod.run("ip", &["route", "add", SERVICE_RANGE, "dev", "eth0"])?;
        self.pods.push((name.to_owned(), pod));
        Ok(self.pods.last().map_or(&self.hub, |(_, ns)| ns))
    }

    /// Removes the pod `name`: its processes, its namespace and veth pair.
    pub fn remove_pod(&mut self, name: &str) {
        self.pods.retain(|(n, _)| n != name);
    }

    /// The pod namespace added as `name`.
    pub fn pod(&self, name: &str) -> Option<&Netns> {
        self.pods.iter().find(|(n, _)| n == name).map(|(_, ns)| ns)
    }
}

/// A pod's IPv6 address: its IPv4 address's low 16 bits in 2001:2::/64
/// (198.18.0.4 is 2001:2::4).
pub fn ipv6_of(ip: Ipv4Addr) -> std::net::Ipv6Addr {
    let low = u32::from(ip) & 0xffff;
    std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, u16::try_from(low).unwrap_or(0))
}

impl Drop for Network {
    fn drop(&mut self) {
        // Pods first: deleting a pod namespace removes its veth pair.
        self.pods.clear();
    }
}

fn run_host(program: &str, args: &[&str]) -> Result<(), TestbedError> {
    netns::check(program, args, Command::new(program).args(args).output())
}
