//! The one task that owns this node's IPAM allocator. The gRPC layer reaches it through
//! [`IpamHandle`] (which implements [`Ipam`](crate::attachment::Ipam)) over a bounded
//! channel; requests are served one at a time, which is what the allocator's `&mut self`
//! asks for and what keeps its cache coherent.
//!
//! The task also publishes the blocks affine to this node (for their blackhole routes and
//! BGP) and the addresses its pods borrowed from other nodes' blocks (advertised as /32s
//! and /128s, as Calico does), and gives empty blocks back after their grace period.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tortie_ipam::{
    AllocRequest, Allocator, GcScope, IpFamily, IpamError, NodeUsage, Store, StoreError,
};

use crate::attachment::{AllocateParams, Failure, GcOutcome, Handle, Ipam, PodRef};

/// Requests waiting for the allocator; bounded so a flood of ADDs feels backpressure.
const QUEUE: usize = 256;
/// Most allocations served by one batch (one block write).
const MAX_BATCH: usize = 64;
/// How often empty blocks are checked for release.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

type AllocReply = oneshot::Sender<Result<Vec<IpNet>, Failure>>;

enum Command {
    Allocate(AllocateParams, AllocReply),
    Release(Handle, oneshot::Sender<Result<u32, Failure>>),
    Lookup(Handle, oneshot::Sender<Result<Vec<IpNet>, Failure>>),
    Gc(
        String,
        Vec<Handle>,
        oneshot::Sender<Result<GcOutcome, Failure>>,
    ),
    GcLeaks(
        LivePods,
        Option<HashSet<String>>,
        oneshot::Sender<Result<Vec<Handle>, Failure>>,
    ),
    ReleaseDeletedNodes(
        HashSet<String>,
        oneshot::Sender<Result<Vec<String>, Failure>>,
    ),
    Usage(oneshot::Sender<Result<NodeUsage, Failure>>),
}

/// The pods that exist on this node, by namespace and name, with their UIDs: what leak GC
/// compares allocations against.
#[derive(Debug, Clone, Default)]
pub struct LivePods {
    uids: HashMap<(String, String), String>,
}

impl LivePods {
    pub fn insert(&mut self, namespace: &str, name: &str, uid: &str) {
        self.uids
            .insert((namespace.to_owned(), name.to_owned()), uid.to_owned());
    }

    /// A pod recreated under the same name is a different pod: with a UID on both sides,
    /// they must match.
    pub fn has(&self, pod: &tortie_ipam::PodRef) -> bool {
        match self.uids.get(&(pod.namespace.clone(), pod.name.clone())) {
            None => false,
            Some(uid) => match &pod.uid {
                Some(want) if !uid.is_empty() => want == uid,
                _ => true,
            },
        }
    }
}

/// How the rest of the agent talks to the IPAM task. Clonable; the task ends when the last
/// handle is dropped.
#[derive(Clone, Debug)]
pub struct IpamHandle {
    tx: mpsc::Sender<Command>,
    borrowed: watch::Receiver<Vec<IpNet>>,
}

fn ipam_handle(h: &Handle) -> tortie_ipam::Handle {
    tortie_ipam::Handle::for_container(&h.network, &h.container_id)
}

/// A handle read back from the datastore: the network is everything up to the last dot
/// (container IDs have no dots; network names may).
fn from_ipam_handle(h: &tortie_ipam::Handle) -> Handle {
    match h.as_str().rsplit_once('.') {
        Some((network, cid)) => Handle {
            network: network.to_owned(),
            container_id: cid.to_owned(),
        },
        None => Handle {
            network: String::new(),
            container_id: h.as_str().to_owned(),
        },
    }
}

/// How an allocator failure reaches the CNI plugin.
pub fn failure(e: IpamError) -> Failure {
    match e {
        IpamError::Exhausted { .. } => Failure::Exhausted(e.to_string()),
        IpamError::NoPool { .. } => Failure::Precondition(e.to_string()),
        // Transient: the plugin answers CNI code 11, and the runtime retries.
        IpamError::Contention { .. } | IpamError::Store(StoreError::Backend(_)) => {
            Failure::Unavailable(e.to_string())
        }
        IpamError::Store(_) => Failure::Internal(e.to_string()),
    }
}

/// The pod an allocation records, for leak GC; none when the runtime did not say.
fn ipam_pod(pod: &PodRef) -> Option<tortie_ipam::PodRef> {
    (!pod.name.is_empty()).then(|| tortie_ipam::PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: (!pod.uid.is_empty()).then(|| pod.uid.clone()),
    })
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl IpamHandle {
    /// The addresses this node's pods hold in blocks affine to other nodes, as host
    /// prefixes, whenever they change.
    pub fn borrowed(&self) -> watch::Receiver<Vec<IpNet>> {
        self.borrowed.clone()
    }

    /// Releases this node's allocations whose pod is not in `live` once they have been seen
    /// leaked for the grace period (`TORTIE_IPAM_GC_GRACE`). With `existing_nodes`, also the
    /// allocations of nodes not in it (deleted Nodes: their pods run nowhere), after the same
    /// grace. Returns the released handles.
    pub async fn gc_leaks(
        &self,
        live: LivePods,
        existing_nodes: Option<HashSet<String>>,
    ) -> Result<Vec<Handle>, Failure> {
        self.call(|tx| Command::GcLeaks(live, existing_nodes, tx))
            .await
    }

    /// Releases the blocks and affinities of every node that holds some but is not in
    /// `existing` (its Node object was deleted). Returns the nodes released.
    pub async fn release_deleted_nodes(
        &self,
        existing: HashSet<String>,
    ) -> Result<Vec<String>, Failure> {
        self.call(|tx| Command::ReleaseDeletedNodes(existing, tx))
            .await
    }

    /// This node's affine blocks and the addresses its pods hold (for the metrics).
    pub async fn usage(&self) -> Result<NodeUsage, Failure> {
        self.call(Command::Usage).await
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Failure>>) -> Command,
    ) -> Result<T, Failure> {
        let stopped = || Failure::Unavailable("the IPAM task has stopped".to_owned());
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

impl Ipam for IpamHandle {
    async fn allocate(&self, params: AllocateParams) -> Result<Vec<IpNet>, Failure> {
        self.call(|tx| Command::Allocate(params, tx)).await
    }
    async fn release(&self, handle: &Handle) -> Result<u32, Failure> {
        let h = handle.clone();
        self.call(|tx| Command::Release(h, tx)).await
    }
    async fn addresses(&self, handle: &Handle) -> Result<Vec<IpNet>, Failure> {
        let h = handle.clone();
        self.call(|tx| Command::Lookup(h, tx)).await
    }
    async fn gc(&self, network: &str, keep: &[Handle]) -> Result<GcOutcome, Failure> {
        let (n, k) = (network.to_owned(), keep.to_vec());
        self.call(|tx| Command::Gc(n, k, tx)).await
    }
}

struct IpamTask<S> {
    alloc: Allocator<S>,
    /// Families each pod gets an address of: IPv4, plus IPv6 in dual stack.
    families: Vec<IpFamily>,
    affine: watch::Sender<Vec<IpNet>>,
    borrowed: watch::Sender<Vec<IpNet>>,
}

/// Starts the IPAM task on the current tokio runtime. `affine` receives the blocks affine to
/// this node whenever they change.
pub fn spawn<S: Store + 'static>(
    alloc: Allocator<S>,
    families: Vec<IpFamily>,
) -> (
    IpamHandle,
    watch::Receiver<Vec<IpNet>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (affine_tx, affine_rx) = watch::channel(Vec::new());
    let (borrowed_tx, borrowed_rx) = watch::channel(Vec::new());
    let task = IpamTask {
        alloc,
        families,
        affine: affine_tx,
        borrowed: borrowed_tx,
    };
    let join = tokio::spawn(task.run(rx));
    let handle = IpamHandle {
        tx,
        borrowed: borrowed_rx,
    };
    (handle, affine_rx, join)
}

impl<S: Store> IpamTask<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.publish().await;
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat = crate::run::health::Heartbeat::new("IPAM task", HOUSEKEEPING);
        loop {
            heartbeat.beat();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Allocate(p, reply)) => {
                        // ADDs that queued up together are served together: one block write
                        // for the lot. Draining stops at the first other command, so an
                        // allocate and a later release of the same handle keep their order.
                        let mut batch = vec![(p, reply)];
                        let mut next = None;
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(Command::Allocate(p, reply)) => batch.push((p, reply)),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.allocate_batch(batch).await;
                        if let Some(cmd) = next {
                            self.handle(cmd).await;
                        }
                    }
                    Some(cmd) => self.handle(cmd).await,
                    None => return,
                },
                _ = tick.tick() => {
                    match self.alloc.release_empty_blocks(Instant::now()).await {
                        Ok(released) if !released.is_empty() => self.publish().await,
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "releasing empty blocks failed; will retry"),
                    }
                }
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        // A caller that went away (CNI timed out) is not an error for us.
        match cmd {
            Command::Allocate(p, reply) => {
                let r = self.allocate(p).await;
                self.publish().await;
                let _ = reply.send(r);
            }
            Command::Release(h, reply) => {
                let r = self
                    .alloc
                    .release(&ipam_handle(&h))
                    .await
                    .map(|a| a.len() as u32)
                    .map_err(failure);
                let _ = reply.send(r);
                // Released addresses may have been borrowed ones: no longer ours to advertise.
                self.publish().await;
            }
            Command::Lookup(h, reply) => {
                let r = self
                    .alloc
                    .lookup(&ipam_handle(&h))
                    .await
                    .map(|a| a.into_iter().map(host_net).collect())
                    .map_err(failure);
                let _ = reply.send(r);
            }
            Command::Gc(network, keep, reply) => {
                let valid: HashSet<tortie_ipam::Handle> = keep.iter().map(ipam_handle).collect();
                let r = self
                    .alloc
                    .gc_handles(&network, &valid)
                    .await
                    .map_err(failure)
                    .map(|hs| GcOutcome {
                        handles: hs.iter().map(from_ipam_handle).collect(),
                    });
                let _ = reply.send(r);
                // Released addresses may have been borrowed ones: no longer ours to advertise.
                self.publish().await;
            }
            Command::ReleaseDeletedNodes(existing, reply) => {
                let r = self.release_deleted_nodes(&existing).await;
                let _ = reply.send(r);
                // Released addresses may have been borrowed ones: no longer ours to advertise.
                self.publish().await;
            }
            Command::Usage(reply) => {
                let _ = reply.send(self.alloc.usage().await.map_err(failure));
            }
            Command::GcLeaks(live, existing_nodes, reply) => {
                let node = self.alloc.node().to_owned();
                let scope = match &existing_nodes {
                    Some(existing) => GcScope::NodeAndDeleted {
                        node: &node,
                        existing,
                    },
                    None => GcScope::Node(&node),
                };
                let r = self
                    .alloc
                    .gc_leaks(scope, Instant::now(), |p| live.has(p))
                    .await
                    .map(|hs| hs.iter().map(from_ipam_handle).collect())
                    .map_err(failure);
                let _ = reply.send(r);
                // Released addresses may have been borrowed ones: no longer ours to advertise.
                self.publish().await;
            }
        }
    }

    /// Serves queued Allocates with the allocator's batch path and answers each.
    async fn allocate_batch(&mut self, batch: Vec<(AllocateParams, AllocReply)>) {
        if batch.len() == 1 {
            for (p, reply) in batch {
                let r = self.allocate(p).await;
                self.publish().await;
                let _ = reply.send(r);
            }
            return;
        }
        let families = self.families.clone();
        let reqs: Vec<AllocRequest> = batch
            .iter()
            .flat_map(|(p, _)| {
                let (handle, pod) = (ipam_handle(&p.handle), ipam_pod(&p.pod));
                families.iter().map(move |f| AllocRequest {
                    handle: handle.clone(),
                    family: *f,
                    pod: pod.clone(),
                })
            })
            .collect();
        let mut results = self.alloc.allocate_batch(&reqs).await.into_iter();
        let mut answers = Vec::with_capacity(batch.len());
        for (p, reply) in batch {
            let mut addrs = Vec::with_capacity(families.len());
            let mut error = None;
            for _ in &families {
                match results.next() {
                    Some(Ok(a)) => addrs.push(host_net(a.ip)),
                    Some(Err(e)) => error = error.or(Some(failure(e))),
                    None => {
                        error = error.or(Some(Failure::Internal(
                            "the allocator answered fewer requests than asked".to_owned(),
                        )))
                    }
                }
            }
            let r = match error {
                None => Ok(addrs),
                Some(e) => {
                    // All families or none: give back what this handle did get.
                    if !addrs.is_empty()
                        && let Err(undo) = self.alloc.release(&ipam_handle(&p.handle)).await
                    {
                        tracing::warn!(handle = %p.handle, error = %undo, "could not give back a partial allocation; leak GC will");
                    }
                    Err(e)
                }
            };
            answers.push((reply, r));
        }
        tracing::debug!(count = answers.len(), "served a batch of allocations");
        self.publish().await;
        for (reply, r) in answers {
            let _ = reply.send(r);
        }
    }

    /// One address per family. When a later family fails, the earlier ones are given back,
    /// so a failed ADD leaves no allocation behind.
    async fn allocate(&mut self, p: AllocateParams) -> Result<Vec<IpNet>, Failure> {
        let handle = ipam_handle(&p.handle);
        let pod = ipam_pod(&p.pod);
        let mut out = Vec::with_capacity(self.families.len());
        for family in self.families.clone() {
            match self.alloc.allocate(&handle, family, pod.clone()).await {
                Ok(a) => out.push(host_net(a.ip)),
                Err(e) => {
                    if !out.is_empty()
                        && let Err(undo) = self.alloc.release(&handle).await
                    {
                        tracing::warn!(%handle, error = %undo, "could not give back a partial allocation; leak GC will");
                    }
                    return Err(failure(e));
                }
            }
        }
        Ok(out)
    }

    async fn release_deleted_nodes(
        &mut self,
        existing: &HashSet<String>,
    ) -> Result<Vec<String>, Failure> {
        let blocks = self
            .alloc
            .store()
            .list_blocks()
            .await
            .map_err(|e| failure(e.into()))?;
        let me = self.alloc.node().to_owned();
        let gone: std::collections::BTreeSet<String> = blocks
            .iter()
            .filter_map(|b| b.value.affinity.clone())
            // Never ourselves: our Node object may be missing from a stale listing.
            .filter(|n| *n != me && !existing.contains(n))
            .collect();
        for node in &gone {
            self.alloc.release_node(node).await.map_err(failure)?;
        }
        Ok(gone.into_iter().collect())
    }

    /// Publishes this node's affine blocks and borrowed addresses, each only if it changed.
    async fn publish(&mut self) {
        match self.alloc.affine_blocks().await {
            Ok(blocks) => {
                replace_if_changed(&self.affine, blocks.iter().map(|b| b.net()).collect())
            }
            Err(e) => tracing::warn!(error = %e, "reading this node's blocks failed"),
        }
        match self.alloc.borrowed().await {
            Ok(addresses) => {
                let mut hosts: Vec<IpNet> = addresses.into_iter().map(host_net).collect();
                hosts.sort();
                replace_if_changed(&self.borrowed, hosts);
            }
            Err(e) => tracing::warn!(error = %e, "reading this node's borrowed addresses failed"),
        }
    }
}

fn replace_if_changed(tx: &watch::Sender<Vec<IpNet>>, nets: Vec<IpNet>) {
    tx.send_if_modified(|cur| {
        if *cur == nets {
            false
        } else {
            *cur = nets;
            true
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use tortie_ipam::{IpPool, IpamConfig, MemStore};

    use super::*;

    fn params(cid: &str) -> AllocateParams {
        AllocateParams {
            handle: Handle {
                network: "k8s-pod-network".into(),
                container_id: cid.into(),
            },
            pod: PodRef {
                namespace: "default".into(),
                name: format!("pod-{cid}"),
                uid: String::new(),
            },
        }
    }

    fn start(
        pools: Vec<IpPool>,
        families: Vec<IpFamily>,
    ) -> (MemStore, IpamHandle, watch::Receiver<Vec<IpNet>>) {
        let store = MemStore::new();
        store.set_pools(pools);
        let alloc = Allocator::new(
            store.clone(),
            "node-1",
            BTreeMap::new(),
            IpamConfig::default(),
        );
        let (h, affine, _join) = spawn(alloc, families);
        (store, h, affine)
    }

    fn pool(name: &str, cidr: &str, bs: u8) -> IpPool {
        IpPool::new(name, cidr.parse().unwrap(), bs).unwrap()
    }

    #[tokio::test]
    async fn addresses_borrowed_from_another_nodes_block_are_published_until_released() {
        // One block in the pool, and node-2 holds it: node-1 can only borrow.
        let (store, ipam, affine) = start(vec![pool("p4", "10.9.0.0/28", 28)], vec![IpFamily::V4]);
        let mut node2 = Allocator::new(store, "node-2", BTreeMap::new(), IpamConfig::default());
        let theirs = node2
            .allocate(
                &tortie_ipam::Handle::for_container("k8s-pod-network", "n2"),
                IpFamily::V4,
                None,
            )
            .await
            .unwrap();
        let mut borrowed = ipam.borrowed();
        let ours = ipam.allocate(params("c1")).await.unwrap();
        assert_ne!(ours[0], host_net(theirs.ip));
        borrowed.wait_for(|b| *b == ours).await.unwrap();
        assert!(affine.borrow().is_empty(), "the block is node-2's");
        assert_eq!(ipam.release(&params("c1").handle).await.unwrap(), 1);
        borrowed.wait_for(Vec::is_empty).await.unwrap();
    }

    #[tokio::test]
    async fn allocates_durably_and_idempotently_and_publishes_blocks() {
        let (store, ipam, mut affine) =
            start(vec![pool("p4", "10.9.0.0/24", 28)], vec![IpFamily::V4]);
        let a = ipam.allocate(params("c1")).await.unwrap();
        assert_eq!(a.len(), 1);
        assert!(a[0].to_string().starts_with("10.9.0."));
        assert_eq!(a[0].prefix_len(), 32);
        assert_eq!(ipam.allocate(params("c1")).await.unwrap(), a);
        let b = ipam.allocate(params("c2")).await.unwrap();
        assert_ne!(a, b);
        // The allocation is in the store, not just in the task.
        assert!(store.blocks().iter().any(|blk| {
            blk.find(&tortie_ipam::Handle::for_container("k8s-pod-network", "c1"))
                .is_some()
        }));
        affine.wait_for(|b| b.len() == 1).await.unwrap();
        assert_eq!(affine.borrow()[0].prefix_len(), 28);

        assert_eq!(ipam.addresses(&params("c1").handle).await.unwrap(), a);
        assert_eq!(
            ipam.usage().await.unwrap(),
            NodeUsage {
                affine_blocks: 1,
                addresses: 2
            }
        );
        assert_eq!(ipam.release(&params("c1").handle).await.unwrap(), 1);
        assert_eq!(ipam.usage().await.unwrap().addresses, 1);
        assert_eq!(ipam.release(&params("c1").handle).await.unwrap(), 0);
        assert!(
            ipam.addresses(&params("c1").handle)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_burst_of_adds_shares_block_writes_and_stays_unique() {
        let (store, ipam, _a) = start(vec![pool("p4", "10.9.0.0/24", 26)], vec![IpFamily::V4]);
        ipam.allocate(params("first")).await.unwrap();
        let before = store.writes();
        // On this single-threaded runtime all 20 requests are queued before the task runs.
        let burst =
            futures::future::join_all((0..20).map(|i| ipam.allocate(params(&format!("b{i}")))))
                .await;
        let writes = store.writes() - before;
        let mut addrs: Vec<IpNet> = burst.into_iter().map(|r| r.unwrap()[0]).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 20);
        assert!(writes < 5, "{writes} writes for 20 allocations");
        // Every one is in the store, each under its own handle.
        for i in 0..20 {
            let h = tortie_ipam::Handle::for_container("k8s-pod-network", &format!("b{i}"));
            assert!(store.blocks().iter().any(|b| b.find(&h).is_some()), "b{i}");
        }
    }

    #[tokio::test]
    async fn a_burst_past_the_block_claims_more_and_dual_stack_pairs_up() {
        let (_s, ipam, _a) = start(
            vec![
                pool("p4", "10.9.0.0/24", 28),
                pool("p6", "fd00:9::/120", 124),
            ],
            vec![IpFamily::V4, IpFamily::V6],
        );
        let burst =
            futures::future::join_all((0..40).map(|i| ipam.allocate(params(&format!("b{i}")))))
                .await;
        let mut v4 = Vec::new();
        for r in burst {
            let a = r.unwrap();
            assert_eq!(
                a.iter().map(|n| n.prefix_len()).collect::<Vec<_>>(),
                vec![32, 128]
            );
            v4.push(a[0]);
        }
        v4.sort();
        v4.dedup();
        assert_eq!(v4.len(), 40);
    }

    #[tokio::test]
    async fn dual_stack_gives_both_or_nothing() {
        let (_s, ipam, _a) = start(
            vec![
                pool("p4", "10.9.0.0/24", 28),
                pool("p6", "fd00:9::/120", 124),
            ],
            vec![IpFamily::V4, IpFamily::V6],
        );
        let a = ipam.allocate(params("c1")).await.unwrap();
        assert_eq!(
            a.iter().map(|n| n.prefix_len()).collect::<Vec<_>>(),
            vec![32, 128]
        );

        // No IPv6 pool: the IPv4 address must be given back.
        let (_s, ipam, _a) = start(
            vec![pool("p4", "10.9.0.0/24", 28)],
            vec![IpFamily::V4, IpFamily::V6],
        );
        let err = ipam.allocate(params("c1")).await.unwrap_err();
        assert!(matches!(err, Failure::Precondition(_)), "{err:?}");
        assert!(
            ipam.addresses(&params("c1").handle)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn exhaustion_is_reported_as_such() {
        let (_s, ipam, _a) = start(vec![pool("p4", "10.9.0.0/30", 30)], vec![IpFamily::V4]);
        let mut got = 0;
        let err = loop {
            match ipam.allocate(params(&format!("c{got}"))).await {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(got, 4);
        assert!(matches!(err, Failure::Exhausted(_)), "{err:?}");
    }

    #[tokio::test]
    async fn gc_releases_handles_not_kept() {
        let (_s, ipam, _a) = start(vec![pool("p4", "10.9.0.0/24", 28)], vec![IpFamily::V4]);
        for c in ["keep", "leak"] {
            ipam.allocate(params(c)).await.unwrap();
        }
        let out = ipam
            .gc("k8s-pod-network", &[params("keep").handle])
            .await
            .unwrap();
        assert_eq!(out.handles, vec![params("leak").handle]);
        assert!(
            ipam.addresses(&params("leak").handle)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            ipam.addresses(&params("keep").handle).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn leak_gc_waits_for_the_grace_period_and_spares_live_pods() {
        let store = MemStore::new();
        store.set_pools(vec![pool("p4", "10.9.0.0/24", 28)]);
        let config = IpamConfig {
            leak_grace: std::time::Duration::from_millis(200),
            ..IpamConfig::default()
        };
        let (ipam, _affine, _join) = spawn(
            Allocator::new(store, "node-1", BTreeMap::new(), config),
            vec![IpFamily::V4],
        );
        for c in ["live", "gone", "recreated"] {
            ipam.allocate(params(c)).await.unwrap();
        }
        let mut live = LivePods::default();
        live.insert("default", "pod-live", "");
        // Same name, another UID than the allocation recorded (none recorded here: any UID
        // matches), so only "gone" leaks.
        live.insert("default", "pod-recreated", "uid-2");
        // First sight of a leak starts its clock: nothing released yet.
        assert!(ipam.gc_leaks(live.clone(), None).await.unwrap().is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        assert_eq!(
            ipam.gc_leaks(live, None).await.unwrap(),
            vec![params("gone").handle]
        );
        assert!(
            ipam.addresses(&params("gone").handle)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            ipam.addresses(&params("live").handle).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn a_deleted_nodes_blocks_are_released() {
        let store = MemStore::new();
        store.set_pools(vec![pool("p4", "10.9.0.0/24", 28)]);
        let other = Allocator::new(
            store.clone(),
            "node-2",
            BTreeMap::new(),
            IpamConfig::default(),
        );
        let (ipam2, _a2, _j2) = spawn(other, vec![IpFamily::V4]);
        ipam2.allocate(params("theirs")).await.unwrap();
        let (ipam1, _a1, _j1) = spawn(
            Allocator::new(
                store.clone(),
                "node-1",
                BTreeMap::new(),
                IpamConfig::default(),
            ),
            vec![IpFamily::V4],
        );
        ipam1.allocate(params("mine")).await.unwrap();
        let both: HashSet<String> = ["node-1".to_owned(), "node-2".to_owned()].into();
        assert!(ipam1.release_deleted_nodes(both).await.unwrap().is_empty());
        // node-2 is gone, and node-1 is missing from the listing too: only node-2 goes.
        assert_eq!(
            ipam1.release_deleted_nodes(HashSet::new()).await.unwrap(),
            vec!["node-2".to_owned()]
        );
        assert!(
            store
                .blocks()
                .iter()
                .all(|b| b.affinity.as_deref() != Some("node-2"))
        );
        assert!(
            store.affinities().iter().all(|a| a.node != "node-2"),
            "{:?}",
            store.affinities()
        );
        assert!(
            store
                .blocks()
                .iter()
                .any(|b| b.affinity.as_deref() == Some("node-1"))
        );
    }

    #[test]
    fn live_pods_compare_uids_when_both_have_one() {
        let mut live = LivePods::default();
        live.insert("ns", "a", "u1");
        let pod = |uid: Option<&str>| tortie_ipam::PodRef {
            namespace: "ns".into(),
            name: "a".into(),
            uid: uid.map(String::from),
        };
        assert!(live.has(&pod(Some("u1"))));
        assert!(live.has(&pod(None)));
        assert!(!live.has(&pod(Some("u0"))));
        assert!(!live.has(&tortie_ipam::PodRef {
            namespace: "ns".into(),
            name: "b".into(),
            uid: None
        }));
    }

    #[test]
    fn handles_round_trip_with_dotted_networks() {
        let h = Handle {
            network: "net.a".into(),
            container_id: "abc".into(),
        };
        assert_eq!(from_ipam_handle(&ipam_handle(&h)), h);
    }
}
