//! The testbed's cluster DNS: A records for Services
//! (`<svc>.<ns>.svc.cluster.local`), answered over UDP as kube-dns would, and
//! pod names (`198-18-0-7.<ns>.pod.cluster.local`, the address the name
//! spells, as CoreDNS answers with `pods insecure`). Pods reach it at the DNS
//! VIP; their `resolv.conf` search list turns `reviews` and `reviews.default`
//! into the full name. Anything else gets NXDOMAIN (the testbed has no route
//! to the outside world).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::SystemTime;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const TTL: u32 = 5;

/// Answers queries on `bind` for ever from `records` (a JSON object of name →
/// IPv4 address), read again whenever the file changes (Services applied while
/// the mesh runs).
pub fn serve(records: &Path, bind: SocketAddr) -> std::io::Result<()> {
    let socket = UdpSocket::bind(bind)?;
    let mut buf = [0u8; 512];
    let mut loaded: Option<(SystemTime, HashMap<String, Ipv4Addr>)> = None;
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        let changed = std::fs::metadata(records).and_then(|m| m.modified()).ok();
        if loaded.as_ref().map(|(at, _)| Some(*at)) != Some(changed) {
            let map = std::fs::read_to_string(records)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            loaded = changed.map(|at| (at, map));
        }
        let empty = HashMap::new();
        let map = loaded.as_ref().map_or(&empty, |(_, m)| m);
        if let Some(reply) = answer(&buf[..n], map) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// The response to one query; `None` for what is not a query.
pub fn answer(query: &[u8], records: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let (name, end) = question_name(query)?;
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let question = query.get(12..end + 4)?;
    let name = name.to_ascii_lowercase();
    let found = records.get(&name).copied().or_else(|| pod_address(&name));
    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&query[0..2]); // id
    let rcode = if found.is_some() { 0 } else { 3 }; // NXDOMAIN
    // QR, opcode 0, AA; RD copied; RA.
    reply.push(0x84 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    let answers = u16::from(found.is_some() && qtype == TYPE_A);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if let (Some(ip), 1) = (found, answers) {
        reply.extend_from_slice(&[0xc0, 12]); // the name, by pointer
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&TTL.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// The address a pod name spells: `a-b-c-d.<namespace>.pod.cluster.local`.
fn pod_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".pod.cluster.local")?;
    let (dashed, namespace) = rest.split_once('.')?;
    if namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    dashed.replace('-', ".").parse().ok()
}

/// The question's name and the offset just past it.
fn question_name(packet: &[u8]) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            return Some((labels.join("."), at + 1));
        }
        if len & 0xc0 != 0 {
            return None; // no compression in questions
        }
        let label = packet.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn answers_services_and_refuses_the_rest() {
        let records = HashMap::from([(
            "reviews.default.svc.cluster.local".to_owned(),
            Ipv4Addr::new(198, 19, 0, 12),
        )]);
        let reply =
            answer(&query("Reviews.default.svc.cluster.local", 1), &records).expect("reply");
        assert_eq!(&reply[0..2], &[0x12, 0x34]);
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[reply.len() - 4..], &[198, 19, 0, 12]);
        let reply =
            answer(&query("reviews.default.svc.cluster.local", 28), &records).expect("reply");
        assert_eq!(
            (reply[3] & 0x0f, reply[7]),
            (0, 0),
            "AAAA: no error, no answer"
        );
        let reply = answer(&query("example.com", 1), &records).expect("reply");
        assert_eq!(reply[3] & 0x0f, 3, "NXDOMAIN");
        let reply =
            answer(&query("198-18-0-7.default.pod.cluster.local", 1), &records).expect("reply");
        assert_eq!(&reply[reply.len() - 4..], &[198, 18, 0, 7], "a pod's name");
        for not_a_pod in [
            "198-18-0.default.pod.cluster.local",
            "198-18-0-7.pod.cluster.local",
            "198-18-0-7.a.b.pod.cluster.local",
        ] {
            let reply = answer(&query(not_a_pod, 1), &records).expect("reply");
            assert_eq!(reply[3] & 0x0f, 3, "{not_a_pod}: NXDOMAIN");
        }
        assert!(answer(&[0u8; 5], &records).is_none());
    }
}
