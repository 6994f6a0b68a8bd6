//! The Kubernetes API as a config source: one watch per kind the mesh reads,
//! every Istio kind at the newest version the cluster serves.
//!
//! kube-rs's watcher does the protocol: it lists, then watches from the list's
//! resourceVersion with bookmarks, resumes from the last version it saw when a
//! stream ends, and lists again on `410 Gone`. Errors are retried with backoff;
//! meanwhile the last snapshot keeps serving. The first snapshot waits until
//! every kind has listed once, so proxies never see a half-read cluster.

mod served;
mod store;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use oxmesh_config::kind::Kind;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use self::served::Watched;
use self::store::Store;
use super::Snapshot;

/// How often kinds the API server did not serve are looked for again, so CRDs
/// installed after the control plane started are picked up without a restart.
const REDISCOVER_INTERVAL: Duration = Duration::from_secs(30);

/// How long changes gather before a snapshot is cut: one push for a burst.
const BATCH: Duration = Duration::from_millis(50);

/// How often the wait for the first full list says what it still waits for.
const SYNC_REPORT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("the Kubernetes source stopped before its first full list")]
    Stopped,
}

/// What one watch reports.
struct Update {
    watched: Arc<Watched>,
    event: Event<DynamicObject>,
}

/// Starts watching and returns once every kind has listed: the receiver holds
/// the first complete snapshot and follows every change after it.
pub async fn start(
    client: kube::Client,
    root_namespace: String,
) -> Result<watch::Receiver<Arc<Snapshot>>, KubernetesError> {
    let served = discover_until_reachable(&client, &root_namespace).await;
    for kind in &served.missing {
        tracing::warn!(
            "the API server does not serve {kind} at {} (is its CRD installed?); looking again every {}s",
            kind.versions().join(", "),
            REDISCOVER_INTERVAL.as_secs()
        );
    }
    let (updates, received) = mpsc::channel(1024);
    let mut store = Store::default();
    for watched in served.watched {
        tracing::info!(kind = %watched.kind, version = %watched.resource.api_version, "watching");
        store.expect(watched.kind);
        spawn_watch(client.clone(), Arc::new(watched), updates.clone());
    }
    tokio::spawn(rediscover(client, root_namespace, served.missing, updates));
    let (store, received, first) = first_sync(store, received).await?;
    let (sender, receiver) = watch::channel(Arc::new(first));
    tokio::spawn(follow(store, received, sender));
    Ok(receiver)
}

/// Discovery, retried with backoff while the API server cannot be reached: a
/// control plane that starts before its API server waits for it rather than
/// crash-looping.
async fn discover_until_reachable(client: &kube::Client, root_namespace: &str) -> served::Served {
    let mut delay = Duration::from_millis(500);
    loop {
        match served::discover(client, served::wanted(), root_namespace).await {
            Ok(served) => return served,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot read the API server's discovery");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn spawn_watch(client: kube::Client, watched: Arc<Watched>, updates: mpsc::Sender<Update>) {
    let api: Api<DynamicObject> = match &watched.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &watched.resource),
        None => Api::all_with(client, &watched.resource),
    };
    let mut config = watcher::Config::default();
    if let Some(selector) = &watched.field_selector {
        config = config.fields(selector);
    }
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        loop {
            // Ends with the source: a quiet watch must not outlive it.
            let event = tokio::select! {
                event = events.next() => event,
                () = updates.closed() => return,
            };
            let Some(event) = event else { return };
            match event {
                Ok(event) => {
                    let update = Update {
                        watched: watched.clone(),
                        event,
                    };
                    if updates.send(update).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(
                    kind = %watched.kind,
                    error = %e,
                    "watch failed; retrying with backoff, the last snapshot keeps serving"
                ),
            }
        }
    });
}

/// Applies updates until every kind has listed once, then cuts the first snapshot.
async fn first_sync(
    mut store: Store,
    mut received: mpsc::Receiver<Update>,
) -> Result<(Store, mpsc::Receiver<Update>, Snapshot), KubernetesError> {
    let mut report = tokio::time::interval(SYNC_REPORT_INTERVAL);
    report.tick().await;
    while !store.synced() {
        tokio::select! {
            update = received.recv() => {
                let update = update.ok_or(KubernetesError::Stopped)?;
                store.apply(update.watched.kind, &update.watched.resource, update.event);
            }
            _ = report.tick() => {
                let waiting: Vec<String> = store.unsynced().iter().map(Kind::to_string).collect();
                tracing::info!("waiting for the first list of {}", waiting.join(", "));
            }
        }
    }
    let first = store.snapshot();
    Ok((store, received, first))
}

/// Cuts a snapshot after each burst of updates.
async fn follow(
    mut store: Store,
    mut received: mpsc::Receiver<Update>,
    sender: watch::Sender<Arc<Snapshot>>,
) {
    let mut findings = super::FindingsLog::default();
    findings.log(&sender.borrow());
    loop {
        // Once nobody reads snapshots, the source ends, and its watches with it.
        let update = tokio::select! {
            update = received.recv() => update,
            () = sender.closed() => return,
        };
        let Some(update) = update else { return };
        store.apply(update.watched.kind, &update.watched.resource, update.event);
        let deadline = tokio::time::Instant::now() + BATCH;
        while let Ok(Some(update)) = tokio::time::timeout_at(deadline, received.recv()).await {
            store.apply(update.watched.kind, &update.watched.resource, update.event);
        }
        let snapshot = store.snapshot();
        findings.log(&snapshot);
        if sender.send(Arc::new(snapshot)).is_err() {
            return;
        }
    }
}

/// Looks again for kinds the API server did not serve, and watches those that
/// appear.
async fn rediscover(
    client: kube::Client,
    root_namespace: String,
    mut missing: Vec<Kind>,
    updates: mpsc::Sender<Update>,
) {
    while !missing.is_empty() {
        tokio::select! {
            () = tokio::time::sleep(REDISCOVER_INTERVAL) => {}
            () = updates.closed() => return,
        }
        let served = match served::discover(&client, missing.iter().copied(), &root_namespace).await
        {
            Ok(served) => served,
            Err(e) => {
                tracing::debug!(error = %e, "rediscovery failed; trying again later");
                continue;
            }
        };
        for watched in served.watched {
            tracing::info!(kind = %watched.kind, version = %watched.resource.api_version, "now served; watching");
            spawn_watch(client.clone(), Arc::new(watched), updates.clone());
        }
        missing = served.missing;
    }
}
