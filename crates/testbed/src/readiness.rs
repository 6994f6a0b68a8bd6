//! Readiness probes of a running local mesh: each runs as a child process (so
//! supervision never waits on one), from its initial delay every period; a pod
//! is ready when all of its probes last passed.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::cluster::Options;
use crate::plan::{Check, PodId, PodPlan, Probe};

struct Readiness {
    pod: PodId,
    probe: Probe,
    command: Vec<String>,
    ready: bool,
    next: Instant,
    running: Option<Child>,
}

#[derive(Default)]
pub struct Probes {
    probes: Vec<Readiness>,
}

impl Probes {
    /// A probe for `pod`, run in its network namespace `netns`.
    pub fn add(&mut self, options: &Options, netns: &str, pod: &PodPlan, probe: &Probe) {
        self.probes.push(Readiness {
            pod: pod.id(),
            command: command(options, netns, pod, probe),
            next: Instant::now() + probe.initial_delay,
            probe: probe.clone(),
            ready: false,
            running: None,
        });
    }

    /// Starts due probes and collects finished ones; returns the pods whose
    /// readiness changed, with their new readiness.
    pub fn run(&mut self) -> Vec<(PodId, bool)> {
        let now = Instant::now();
        let mut changed = Vec::new();
        for r in &mut self.probes {
            if let Some(child) = r.running.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    r.running = None;
                    if status.success() != r.ready {
                        r.ready = status.success();
                        changed.push(r.pod.clone());
                    }
                }
                continue;
            }
            if now >= r.next {
                r.next = now + r.probe.period;
                r.running = Command::new(&r.command[0])
                    .args(&r.command[1..])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok();
            }
        }
        changed.sort();
        changed.dedup();
        changed
            .into_iter()
            .map(|pod| {
                let ready = self.is_ready(&pod);
                (pod, ready)
            })
            .collect()
    }

    /// Forgets the probes of a pod that is gone.
    pub fn remove(&mut self, pod: &PodId) {
        for r in self.probes.iter_mut().filter(|r| r.pod == *pod) {
            if let Some(child) = r.running.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.probes.retain(|r| r.pod != *pod);
    }

    /// Every probe of `pod` last passed (a pod without probes is ready).
    pub fn is_ready(&self, pod: &PodId) -> bool {
        self.probes
            .iter()
            .filter(|r| r.pod == *pod)
            .all(|r| r.ready)
    }

    /// The pods not ready yet.
    pub fn waiting(&self) -> Vec<&PodId> {
        let mut pods: Vec<&PodId> = self
            .probes
            .iter()
            .filter(|r| !r.ready)
            .map(|r| &r.pod)
            .collect();
        pods.sort();
        pods.dedup();
        pods
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for r in &mut self.probes {
            if let Some(child) = r.running.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The command that runs `probe` in the pod's network namespace.
fn command(options: &Options, ns: &str, pod: &PodPlan, probe: &Probe) -> Vec<String> {
    let mut words = vec![
        "ip".to_owned(),
        "netns".into(),
        "exec".into(),
        ns.to_owned(),
    ];
    match &probe.check {
        Check::Http { port, path } => words.extend([
            options.binary.to_string_lossy().into_owned(),
            "testbed-probe".into(),
            "--http".into(),
            format!("{}:{port}", pod.ip),
            "--path".into(),
            path.clone(),
        ]),
        Check::Tcp { port } => words.extend([
            options.binary.to_string_lossy().into_owned(),
            "testbed-probe".into(),
            "--tcp".into(),
            format!("{}:{port}", pod.ip),
        ]),
        Check::Exec(command) => words.extend(command.iter().cloned()),
    }
    words
}
