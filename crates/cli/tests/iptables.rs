//! `oxmesh iptables` in a real network namespace (root): the rules it installs
//! are the ones iptables then holds, and `--cleanup` with the same flags takes
//! every one of them away.

use oxmesh_testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

fn nat(ns: &Netns) -> String {
    let out = ns
        .output("iptables-save", &["-t", "nat"])
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rerouted_interfaces_and_included_ports_are_installed_and_cleaned_up() {
    let ns = Netns::create(&format!("oxm-ipt-{}", std::process::id())).expect("namespace");
    // The VM's interface need not exist yet: iptables matches it by name.
    let flags = ["-k", "net1", "-q", "5432", "-i", ""];
    let mut install = vec!["iptables"];
    install.extend(flags);
    ns.run(BIN, &install).expect("oxmesh iptables");
    let rules = nat(&ns);
    for rule in [
        "-A PREROUTING -i net1 -j ISTIO_REDIRECT",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 5432 -j ISTIO_REDIRECT",
    ] {
        assert!(rules.contains(rule), "{rule} missing from\n{rules}");
    }
    assert!(
        !rules.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
        "-i \"\" captures no range\n{rules}"
    );

    // Installing again leaves one set of rules.
    ns.run(BIN, &install).expect("oxmesh iptables again");
    assert_eq!(nat(&ns).matches("-i net1 -j ISTIO_REDIRECT").count(), 1);

    let mut cleanup = install.clone();
    cleanup.push("--cleanup");
    ns.run(BIN, &cleanup).expect("oxmesh iptables --cleanup");
    let left = nat(&ns);
    assert!(!left.contains("ISTIO"), "left behind:\n{left}");
}
