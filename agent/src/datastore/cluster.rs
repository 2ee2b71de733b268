//! What IPAM garbage collection needs to know about the cluster: which pods exist (for leak
//! GC) and which nodes exist (to release the blocks of deleted ones).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams};
use tortie_ipam::{Allocator, IpamError, PodRef, Store};
use tracing::info;

use super::crd;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("listing {what} in the apiserver: {source}")]
    List {
        what: &'static str,
        source: kube::Error,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// A snapshot of the pods that exist, to answer [`Allocator::gc_leaks`]'s question.
#[derive(Debug, Default)]
pub struct PodIndex {
    /// (namespace, name) → uid.
    pods: HashMap<(String, String), Option<String>>,
}

impl PodIndex {
    /// The pods scheduled to `node`, or every pod when `node` is None.
    pub async fn load(client: &Client, node: Option<&str>) -> Result<PodIndex, ClusterError> {
        let api: Api<Pod> = Api::all(client.clone());
        let params = match node {
            Some(n) => ListParams::default().fields(&format!("spec.nodeName={n}")),
            None => ListParams::default(),
        };
        let list = api
            .list(&params)
            .await
            .map_err(|source| ClusterError::List {
                what: "pods",
                source,
            })?;
        let pods = list
            .items
            .into_iter()
            .filter_map(|p| Some(((p.metadata.namespace?, p.metadata.name?), p.metadata.uid)))
            .collect();
        Ok(PodIndex { pods })
    }

    /// Whether the pod an address was given to still exists. A pod recreated under the same
    /// name is another pod when both UIDs are known.
    pub fn exists(&self, pod: &PodRef) -> bool {
        match self.pods.get(&(pod.namespace.clone(), pod.name.clone())) {
            None => false,
            Some(uid) => match (&pod.uid, uid) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => true,
            },
        }
    }
}

/// Releases the blocks and affinities of nodes that no longer exist in the apiserver.
///
/// A node must be seen missing for `grace` before it is released: an agent may claim its
/// first block a moment before its Node object shows up in a list, and releasing it then
/// would orphan a block in use. Several agents may run this at once: every step is a
/// compare-and-swap.
#[derive(Debug)]
pub struct NodeGc {
    grace: Duration,
    missing_since: HashMap<String, Instant>,
}

impl NodeGc {
    pub fn new(grace: Duration) -> NodeGc {
        NodeGc {
            grace,
            missing_since: HashMap::new(),
        }
    }

    /// One pass. Returns the nodes released.
    pub async fn run<S: Store>(
        &mut self,
        client: &Client,
        alloc: &mut Allocator<S>,
        now: Instant,
    ) -> Result<Vec<String>, ClusterError> {
        let list_err = |what| move |source| ClusterError::List { what, source };
        // Affinities too, not only blocks: a node that died halfway through a claim may hold
        // only an affinity.
        let affinities: Api<crd::BlockAffinity> = Api::all(client.clone());
        let blocks: Api<crd::IPAMBlock> = Api::all(client.clone());
        let mut holders: BTreeSet<String> = affinities
            .list(&ListParams::default())
            .await
            .map_err(list_err("block affinities"))?
            .items
            .into_iter()
            .map(|a| a.spec.node)
            .collect();
        holders.extend(
            blocks
                .list(&ListParams::default())
                .await
                .map_err(list_err("IPAM blocks"))?
                .items
                .into_iter()
                .filter_map(|b| b.spec.affinity),
        );
        // Listed after the holders, so a node created in between counts as existing.
        let nodes: Api<Node> = Api::all(client.clone());
        let existing: BTreeSet<String> = nodes
            .list(&ListParams::default())
            .await
            .map_err(list_err("nodes"))?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let missing: BTreeSet<String> = holders.difference(&existing).cloned().collect();
        self.missing_since.retain(|n, _| missing.contains(n));
        let mut released = Vec::new();
        for node in missing {
            let since = *self.missing_since.entry(node.clone()).or_insert(now);
            if now.saturating_duration_since(since) < self.grace {
                continue;
            }
            info!(%node, "node no longer exists; releasing its blocks and affinities");
            alloc.release_node(&node).await?;
            self.missing_since.remove(&node);
            released.push(node);
        }
        Ok(released)
    }
}
