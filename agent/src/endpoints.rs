//! The one task that owns this node's route model: local pods (their `/32 dev tortX`) and
//! the blocks affine to this node (their blackholes). It turns changes into route updates
//! for the reconciler, the only owner of the kernel table. The gRPC layer reaches it
//! through [`EndpointsHandle`], which implements [`Endpoints`](crate::attachment::Endpoints).
//!
//! An `EndpointReady` is answered only once its route is in the kernel (docs/decisions.md,
//! "Who installs a pod's host route").

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};

use crate::attachment::{Endpoint, Endpoints, Failure, Handle};
use crate::netlink::Route;
use crate::routes::RoutesHandle;

const QUEUE: usize = 256;

enum Command {
    Ready(Endpoint, oneshot::Sender<Result<(), Failure>>),
    Removed(Handle, oneshot::Sender<Result<(), Failure>>),
}

#[derive(Clone, Debug)]
pub struct EndpointsHandle {
    tx: mpsc::Sender<Command>,
}

impl EndpointsHandle {
    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), Failure>>) -> Command,
    ) -> Result<(), Failure> {
        let stopped = || Failure::Unavailable("the endpoint task has stopped".to_owned());
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

impl Endpoints for EndpointsHandle {
    async fn ready(&self, endpoint: Endpoint) -> Result<(), Failure> {
        self.call(|tx| Command::Ready(endpoint, tx)).await
    }
    async fn removed(&self, handle: &Handle) -> Result<(), Failure> {
        let h = handle.clone();
        self.call(|tx| Command::Removed(h, tx)).await
    }
}

struct Task {
    routes: RoutesHandle,
    /// Each local endpoint's host routes, by handle.
    endpoints: HashMap<Handle, Vec<Route>>,
    blocks: BTreeSet<IpNet>,
}

/// Starts the task once it has restored what already exists: the host routes of `seed`
/// (pods that outlived an agent restart) and the blackholes of the blocks `affine` holds
/// now (the IPAM task's view of this node's blocks). When this returns, the reconciler has
/// been told every route of the node's own, so that after a restart it may sweep the
/// stale routes nobody named once BGP is in sync too (docs/agent.md).
pub async fn start(
    routes: RoutesHandle,
    seed: Vec<Endpoint>,
    mut affine: watch::Receiver<Vec<IpNet>>,
) -> (EndpointsHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut task = Task {
        routes,
        endpoints: HashMap::new(),
        blocks: BTreeSet::new(),
    };
    for ep in seed {
        if let Err(e) = task.ready(ep.clone()).await {
            tracing::warn!(handle = %ep.handle, error = %e, "could not restore a pod's host route");
        }
    }
    let blocks = affine.borrow_and_update().clone();
    task.set_blocks(blocks).await;
    (EndpointsHandle { tx }, tokio::spawn(task.run(rx, affine)))
}

fn host_routes(ep: &Endpoint) -> Vec<Route> {
    ep.addresses
        .iter()
        .map(|a| Route::link(IpNet::from(a.addr()), ep.host_ifname.clone()))
        .collect()
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut affine: watch::Receiver<Vec<IpNet>>,
    ) {
        let (heartbeat, mut tick) = crate::run::health::Heartbeat::with_idle_tick("endpoint task");
        loop {
            tokio::select! {
                _ = tick.tick() => heartbeat.beat(),
                cmd = rx.recv() => match cmd {
                    Some(Command::Ready(ep, reply)) => { let _ = reply.send(self.ready(ep).await); }
                    Some(Command::Removed(h, reply)) => { let _ = reply.send(self.removed(&h).await); }
                    None => return,
                },
                changed = affine.changed() => {
                    if changed.is_err() {
                        // The IPAM task is gone; keep serving endpoints with the blocks we have.
                        affine = watch::channel(self.blocks.iter().copied().collect()).1;
                        continue;
                    }
                    let blocks = affine.borrow_and_update().clone();
                    self.set_blocks(blocks).await;
                }
            }
        }
    }

    async fn ready(&mut self, ep: Endpoint) -> Result<(), Failure> {
        let want = host_routes(&ep);
        // Addresses the handle had before and no longer has (a re-ADD with new addresses).
        let remove: Vec<IpNet> = self
            .endpoints
            .get(&ep.handle)
            .map(|old| {
                old.iter()
                    .filter(|r| !want.iter().any(|w| w.dst == r.dst))
                    .map(|r| r.dst)
                    .collect()
            })
            .unwrap_or_default();
        let unavailable = |e: crate::routes::ReconcilerError| Failure::Unavailable(e.to_string());
        if self.endpoints.contains_key(&ep.handle) {
            // A repeated ADD rewires the pod: the plugin replaced the veth, and the kernel
            // dropped the host routes with the old link. The reconciler still believes they
            // are there, so it must re-read the kernel before it can tell what is missing.
            self.routes.resync().await.map_err(unavailable)?;
        }
        // A veth recreated under the same name has a new index; the netlink table re-reads
        // the links and retries once itself, so a failure here is final.
        let failures = self
            .routes
            .update_and_wait(want.clone(), remove)
            .await
            .map_err(unavailable)?;
        if let Some(f) = failures.first() {
            // Most likely ENODEV: the veth is not (or no longer) there. Forget the routes, or
            // the reconciler would keep retrying them.
            let dsts: Vec<IpNet> = want.iter().map(|r| r.dst).collect();
            if let Err(e) = self.routes.update(Vec::new(), dsts).await {
                tracing::warn!(error = %e, "could not withdraw a failed endpoint's routes");
            }
            self.endpoints.remove(&ep.handle);
            return Err(Failure::Precondition(format!(
                "installing the host route for {}: {f}",
                ep.handle
            )));
        }
        tracing::info!(handle = %ep.handle, ifname = %ep.host_ifname, "endpoint routes installed");
        // An address released by GC is free at once, while its old endpoint is forgotten
        // only after: when a new pod got it in between, the route is the new pod's now, and
        // forgetting the old endpoint must not take it along.
        for (handle, routes) in &mut self.endpoints {
            if *handle != ep.handle {
                routes.retain(|r| !want.iter().any(|w| w.dst == r.dst));
            }
        }
        self.endpoints.insert(ep.handle, want);
        Ok(())
    }

    async fn removed(&mut self, handle: &Handle) -> Result<(), Failure> {
        let Some(routes) = self.endpoints.remove(handle) else {
            return Ok(());
        };
        let dsts: Vec<IpNet> = routes.iter().map(|r| r.dst).collect();
        // Deleting a route whose veth is already gone fails with ESRCH; that is the state we
        // want, so failures are not errors here.
        self.routes
            .update_and_wait(Vec::new(), dsts)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn set_blocks(&mut self, blocks: Vec<IpNet>) {
        let new: BTreeSet<IpNet> = blocks.into_iter().collect();
        let upsert: Vec<Route> = new
            .difference(&self.blocks)
            .map(|b| Route::blackhole(*b))
            .collect();
        let remove: Vec<IpNet> = self.blocks.difference(&new).copied().collect();
        if upsert.is_empty() && remove.is_empty() {
            return;
        }
        match self.routes.update(upsert, remove).await {
            Ok(()) => self.blocks = new,
            Err(e) => tracing::warn!(error = %e, "could not update block blackholes"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::attachment::PodRef;
    use crate::netlink::{FakeRouteTable, RouteOp, RouteTable};
    use crate::routes::{ReconcilerConfig, spawn_reconciler};

    fn ep(cid: &str, ifname: &str, addr: &str) -> Endpoint {
        Endpoint {
            handle: Handle {
                network: "net".into(),
                container_id: cid.into(),
            },
            pod: PodRef::default(),
            host_ifname: ifname.into(),
            addresses: vec![addr.parse().unwrap()],
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// GC releases an address, a new pod gets it and its route, and only then is the old
    /// endpoint forgotten: the new pod's route must stay.
    #[tokio::test]
    async fn forgetting_an_endpoint_keeps_a_route_its_address_moved_to() {
        let table = FakeRouteTable::new();
        table.add_device("tortA");
        table.add_device("tortB");
        let probe = table.clone();
        let (routes, _thread) = spawn_reconciler(table, ReconcilerConfig::default()).unwrap();
        let (_affine_tx, affine_rx) = watch::channel(Vec::new());
        let (eps, _join) = start(routes, Vec::new(), affine_rx).await;

        eps.ready(ep("old", "tortA", "10.9.0.5/32")).await.unwrap();
        eps.ready(ep("new", "tortB", "10.9.0.5/32")).await.unwrap();
        eps.removed(&ep("old", "", "10.9.0.5/32").handle)
            .await
            .unwrap();
        assert_eq!(
            probe.routes(),
            vec![Route::link(net("10.9.0.5/32"), "tortB")]
        );

        // The address is still the new endpoint's to give back.
        eps.removed(&ep("new", "", "10.9.0.5/32").handle)
            .await
            .unwrap();
        assert_eq!(probe.routes(), Vec::new());
    }

    /// An agent restarted over its own routes: a surviving pod's, its block's blackhole, and
    /// that of a pod that is gone. Once `start` returns, sync may complete: the gone pod's
    /// route is the only write.
    #[tokio::test]
    async fn after_a_restart_only_what_start_did_not_name_is_swept() {
        let table = FakeRouteTable::new();
        table.add_device("tortA");
        let kept = vec![
            Route::blackhole(net("10.9.0.0/26")),
            Route::link(net("10.9.0.1/32"), "tortA"),
        ];
        let gone = net("10.9.0.7/32");
        for r in &kept {
            table.insert(r.clone());
        }
        table.insert(Route::link(gone, "tortGone"));
        let probe = table.clone();
        let config = ReconcilerConfig {
            graceful_restart: true,
            ..ReconcilerConfig::default()
        };
        let (routes, _thread) = spawn_reconciler(table, config).unwrap();
        let (_affine_tx, affine_rx) = watch::channel(vec![net("10.9.0.0/26")]);
        let (_eps, _join) = start(
            routes.clone(),
            vec![ep("a", "tortA", "10.9.0.1/32")],
            affine_rx,
        )
        .await;
        routes.sync_complete().await.unwrap();
        routes.resync().await.unwrap();
        assert_eq!(
            probe.batches(),
            vec![vec![RouteOp::Delete(Route::blackhole(gone))]]
        );
        assert_eq!(probe.routes(), kept);
    }

    #[tokio::test]
    async fn endpoints_and_blocks_reach_the_table() {
        let table = FakeRouteTable::new();
        table.add_device("tortA");
        table.add_device("tortB");
        // A pod that survived a restart, and a stale route of ours for a pod that did not.
        table.insert(Route::link(net("10.9.0.1/32"), "tortA"));
        table.insert(Route::link(net("10.9.0.7/32"), "tortGone"));
        let mut probe = table.clone();
        let (routes, _thread) = spawn_reconciler(table, ReconcilerConfig::default()).unwrap();
        let (affine_tx, affine_rx) = watch::channel(vec![net("10.9.0.0/26")]);
        let (eps, _join) = start(
            routes.clone(),
            vec![ep("a", "tortA", "10.9.0.1/32")],
            affine_rx,
        )
        .await;

        eps.ready(ep("b", "tortB", "10.9.0.2/32")).await.unwrap();
        // Answered only once it is in the kernel.
        assert!(
            probe
                .routes()
                .contains(&Route::link(net("10.9.0.2/32"), "tortB"))
        );

        // Unknown device: refused, and not kept for retries.
        let err = eps
            .ready(ep("c", "tortNope", "10.9.0.3/32"))
            .await
            .unwrap_err();
        assert!(matches!(err, Failure::Precondition(_)), "{err:?}");

        // A repeated ADD replaces the veth, and the kernel drops the route with the old link:
        // the same endpoint again must put the route back.
        probe.remove(net("10.9.0.2/32"));
        eps.ready(ep("b", "tortB", "10.9.0.2/32")).await.unwrap();
        assert!(
            probe
                .routes()
                .contains(&Route::link(net("10.9.0.2/32"), "tortB"))
        );

        eps.removed(&ep("b", "", "10.9.0.2/32").handle)
            .await
            .unwrap();
        eps.removed(&ep("never", "", "10.9.0.9/32").handle)
            .await
            .unwrap();
        affine_tx
            .send(vec![net("10.9.0.0/26"), net("10.9.0.64/26")])
            .unwrap();

        // Block changes are not waited for: poll until the reconciler has them.
        let mut got = Vec::new();
        for _ in 0..200 {
            routes.resync().await.unwrap();
            got = probe
                .dump()
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect();
            got.sort();
            if got.len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            got,
            vec![
                "10.9.0.1/32 dev tortA scope link".to_owned(),
                "blackhole 10.9.0.0/26".to_owned(),
                "blackhole 10.9.0.64/26".to_owned(),
            ]
        );
    }
}
