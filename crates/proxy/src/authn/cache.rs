//! Tokens whose signature this worker thread already checked, as Envoy's
//! jwt_authn caches them: verifying an RS256 signature costs tens of
//! microseconds, and a client sends the same token on every request. Per
//! thread, so the request path takes no lock; a bounded ring, so a flood of
//! distinct tokens costs memory only up to [`CAPACITY`] entries a thread.
//!
//! Only the signature is remembered: time, issuer and audience checks run on
//! every request. An entry belongs to one provider of one converted config
//! (its `id`), so a pushed key set never trusts what an older one verified.

use std::cell::RefCell;

/// Envoy's default `jwt_cache_size`.
const CAPACITY: usize = 100;

struct Entry {
    config: u64,
    provider: usize,
    signed: Box<str>,
    signature: Box<[u8]>,
}

#[derive(Default)]
struct Ring {
    entries: Vec<Entry>,
    next: usize,
}

thread_local! {
    static VERIFIED: RefCell<Ring> = RefCell::default();
}

/// Whether this thread verified exactly this signature over exactly this
/// header and payload, for this provider of this config.
pub fn holds(config: u64, provider: usize, signed: &str, signature: &[u8]) -> bool {
    VERIFIED.with(|ring| {
        ring.borrow().entries.iter().any(|e| {
            e.config == config
                && e.provider == provider
                && *e.signed == *signed
                && *e.signature == *signature
        })
    })
}

/// Remembers a signature that verified, replacing the oldest entry when full.
pub fn remember(config: u64, provider: usize, signed: &str, signature: &[u8]) {
    VERIFIED.with(|ring| {
        let mut ring = ring.borrow_mut();
        let entry = Entry {
            config,
            provider,
            signed: signed.into(),
            signature: signature.into(),
        };
        if ring.entries.len() < CAPACITY {
            ring.entries.push(entry);
        } else {
            let slot = ring.next;
            ring.entries[slot] = entry;
            ring.next = (slot + 1) % CAPACITY;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_exact_and_bounded() {
        remember(1, 0, "h.p", b"sig");
        assert!(holds(1, 0, "h.p", b"sig"));
        assert!(!holds(2, 0, "h.p", b"sig"), "another config");
        assert!(!holds(1, 1, "h.p", b"sig"), "another provider");
        assert!(!holds(1, 0, "h.q", b"sig"), "another payload");
        assert!(!holds(1, 0, "h.p", b"sih"), "another signature");
        for i in 0..CAPACITY {
            remember(3, 0, &format!("t{i}"), b"s");
        }
        assert!(!holds(1, 0, "h.p", b"sig"), "the oldest went first");
        VERIFIED.with(|r| assert_eq!(r.borrow().entries.len(), CAPACITY));
    }
}
