//! Whether the agent can still serve CNI requests once it has started: it needs the
//! apiserver for every allocation. A probe reads it every few seconds; a few failures in a
//! row make the agent Degraded (the plugin's STATUS answers 50, "not ready"), and the first
//! success makes it Ready again.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
