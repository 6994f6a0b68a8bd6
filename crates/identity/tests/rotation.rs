//! Certificate rotation under a controlled clock: tokio's paused time stands for the
//! hours that pass; nothing sleeps for real.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::manager::{CertificateManager, Rotation};
use support::{LocalCa, TempDir, id, self_signed};

const HOUR: Duration = Duration::from_secs(3600);
const HALF_HOUR: Duration = Duration::from_secs(1800);

async fn wait_for_issuances(ca: &LocalCa, count: usize) {
    while ca.issued().len() < count {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_well_before_expiry() {
    let dir = TempDir::new("rotate");
    let ca = LocalCa::new(self_signed(&dir, "cluster.local"));
    let credentials = Credentials::new(id("spiffe://cluster.local/ns/foo/sa/bar"));
    let start = tokio::time::Instant::now();
    tokio::spawn(
        CertificateManager::new(ca.clone(), credentials.clone(), Rotation::default()).run(),
    );
    wait_for_issuances(&ca, 1).await;
    let first = credentials.svid().expect("installed");
    assert!(credentials.is_ready());

    wait_for_issuances(&ca, 3).await;
    let issued = ca.issued();
    let renewal = issued[1] - issued[0];
    // 24 h certificates, renewed at half life ± 2% of the lifetime (about 29 min).
    assert!(
        renewal > 11 * HOUR + HALF_HOUR && renewal < 12 * HOUR + HALF_HOUR,
        "renewed after {renewal:?}"
    );
    assert!(
        issued[2] - issued[1] > 11 * HOUR,
        "and again a half life later"
    );
    assert!(
        issued[0] - start < Duration::from_secs(5),
        "the first certificate is requested at once"
    );
    let second = credentials.svid().expect("renewed");
    assert!(
        !std::sync::Arc::ptr_eq(&first, &second),
        "a new certificate was installed"
    );
}

#[tokio::test(start_paused = true)]
async fn keeps_serving_and_retries_while_the_ca_is_away() {
    let dir = TempDir::new("rotate-away");
    let ca = LocalCa::new(self_signed(&dir, "cluster.local"));
    let credentials = Credentials::new(id("spiffe://cluster.local/ns/foo/sa/bar"));
    tokio::spawn(
        CertificateManager::new(ca.clone(), credentials.clone(), Rotation::default()).run(),
    );
    wait_for_issuances(&ca, 1).await;
    let first = credentials.svid().expect("installed");

    ca.available.store(false, Ordering::SeqCst);
    let attempts_before = ca.attempts.load(Ordering::SeqCst);
    tokio::time::sleep(14 * HOUR).await;
    let retries = ca.attempts.load(Ordering::SeqCst) - attempts_before;
    // Backoff grows to a minute: about 2 h of retries past renewal, bounded, not a storm.
    assert!((5..400).contains(&retries), "{retries} attempts while away");
    let still = credentials.svid().expect("still installed");
    assert!(
        std::sync::Arc::ptr_eq(&first, &still),
        "the old certificate keeps serving"
    );
    assert!(credentials.is_ready());

    ca.available.store(true, Ordering::SeqCst);
    wait_for_issuances(&ca, 2).await;
    let renewed = credentials.svid().expect("renewed");
    assert!(
        !std::sync::Arc::ptr_eq(&first, &renewed),
        "renewed as soon as the CA is back"
    );
}
