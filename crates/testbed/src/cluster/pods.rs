//! A pod's life on the testbed: its network namespace, DNS and (with a
//! sidecar) interception rules, the proxy, the app's processes and probes;
//! and its end, as Kubernetes ends a pod: out of its Services' endpoints
//! first, SIGTERM to every container, SIGKILL for what is left when the
//! grace period is over, then the namespace goes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Cluster, Options, UpError, netns_command, write};
use crate::manifest;
use crate::plan::{
    Check, DNS_IP, DNS_VIP, INGRESS_HTTP_PORT, INGRESS_HTTPS_PORT, PodId, PodPlan, Probe,
};

/// The chain holding a pod's Service rules (kube-proxy's `KUBE-SERVICES`).
const SERVICES_CHAIN: &str = "OXMESH-SERVICES";

/// The sidecar's readiness, as the injected container declares it (Istio:
/// `/healthz/ready` on 15021; every second here, so tests start quickly).
fn sidecar_probe() -> Probe {
    Probe {
        check: Check::Http {
            port: 15021,
            path: "/healthz/ready".to_owned(),
        },
        period: Duration::from_secs(1),
        initial_delay: Duration::ZERO,
    }
}

impl Cluster {
    pub(crate) fn start_pod(&mut self, options: &Options, pod: &PodPlan) -> Result<(), UpError> {
        let id = pod.id();
        let ns = self.add_pod(&id, pod.ip)?;
        self.write_netns_files(&ns, &id, pod.ip)?;
        let netns = self
            .net
            .pod(&id.flat())
            .ok_or_else(|| UpError::Start("pod vanished".into()))?;
        self.pod_network(options, netns, pod)?;
        let ambient = self.plan.is_ambient(pod);
        if ambient {
            self.enroll(pod)?;
        }
        if pod.injected {
            self.start_proxy(options, &ns, pod)?;
        } else if pod.gateway {
            self.start_proxy(options, &ns, pod)?;
            // The host reaches the built-in ingress gateway only.
            if pod.is_builtin_ingress() {
                self.start_relay(options, &ns, &id)?;
            }
        }
        if pod.injected || pod.gateway {
            // The injected istio-proxy container's readiness probe.
            self.probes.add(options, &ns, pod, &sidecar_probe());
        }
        for container in &pod.containers {
            let mut argv = container.argv.clone();
            if argv[0] == "oxmesh" {
                argv[0] = options.binary.to_string_lossy().into_owned();
            }
            let container = &crate::plan::Container {
                argv,
                ..container.clone()
            };
            let mut c = netns_command(&ns, &container.argv[0]);
            c.args(&container.argv[1..])
                .env_clear()
                .envs(container.env.iter().cloned());
            c.env("PATH", std::env::var("PATH").unwrap_or_default());
            if pod.injected || ambient {
                // Held until the proxy is ready (holdApplicationUntilProxyStarts;
                // for an ambient pod, its node proxy).
                let wait = if ambient {
                    self.held_for_node_proxy()
                } else {
                    format!(
                        "{} proxy wait --timeout 60s",
                        options.binary.to_string_lossy()
                    )
                };
                let mut held = netns_command(&ns, "sh");
                held.arg("-c")
                    .arg(format!("{wait} && exec \"$@\""))
                    .arg("sh")
                    .args(&container.argv)
                    .env_clear()
                    .envs(container.env.iter().cloned())
                    .env("PATH", std::env::var("PATH").unwrap_or_default());
                c = held;
            }
            self.spawn(&id, &container.name, c)?;
            if let Some(probe) = &container.readiness {
                self.probes.add(options, &ns, pod, probe);
            }
        }
        Ok(())
    }

    fn start_proxy(&mut self, options: &Options, ns: &str, pod: &PodPlan) -> Result<(), UpError> {
        // The revision that injected the pod serves it.
        let control_plane = self
            .plan
            .control_planes
            .get(&pod.control_plane)
            .copied()
            .ok_or_else(|| {
                UpError::Invalid(format!(
                    "pod {}: no control plane of revision {}",
                    pod.id(),
                    pod.control_plane
                ))
            })?;
        let token_file = self.mint_token(&pod.id(), &pod.service_account, None)?;
        let labels = json!(pod.labels).to_string();
        let mut c = netns_command(ns, "setpriv");
        c.args(["--reuid=1337", "--regid=1337", "--clear-groups"]);
        if pod.tproxy {
            // Transparent sockets and marks, as Istio grants the sidecar
            // NET_ADMIN in TPROXY mode.
            c.args(["--inh-caps=+net_admin", "--ambient-caps=+net_admin"])
                .env("ISTIO_META_INTERCEPTION_MODE", "TPROXY");
        }
        c.arg(&options.binary)
            .args([
                "proxy",
                "--discovery-address",
                &format!("{control_plane}:15012"),
                "--control-plane-name",
                &super::control_plane_host(&pod.control_plane),
            ])
            .args(["--mode", if pod.gateway { "gateway" } else { "sidecar" }])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--root-cert")
            .arg(self.run.join("root-cert.pem"))
            .env("POD_NAME", &pod.name)
            .env("POD_NAMESPACE", &pod.namespace)
            .env("INSTANCE_IP", pod.ip.to_string())
            .env("SERVICE_ACCOUNT", &pod.service_account)
            .env("ISTIO_META_WORKLOAD_NAME", &pod.workload)
            .env("ISTIO_METAJSON_LABELS", labels);
        self.spawn(&pod.id(), "istio-proxy", c)
    }

    /// A token for `pod`'s `account` (bound to `node` when given), in the run
    /// directory as Kubernetes would mount it.
    pub(super) fn mint_token(
        &self,
        pod: &PodId,
        account: &str,
        node: Option<&str>,
    ) -> Result<PathBuf, UpError> {
        let token = Command::new(&self.options.binary)
            .args(["ca", "token", "--state-dir"])
            .arg(self.state.join("state"))
            .args(["-n", &pod.namespace, "--service-account", account])
            .args(node.iter().flat_map(|n| ["--node", n]))
            .output()
            .map_err(|e| UpError::Start(format!("oxmesh ca token: {e}")))?;
        let token_file = self.run.join(format!("{}.token", pod.flat()));
        write(
            &token_file,
            String::from_utf8_lossy(&token.stdout).trim().as_bytes(),
        )?;
        Ok(token_file)
    }

    /// The relays the host's ingress ports reach the gateway through: its
    /// HTTP port, and its HTTPS port (for `up --ingress-https-port`).
    fn start_relay(&mut self, options: &Options, ns: &str, pod: &PodId) -> Result<(), UpError> {
        let relays = [
            ("relay", self.ingress_socket(), INGRESS_HTTP_PORT),
            (
                "relay-https",
                self.ingress_https_socket(),
                INGRESS_HTTPS_PORT,
            ),
        ];
        for (container, socket, port) in relays {
            let mut c = netns_command(ns, &options.binary.to_string_lossy());
            c.args(["testbed-relay", "--socket"])
                .arg(socket)
                .args(["--to", &format!("127.0.0.1:{port}")]);
            self.spawn(pod, container, c)?;
        }
        Ok(())
    }

    /// The pod's own network rules: the sidecar's interception, then the
    /// Service rules (after it, as a node's rules come after a pod's, so
    /// what the sidecar passes through to a VIP reaches an endpoint); a
    /// gateway may bind low ports as its uid, as Istio's gateway template
    /// lets it (`net.ipv4.ip_unprivileged_port_start=0`).
    fn pod_network(
        &self,
        options: &Options,
        netns: &crate::Netns,
        pod: &PodPlan,
    ) -> Result<(), UpError> {
        if pod.injected {
            let mode = if pod.tproxy { "TPROXY" } else { "REDIRECT" };
            netns.run(&options.binary.to_string_lossy(), &["iptables", "-m", mode])?;
        }
        self.service_rules(netns)?;
        if pod.gateway {
            netns.run(
                "sh",
                &[
                    "-c",
                    "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
                ],
            )?;
        }
        Ok(())
    }

    /// The Unix socket that reaches the ingress gateway's HTTP port.
    pub fn ingress_socket(&self) -> PathBuf {
        self.run.join("ingress.sock")
    }

    pub fn ingress_https_socket(&self) -> PathBuf {
        self.run.join("ingress-https.sock")
    }

    /// What kube-proxy does on the node, here in each pod's namespace after
    /// its sidecar's rules: each Service VIP and port to one of its ready
    /// endpoints, chosen at random per connection; and cluster DNS. The
    /// rules live in a chain of their own that `OUTPUT` jumps to last
    /// (kube-proxy's `KUBE-SERVICES`), rewritten in one `iptables-restore`
    /// transaction, so a rebuild never leaves the pod a moment without
    /// rules and never touches the sidecar's.
    fn services_script(&self) -> String {
        // Declared with --noflush, the chain alone is emptied.
        let mut script = format!("*nat\n:{SERVICES_CHAIN} - [0:0]\n");
        for proto in ["udp", "tcp"] {
            script.push_str(&format!(
                "-A {SERVICES_CHAIN} -d {DNS_VIP}/32 -p {proto} --dport 53 -j DNAT --to-destination {DNS_IP}:53\n"
            ));
        }
        for service in &self.plan.services {
            let endpoints: Vec<&PodPlan> = self
                .plan
                .endpoints(service)
                .into_iter()
                .filter(|p| self.probes.is_ready(&p.id()))
                .collect();
            for port in service.ports.iter().filter(|p| p.tcp) {
                let n = endpoints.len();
                for (i, e) in endpoints.iter().enumerate() {
                    script.push_str(&format!(
                        "-A {SERVICES_CHAIN} -d {}/32 -p tcp --dport {}",
                        service.vip, port.port
                    ));
                    if i + 1 < n {
                        let probability = 1.0 / (n - i) as f64;
                        script.push_str(&format!(
                            " -m statistic --mode random --probability {probability:.5}"
                        ));
                    }
                    script.push_str(&format!(
                        " -j DNAT --to-destination {}:{}\n",
                        e.ip, port.target
                    ));
                }
            }
        }
        script.push_str("COMMIT\n");
        script
    }

    /// `resolv.conf` and `hosts` for the pod's processes (`ip netns exec` mounts
    /// `/etc/netns/<name>/*` over `/etc`).
    /// kube-proxy's Service rules in a pod's namespace, after whatever
    /// rules it has.
    pub(super) fn service_rules(&self, netns: &crate::Netns) -> Result<(), UpError> {
        restore(netns, &self.services_script())?;
        netns.run(
            "iptables",
            &["-t", "nat", "-A", "OUTPUT", "-j", SERVICES_CHAIN],
        )?;
        Ok(())
    }

    /// The pod's `resolv.conf` (cluster DNS, Kubernetes' search list) and
    /// `hosts`, which `ip netns exec` mounts.
    pub(super) fn write_netns_files(
        &self,
        ns: &str,
        pod: &PodId,
        ip: std::net::Ipv4Addr,
    ) -> Result<(), UpError> {
        let dir = Path::new("/etc/netns").join(ns);
        fs::create_dir_all(&dir).map_err(|source| UpError::Write {
            path: dir.clone(),
            source,
        })?;
        let ns_domain = format!("{}.svc.cluster.local", pod.namespace);
        write(
            &dir.join("resolv.conf"),
            format!("search {ns_domain} svc.cluster.local cluster.local\nnameserver {DNS_VIP}\noptions ndots:5\n").as_bytes(),
        )?;
        write(
            &dir.join("hosts"),
            format!("127.0.0.1 localhost\n::1 localhost\n{} {}\n", ip, pod.name).as_bytes(),
        )
    }

    /// Starts deleting a pod: it leaves its Services' endpoints (the control
    /// plane sees it unready), its probes stop, and every container gets
    /// SIGTERM; [`Cluster::finish_terminations`] ends what is left after the
    /// grace period.
    pub(crate) fn terminate(&mut self, pod: &PodId) {
        let Some(plan) = self.plan.pods.iter_mut().find(|p| p.id() == *pod) else {
            return;
        };
        if plan.terminating {
            return;
        }
        plan.terminating = true;
        let grace = plan.grace;
        tracing::info!(%pod, ?grace, "terminating");
        let config = self.state.join("config/cluster.yaml");
        if let Err(e) = manifest::set_pod_ready(&config, pod, false) {
            tracing::warn!(%pod, error = %e, "cannot take the pod out of its endpoints");
        }
        self.probes.remove(pod);
        self.signal(pod, "TERM");
        self.terminating.insert(pod.clone(), Instant::now() + grace);
        self.pods_changed();
    }

    /// SIGTERM (or another signal) to every running container of `pod`; they
    /// are not restarted.
    pub(crate) fn signal(&mut self, pod: &PodId, signal: &str) {
        for p in self.processes.iter_mut().filter(|p| p.pod == *pod) {
            p.stopped = true;
            if let Some(child) = &p.child {
                let _ = Command::new("kill")
                    .args([&format!("-{signal}"), &child.id().to_string()])
                    .status();
            }
        }
    }

    /// Pods whose containers have all exited, or whose grace period is over
    /// (SIGKILL for the rest), are removed.
    pub(super) fn finish_terminations(&mut self) {
        let now = Instant::now();
        let candidates: Vec<(PodId, std::time::Instant)> = self
            .terminating
            .iter()
            .map(|(pod, deadline)| (pod.clone(), *deadline))
            .collect();
        let done: Vec<PodId> = candidates
            .into_iter()
            .filter(|(pod, deadline)| now >= *deadline || self.all_exited(pod))
            .map(|(pod, _)| pod)
            .collect();
        if done.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for pod in done {
            self.terminating.remove(&pod);
            self.remove_pod(&pod);
            gone.push(("Pod".to_owned(), pod.namespace.clone(), pod.name.clone()));
        }
        if let Err(e) = manifest::edit_config(&self.state.join("config/cluster.yaml"), &gone, &[]) {
            tracing::warn!(error = %e, "cannot remove deleted pods from the config");
        }
        self.pods_changed();
    }

    fn all_exited(&mut self, pod: &PodId) -> bool {
        self.processes
            .iter_mut()
            .filter(|p| p.pod == *pod)
            .all(|p| {
                p.child
                    .as_mut()
                    .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
            })
    }

    /// Kills what still runs of `pod` and removes it: processes, probes,
    /// network namespace and files.
    pub(crate) fn remove_pod(&mut self, pod: &PodId) {
        for p in self.processes.iter_mut().filter(|p| p.pod == *pod) {
            if let Some(child) = p.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.processes.retain(|p| p.pod != *pod);
        self.release(pod);
        self.probes.remove(pod);
        if let Some(ns) = self.netns_names.remove(pod) {
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
        }
        let _ = fs::remove_file(self.run.join(format!("{}.token", pod.flat())));
        self.net.remove_pod(&pod.flat());
        self.plan.pods.retain(|p| p.id() != *pod);
    }

    /// Every pod reaches Services by DNAT rules naming endpoints: rebuilt
    /// whenever Services or pods change, in every pod that still has its
    /// namespace (a terminating one too, as a node's rules keep changing);
    /// a pod whose rules cannot be written is logged and the rest go on.
    pub(super) fn refresh_vip_rules(&self) {
        let script = self.services_script();
        let control_planes = self.control_plane_pods().into_iter().map(|(pod, _, _)| pod);
        for pod in self.plan.pods.iter().map(PodPlan::id).chain(control_planes) {
            let Some(netns) = self.net.pod(&pod.flat()) else {
                continue;
            };
            if let Err(e) = restore(netns, &script) {
                tracing::warn!(%pod, error = %e, "cannot update the Service rules");
            }
        }
    }
}

/// Applies a rule set in one transaction inside the pod's namespace.
fn restore(netns: &crate::Netns, script: &str) -> Result<(), UpError> {
    use std::io::Write;
    let mut child = netns
        .command("iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| UpError::Start(format!("iptables-restore: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| UpError::Start(format!("iptables-restore: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| UpError::Start(format!("iptables-restore: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UpError::Start(format!(
            "iptables-restore in {}: {}",
            netns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
