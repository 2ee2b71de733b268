//! Whether the agent can still serve CNI requests once it has started: it needs the
//! apiserver for every allocation. A probe reads it every few seconds; a few failures in a
//! row make the agent Degraded (the plugin's STATUS answers 50, "not ready"), and the first
//! success makes it Ready again.
//!
//! BGP is not part of that health: a peer being down must not stop pods from starting. It
//! only counts for the readiness probe, as calico-node's `-bird-ready`: see [`bgp_ready`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use tokio::sync::watch;

use crate::datastore::IPPool;
use crate::policy::task::DataplaneHealth;
use crate::server::Health;

pub const PROBE_INTERVAL: Duration = Duration::from_secs(3);
/// One slow answer is not an outage.
pub const FAILURES_BEFORE_DEGRADED: u32 = 2;

/// The next health after a probe: `failures` is the count of failures in a row so far.
/// Returns the new count and the health to publish.
pub fn next(failures: u32, probe: Result<(), String>) -> (u32, Health) {
    match probe {
        Ok(()) => (0, Health::Ready),
        Err(why) => {
            let failures = failures.saturating_add(1);
            if failures >= FAILURES_BEFORE_DEGRADED {
                (
                    failures,
                    Health::Degraded(format!("the apiserver is unreachable: {why}")),
                )
            } else {
                (failures, Health::Ready)
            }
        }
    }
}

/// Runs forever, publishing into `health`.
pub async fn run(client: kube::Client, health: watch::Sender<Health>) {
    let pools: Api<IPPool> = Api::all(client);
    let params = ListParams::default().limit(1);
    let mut failures = 0;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probe = match tokio::time::timeout(PROBE_INTERVAL, pools.list_metadata(&params)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_INTERVAL:?}")),
        };
        let (f, h) = next(failures, probe);
        failures = f;
        health.send_if_modified(|cur| {
            if *cur == h {
                return false;
            }
            match &h {
                Health::Ready => tracing::info!("the apiserver is reachable again: ready"),
                other => tracing::warn!(health = ?other, "not ready"),
            }
            *cur = h;
            true
        });
    }
}

/// The agent's health as the API reports it: the apiserver's reachability (`agent`), and
/// then whether the policy dataplane is written. A pod must not be added before its policy
/// can be enforced, so the agent is not ready until the first apply.
pub fn combined(agent: &Health, dataplane: &DataplaneHealth) -> Health {
    match (agent, dataplane) {
        (Health::Ready, DataplaneHealth::InSync) => Health::Ready,
        (Health::Ready, DataplaneHealth::Starting) => Health::Starting(
            "waiting for the cluster cache to write the policy dataplane".to_owned(),
        ),
        (Health::Ready, DataplaneHealth::Failing(why)) => Health::Degraded(why.clone()),
        (other, _) => other.clone(),
    }
}

/// Follows both receivers and publishes [`combined`] on the one returned.
pub fn with_dataplane(
    mut agent: watch::Receiver<Health>,
    mut dataplane: watch::Receiver<DataplaneHealth>,
) -> watch::Receiver<Health> {
    let first = combined(&agent.borrow_and_update(), &dataplane.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = agent.changed() => if r.is_err() { return },
                r = dataplane.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
            let now = combined(&agent.borrow_and_update(), &dataplane.borrow_and_update());
            tx.send_if_modified(|cur| {
                if *cur == now {
                    return false;
                }
                *cur = now;
                true
            });
        }
    });
    rx
}

/// How long after the agent started readiness needs every BGP peer Established, unless
/// [`BGP_READY_WINDOW_VAR`] says otherwise.
pub const BGP_READY_WINDOW: Duration = Duration::from_secs(60);
/// Seconds, a whole number: the start-up window of [`bgp_ready`].
pub const BGP_READY_WINDOW_VAR: &str = "TORTIE_BGP_READY_WINDOW";

/// The start-up window from the value of [`BGP_READY_WINDOW_VAR`] (`None`: unset).
pub fn bgp_ready_window(value: Option<&str>) -> Result<Duration, String> {
    match value {
        None => Ok(BGP_READY_WINDOW),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                format!("{BGP_READY_WINDOW_VAR}={v:?}: expected a whole number of seconds, e.g. 60")
            }),
    }
}

/// What [`bgp_ready`] needs to know of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReadiness {
    pub address: String,
    pub established: bool,
    /// The peer restarted and its routes are kept as stale until it resends them.
    pub graceful_restart: bool,
}

/// BGP's part of the readiness probe, as calico-node's `-bird-ready`. During the start-up
/// `window` after the agent started (`uptime` is the time since), every peer must be
/// Established and none in graceful restart: a node that joins must not take traffic
/// before it has the routes of all its peers. After the window one Established peer is
/// enough, so that a single dead peer (a node gone for good, a router being replaced) does
/// not keep every other node unready forever. A node without peers is ready.
///
/// The window is a time, not "until every peer has been Established once": a peer that is
/// dead when the agent starts would otherwise hold the node unready with no end.
///
/// `own_restart`: this node is itself in graceful restart (it kept the routes it found at
/// start and its initial sync is not complete); within the window that is not ready either.
/// A node without peers has no one to wait for, so it is ready whatever `own_restart` says.
pub fn bgp_ready(
    peers: &[PeerReadiness],
    own_restart: bool,
    uptime: Duration,
    window: Duration,
) -> Result<(), String> {
    if peers.is_empty() {
        return Ok(());
    }
    if own_restart && uptime < window {
        return Err(
            "this node's BGP graceful restart is in progress: the routes it kept are not yet confirmed by its peers"
                .into(),
        );
    }
    let restarting: Vec<&str> = peers
        .iter()
        .filter(|p| p.graceful_restart)
        .map(|p| p.address.as_str())
        .collect();
    let down: Vec<&str> = peers
        .iter()
        .filter(|p| !p.established)
        .map(|p| p.address.as_str())
        .collect();
    if uptime < window {
        if !down.is_empty() {
            return Err(format!(
                "BGP peers not Established within the start-up window ({}s): {}",
                window.as_secs(),
                down.join(", ")
            ));
        }
        if !restarting.is_empty() {
            return Err(format!(
                "BGP graceful restart in progress with {}",
                restarting.join(", ")
            ));
        }
        return Ok(());
    }
    if down.len() == peers.len() {
        return Err(format!("no BGP peer is Established: {}", down.join(", ")));
    }
    Ok(())
}

/// How much longer than its own period a task may go without a beat before it counts as
/// stalled: room for a slow apply or a busy machine, short enough that the kubelet restarts
/// a wedged agent within minutes.
pub const LIVENESS_GRACE: Duration = Duration::from_secs(60);

/// How often a task whose work comes only from events (the endpoint task, the mesh, the
/// cluster cache) beats anyway: its loop also waits on a tick of this period, so an idle
/// task still shows it is not stuck.
pub const IDLE_TICK: Duration = Duration::from_secs(30);

impl Heartbeat {
    /// A heartbeat for an event-driven task, and the interval its loop must also wait on
    /// (beating on each tick).
    pub fn with_idle_tick(task: &'static str) -> (Heartbeat, tokio::time::Interval) {
        let mut tick = tokio::time::interval(IDLE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (Heartbeat::new(task, IDLE_TICK), tick)
    }
}

/// One task's last sign of progress, for the liveness probe. A task that loops on a
/// periodic tick makes one with [`Heartbeat::new`] and calls [`Heartbeat::beat`] once per
/// loop iteration; when it goes more than its tick's period plus [`LIVENESS_GRACE`] without
/// a beat, it is stuck (an await that never ends, a lock never released), and
/// [`stalled_tasks`] names it. Dropping the heartbeat (the task ended) removes it.
///
/// The heartbeats sit in one process-wide list so that a task joins liveness with those two
/// lines, without its handle being threaded through the start-up sequence.
pub struct Heartbeat(Arc<Beat>);

struct Beat {
    task: &'static str,
    period: Duration,
    /// Milliseconds from [`EPOCH`] to the last beat.
    last: AtomicU64,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static HEARTBEATS: Mutex<Vec<Weak<Beat>>> = Mutex::new(Vec::new());

fn millis_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_millis() as u64
}

impl Heartbeat {
    /// `period`: how often the task's loop runs at the least (its tick).
    pub fn new(task: &'static str, period: Duration) -> Heartbeat {
        let beat = Arc::new(Beat {
            task,
            period,
            last: AtomicU64::new(millis_since_epoch(Instant::now())),
        });
        let mut all = HEARTBEATS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|b| b.strong_count() > 0);
        all.push(Arc::downgrade(&beat));
        Heartbeat(beat)
    }

    pub fn beat(&self) {
        self.0
            .last
            .store(millis_since_epoch(Instant::now()), Ordering::Relaxed);
    }
}

/// Whether a task whose loop runs every `period` and last beat `since_beat` ago is stuck.
pub fn stalled(since_beat: Duration, period: Duration) -> bool {
    since_beat > period + LIVENESS_GRACE
}

/// The tasks stalled at `now`, each as "<task> has made no progress for <n>s".
pub fn stalled_tasks(now: Instant) -> Vec<String> {
    let now = millis_since_epoch(now);
    let all = HEARTBEATS.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .filter_map(Weak::upgrade)
        .filter_map(|b| {
            let since_beat =
                Duration::from_millis(now.saturating_sub(b.last.load(Ordering::Relaxed)));
            stalled(since_beat, b.period).then(|| {
                format!(
                    "{} has made no progress for {}s",
                    b.task,
                    since_beat.as_secs()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(address: &str, established: bool, graceful_restart: bool) -> PeerReadiness {
        PeerReadiness {
            address: address.to_owned(),
            established,
            graceful_restart,
        }
    }

    #[test]
    fn bgp_readiness_is_strict_in_the_window_and_lenient_after() {
        let window = Duration::from_secs(60);
        let early = Duration::from_secs(10);
        let late = Duration::from_secs(61);
        let up = peer("10.0.0.2", true, false);
        let down = peer("10.0.0.3", false, false);
        let restarting = peer("10.0.0.4", true, true);
        /// Name, peers, time since the agent started, verdict.
        type Case<'a> = (&'a str, Vec<PeerReadiness>, Duration, Result<(), String>);
        let cases: Vec<Case> = vec![
            ("no peers, early", vec![], early, Ok(())),
            ("no peers, late", vec![], late, Ok(())),
            ("all up, early", vec![up.clone()], early, Ok(())),
            (
                "one down, early",
                vec![up.clone(), down.clone()],
                early,
                Err("BGP peers not Established within the start-up window (60s): 10.0.0.3".into()),
            ),
            (
                "graceful restart, early",
                vec![up.clone(), restarting.clone()],
                early,
                Err("BGP graceful restart in progress with 10.0.0.4".into()),
            ),
            (
                "one down, late",
                vec![up.clone(), down.clone()],
                late,
                Ok(()),
            ),
            (
                "graceful restart, late",
                vec![restarting.clone()],
                late,
                Ok(()),
            ),
            (
                "all down, late",
                vec![down.clone(), peer("10.0.0.5", false, false)],
                late,
                Err("no BGP peer is Established: 10.0.0.3, 10.0.0.5".into()),
            ),
            (
                "the window's end is after it",
                vec![up.clone(), down.clone()],
                window,
                Ok(()),
            ),
        ];
        for (name, peers, uptime, want) in cases {
            assert_eq!(bgp_ready(&peers, false, uptime, window), want, "{name}");
        }
        // Our own restart: not ready in the window whatever the peers say, ready after it.
        assert!(
            bgp_ready(std::slice::from_ref(&up), true, early, window)
                .is_err_and(|why| why.contains("graceful restart is in progress"))
        );
        // A single node restarting has no peer to confirm anything: ready.
        assert_eq!(bgp_ready(&[], true, early, window), Ok(()));
        assert_eq!(
            bgp_ready(std::slice::from_ref(&up), true, late, window),
            Ok(())
        );
    }

    #[test]
    fn a_task_is_stalled_after_its_period_and_the_grace() {
        let period = Duration::from_secs(30);
        let cases = [
            (Duration::ZERO, false),
            (period, false),
            (period + LIVENESS_GRACE, false),
            (period + LIVENESS_GRACE + Duration::from_secs(1), true),
        ];
        for (since_beat, want) in cases {
            assert_eq!(stalled(since_beat, period), want, "{since_beat:?}");
        }
    }

    #[test]
    fn a_heartbeat_without_beats_is_reported_and_a_dropped_one_is_not() {
        let period = Duration::from_secs(30);
        let stuck = Heartbeat::new("stuck test task", period);
        let later = Instant::now() + period + LIVENESS_GRACE + Duration::from_secs(5);
        let named = |now| {
            stalled_tasks(now)
                .into_iter()
                .filter(|t| t.starts_with("stuck test task "))
                .collect::<Vec<_>>()
        };
        assert_eq!(named(Instant::now()), Vec::<String>::new());
        let reported = named(later);
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(
            reported[0].starts_with("stuck test task has made no progress for "),
            "{reported:?}"
        );
        drop(stuck);
        assert_eq!(named(later), Vec::<String>::new());
    }

    #[test]
    fn the_window_comes_from_the_environment_or_the_default() {
        assert_eq!(bgp_ready_window(None), Ok(BGP_READY_WINDOW));
        assert_eq!(bgp_ready_window(Some("5")), Ok(Duration::from_secs(5)));
        assert_eq!(
            bgp_ready_window(Some("1m")),
            Err(
                "TORTIE_BGP_READY_WINDOW=\"1m\": expected a whole number of seconds, e.g. 60"
                    .into()
            )
        );
    }

    #[test]
    fn ready_only_when_both_are() {
        let starting = Health::Starting("x".into());
        assert_eq!(
            combined(&Health::Ready, &DataplaneHealth::InSync),
            Health::Ready
        );
        assert!(matches!(
            combined(&Health::Ready, &DataplaneHealth::Starting),
            Health::Starting(_)
        ));
        assert_eq!(
            combined(&Health::Ready, &DataplaneHealth::Failing("iptables".into())),
            Health::Degraded("iptables".into())
        );
        assert_eq!(combined(&starting, &DataplaneHealth::InSync), starting);
    }

    #[test]
    fn degrades_after_repeated_failures_and_recovers_at_once() {
        let (f, h) = next(0, Err("timeout".into()));
        assert_eq!((f, h), (1, Health::Ready));
        let (f, h) = next(f, Err("timeout".into()));
        assert_eq!(
            (f, h),
            (
                2,
                Health::Degraded("the apiserver is unreachable: timeout".into())
            )
        );
        let (f, h) = next(f, Err("refused".into()));
        assert_eq!(f, 3);
        assert!(matches!(h, Health::Degraded(_)));
        assert_eq!(next(f, Ok(())), (0, Health::Ready));
    }
}
