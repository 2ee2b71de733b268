//! [`FakeRouteTable`]: an in-memory table that records every batch, for unit tests of the
//! reconciler. It models the kernel rules the reconciler relies on: `Add` of an existing
//! destination fails with EEXIST, a device must exist, and foreign routes are invisible to
//! `dump` and immune to our deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use super::{NetlinkError, NextHop, OpFailure, Route, RouteOp, RouteTable};

#[derive(Default, Debug)]
struct State {
    ours: BTreeMap<IpNet, Route>,
    /// Destinations held by routes of another protocol.
    foreign: BTreeSet<IpNet>,
    devices: BTreeSet<String>,
    batches: Vec<Vec<RouteOp>>,
    dumps: usize,
}

/// A clonable handle: the test keeps one clone and gives another to the reconciler.
#[derive(Clone, Default, Debug)]
pub struct FakeRouteTable {
    state: Arc<Mutex<State>>,
}

impl FakeRouteTable {
    pub fn new() -> FakeRouteTable {
        FakeRouteTable::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_device(&self, dev: &str) {
        self.lock().devices.insert(dev.to_owned());
    }

    pub fn add_foreign(&self, dst: IpNet) {
        self.lock().foreign.insert(dst);
    }

    /// Puts a tortie route in the table behind the reconciler's back (a leftover from a
    /// previous run, or drift).
    pub fn insert(&self, route: Route) {
        self.lock().ours.insert(route.dst, route);
    }

    /// Removes a route behind the reconciler's back, as `ip route del` would.
    pub fn remove(&self, dst: IpNet) -> Option<Route> {
        self.lock().ours.remove(&dst)
    }

    pub fn routes(&self) -> Vec<Route> {
        self.lock().ours.values().cloned().collect()
    }

    /// Every batch passed to `apply`, in order.
    pub fn batches(&self) -> Vec<Vec<RouteOp>> {
        self.lock().batches.clone()
    }

    pub fn dumps(&self) -> usize {
        self.lock().dumps
    }
}

impl RouteTable for FakeRouteTable {
    fn dump(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut s = self.lock();
        s.dumps += 1;
        Ok(s.ours.values().cloned().collect())
    }

    fn apply(&mut self, ops: &[RouteOp]) -> Result<Vec<OpFailure>, NetlinkError> {
        let mut s = self.lock();
        s.batches.push(ops.to_vec());
        let mut failures = Vec::new();
        for op in ops {
            let fail = |errno| OpFailure {
                op: op.clone(),
                errno,
            };
            let route = op.route();
            let dev = match &route.next_hop {
                NextHop::Link { dev } => Some(dev),
                NextHop::Gateway { dev, .. } => dev.as_ref(),
                NextHop::Blackhole => None,
            };
            match op {
                RouteOp::Add(_) | RouteOp::Replace(_)
                    if dev.is_some_and(|d| !s.devices.contains(d)) =>
                {
                    failures.push(fail(libc::ENODEV));
                }
                RouteOp::Add(r) => {
                    if s.ours.contains_key(&r.dst) || s.foreign.contains(&r.dst) {
                        failures.push(fail(libc::EEXIST));
                    } else {
                        s.ours.insert(r.dst, r.clone());
                    }
                }
                RouteOp::Replace(r) => {
                    s.ours.insert(r.dst, r.clone());
                }
                RouteOp::Delete(r) => {
                    if s.ours.remove(&r.dst).is_none() {
                        failures.push(fail(libc::ESRCH));
                    }
                }
            }
        }
        Ok(failures)
    }
}
