//! Leak GC's driver: now and then, list the pods bound to this node and let the IPAM task
//! release allocations whose pod is gone (after `TORTIE_IPAM_GC_GRACE`), and the endpoint
//! task forget their routes. Each round also releases the blocks of deleted nodes.
//!
//! A failed pod listing skips the round: an empty answer must never read as "every pod is
//! gone".

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;

use crate::attachment::Endpoints;
use crate::ipam_task::{IpamHandle, LivePods};

/// Node deletion releases the node's blocks and affinities (Calico's kube-controllers does
/// this; here every agent does, and compare-and-swap keeps them from colliding). Returns the
/// nodes that exist, for the leak GC of deleted nodes' allocations; `None` when they could
/// not be listed (then nothing of another node is released this round).
async fn release_deleted_nodes(nodes: &Api<Node>, ipam: &IpamHandle) -> Option<HashSet<String>> {
    let list = match nodes.list_metadata(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "listing nodes failed; not releasing deleted nodes' blocks this round");
            return None;
        }
    };
    let existing: HashSet<String> = list
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    match ipam.release_deleted_nodes(existing.clone()).await {
        Ok(released) => {
            for n in released {
                tracing::info!(node = %n, "released the blocks of a deleted node");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "releasing deleted nodes' blocks failed; retrying next round")
        }
    }
    Some(existing)
}

/// The pods an allocation may belong to, keyed as allocations name them (namespace, name,
/// UID). `tortiectl ipam check` reads pods through this too, so it calls leaked exactly what
/// this GC would release.
pub fn live_pods(pods: &[Pod]) -> LivePods {
    let mut live = LivePods::default();
    for p in pods {
        let m = &p.metadata;
        live.insert(
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default(),
        );
    }
    live
}

/// How often to look: often enough that a leak goes soon after its grace period ends, and
/// not more than once a second nor less than once a minute.
pub fn interval(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Runs forever; spawn it and drop the handle to stop it.
pub async fn run<E: Endpoints>(
    client: kube::Client,
    node: String,
    grace: Duration,
    ipam: IpamHandle,
    endpoints: E,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut tick = tokio::time::interval(interval(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let existing_nodes = release_deleted_nodes(&nodes, &ipam).await;
        let list = match pods.list(&params).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leak GC: listing this node's pods failed; skipping this round");
                continue;
            }
        };
        match ipam.gc_leaks(live_pods(&list.items), existing_nodes).await {
            Ok(released) => {
                for h in released {
                    tracing::info!(handle = %h, "leak GC released an allocation whose pod is gone");
                    if let Err(e) = endpoints.removed(&h).await {
                        tracing::warn!(handle = %h, error = %e, "leak GC: forgetting the endpoint failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "leak GC failed; retrying next round"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_half_the_grace_within_bounds() {
        assert_eq!(
            interval(Duration::from_secs(15 * 60)),
            Duration::from_secs(60)
        );
        assert_eq!(interval(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(interval(Duration::ZERO), Duration::from_secs(1));
    }
}
