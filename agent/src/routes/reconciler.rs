//! The one owner of tortie's kernel routes: a dedicated thread that holds the
//! [`RouteTable`], receives the desired state as messages, and writes only the difference.
//!
//! It runs on its own OS thread rather than a tokio worker because a large batch (hundreds
//! of thousands of routes after a BGP session comes up) keeps the netlink socket busy for
//! seconds; nothing else should wait behind that.
//!
//! Graceful restart (RFC 4724, docs/agent.md step 9): with `graceful_restart`, the tortie routes found
//! in the kernel at start are *stale*: kept, and replaced if the new desired state names
//! them, but never deleted until [`RoutesHandle::sync_complete`] (End-of-RIB from every
//! peer). Only then are the stale routes nobody re-announced swept.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use super::{RouteSet, RouteState};
use crate::netlink::{NetlinkError, OpFailure, Route, RouteDeletions, RouteOp, RouteTable};

/// Commands waiting for the reconciler; bounded so producers feel backpressure. Small:
/// a command can carry thousands of routes, and a backlog here is memory a full table
/// would pay for at its peak.
const QUEUE: usize = 16;

#[derive(Clone, Debug)]
pub struct ReconcilerConfig {
    /// How often the kernel table is dumped and drift repaired. A dump of 500k routes
    /// takes about a second, so this is minutes in production and short in tests.
    pub resync_interval: Duration,
    /// Keep tortie routes found at start until [`RoutesHandle::sync_complete`].
    pub graceful_restart: bool,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            resync_interval: Duration::from_secs(90),
            graceful_restart: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcilerError {
    #[error("the route reconciler has stopped")]
    Stopped,
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("starting the route reconciler thread: {0}")]
    Spawn(std::io::Error),
}

/// One change of the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteUpdate {
    Want(Route),
    Unwant(IpNet),
}

enum Command {
    /// Replace the whole desired set.
    Set(RouteSet),
    /// Change some destinations; `reply` gets the failures among them once applied.
    Update {
        upsert: Vec<Route>,
        remove: Vec<IpNet>,
        reply: Option<oneshot::Sender<Vec<OpFailure>>>,
    },
    /// Changes applied in their order (a later change of a prefix wins).
    Sequence(Vec<RouteUpdate>),
    SyncComplete,
    /// The kernel announced that someone deleted these routes of ours.
    Deleted(Vec<IpNet>),
    /// Dump the kernel now and repair; replies with the operations that were needed.
    Resync(oneshot::Sender<Result<Vec<RouteOp>, NetlinkError>>),
}

/// How the rest of the agent talks to the reconciler. Clonable; the reconciler stops
/// when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct RoutesHandle {
    tx: mpsc::Sender<Command>,
    found_at_start: usize,
    /// Graceful restart: routes found at start wait for [`RoutesHandle::sync_complete`].
    restarting: Arc<AtomicBool>,
}

impl RoutesHandle {
    /// How many tortie routes the kernel held when the reconciler started: non-zero means
    /// we restarted with forwarding state intact (RFC 4724's R bit).
    pub fn found_at_start(&self) -> usize {
        self.found_at_start
    }

    /// Whether this node is still in its own graceful restart: it kept the routes it found
    /// at start and has not yet been told the sync is complete (readiness waits for it).
    pub fn restart_in_progress(&self) -> bool {
        self.restarting.load(Ordering::Relaxed)
    }

    /// Makes `set` the complete desired state (agent mode: from `desired_routes`).
    pub async fn set_desired(&self, set: RouteSet) -> Result<(), ReconcilerError> {
        self.send(Command::Set(set)).await
    }

    /// Adds or changes `upsert` and removes `remove`, without waiting for the kernel.
    /// Consecutive updates are coalesced into one netlink batch.
    pub async fn update(
        &self,
        upsert: Vec<Route>,
        remove: Vec<IpNet>,
    ) -> Result<(), ReconcilerError> {
        self.send(Command::Update {
            upsert,
            remove,
            reply: None,
        })
        .await
    }

    /// Like [`update`](Self::update), but answers once the routes are in the kernel, with
    /// the operations the kernel refused (empty on success).
    pub async fn update_and_wait(
        &self,
        upsert: Vec<Route>,
        remove: Vec<IpNet>,
    ) -> Result<Vec<OpFailure>, ReconcilerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Update {
            upsert,
            remove,
            reply: Some(tx),
        })
        .await?;
        rx.await.map_err(|_| ReconcilerError::Stopped)
    }

    /// Applies `changes` in order, without waiting for the kernel (the Loc-RIB stream).
    pub async fn apply_in_order(&self, changes: Vec<RouteUpdate>) -> Result<(), ReconcilerError> {
        self.send(Command::Sequence(changes)).await
    }

    /// Every source has re-sent its routes (BGP End-of-RIB): sweep the stale ones.
    pub async fn sync_complete(&self) -> Result<(), ReconcilerError> {
        self.send(Command::SyncComplete).await
    }

    /// Dumps the kernel and repairs drift now. Returns the operations that were needed.
    pub async fn resync(&self) -> Result<Vec<RouteOp>, ReconcilerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Resync(tx)).await?;
        Ok(rx.await.map_err(|_| ReconcilerError::Stopped)??)
    }

    /// Puts back, at once, any route of ours that someone else deletes, as the kernel
    /// announces it on `deletions` (the periodic resync would take minutes). The watching
    /// thread does not keep the reconciler alive: it ends once every handle is gone.
    pub fn repair_deletions(
        &self,
        mut deletions: RouteDeletions,
    ) -> Result<std::thread::JoinHandle<()>, ReconcilerError> {
        let tx = self.tx.downgrade();
        std::thread::Builder::new()
            .name("tortie-route-watch".into())
            .spawn(move || {
                loop {
                    let deleted = match deletions.wait() {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(error = %e, "watching route deletions failed; relying on the periodic resync");
                            return;
                        }
                    };
                    let Some(tx) = tx.upgrade() else { return };
                    if !deleted.is_empty() && tx.blocking_send(Command::Deleted(deleted)).is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(ReconcilerError::Spawn)
    }

    /// Completes when the reconciler has stopped (its thread ended, e.g. on a panic):
    /// from then on every call fails with [`ReconcilerError::Stopped`]. Lets an owner
    /// notice before it next has something to send.
    pub async fn stopped(&self) {
        self.tx.closed().await;
    }

    async fn send(&self, cmd: Command) -> Result<(), ReconcilerError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| ReconcilerError::Stopped)
    }
}

/// Starts the reconciler on its own thread. It first dumps the kernel's tortie routes
/// (failing here if it cannot), then waits for the desired state.
pub fn spawn_reconciler<T: RouteTable + 'static>(
    mut table: T,
    config: ReconcilerConfig,
) -> Result<(RoutesHandle, std::thread::JoinHandle<()>), ReconcilerError> {
    let kernel = table.dump()?;
    let found_at_start = kernel.len();
    tracing::info!(
        routes = found_at_start,
        graceful_restart = config.graceful_restart,
        "route reconciler starting"
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    let restarting = Arc::new(AtomicBool::new(
        config.graceful_restart && found_at_start > 0,
    ));
    let mut state = Reconciler {
        table,
        state: RouteState::new(kernel, config.graceful_restart),
        restarting: restarting.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("tortie-routes".into())
        .spawn(move || state.run(rx, config.resync_interval))
        .map_err(ReconcilerError::Spawn)?;
    Ok((
        RoutesHandle {
            tx,
            found_at_start,
            restarting,
        },
        thread,
    ))
}

struct Reconciler<T> {
    table: T,
    state: RouteState,
    restarting: Arc<AtomicBool>,
}

impl<T: RouteTable> Reconciler<T> {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>, resync_interval: Duration) {
        // A tiny current-thread runtime only provides the timer for waiting on the channel;
        // all the work happens synchronously on this thread.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "route reconciler cannot start its timer");
                return;
            }
        };
        let mut next_resync = Instant::now() + resync_interval;
        let mut written_since_trim = 0;
        let heartbeat = crate::run::health::Heartbeat::new("route reconciler", resync_interval);
        loop {
            heartbeat.beat();
            let timeout = next_resync.saturating_duration_since(Instant::now());
            let first = match recv_timeout(&rt, &mut rx, timeout) {
                Received::Command(c) => c,
                Received::Closed => {
                    tracing::info!("route reconciler stopping: no more handles");
                    return;
                }
                Received::Timeout => {
                    if let Err(e) = self.resync() {
                        tracing::warn!(error = %e, "periodic route resync failed");
                    }
                    next_resync = Instant::now() + resync_interval;
                    continue;
                }
            };
            // Drain what else is queued so a burst becomes one netlink batch.
            let mut dirty: HashSet<IpNet> = HashSet::new();
            let mut full = false;
            let mut replies = Vec::new();
            let mut resync_reply = None;
            let mut cmd = Some(first);
            let mut early_failures = Vec::new();
            while let Some(c) = cmd.take() {
                match c {
                    Command::Set(set) => {
                        early_failures.extend(self.state.set_all(set));
                        full = true;
                    }
                    Command::Update {
                        upsert,
                        remove,
                        reply,
                    } => {
                        let mut keys = Vec::with_capacity(upsert.len() + remove.len());
                        for dst in remove {
                            self.state.unwant(dst);
                            keys.push(dst);
                        }
                        for r in upsert {
                            keys.push(r.dst);
                            if let Err(f) = self.state.want(r) {
                                early_failures.push(f);
                            }
                        }
                        if !full {
                            dirty.extend(keys.iter().copied());
                        }
                        if let Some(reply) = reply {
                            replies.push((keys, reply));
                        }
                    }
                    Command::Sequence(changes) => {
                        for change in changes {
                            let dst = match change {
                                RouteUpdate::Want(r) => {
                                    let dst = r.dst;
                                    if let Err(f) = self.state.want(r) {
                                        early_failures.push(f);
                                    }
                                    dst
                                }
                                RouteUpdate::Unwant(dst) => {
                                    self.state.unwant(dst);
                                    dst
                                }
                            };
                            if !full {
                                dirty.insert(dst);
                            }
                        }
                    }
                    Command::Deleted(dsts) => {
                        let lost: Vec<IpNet> = dsts
                            .into_iter()
                            .filter(|dst| self.state.kernel_lost(*dst))
                            .collect();
                        if !lost.is_empty() {
                            tracing::info!(
                                routes = lost.len(),
                                first = %lost[0],
                                "routes of ours were deleted from the kernel: putting them back"
                            );
                        }
                        if !full {
                            dirty.extend(lost);
                        }
                    }
                    Command::SyncComplete => {
                        tracing::info!(
                            stale = self.state.stale(),
                            "routes in sync: sweeping stale routes"
                        );
                        self.state.sync_complete();
                        self.restarting.store(false, Ordering::Relaxed);
                        full = true;
                    }
                    Command::Resync(reply) => {
                        // Done after what was queued before it has been applied.
                        resync_reply = Some(reply);
                        break;
                    }
                }
                cmd = rx.try_recv().ok();
            }
            let ops = if full {
                self.state.ops()
            } else {
                self.state.ops_for(&dirty)
            };
            let mut failures = self.apply(&ops);
            failures.extend(early_failures);
            for (keys, reply) in replies {
                let keys: HashSet<IpNet> = keys.into_iter().collect();
                let mine = failures
                    .iter()
                    .filter(|f| keys.contains(&f.op.route().dst))
                    .cloned()
                    .collect();
                let _ = reply.send(mine);
            }
            if let Some(reply) = resync_reply {
                let _ = reply.send(self.resync());
                next_resync = Instant::now() + resync_interval;
            }
            written_since_trim += ops.len();
            if written_since_trim >= TRIM_AFTER && rx.is_empty() {
                release_free_memory();
                written_since_trim = 0;
            }
        }
    }

    fn resync(&mut self) -> Result<Vec<RouteOp>, NetlinkError> {
        self.state.observe_kernel(self.table.dump()?);
        let ops = self.state.ops();
        if !ops.is_empty() {
            tracing::info!(
                changes = ops.len(),
                "repairing drift in the kernel route table"
            );
        }
        self.apply(&ops);
        Ok(ops)
    }

    /// Applies `ops` and records what the kernel accepted.
    fn apply(&mut self, ops: &[RouteOp]) -> Vec<OpFailure> {
        if ops.is_empty() {
            return Vec::new();
        }
        let failures = match self.table.apply(ops) {
            Ok(f) => f,
            Err(e) => {
                // The socket failed mid-batch: we no longer know what the kernel holds.
                tracing::error!(error = %e, "netlink batch failed; re-reading the kernel table");
                match self.table.dump() {
                    Ok(routes) => self.state.observe_kernel(routes),
                    Err(e) => tracing::error!(error = %e, "kernel route dump failed"),
                }
                return ops
                    .iter()
                    .map(|op| OpFailure {
                        op: op.clone(),
                        errno: libc::EIO,
                    })
                    .collect();
            }
        };
        self.state.applied(ops, &failures);
        for f in failures.iter().take(10) {
            tracing::warn!(failure = %f, "kernel refused a route");
        }
        if failures.len() > 10 {
            tracing::warn!(more = failures.len() - 10, "kernel refused more routes");
        }
        failures
    }
}

/// Has `routes` repair deletions of our routes as soon as the kernel announces them, in
/// the calling thread's network namespace. Without the watch the periodic resync still
/// repairs them, later, so a failure to subscribe is only a warning.
pub fn watch_route_deletions(routes: &RoutesHandle) {
    let watching = RouteDeletions::open()
        .map_err(ReconcilerError::from)
        .and_then(|d| routes.repair_deletions(d));
    if let Err(e) = watching {
        tracing::warn!(error = %e, "cannot watch route deletions; the periodic resync repairs them");
    }
}

/// Routes written before the reconciler hands freed memory back to the kernel.
const TRIM_AFTER: usize = 50_000;

/// Returns the allocator's free memory to the kernel. Loading a full table goes through
/// large short-lived batches on several threads; glibc keeps what they freed in its arenas,
/// so without this the daemon's RSS would stay at the load's peak for good.
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers from us and
    // is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

enum Received {
    Command(Command),
    Closed,
    Timeout,
}

/// Blocking receive with a timeout, for a plain thread: tokio's channel has no
/// `blocking_recv_timeout`.
fn recv_timeout(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Command>,
    timeout: Duration,
) -> Received {
    rt.block_on(async {
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(c)) => Received::Command(c),
            Ok(None) => Received::Closed,
            Err(_) => Received::Timeout,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::FakeRouteTable;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn config(gr: bool) -> ReconcilerConfig {
        ReconcilerConfig {
            resync_interval: Duration::from_secs(3600),
            graceful_restart: gr,
        }
    }

    #[tokio::test]
    async fn applies_only_the_difference() {
        let fake = FakeRouteTable::new();
        fake.add_device("tortA");
        fake.insert(Route::blackhole(net("10.0.0.0/26")));
        fake.insert(Route::blackhole(net("10.9.9.0/26"))); // leftover, not desired
        let (h, _t) =
            spawn_reconciler(fake.clone(), config(false)).unwrap_or_else(|e| panic!("{e}"));
        let set: RouteSet = [
            Route::blackhole(net("10.0.0.0/26")),
            Route::link(net("10.0.0.5/32"), "tortA"),
        ]
        .into_iter()
        .collect();
        h.set_desired(set).await.unwrap_or_else(|e| panic!("{e}"));
        let ops = h.resync().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(ops.is_empty(), "second pass found work: {ops:?}");
        assert_eq!(
            fake.batches(),
            vec![vec![
                RouteOp::Delete(Route::blackhole(net("10.9.9.0/26"))),
                RouteOp::Add(Route::link(net("10.0.0.5/32"), "tortA")),
            ]]
        );
    }

    #[tokio::test]
    async fn repairs_drift_on_resync() {
        let fake = FakeRouteTable::new();
        let (h, _t) =
            spawn_reconciler(fake.clone(), config(false)).unwrap_or_else(|e| panic!("{e}"));
        let r = Route::via(
            net("10.1.0.0/26"),
            "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
        );
        let failures = h
            .update_and_wait(vec![r.clone()], vec![])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(failures.is_empty());
        fake.remove(r.dst);
        let ops = h.resync().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ops, vec![RouteOp::Add(r.clone())]);
        assert_eq!(fake.routes(), vec![r]);
    }

    #[tokio::test]
    async fn reports_refusals_to_the_waiter() {
        let fake = FakeRouteTable::new();
        fake.add_foreign(net("10.2.0.0/24"));
        let (h, _t) =
            spawn_reconciler(fake.clone(), config(false)).unwrap_or_else(|e| panic!("{e}"));
        let failures = h
            .update_and_wait(
                vec![
                    Route::link(net("10.0.0.9/32"), "nodev"),
                    Route::blackhole(net("10.2.0.0/24")),
                ],
                vec![],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let errnos: Vec<i32> = failures.iter().map(|f| f.errno).collect();
        assert_eq!(errnos.len(), 2);
        assert!(errnos.contains(&libc::ENODEV) && errnos.contains(&libc::EEXIST));
        assert!(fake.routes().is_empty());
    }

    #[tokio::test]
    async fn graceful_restart_keeps_stale_routes_until_sync_complete() {
        let fake = FakeRouteTable::new();
        let kept = Route::via(
            net("10.3.0.0/26"),
            "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
        );
        let gone = Route::via(
            net("10.4.0.0/26"),
            "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
        );
        fake.insert(kept.clone());
        fake.insert(gone.clone());
        let (h, _t) =
            spawn_reconciler(fake.clone(), config(true)).unwrap_or_else(|e| panic!("{e}"));
        assert!(h.restart_in_progress(), "routes were found at start");
        // A peer re-announces one route, with a new next hop.
        let moved = Route::via(
            kept.dst,
            "192.0.2.2".parse().unwrap_or_else(|_| unreachable!()),
        );
        h.update_and_wait(vec![moved.clone()], vec![])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let ops = h.resync().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            ops.is_empty(),
            "a stale route was touched before sync: {ops:?}"
        );
        assert_eq!(fake.routes(), vec![moved.clone(), gone.clone()]);

        assert!(h.restart_in_progress());
        h.sync_complete().await.unwrap_or_else(|e| panic!("{e}"));
        h.resync().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!h.restart_in_progress(), "the sweep ends the restart");
        assert_eq!(fake.routes(), vec![moved]);
        assert!(
            fake.batches()
                .iter()
                .flatten()
                .all(|op| op != &RouteOp::Delete(kept.clone()))
        );
    }

    /// A restarted agent names again, exactly as they are, the routes it left in the kernel:
    /// none of them may be written, not even after a dump made them look unknown.
    #[tokio::test]
    async fn graceful_restart_adopts_identical_routes_without_a_write() {
        let fake = FakeRouteTable::new();
        fake.add_device("tortA");
        let learned = Route::via(
            net("10.3.0.0/26"),
            "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
        );
        let own = [
            Route::blackhole(net("10.9.0.0/26")),
            Route::link(net("10.9.0.1/32"), "tortA"),
        ];
        fake.insert(learned.clone());
        for r in &own {
            fake.insert(r.clone());
        }
        let (h, _t) =
            spawn_reconciler(fake.clone(), config(true)).unwrap_or_else(|e| panic!("{e}"));
        h.update_and_wait(own.to_vec(), vec![])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // A dump (the endpoint task asks for one on a repeated ADD) before BGP is back.
        let ops = h.resync().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(ops.is_empty(), "a stale route was touched: {ops:?}");
        h.update_and_wait(vec![learned.clone()], vec![])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        h.sync_complete().await.unwrap_or_else(|e| panic!("{e}"));
        h.resync().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fake.batches(), Vec::<Vec<RouteOp>>::new());
        assert_eq!(fake.routes().len(), 3);
    }

    #[tokio::test]
    async fn a_route_learned_and_withdrawn_before_sync_is_deleted() {
        let fake = FakeRouteTable::new();
        let (h, _t) =
            spawn_reconciler(fake.clone(), config(true)).unwrap_or_else(|e| panic!("{e}"));
        let r = Route::blackhole(net("10.5.0.0/26"));
        h.update_and_wait(vec![r.clone()], vec![])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        h.update_and_wait(vec![], vec![r.dst])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(fake.routes().is_empty());
    }

    #[tokio::test]
    async fn a_sequence_is_applied_in_order() {
        let fake = FakeRouteTable::new();
        let (h, _t) =
            spawn_reconciler(fake.clone(), config(false)).unwrap_or_else(|e| panic!("{e}"));
        let gw: std::net::IpAddr = "192.0.2.1".parse().unwrap_or_else(|_| unreachable!());
        let (p, q) = (net("10.7.0.0/24"), net("10.8.0.0/24"));
        h.apply_in_order(vec![
            RouteUpdate::Want(Route::via(p, gw)),
            RouteUpdate::Unwant(p),
            RouteUpdate::Unwant(q),
            RouteUpdate::Want(Route::via(q, gw)),
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        h.resync().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fake.routes(), vec![Route::via(q, gw)]);
    }

    #[test]
    fn accepts_a_kernel_resolved_device_and_replaces_a_changed_next_hop() {
        let gw: std::net::IpAddr = "192.0.2.1".parse().unwrap_or_else(|_| unreachable!());
        let want = Route::via(net("10.6.0.0/26"), gw);
        let have = Route {
            dst: want.dst,
            next_hop: crate::netlink::NextHop::Gateway {
                gateway: gw,
                dev: Some("eth0".into()),
                onlink: false,
            },
        };
        let mut state = RouteState::new(vec![], false);
        state.want(want.clone()).unwrap_or_else(|f| panic!("{f}"));
        state.observe_kernel(vec![have]);
        assert!(state.ops().is_empty());
        state.observe_kernel(vec![Route::blackhole(want.dst)]);
        assert_eq!(state.ops(), vec![RouteOp::Replace(want)]);
    }

    #[test]
    fn an_ipv6_prefix_via_an_ipv4_gateway_is_refused() {
        let mut state = RouteState::new(vec![], false);
        let r = Route::via(
            net("fd00::/64"),
            "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
        );
        let f = state.want(r).err().map(|f| f.errno);
        assert_eq!(f, Some(libc::EAFNOSUPPORT));
        assert!(state.ops().is_empty());
    }
}
