//! The policy owner task: the one place that decides and writes this node's iptables and
//! ipset state (docs/policy.md).
//!
//! It reads the cluster cache's snapshots and keeps the local endpoints (pods wired on this
//! node, from the CNI's `EndpointReady` and from pods that outlived an agent restart). After
//! every change it compiles the whole dataplane with an [`Incremental`] compiler (the same
//! output as [`compile`](super::compile::compile), recomputing only the policies and sets
//! the change touched) and hands it to the applier, which writes only what differs.
//! Changes that arrive while an apply runs are folded into the next one.
//!
//! A CNI ADD waits here ([`Enforced`]) until an apply that includes the new pod's chains and
//! set memberships has succeeded, so a pod is never reachable before its policy is in the
//! kernel. Until then its veth is an unknown `tort*` interface, which the dataplane drops.
//!
//! Nothing is written before the cache has listed pods, namespaces, policies and pools once:
//! an agent restarting with an empty model would otherwise open or cut off every pod. When
//! applying keeps failing, the task writes the fail-closed dataplane (only established
//! traffic passes) and reports not ready until an apply succeeds again.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::apply::{Applier, ApplyError, Backend, BackendSetting};
use super::compile::{Incremental, fail_closed};
use super::model::{Dataplane, Family, Namespace, Pod, PolicyInput, Pool};
use crate::attachment::{Endpoint, Endpoints, Failure, Handle};
use crate::cache::{Kind, Snapshot};
use crate::metrics::Metrics;

const QUEUE: usize = 256;

/// What the dataplane needs listed before the first apply.
const NEEDS: [Kind; 4] = [
    Kind::Pod,
    Kind::Namespace,
    Kind::NetworkPolicy,
    Kind::IPPool,
];

/// Applies failing in a row before the dataplane falls back to fail-closed.
pub const FAILURES_BEFORE_FAIL_CLOSED: u32 = 3;

/// The task's clocks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a CNI ADD waits for its pod to appear in the cache (the Pod object exists
    /// before the runtime calls the plugin; this only covers the watch's delay).
    pub pod_wait: Duration,
    /// Between an apply that failed and the next try.
    pub retry: Duration,
    /// How often the kernel is compared with what we last wrote (drift: rules or set
    /// members changed by someone else).
    pub drift_check: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            pod_wait: Duration::from_secs(10),
            retry: Duration::from_millis(500),
            drift_check: Duration::from_secs(30),
        }
    }
}

/// Whether the policy dataplane is what the cluster asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneHealth {
    /// Waiting for the cache's first lists.
    Starting,
    InSync,
    /// Applying failed repeatedly; the fail-closed dataplane is in place (when it could be
    /// written), so nothing is forwarded but established traffic.
    Failing(String),
}

/// Writes a whole dataplane into the kernel; the real one is [`Applier`]. Blocking.
pub trait Program: Send + 'static {
    fn apply(&mut self, desired: Dataplane) -> Result<(), ApplyError>;
    /// Compares the kernel with `desired`, repairs it, and says what had drifted.
    fn repair(&mut self, desired: Dataplane) -> Result<Vec<String>, ApplyError>;
}

impl Program for Applier {
    fn apply(&mut self, desired: Dataplane) -> Result<(), ApplyError> {
        let report = Applier::apply(self, desired)?;
        tracing::debug!(?report, "policy dataplane applied");
        Ok(())
    }
    fn repair(&mut self, desired: Dataplane) -> Result<Vec<String>, ApplyError> {
        self.check_drift(desired)
    }
}

/// One program per address family the node serves, all on the one iptables backend that
/// `setting` resolves to (for dual stack the count includes ip6tables, so both families can
/// never end up on different backends).
pub fn appliers(
    families: &[Family],
    setting: BackendSetting,
) -> Result<Vec<(Family, Applier)>, ApplyError> {
    let widest = if families.contains(&Family::V6) {
        Family::V6
    } else {
        Family::V4
    };
    let backend = Backend::detect(setting, widest)?;
    tracing::info!(%backend, %setting, "iptables backend");
    Ok(families
        .iter()
        .map(|f| (*f, Applier::new(*f, backend)))
        .collect())
}

enum Command {
    Up(Endpoint, oneshot::Sender<Result<(), Failure>>),
    Down(Handle),
}

/// The handle the CNI path uses.
#[derive(Clone, Debug)]
pub struct PolicyHandle {
    tx: mpsc::Sender<Command>,
}

impl PolicyHandle {
    /// Returns once the endpoint's chains and set memberships are in the kernel.
    pub async fn endpoint_up(&self, endpoint: Endpoint) -> Result<(), Failure> {
        let stopped = || Failure::Unavailable("the policy task has stopped".to_owned());
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Up(endpoint, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Forgets the endpoint; its chains go with the next apply.
    pub async fn endpoint_down(&self, handle: &Handle) {
        let _ = self.tx.send(Command::Down(handle.clone())).await;
    }
}

/// Local endpoints with policy: the route (from `inner`) and the policy both in the kernel
/// before `EndpointReady` answers. Both are written at once; until the policy is there, the
/// pod's veth is unknown to the dataplane, which drops its traffic.
#[derive(Clone, Debug)]
pub struct Enforced<E> {
    pub inner: E,
    pub policy: PolicyHandle,
}

impl<E: Endpoints> Endpoints for Enforced<E> {
    async fn ready(&self, endpoint: Endpoint) -> Result<(), Failure> {
        let (route, policy) = tokio::join!(
            self.inner.ready(endpoint.clone()),
            self.policy.endpoint_up(endpoint)
        );
        route?;
        policy
    }
    async fn removed(&self, handle: &Handle) -> Result<(), Failure> {
        self.policy.endpoint_down(handle).await;
        self.inner.removed(handle).await
    }
}

/// Starts the task. `seed` are endpoints that outlived an agent restart.
pub fn spawn<P: Program>(
    timing: Timing,
    programs: Vec<(Family, P)>,
    snapshots: watch::Receiver<Snapshot>,
    seed: Vec<Endpoint>,
    metrics: Metrics,
) -> (
    PolicyHandle,
    watch::Receiver<DataplaneHealth>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (health_tx, health) = watch::channel(DataplaneHealth::Starting);
    let task = Task {
        timing,
        compilers: programs.iter().map(|(f, _)| Incremental::new(*f)).collect(),
        programs: programs.into_iter().map(|(f, p)| (f, Some(p))).collect(),
        endpoints: seed.into_iter().map(|e| (e.handle.clone(), e)).collect(),
        waiters: Vec::new(),
        failures: 0,
        health: health_tx,
        metrics,
    };
    (
        PolicyHandle { tx },
        health,
        tokio::spawn(task.run(rx, snapshots)),
    )
}

struct Waiter {
    handle: Handle,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), Failure>>,
}

struct Task<P> {
    timing: Timing,
    /// `None` only while the program is out on a blocking thread.
    programs: Vec<(Family, Option<P>)>,
    /// One per program, in the same order: each keeps what it compiled last, so a change
    /// costs what it touches.
    compilers: Vec<Incremental>,
    endpoints: BTreeMap<Handle, Endpoint>,
    waiters: Vec<Waiter>,
    failures: u32,
    health: watch::Sender<DataplaneHealth>,
    metrics: Metrics,
}

impl<P: Program> Task<P> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut snapshots: watch::Receiver<Snapshot>,
    ) {
        let mut snapshot = snapshots.borrow_and_update().clone();
        let mut dirty = true;
        let mut retry_at: Option<Instant> = None;
        let mut drift = tokio::time::interval(self.timing.drift_check);
        drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        drift.reset();
        let mut snapshots_open = true;
        let heartbeat = crate::run::health::Heartbeat::new("policy task", self.timing.drift_check);
        loop {
            heartbeat.beat();
            // Fold everything already queued (also what came in during the last apply) into
            // the next apply.
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
                dirty = true;
            }
            if dirty && retry_at.is_none() && is_ready(&snapshot) {
                dirty = false;
                if snapshots.has_changed().unwrap_or(false) {
                    snapshot = snapshots.borrow_and_update().clone();
                }
                match self.apply(&snapshot).await {
                    Ok(()) => {
                        self.failures = 0;
                        self.health.send_replace(DataplaneHealth::InSync);
                        self.answer_waiters(&snapshot);
                    }
                    Err(e) => {
                        self.failures += 1;
                        tracing::warn!(error = %e, failures = self.failures, "applying the policy dataplane failed");
                        retry_at = Some(Instant::now() + self.timing.retry);
                        if self.failures == FAILURES_BEFORE_FAIL_CLOSED {
                            self.fail_closed(&e).await;
                        }
                    }
                }
                continue;
            }
            let next_deadline = self.waiters.iter().map(|w| w.deadline).min();
            tokio::select! {
                changed = snapshots.changed(), if snapshots_open => {
                    if changed.is_err() {
                        snapshots_open = false;
                        continue;
                    }
                    snapshot = snapshots.borrow_and_update().clone();
                    dirty = true;
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => { self.command(cmd); dirty = true; }
                    None => return,
                },
                _ = sleep_until(retry_at) => { retry_at = None; dirty = true; }
                _ = sleep_until(next_deadline) => self.expire_waiters(&snapshot),
                _ = drift.tick() => {
                    if is_ready(&snapshot) && self.failures == 0 {
                        self.repair(&snapshot).await;
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Up(ep, reply) => {
                self.waiters.push(Waiter {
                    handle: ep.handle.clone(),
                    deadline: Instant::now() + self.timing.pod_wait,
                    reply,
                });
                self.endpoints.insert(ep.handle.clone(), ep);
            }
            Command::Down(handle) => {
                self.endpoints.remove(&handle);
                self.waiters.retain(|w| w.handle != handle);
            }
        }
    }

    /// Answers the ADDs whose endpoint the dataplane just written includes.
    fn answer_waiters(&mut self, snapshot: &Snapshot) {
        let (done, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| self.included(&w.handle, snapshot));
        self.waiters = waiting;
        for w in done {
            let _ = w.reply.send(Ok(()));
        }
    }

    fn included(&self, handle: &Handle, snapshot: &Snapshot) -> bool {
        self.endpoints.get(handle).is_some_and(|ep| {
            snapshot
                .pods
                .contains_key(&(ep.pod.namespace.clone(), ep.pod.name.clone()))
        })
    }

    fn expire_waiters(&mut self, snapshot: &Snapshot) {
        let now = Instant::now();
        let (expired, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.waiters = waiting;
        for w in expired {
            let why = match self.endpoints.get(&w.handle) {
                Some(ep) if !self.included(&w.handle, snapshot) => format!(
                    "pod {}/{} is not in the agent's cache after {:?}: its policy cannot be known yet",
                    ep.pod.namespace, ep.pod.name, self.timing.pod_wait
                ),
                _ => format!(
                    "the policy dataplane could not be written within {:?}: {:?}",
                    self.timing.pod_wait,
                    *self.health.borrow()
                ),
            };
            let _ = w.reply.send(Err(Failure::Unavailable(why)));
        }
    }

    fn desired(&mut self, snapshot: &Snapshot) -> Vec<Dataplane> {
        let input = policy_input(snapshot, &self.endpoints);
        self.compilers
            .iter_mut()
            .map(|compiler| {
                let compiled = compiler.compile(&input);
                for w in &compiled.warnings {
                    tracing::warn!(family = ?compiler.family(), "{w}");
                }
                compiled.dataplane
            })
            .collect()
    }

    async fn apply(&mut self, snapshot: &Snapshot) -> Result<(), ApplyError> {
        let planes = self.desired(snapshot);
        let started = Instant::now();
        let written = self
            .run_programs(planes, |p, d| p.apply(d).map(|()| Vec::new()))
            .await;
        match &written {
            Ok(_) => self
                .metrics
                .policy_apply_duration
                .observe(started.elapsed().as_secs_f64()),
            Err(_) => {
                self.metrics.policy_apply_failures.inc();
            }
        }
        written.map(|_| ())
    }

    async fn repair(&mut self, snapshot: &Snapshot) {
        let planes = self.desired(snapshot);
        match self.run_programs(planes, |p, d| p.repair(d)).await {
            Ok(drifted) if drifted.is_empty() => {}
            Ok(drifted) => {
                self.metrics.policy_drift_repairs.inc();
                tracing::warn!(?drifted, "the kernel's policy rules had drifted; repaired")
            }
            Err(e) => tracing::warn!(error = %e, "checking the policy dataplane for drift failed"),
        }
    }

    async fn fail_closed(&mut self, why: &ApplyError) {
        let planes = self.programs.iter().map(|(f, _)| fail_closed(*f)).collect();
        let written = self
            .run_programs(planes, |p, d| p.apply(d).map(|()| Vec::new()))
            .await;
        let reason = match written {
            Ok(_) => format!("policy dataplane failing, pods isolated (fail closed): {why}"),
            Err(e) => format!(
                "policy dataplane failing ({why}), and fail-closed rules could not be written either: {e}"
            ),
        };
        tracing::error!("{reason}");
        self.health.send_replace(DataplaneHealth::Failing(reason));
    }

    /// Runs `f` for each family's program on a blocking thread (they spawn iptables and
    /// ipset), in family order; stops at the first error.
    async fn run_programs(
        &mut self,
        planes: Vec<Dataplane>,
        f: fn(&mut P, Dataplane) -> Result<Vec<String>, ApplyError>,
    ) -> Result<Vec<String>, ApplyError> {
        let mut out = Vec::new();
        for ((_, slot), plane) in self.programs.iter_mut().zip(planes) {
            let Some(mut program) = slot.take() else {
                continue;
            };
            let joined = tokio::task::spawn_blocking(move || {
                let r = f(&mut program, plane);
                (program, r)
            })
            .await;
            match joined {
                Ok((program, r)) => {
                    *slot = Some(program);
                    out.extend(r?);
                }
                // The closure does not panic on its own; a panic lost the program, and the
                // next apply runs without it would be wrong: stop the agent loudly instead.
                Err(e) => panic!("policy program thread failed: {e}"),
            }
        }
        Ok(out)
    }
}

fn is_ready(snapshot: &Snapshot) -> bool {
    NEEDS.iter().all(|k| snapshot.is_synced(*k))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The compiler's input: the cluster from the cache, with each local pod's addresses and
/// veth from its endpoint (its `status.podIP` is written by the kubelet only after the ADD
/// this input is for). Host-network and finished pods have no endpoint to match.
pub fn policy_input(snapshot: &Snapshot, endpoints: &BTreeMap<Handle, Endpoint>) -> PolicyInput {
    let local: BTreeMap<(&str, &str), &Endpoint> = endpoints
        .values()
        .map(|e| ((e.pod.namespace.as_str(), e.pod.name.as_str()), e))
        .collect();
    let pods = snapshot
        .pods
        .values()
        .filter(|p| !p.host_network && !p.finished)
        .map(|p| {
            let ep = local.get(&(p.namespace.as_str(), p.name.as_str()));
            Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                ips: match ep {
                    Some(ep) => ep.addresses.iter().map(IpNet::addr).collect(),
                    None => p.ips.clone(),
                },
                named_ports: p.named_ports.clone(),
                host_ifname: ep.map(|e| e.host_ifname.clone()),
            }
        })
        .collect();
    let pools = snapshot
        .pools
        .values()
        .filter_map(|p| match p.spec.cidr.parse::<IpNet>() {
            Ok(cidr) => Some(Pool {
                cidr: cidr.trunc(),
                nat_outgoing: p.spec.nat_outgoing,
                disabled: p.spec.disabled,
            }),
            Err(e) => {
                tracing::warn!(pool = ?p.metadata.name, cidr = %p.spec.cidr, error = %e, "IP pool with an invalid CIDR left out of NAT outgoing");
                None
            }
        })
        .collect();
    PolicyInput {
        policies: snapshot.policies.values().cloned().collect(),
        namespaces: snapshot
            .namespaces
            .iter()
            .map(|(name, labels)| Namespace {
                name: name.clone(),
                labels: labels.clone(),
            })
            .collect(),
        pods,
        pools,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::attachment::PodRef;
    use crate::cache::PodInfo;
    use crate::policy::compile::compile;
    use crate::policy::model::Table;

    /// Records every dataplane it is given; fails while `fail` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        applied: Arc<Mutex<Vec<Dataplane>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl Program for Recorder {
        fn apply(&mut self, desired: Dataplane) -> Result<(), ApplyError> {
            if *self.fail.lock().unwrap() {
                return Err(ApplyError::test_failure("iptables-restore: exit 1"));
            }
            self.applied.lock().unwrap().push(desired);
            Ok(())
        }
        fn repair(&mut self, _desired: Dataplane) -> Result<Vec<String>, ApplyError> {
            Ok(Vec::new())
        }
    }

    impl Recorder {
        fn last(&self) -> Option<Dataplane> {
            self.applied.lock().unwrap().last().cloned()
        }
        fn count(&self) -> usize {
            self.applied.lock().unwrap().len()
        }
    }

    fn endpoint(name: &str, ifname: &str, ip: &str) -> Endpoint {
        Endpoint {
            handle: Handle {
                network: "k8s-pod-network".into(),
                container_id: format!("c-{name}"),
            },
            pod: PodRef {
                namespace: "x".into(),
                name: name.into(),
                uid: String::new(),
            },
            host_ifname: ifname.into(),
            addresses: vec![format!("{ip}/32").parse().unwrap()],
        }
    }

    fn pod(name: &str) -> (crate::cache::ObjectKey, Arc<PodInfo>) {
        let p = PodInfo {
            namespace: "x".into(),
            name: name.into(),
            uid: String::new(),
            node: Some("node-1".into()),
            labels: [("pod".to_owned(), name.to_owned())].into(),
            ips: Vec::new(),
            named_ports: Vec::new(),
            host_network: false,
            finished: false,
        };
        (p.key(), Arc::new(p))
    }

    fn synced(pods: &[&str]) -> Snapshot {
        Snapshot {
            pods: Arc::new(pods.iter().map(|p| pod(p)).collect()),
            synced: NEEDS.into_iter().collect::<BTreeSet<_>>(),
            ..Snapshot::default()
        }
    }

    fn fast() -> Timing {
        Timing {
            pod_wait: Duration::from_millis(300),
            retry: Duration::from_millis(10),
            drift_check: Duration::from_secs(3600),
        }
    }

    fn has_chain(d: &Dataplane, chain: &str) -> bool {
        d.chains.contains_key(&(Table::Filter, chain.to_owned()))
    }

    #[tokio::test]
    async fn nothing_is_written_before_the_cache_has_listed_everything() {
        let rec = Recorder::default();
        let (snap_tx, snap_rx) = watch::channel(Snapshot::default());
        let (_h, mut health, _t) = spawn(
            fast(),
            vec![(Family::V4, rec.clone())],
            snap_rx,
            Vec::new(),
            Metrics::default(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(rec.count(), 0, "applied before the cache synced");
        assert_eq!(*health.borrow(), DataplaneHealth::Starting);
        snap_tx.send_replace(synced(&[]));
        health
            .wait_for(|h| *h == DataplaneHealth::InSync)
            .await
            .unwrap();
        assert!(rec.count() >= 1);
    }

    #[tokio::test]
    async fn an_add_is_answered_only_once_its_pod_is_known_and_its_chains_written() {
        let rec = Recorder::default();
        let (snap_tx, snap_rx) = watch::channel(synced(&[]));
        let (handle, _health, _t) = spawn(
            fast(),
            vec![(Family::V4, rec.clone())],
            snap_rx,
            Vec::new(),
            Metrics::default(),
        );
        let ep = endpoint("a", "tort0000000000a", "10.0.0.5");
        let up = tokio::spawn({
            let handle = handle.clone();
            async move { handle.endpoint_up(ep).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !up.is_finished(),
            "answered before the pod was in the cache"
        );
        assert!(
            rec.last()
                .is_none_or(|d| !has_chain(&d, "tort-tw-tort0000000000a")),
            "an endpoint whose labels are unknown got chains"
        );
        snap_tx.send_replace(synced(&["a"]));
        up.await.unwrap().unwrap();
        let d = rec.last().unwrap();
        assert!(has_chain(&d, "tort-tw-tort0000000000a"), "{d:?}");
        assert!(has_chain(&d, "tort-fw-tort0000000000a"), "{d:?}");

        // Forgetting the endpoint takes its chains away with the next apply.
        handle
            .endpoint_down(&endpoint("a", "tort0000000000a", "10.0.0.5").handle)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!has_chain(&rec.last().unwrap(), "tort-tw-tort0000000000a"));
    }

    /// Records like [`Recorder`], but each apply takes a while, so that ADDs queue up behind it.
    #[derive(Clone, Default)]
    struct Slow(Recorder);

    impl Program for Slow {
        fn apply(&mut self, desired: Dataplane) -> Result<(), ApplyError> {
            std::thread::sleep(Duration::from_millis(30));
            self.0.apply(desired)
        }
        fn repair(&mut self, desired: Dataplane) -> Result<Vec<String>, ApplyError> {
            self.0.repair(desired)
        }
    }

    #[tokio::test]
    async fn adds_that_arrive_during_an_apply_are_answered_by_the_next_one() {
        let names = ["a", "b", "c", "d", "e"];
        let (_snap_tx, snap_rx) = watch::channel(synced(&names));
        let (handle, _health, _t) = spawn(
            fast(),
            vec![(Family::V4, Slow::default())],
            snap_rx,
            Vec::new(),
            Metrics::default(),
        );
        let ups: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let handle = handle.clone();
                let ep = endpoint(
                    n,
                    &format!("tort000000000{i:02}"),
                    &format!("10.0.0.{}", i + 1),
                );
                tokio::spawn(async move { handle.endpoint_up(ep).await })
            })
            .collect();
        for up in ups {
            up.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn an_add_for_a_pod_never_seen_fails_with_unavailable() {
        let rec = Recorder::default();
        let (_snap_tx, snap_rx) = watch::channel(synced(&[]));
        let (handle, _health, _t) = spawn(
            fast(),
            vec![(Family::V4, rec)],
            snap_rx,
            Vec::new(),
            Metrics::default(),
        );
        let r = handle
            .endpoint_up(endpoint("ghost", "tort000000000gh", "10.0.0.6"))
            .await;
        match r {
            Err(Failure::Unavailable(why)) => assert!(why.contains("x/ghost"), "{why}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn repeated_failures_fail_closed_and_report_until_an_apply_succeeds() {
        let rec = Recorder::default();
        *rec.fail.lock().unwrap() = true;
        let (_snap_tx, snap_rx) = watch::channel(synced(&[]));
        let metrics = Metrics::default();
        let (_h, mut health, _t) = spawn(
            fast(),
            vec![(Family::V4, rec.clone())],
            snap_rx,
            Vec::new(),
            metrics.clone(),
        );
        let failing = tokio::time::timeout(
            Duration::from_secs(10),
            health.wait_for(|h| matches!(h, DataplaneHealth::Failing(_))),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert!(
            matches!(&failing, DataplaneHealth::Failing(why) if why.contains("iptables-restore")),
            "{failing:?}"
        );
        *rec.fail.lock().unwrap() = false;
        tokio::time::timeout(
            Duration::from_secs(10),
            health.wait_for(|h| *h == DataplaneHealth::InSync),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            rec.last().unwrap(),
            compile(&policy_input(&synced(&[]), &BTreeMap::new()), Family::V4).dataplane,
            "after recovery the real dataplane is back"
        );
        // The failed tries were counted (the fail-closed write is not a policy apply), and
        // the successful one timed.
        assert!(metrics.policy_apply_failures.get() >= u64::from(FAILURES_BEFORE_FAIL_CLOSED));
        let text = metrics.scrape(&Default::default()).await;
        assert!(
            !text.contains("tortie_policy_apply_duration_seconds_count 0"),
            "{text}"
        );
    }
}
