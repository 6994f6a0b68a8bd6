//! The node proxy's stream to the control plane: Istio's workload API
//! (Address, Authorization) as state of the world. Each response is
//! converted whole; one that does not convert is refused (NACK, naming the
//! resources) and the last good state keeps serving. A new state is swapped
//! in whole, so a connection sees one consistent view.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use oxmesh_xds::ads::client::{ClientError, SotwClient};
use oxmesh_xds::ads::types;
use prost::Message;
use tokio::sync::watch;

use crate::rbac::Policy;
use crate::state::{Converted, Service, State, Workload};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The last accepted contents of each type.
#[derive(Default)]
struct Accepted {
    addresses: Option<(Vec<Workload>, Vec<Service>, String)>,
    policies: Option<(Vec<Policy>, String)>,
}

/// Follows the control plane for ever, reconnecting after failures, and
/// publishes each accepted state in `state`; `synced` turns true once both
/// types have been accepted.
pub async fn follow<F, Fut>(connect: F, state: Arc<ArcSwap<State>>, synced: watch::Sender<bool>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<SotwClient, ClientError>>,
{
    let mut accepted = Accepted::default();
    let mut backoff = INITIAL_BACKOFF;
    loop {
        match connect().await {
            Ok(client) => {
                tracing::info!("connected to the control plane");
                backoff = INITIAL_BACKOFF;
                if let Err(e) = stream(client, &mut accepted, &state, &synced).await {
                    tracing::warn!(error = %e, "workload API stream ended; serving the last good state");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the control plane")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn stream(
    mut client: SotwClient,
    accepted: &mut Accepted,
    state: &ArcSwap<State>,
    synced: &watch::Sender<bool>,
) -> Result<(), ClientError> {
    client.subscribe(types::ADDRESS, &[]).await?;
    client.subscribe(types::AUTHORIZATION, &[]).await?;
    loop {
        let response = client.recv().await?;
        match apply(&response, accepted) {
            Ok(()) => {
                client.ack(&response, &[]).await?;
                if let (Some((workloads, services, _)), Some((policies, _))) =
                    (&accepted.addresses, &accepted.policies)
                {
                    state.store(Arc::new(State::new(
                        workloads.iter().cloned(),
                        services.iter().cloned(),
                        policies.iter().cloned(),
                    )));
                    synced.send_replace(true);
                }
            }
            Err(reason) => {
                tracing::warn!(kind = types::short_name(&response.type_url), %reason, "refused the workload API's push (NACK)");
                let last = match response.type_url.as_str() {
                    types::ADDRESS => accepted.addresses.as_ref().map(|a| a.2.clone()),
                    _ => accepted.policies.as_ref().map(|p| p.1.clone()),
                };
                client
                    .nack(&response, &[], &last.unwrap_or_default(), &reason)
                    .await?;
            }
        }
    }
}

/// Converts one response into the accepted contents of its type, or says
/// why not (every resource that failed, `name: reason`, joined by `; `).
fn apply(response: &DiscoveryResponse, accepted: &mut Accepted) -> Result<(), String> {
    let mut errors = Vec::new();
    match response.type_url.as_str() {
        types::ADDRESS => {
            let (mut workloads, mut services) = (Vec::new(), Vec::new());
            for any in &response.resources {
                let decoded = oxmesh_xds::workload::Address::decode(any.value.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|a| {
                        let name = resource_name(&a);
                        Converted::from_address(&name, a).map_err(|e| e.to_string())
                    });
                match decoded {
                    Ok(Converted::Workload(w)) => workloads.push(*w),
                    Ok(Converted::Service(s)) => services.push(s),
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                accepted.addresses = Some((workloads, services, response.version_info.clone()));
            }
        }
        types::AUTHORIZATION => {
            let mut policies = Vec::new();
            for any in &response.resources {
                let decoded = oxmesh_xds::security::Authorization::decode(any.value.as_slice())
                    .map_err(|e| e.to_string())
                    .and_then(|p| {
                        let name = format!("{}/{}", p.namespace, p.name);
                        Policy::from_api(&name, p).map_err(|e| e.to_string())
                    });
                match decoded {
                    Ok(p) => policies.push(p),
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                accepted.policies = Some((policies, response.version_info.clone()));
            }
        }
        other => errors.push(format!("unexpected type {other}")),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A resource's name as the workload API names it, for errors.
fn resource_name(address: &oxmesh_xds::workload::Address) -> String {
    use oxmesh_xds::workload::address::Type;
    match &address.r#type {
        Some(Type::Workload(w)) => w.uid.clone(),
        Some(Type::Service(s)) => format!("{}/{}", s.namespace, s.hostname),
        None => "an empty Address".to_owned(),
    }
}
