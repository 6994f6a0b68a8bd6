//! One network namespace, made with `ip netns` and removed on drop together with
//! every process still running in it.

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("cannot run {program}: {source} (the testbed needs root and iproute2)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name`, replacing a namespace of that name a crashed run left.
    pub fn create(name: &str) -> Result<Self, TestbedError> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let args = ["netns", "add", name];
        check("ip", &args, Command::new("ip").args(args).output())?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which
    /// also mounts the namespace's `/etc/netns/<name>` files over `/etc`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Joins this namespace to `peer` by a veth pair: `device` here,
    /// `peer_device` there. Both ends are made inside their namespaces, so
    /// the names clash with nothing outside, and go when they do.
    pub fn link(&self, device: &str, peer: &Netns, peer_device: &str) -> Result<(), TestbedError> {
        let args = [
            "link",
            "add",
            device,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            peer_device,
            "netns",
            &peer.name,
        ];
        check("ip", &args, Command::new("ip").args(args).output())
    }

    /// Runs `program args` inside the namespace and waits for success.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<(), TestbedError> {
        check(program, args, self.command(program).args(args).output())
    }

    /// Runs `program args` inside and returns its standard output.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output, TestbedError> {
        self.command(program)
            .args(args)
            .output()
            .map_err(|source| TestbedError::Spawn {
                program: program.to_owned(),
                source,
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        if let Err(e) = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            tracing::warn!(netns = %self.name, error = %e, "cannot delete network namespace");
        }
    }
}

pub(crate) fn check(
    program: &str,
    args: &[&str],
    output: std::io::Result<Output>,
) -> Result<(), TestbedError> {
    let output = output.map_err(|source| TestbedError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TestbedError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
