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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InterceptionError {
    #[error("TPROXY mode is not supported yet; use REDIRECT (-m REDIRECT)")]
    Tproxy,
    #[error("cannot run {program}: {source} (is the iptables package installed?)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} refused the rules: {stderr}")]
    Refused {
        program: &'static str,
        stderr: String,
    },
}

const CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_REDIRECT",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
];

impl Rules {
    /// The `iptables-restore` script for one family.
    pub fn script(&self, family: Family) -> Result<String, InterceptionError> {
        if self.mode == Mode::Tproxy {
            return Err(InterceptionError::Tproxy);
        }
        let (localhost, passthrough_source) = match family {
            Family::V4 => ("127.0.0.1/32", "127.0.0.6/32"),
            Family::V6 => ("::1/128", "::6/128"),
        };
        let mut s = String::from("*nat\n");
        for chain in CHAINS {
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
        self.inbound(&mut s);
        s.push_str("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n");
        for port in &self.exclude_outbound_ports {
            s.push_str(&format!(
                "-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN\n"
            ));
        }
        // Inbound passthrough connects from 127.0.0.6: never capture it again.
        s.push_str(&format!(
            "-A ISTIO_OUTPUT -o lo -s {passthrough_source} -j RETURN\n"
        ));
        for (flag, id) in [
            ("--uid-owner", self.proxy_uid),
            ("--gid-owner", self.proxy_gid),
        ] {
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
        match &self.include_outbound {
            None => s.push_str("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"),
            Some(nets) => {
                for net in nets.iter().filter(|n| fits(n, family)) {
                    s.push_str(&format!("-A ISTIO_OUTPUT -d {net} -j ISTIO_REDIRECT\n"));
                }
            }
        }
        s.push_str("COMMIT\n");
        Ok(s)
    }

    fn inbound(&self, s: &mut String) {
        s.push_str("-A PREROUTING -p tcp -j ISTIO_INBOUND\n");
        // HBONE (15008) is the proxy's own.
        s.push_str("-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n");
        match &self.include_inbound_ports {
            None => {
                s.push_str("-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n");
                for port in &self.exclude_inbound_ports {
                    s.push_str(&format!(
                        "-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN\n"
                    ));
                }
                s.push_str("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n");
            }
            Some(ports) => {
                for port in ports {
                    s.push_str(&format!(
                        "-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT\n"
                    ));
                }
            }
        }
    }

    /// Installs the rules for IPv4 and, where the namespace has IPv6, IPv6.
    pub fn apply(&self) -> Result<(), InterceptionError> {
        restore("iptables-restore", &self.script(Family::V4)?)?;
        if has_ipv6() {
            restore("ip6tables-restore", &self.script(Family::V6)?)?;
            // The proxy's inbound connections leave from ::6 (127.0.0.6's twin),
            // which loopback must own, as Istio's init container arranges.
            let added = run("ip", &["-6", "addr", "add", "::6/128", "dev", "lo"]);
            if let Err(InterceptionError::Refused { stderr, .. }) = &added
                && !stderr.contains("exists")
            {
                return added;
            }
        }
        Ok(())
    }
}

/// Removes every rule and chain `apply` installed; absent ones are fine.
pub fn cleanup() -> Result<(), InterceptionError> {
    for program in ["iptables", "ip6tables"] {
        if program == "ip6tables" && !has_ipv6() {
            continue;
        }
        let _ = run(
            program,
            &[
                "-t",
                "nat",
                "-D",
                "PREROUTING",
                "-p",
                "tcp",
                "-j",
                "ISTIO_INBOUND",
            ],
        );
        let _ = run(
            program,
            &[
                "-t",
                "nat",
                "-D",
                "OUTPUT",
                "-p",
                "tcp",
                "-j",
                "ISTIO_OUTPUT",
            ],
        );
        for chain in CHAINS {
            let _ = run(program, &["-t", "nat", "-F", chain]);
        }
        for chain in CHAINS {
            let _ = run(program, &["-t", "nat", "-X", chain]);
        }
    }
    Ok(())
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
            program,
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
            program,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_capture_everything_but_the_proxy() {
        let s = Rules::default().script(Family::V4).expect("redirect");
        assert!(s.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(s.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
        assert!(s.contains("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(s.contains("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN"));
        assert!(s.ends_with("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n"));
        let v6 = Rules::default().script(Family::V6).expect("redirect");
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
        let s = rules.script(Family::V4).expect("redirect");
        assert!(s.contains("-A ISTIO_OUTPUT -d 198.19.9.0/24 -j RETURN"));
        assert!(s.contains("-A ISTIO_OUTPUT -d 198.19.0.0/16 -j ISTIO_REDIRECT"));
        assert!(!s.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        assert!(s.contains("--dport 9080 -j ISTIO_IN_REDIRECT"));
        assert!(matches!(
            Rules {
                mode: Mode::Tproxy,
                ..Rules::default()
            }
            .script(Family::V4),
            Err(InterceptionError::Tproxy)
        ));
    }
}
