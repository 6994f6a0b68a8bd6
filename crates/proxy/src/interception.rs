//! Transparent interception, as Istio's init container sets it up: the pod's TCP
//! goes out through the proxy's outbound port (15001) and comes in through its
//! inbound port (15006), except the proxy's own traffic (its uid), loopback, and
//! excluded ports and ranges. Rules are written as one `iptables-restore` script
//! per address family and applied in the current network namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Redirect,
    Tproxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// istio-iptables' settings, with its defaults.
#[derive(Clone, Debug)]
pub struct Rules {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub mode: Mode,
    /// `None`: all outbound (`-i '*'`); `Some([])`: none.
    pub include_outbound: Option<Vec<IpNet>>,
    pub exclude_outbound: Vec<IpNet>,
    /// `None`: all inbound ports (`-b '*'`).
    pub include_inbound_ports: Option<Vec<u16>>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound ports always captured, whatever `include_outbound` says
    /// (istio-iptables' `-q`).
    pub include_outbound_ports: Vec<u16>,
    /// Interfaces whose incoming traffic (a VM's, behind KubeVirt) is treated
    /// as the pod's own outbound traffic (istio-iptables' `-k`).
    pub reroute_interfaces: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: 1337,
            proxy_gid: 1337,
            mode: Mode::Redirect,
            include_outbound: None,
            exclude_outbound: Vec::new(),
            include_inbound_ports: None,
            // The proxy's own endpoints are never intercepted.
            exclude_inbound_ports: vec![15090, 15021, 15020],
            exclude_outbound_ports: Vec::new(),
            include_outbound_ports: Vec::new(),
            reroute_interfaces: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InterceptionError {
    #[error("cannot run {program}: {source} (is the iptables package installed?)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Refused { command: String, stderr: String },
}

const NAT_CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_REDIRECT",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
];
const MANGLE_CHAINS: [&str; 3] = ["ISTIO_DIVERT", "ISTIO_TPROXY", "ISTIO_INBOUND"];
/// TPROXY's mark: packets carrying it are routed to the local stack (table
/// 133), so connections for the pod's addresses reach the proxy and the app's
/// replies to a client address the proxy connected from come back to it.
pub const TPROXY_MARK: u32 = 1337;
/// The proxy's own connections over loopback, which TPROXY must still catch.
const OWN_LOOPBACK_MARK: u32 = 1338;
const TPROXY_TABLE: &str = "133";

impl Family {
    /// The tool that loads a rule script for this family.
    pub fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    pub fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// Where inbound passthrough connects from (REDIRECT mode).
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    /// `ip`'s family flag.
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    pub fn everything(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

impl Rules {
    /// The `iptables-restore` script for one family: the nat table, and for
    /// TPROXY the mangle table that takes inbound connections.
    pub fn script(&self, family: Family) -> String {
        let mut s = self.nat(family);
        if self.mode == Mode::Tproxy {
            s.push_str(&self.mangle(family));
        }
        s
    }

    fn nat(&self, family: Family) -> String {
        let localhost = family.localhost();
        let mut s = String::from("*nat\n");
        for chain in NAT_CHAINS {
            s.push_str(&format!(":{chain} - [0:0]\n"));
        }
        s.push_str(&format!(
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
            self.outbound_port
        ));
        s.push_str(&format!(
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
            self.inbound_port
        ));
        // HBONE (15008) is the proxy's own.
        s.push_str("-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n");
        // Before inbound capture: what a VM behind these sends is outbound.
        for hook in self.nat_reroute_hooks() {
            s.push_str(&format!("-A {hook}\n"));
        }
        if self.mode == Mode::Redirect {
            s.push_str("-A PREROUTING -p tcp -j ISTIO_INBOUND\n");
            self.inbound(&mut s, "ISTIO_IN_REDIRECT");
        }
        s.push_str("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n");
        for port in &self.exclude_outbound_ports {
            s.push_str(&format!(
                "-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN\n"
            ));
        }
        // Inbound passthrough connects from 127.0.0.6: never capture it again.
        s.push_str(&format!(
            "-A ISTIO_OUTPUT -o lo -s {} -j RETURN\n",
            family.passthrough_source()
        ));
        if self.mode == Mode::Tproxy {
            // Nor the proxy's connections to the app from a client's address.
            s.push_str(&format!(
                "-A ISTIO_OUTPUT -o lo -p tcp -m mark --mark {TPROXY_MARK} -j RETURN\n"
            ));
        }
        for (flag, id) in self.owners() {
            // The proxy calling its own pod's IP: that is inbound traffic.
            s.push_str(&format!(
                "-A ISTIO_OUTPUT ! -d {localhost} -o lo -p tcp -m owner {flag} {id} -j ISTIO_IN_REDIRECT\n"
            ));
            s.push_str(&format!(
                "-A ISTIO_OUTPUT -o lo -m owner ! {flag} {id} -j RETURN\n"
            ));
            s.push_str(&format!("-A ISTIO_OUTPUT -m owner {flag} {id} -j RETURN\n"));
        }
        s.push_str(&format!("-A ISTIO_OUTPUT -d {localhost} -j RETURN\n"));
        for net in self.exclude_outbound.iter().filter(|n| fits(n, family)) {
            s.push_str(&format!("-A ISTIO_OUTPUT -d {net} -j RETURN\n"));
        }
        for port in &self.include_outbound_ports {
            s.push_str(&format!(
                "-A ISTIO_OUTPUT -p tcp --dport {port} -j ISTIO_REDIRECT\n"
            ));
        }
        match &self.include_outbound {
            None => s.push_str("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"),
            Some(nets) => {
                for net in nets.iter().filter(|n| fits(n, family)) {
                    s.push_str(&format!("-A ISTIO_OUTPUT -d {net} -j ISTIO_REDIRECT\n"));
                }
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// TPROXY: new inbound connections go to the inbound port with the mark,
    /// established ones are only marked (so they route locally to the proxy's
    /// socket). The proxy's connections to the app leave from the client's
    /// address with the mark; conntrack remembers it, and the app's replies get
    /// it back and so return to the proxy rather than leave the pod.
    fn mangle(&self, family: Family) -> String {
        let mut s = String::from("*mangle\n");
        for chain in MANGLE_CHAINS {
            s.push_str(&format!(":{chain} - [0:0]\n"));
        }
        s.push_str(&format!(
            "-A ISTIO_DIVERT -j MARK --set-mark {TPROXY_MARK}\n-A ISTIO_DIVERT -j ACCEPT\n"
        ));
        s.push_str(&format!(
            "-A ISTIO_TPROXY ! -d {} -p tcp -j TPROXY --tproxy-mark {TPROXY_MARK}/0xffffffff --on-port {}\n",
            family.localhost(),
            self.inbound_port
        ));
        s.push_str(&format!(
            "-A ISTIO_INBOUND -p tcp -m mark --mark {TPROXY_MARK} -j RETURN\n"
        ));
        s.push_str(&format!(
            "-A ISTIO_INBOUND -p tcp -s {} -i lo -j RETURN\n",
            family.passthrough_source()
        ));
        s.push_str(&format!(
            "-A ISTIO_INBOUND -p tcp -i lo -m mark ! --mark {OWN_LOOPBACK_MARK} -j RETURN\n"
        ));
        s.push_str("-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n");
        self.inbound(&mut s, "ISTIO_TPROXY");
        for hook in self.mangle_hooks(family) {
            s.push_str(&format!("-A {hook}\n"));
        }
        s.push_str("COMMIT\n");
        s
    }

    /// The mangle rules in the built-in chains, as `-A`/`-D` take them.
    fn mangle_hooks(&self, family: Family) -> Vec<String> {
        let localhost = family.localhost();
        // A rerouted VM's traffic is outbound: TPROXY must not take it inbound.
        let mut hooks: Vec<String> = self
            .reroute_interfaces
            .iter()
            .map(|i| format!("PREROUTING -i {i} -j RETURN"))
            .collect();
        hooks.extend([
            "PREROUTING -p tcp -j ISTIO_INBOUND".to_owned(),
            format!("PREROUTING -p tcp -m mark --mark {TPROXY_MARK} -j CONNMARK --save-mark"),
            format!("OUTPUT -p tcp -o lo -m mark --mark {TPROXY_MARK} -j RETURN"),
        ]);
        for (flag, id) in self.owners() {
            hooks.push(format!(
                "OUTPUT ! -d {localhost} -p tcp -o lo -m owner {flag} {id} -j MARK --set-mark {OWN_LOOPBACK_MARK}"
            ));
        }
        hooks.push(format!(
            "OUTPUT -p tcp -m connmark --mark {TPROXY_MARK} -j CONNMARK --restore-mark"
        ));
        hooks
    }

    /// The nat rules in PREROUTING for `reroute_interfaces`.
    fn nat_reroute_hooks(&self) -> Vec<String> {
        self.reroute_interfaces
            .iter()
            .map(|i| format!("PREROUTING -i {i} -j ISTIO_REDIRECT"))
            .collect()
    }

    fn owners(&self) -> [(&'static str, u32); 2] {
        [
            ("--uid-owner", self.proxy_uid),
            ("--gid-owner", self.proxy_gid),
        ]
    }

    /// Which inbound ports go to `target`: all but the excluded, or the listed.
    /// Under TPROXY an established connection is only marked.
    fn inbound(&self, s: &mut String, target: &str) {
        let divert = target == "ISTIO_TPROXY";
        let capture = |s: &mut String, port: Option<u16>| {
            let dport = port.map(|p| format!(" --dport {p}")).unwrap_or_default();
            if divert {
                s.push_str(&format!(
                    "-A ISTIO_INBOUND -p tcp{dport} -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT\n"
                ));
            }
            s.push_str(&format!("-A ISTIO_INBOUND -p tcp{dport} -j {target}\n"));
        };
        match &self.include_inbound_ports {
            None => {
                s.push_str("-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n");
                for port in &self.exclude_inbound_ports {
                    s.push_str(&format!(
                        "-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN\n"
                    ));
                }
                capture(s, None);
            }
            Some(ports) => {
                for port in ports {
                    capture(s, Some(*port));
                }
            }
        }
    }

    /// The policy routing TPROXY needs: marked packets are delivered locally.
    fn routing(family: Family) -> [Vec<String>; 2] {
        let mark = TPROXY_MARK.to_string();
        [
            ["rule", "add", "fwmark", &mark, "lookup", TPROXY_TABLE]
                .map(str::to_owned)
                .to_vec(),
            [
                "route",
                "add",
                "local",
                family.everything(),
                "dev",
                "lo",
                "table",
                TPROXY_TABLE,
            ]
            .map(str::to_owned)
            .to_vec(),
        ]
    }

    /// Installs the rules for IPv4 and, where the namespace has IPv6, IPv6.
    /// What an earlier run installed is removed first, so running it twice
    /// leaves one set of rules.
    pub fn apply(&self) -> Result<(), InterceptionError> {
        self.cleanup()?;
        let mut families = vec![Family::V4];
        if has_ipv6() {
            families.push(Family::V6);
            // The proxy's inbound connections leave from ::6 (127.0.0.6's twin),
            // which loopback must own, as Istio's init container arranges.
            tolerate_exists(run("ip", &["-6", "addr", "add", "::6/128", "dev", "lo"]))?;
        }
        for family in families {
            restore(family.restore(), &self.script(family))?;
            if self.mode == Mode::Tproxy {
                for args in Self::routing(family) {
                    let mut argv = vec![family.flag()];
                    argv.extend(args.iter().map(String::as_str));
                    tolerate_exists(run("ip", &argv))?;
                }
            }
        }
        Ok(())
    }

    /// Removes every rule, chain and route `apply` installed, in either mode;
    /// absent ones are fine. Like istio-iptables' cleanup, it needs the `-u`
    /// and `-g` the rules were made with.
    pub fn cleanup(&self) -> Result<(), InterceptionError> {
        for family in [Family::V4, Family::V6] {
            if family == Family::V6 && !has_ipv6() {
                continue;
            }
            let program = family.iptables();
            let mut nat_hooks = self.nat_reroute_hooks();
            nat_hooks.extend([
                "PREROUTING -p tcp -j ISTIO_INBOUND".to_owned(),
                "OUTPUT -p tcp -j ISTIO_OUTPUT".to_owned(),
            ]);
            for hook in nat_hooks {
                let _ = delete(program, "nat", &hook);
            }
            for hook in self.mangle_hooks(family) {
                let _ = delete(program, "mangle", &hook);
            }
            for (table, chains) in [("nat", &NAT_CHAINS[..]), ("mangle", &MANGLE_CHAINS[..])] {
                for op in ["-F", "-X"] {
                    for chain in chains {
                        let _ = run(program, &["-t", table, op, chain]);
                    }
                }
            }
            for args in Self::routing(family) {
                let mut argv = vec![family.flag()];
                argv.extend(
                    args.iter()
                        .map(|a| if a == "add" { "del" } else { a.as_str() }),
                );
                let _ = run("ip", &argv);
            }
        }
        if has_ipv6() {
            let _ = run("ip", &["-6", "addr", "del", "::6/128", "dev", "lo"]);
        }
        Ok(())
    }
}

/// Deletes every copy of `rule` (a rule appended twice is there twice).
fn delete(program: &'static str, table: &str, rule: &str) -> Result<(), InterceptionError> {
    let mut argv = vec!["-t", table, "-D"];
    argv.extend(rule.split_whitespace());
    while run(program, &argv).is_ok() {}
    Ok(())
}

/// "Already there" is success: applying twice must not fail.
fn tolerate_exists(result: Result<(), InterceptionError>) -> Result<(), InterceptionError> {
    match result {
        Err(InterceptionError::Refused { stderr, .. }) if stderr.contains("exists") => Ok(()),
        other => other,
    }
}

fn fits(net: &IpNet, family: Family) -> bool {
    matches!(
        (net, family),
        (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
    )
}

fn has_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|s| !s.trim().is_empty())
}

fn restore(program: &'static str, script: &str) -> Result<(), InterceptionError> {
    let mut child = Command::new(program)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InterceptionError::Spawn { program, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| InterceptionError::Spawn { program, source })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| InterceptionError::Spawn { program, source })?;
    if !output.status.success() {
        return Err(InterceptionError::Refused {
            command: format!("{program} --noflush"),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn run(program: &'static str, args: &[&str]) -> Result<(), InterceptionError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| InterceptionError::Spawn { program, source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(InterceptionError::Refused {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_capture_everything_but_the_proxy() {
        let s = Rules::default().script(Family::V4);
        assert!(s.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(s.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
        assert!(s.contains("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(s.contains("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN"));
        assert!(s.ends_with("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n"));
        assert!(!s.contains("*mangle"));
        let v6 = Rules::default().script(Family::V6);
        assert!(v6.contains("-s ::6/128") && !v6.contains("127.0.0.1"));
    }

    #[test]
    fn ranges_and_ports_narrow_what_is_captured() {
        let rules = Rules {
            include_outbound: Some(vec!["198.19.0.0/16".parse().expect("net")]),
            exclude_outbound: vec!["198.19.9.0/24".parse().expect("net")],
            include_inbound_ports: Some(vec![9080]),
            ..Rules::default()
        };
        let s = rules.script(Family::V4);
        assert!(s.contains("-A ISTIO_OUTPUT -d 198.19.9.0/24 -j RETURN"));
        assert!(s.contains("-A ISTIO_OUTPUT -d 198.19.0.0/16 -j ISTIO_REDIRECT"));
        assert!(!s.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        assert!(s.contains("--dport 9080 -j ISTIO_IN_REDIRECT"));
    }

    #[test]
    fn included_ports_and_rerouted_interfaces_are_captured_as_outbound() {
        let rules = Rules {
            include_outbound: Some(Vec::new()),
            include_outbound_ports: vec![5432],
            reroute_interfaces: vec!["net1".to_owned()],
            ..Rules::default()
        };
        let s = rules.script(Family::V4);
        assert!(
            s.contains("-A ISTIO_OUTPUT -p tcp --dport 5432 -j ISTIO_REDIRECT"),
            "{s}"
        );
        assert!(!s.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"), "{s}");
        let reroute = s
            .find("-A PREROUTING -i net1 -j ISTIO_REDIRECT")
            .expect("reroute");
        let inbound = s
            .find("-A PREROUTING -p tcp -j ISTIO_INBOUND")
            .expect("inbound");
        assert!(
            reroute < inbound,
            "the VM's traffic is taken before inbound capture"
        );
        let tproxy = Rules {
            mode: Mode::Tproxy,
            ..rules
        };
        let (nat, mangle) = tproxy
            .script(Family::V4)
            .split_once("*mangle\n")
            .map(|(n, m)| (n.to_owned(), m.to_owned()))
            .expect("mangle");
        assert!(
            nat.contains("-A PREROUTING -i net1 -j ISTIO_REDIRECT"),
            "{nat}"
        );
        let skip = mangle
            .find("-A PREROUTING -i net1 -j RETURN")
            .expect("skip");
        assert!(
            skip < mangle
                .find("-A PREROUTING -p tcp -j ISTIO_INBOUND")
                .expect("divert")
        );
    }

    #[test]
    fn tproxy_takes_inbound_in_mangle_and_keeps_outbound_redirected() {
        let rules = Rules {
            mode: Mode::Tproxy,
            ..Rules::default()
        };
        let s = rules.script(Family::V4);
        let (nat, mangle) = s.split_once("*mangle\n").expect("a mangle table");
        assert!(!nat.contains("-A PREROUTING"), "{nat}");
        assert!(nat.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"), "{nat}");
        assert!(mangle.contains(
            "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006"
        ));
        assert!(mangle.contains("-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN"));
        assert!(mangle.contains(
            "-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT"
        ));
        assert!(
            mangle.contains("-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark")
        );
        let v6 = rules.script(Family::V6);
        assert!(v6.contains("! -d ::1/128 -p tcp -j TPROXY") && v6.contains("-s ::6/128 -i lo"));
        let [rule, route] = Rules::routing(Family::V6);
        assert_eq!(rule.join(" "), "rule add fwmark 1337 lookup 133");
        assert_eq!(route.join(" "), "route add local ::/0 dev lo table 133");
    }
}
