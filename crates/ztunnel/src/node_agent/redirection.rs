//! In-pod redirection, as Istio's CNI installs it inside an ambient pod's
//! network namespace, for IPv4 and (when the pod has it) IPv6: the pod's
//! outbound TCP to 15001, inbound TCP (but HBONE's 15008) to 15006, and what
//! carries the node proxy's mark 1337 left alone. Replies to connections the node proxy made from a caller's
//! address (mark 0x111 on the connection) are routed back to it through
//! table 100. The rules are installed from a thread inside the namespace,
//! so `iptables-restore` and `ip` run there too.

use std::io::Write;
use std::process::{Command, Stdio};

use oxmesh_proxy::interception::Family;

use crate::inpod::netns::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum RedirectionError {
    #[error("cannot run {program} in the pod's network namespace: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` in the pod's network namespace failed: {stderr}")]
    Refused { command: String, stderr: String },
}

/// The routing table and connection mark of replies to the node proxy.
const TABLE: &str = "100";
const REPLY_MARK: &str = "0x111/0xfff";

/// The pod's rules for one family; the DNS capture rules come with DNS
/// proxying. Istio appends its jumps; these go first, so rules already in
/// the pod (the testbed's kube-proxy DNAT of Service VIPs) see only what the
/// node proxy lets by, and a VIP reaches the node proxy as the app dialled
/// it. Kubelet's probes come from Istio's SNAT address and pass.
fn rules(family: Family) -> String {
    let localhost = family.localhost();
    let probes = match family {
        Family::V4 => "169.254.7.127",
        Family::V6 => "fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
    };
    format!(
        "\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-I PREROUTING 1 -j ISTIO_PRERT
-I OUTPUT 1 -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-I PREROUTING 1 -j ISTIO_PRERT
-I OUTPUT 1 -j ISTIO_OUTPUT
-A ISTIO_PRERT -s {probes} -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -d {probes} -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d {localhost} -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d {localhost} -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d {localhost} -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
"
    )
}

/// IPv4 always; IPv6 too when the pod's loopback has it, as Istio's CNI
/// decides (else a pod's IPv6 would pass by the node proxy, policy and all).
fn families(netns: &NetNs) -> Vec<Family> {
    let v6 = netns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6"))
        .is_ok_and(|disabled| disabled.trim() == "0");
    if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Installs the rules, replacing any an earlier enrollment left.
pub fn install(netns: &NetNs) -> Result<(), RedirectionError> {
    remove(netns);
    for family in families(netns) {
        run(
            netns,
            family.restore(),
            &["--noflush"],
            Some(&rules(family)),
        )?;
        let ip = family.flag();
        let rule = [
            ip, "rule", "add", "fwmark", REPLY_MARK, "pref", "32764", "lookup", TABLE,
        ];
        run(netns, "ip", &rule, None)?;
        let everything = family.everything();
        let route = [
            ip, "route", "replace", "local", everything, "dev", "lo", "table", TABLE,
        ];
        run(netns, "ip", &route, None)?;
    }
    Ok(())
}

/// Removes the rules (what is already gone is no error): the pod's traffic
/// flows as if it were never enrolled.
pub fn remove(netns: &NetNs) {
    for family in [Family::V4, Family::V6] {
        let iptables = family.iptables();
        for table in ["mangle", "nat"] {
            for (hook, chain) in [("PREROUTING", "ISTIO_PRERT"), ("OUTPUT", "ISTIO_OUTPUT")] {
                let _ = run(
                    netns,
                    iptables,
                    &["-t", table, "-D", hook, "-j", chain],
                    None,
                );
                let _ = run(netns, iptables, &["-t", table, "-F", chain], None);
                let _ = run(netns, iptables, &["-t", table, "-X", chain], None);
            }
        }
        let ip = family.flag();
        let rule = [
            ip, "rule", "del", "fwmark", REPLY_MARK, "pref", "32764", "lookup", TABLE,
        ];
        let _ = run(netns, "ip", &rule, None);
        let _ = run(netns, "ip", &[ip, "route", "flush", "table", TABLE], None);
    }
}

fn run(
    netns: &NetNs,
    program: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<(), RedirectionError> {
    let spawn = |source| RedirectionError::Spawn { program, source };
    // The child is forked from a thread inside the namespace: it runs there.
    let mut child = netns
        .run(|| {
            Command::new(program)
                .args(args)
                .stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
        .map_err(spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let output = child.wait_with_output().map_err(spawn)?;
    if output.status.success() {
        return Ok(());
    }
    Err(RedirectionError::Refused {
        command: format!("{program} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}
