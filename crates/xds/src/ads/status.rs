//! What each connected proxy was sent and what it acknowledged: the data behind
//! `oxmesh proxy-status` and `/debug/syncz`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    /// The proxy's reason for refusing the last push, if it did.
    pub nack: Option<String>,
}

impl TypeStatus {
    /// SYNCED when the last push was acknowledged, STALE when it was not (yet),
    /// NOT SENT when nothing was pushed.
    pub fn state(&self) -> &'static str {
        match (&self.sent_version, &self.acked_version) {
            (None, _) => "NOT SENT",
            (Some(sent), Some(acked)) if sent == acked && self.nack.is_none() => "SYNCED",
            _ => "STALE",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProxyStatus {
    pub proxy: String,
    /// The node it connected with: enough to regenerate its config on demand.
    pub node: Node,
    pub connected_at: SystemTime,
    pub types: BTreeMap<String, TypeStatus>,
}

/// Every live connection's status. Written on requests and pushes, read by debug
/// endpoints; never on the data path.
#[derive(Clone, Debug, Default)]
pub struct StatusRegistry {
    inner: Arc<Mutex<BTreeMap<u64, ProxyStatus>>>,
    /// Connection numbers, shared by every server writing here (15010 and
    /// 15012), so their connections never share an entry.
    next: Arc<AtomicU64>,
}

impl StatusRegistry {
    /// A number for a new connection, unique across the servers sharing this.
    pub fn next_connection(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn connected(&self, connection: u64, proxy: String, node: Node) {
        self.lock().insert(
            connection,
            ProxyStatus {
                proxy,
                node,
                connected_at: SystemTime::now(),
                types: BTreeMap::new(),
            },
        );
    }

    pub fn disconnected(&self, connection: u64) {
        self.lock().remove(&connection);
    }

    pub fn update(&self, connection: u64, type_url: &str, change: impl FnOnce(&mut TypeStatus)) {
        if let Some(proxy) = self.lock().get_mut(&connection) {
            change(proxy.types.entry(type_url.to_owned()).or_default());
        }
    }

    pub fn snapshot(&self) -> Vec<ProxyStatus> {
        self.lock().values().cloned().collect()
    }
}
