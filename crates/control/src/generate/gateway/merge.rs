//! Servers that share a bound port (and `bind` address), as istiod's `mergeGateways` settles
//! them: the first plaintext server of a port decides what else may join
//! it (more HTTP servers after an HTTP one, nothing after a TCP one, and no
//! TLS server after either); TLS servers share a port by SNI, and one
//! naming a host an earlier TLS server of the port named is dropped. What
//! is dropped is logged, as istiod logs it.

use std::collections::{HashMap, HashSet};

use super::{Bound, Listen};

/// The servers that keep their place, in order.
pub(super) fn settle(servers: Vec<Bound<'_>>) -> Vec<Bound<'_>> {
    // Per bound port: whether its plaintext owner speaks HTTP.
    let mut plaintext: HashMap<Listen<'_>, bool> = HashMap::new();
    let mut tls_hosts: HashMap<Listen<'_>, HashSet<String>> = HashMap::new();
    servers
        .into_iter()
        .filter(|b| {
            let refused = if b.is_tls_server() {
                tls_conflict(b, &plaintext, &mut tls_hosts)
            } else {
                plaintext_conflict(b, &mut plaintext)
            };
            if let Some(why) = refused {
                tracing::warn!(
                    "gateway {}/{}: server {} on port {} is skipped: {why}",
                    b.gateway.namespace,
                    b.gateway.name,
                    b.server.port.name,
                    b.port()
                );
            }
            refused.is_none()
        })
        .collect()
}

fn tls_conflict<'a>(
    b: &Bound<'a>,
    plaintext: &HashMap<Listen<'a>, bool>,
    tls_hosts: &mut HashMap<Listen<'a>, HashSet<String>>,
) -> Option<&'static str> {
    let known = tls_hosts.entry(b.listen).or_default();
    if b.server.hosts.iter().any(|h| known.contains(h)) {
        return Some("another TLS server of the port has one of its hosts");
    }
    known.extend(b.server.hosts.iter().cloned());
    plaintext
        .contains_key(&b.listen)
        .then_some("a plaintext server has the port")
}

/// istiod's `canMergeProtocols`: only HTTP joins HTTP.
fn plaintext_conflict<'a>(
    b: &Bound<'a>,
    plaintext: &mut HashMap<Listen<'a>, bool>,
) -> Option<&'static str> {
    let http = b.protocol.is_http();
    match plaintext.get(&b.listen) {
        None => {
            plaintext.insert(b.listen, http);
            None
        }
        Some(true) if http => None,
        Some(_) => Some("its protocol conflicts with the port's first server"),
    }
}
