//! [`RouteState`]: what the reconciler knows, and the decisions it makes, as plain values
//! (the sans-IO core of the reconciler).
//!
//! For every destination it keeps what we want there and what the kernel holds there, in
//! one compact slot: a full BGP table is hundreds of thousands of routes, so the layout is
//! chosen for memory. Keys and gateways are per family and every field is byte-aligned (an
//! IPv4 entry is 15 bytes, not the ~100 a `Route` in two maps would take), and device names
//! are interned.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::RouteSet;
use crate::netlink::{NextHop, OpFailure, Route, RouteOp};

/// An interned device name: an index stored as bytes, so that it does not raise a slot's
/// alignment (a `u16` would pad every IPv4 entry from 15 to 20 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DevId([u8; 2]);

impl DevId {
    fn index(self) -> usize {
        usize::from(u16::from_ne_bytes(self.0))
    }
}

/// A next hop as stored: like [`NextHop`], with the gateway in the family's own type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop<A> {
    Blackhole,
    Link(DevId),
    Gateway {
        gw: A,
        dev: Option<DevId>,
        onlink: bool,
    },
}

/// What the kernel holds at a destination, as far as tortie's routes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// No route of ours.
    Absent,
    /// Our route, exactly as wanted.
    Matches,
    /// Our route, but not what we want (or we want none).
    Differs,
    /// Found at start with graceful restart: kept until sync completes or it is wanted.
    Stale,
}

#[derive(Clone, Copy, Debug)]
struct Slot<A> {
    want: Option<Hop<A>>,
    kernel: Kernel,
}

/// A prefix type with its address type.
trait Family: Copy + Eq + Hash + Into<IpNet> {
    type Addr: Copy + Eq + Into<IpAddr>;
    fn addr(ip: IpAddr) -> Option<Self::Addr>;
}

impl Family for Ipv4Net {
    type Addr = Ipv4Addr;
    fn addr(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl Family for Ipv6Net {
    type Addr = Ipv6Addr;
    fn addr(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

#[derive(Debug, Default)]
struct Devices {
    names: Vec<String>,
    ids: HashMap<String, DevId>,
}

impl Devices {
    fn intern(&mut self, name: &str) -> Option<DevId> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = DevId(u16::try_from(self.names.len()).ok()?.to_ne_bytes());
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        Some(id)
    }

    fn name(&self, id: DevId) -> String {
        self.names.get(id.index()).cloned().unwrap_or_default()
    }
}

struct Table<N: Family> {
    slots: HashMap<N, Slot<N::Addr>>,
}

impl<N: Family> Default for Table<N> {
    fn default() -> Self {
        Table {
            slots: HashMap::new(),
        }
    }
}

/// Desired and kernel state of tortie's routes, and the operations between them.
#[derive(Default)]
pub struct RouteState {
    v4: Table<Ipv4Net>,
    v6: Table<Ipv6Net>,
    devices: Devices,
    /// Stale routes may be swept (no graceful restart, or sync completed).
    synced: bool,
    /// The kernel's routes as found at start, until a dump or sync completion supersedes
    /// them: a route wanted exactly as it already is needs no write (a restart with a full
    /// table must not rewrite it all).
    initial: HashMap<IpNet, Route>,
}

/// Why a route cannot be held (reported like a kernel refusal).
const UNSUPPORTED: i32 = libc::EAFNOSUPPORT;

macro_rules! by_family {
    ($self:ident, $dst:expr, |$t:ident, $n:ident| $body:expr) => {
        match $dst {
            IpNet::V4($n) => {
                let $t = &mut $self.v4;
                $body
            }
            IpNet::V6($n) => {
                let $t = &mut $self.v6;
                $body
            }
        }
    };
}

impl RouteState {
    /// Starts from the tortie routes found in the kernel. With `graceful_restart` they are
    /// stale (kept until [`sync_complete`](Self::sync_complete)); otherwise any of them
    /// not wanted is deleted by the first full pass.
    pub fn new(kernel: Vec<Route>, graceful_restart: bool) -> RouteState {
        let mut s = RouteState {
            synced: !graceful_restart,
            ..RouteState::default()
        };
        let state = if graceful_restart {
            Kernel::Stale
        } else {
            Kernel::Differs
        };
        for r in kernel {
            let dst = r.dst.trunc();
            by_family!(s, dst, |t, n| {
                t.slots.insert(
                    n,
                    Slot {
                        want: None,
                        kernel: state,
                    },
                );
            });
            s.initial.insert(dst, r);
        }
        s
    }

    /// How many destinations we want a route at.
    pub fn wanted(&self) -> usize {
        self.v4.slots.values().filter(|s| s.want.is_some()).count()
            + self.v6.slots.values().filter(|s| s.want.is_some()).count()
    }

    /// How many routes are still waiting for sync to complete.
    pub fn stale(&self) -> usize {
        self.v4
            .slots
            .values()
            .filter(|s| s.kernel == Kernel::Stale)
            .count()
            + self
                .v6
                .slots
                .values()
                .filter(|s| s.kernel == Kernel::Stale)
                .count()
    }

    /// Makes `set` the whole desired state.
    pub fn set_all(&mut self, set: RouteSet) -> Vec<OpFailure> {
        for slot in self.v4.slots.values_mut() {
            slot.want = None;
        }
        for slot in self.v6.slots.values_mut() {
            slot.want = None;
        }
        set.into_map()
            .into_values()
            .filter_map(|r| self.want(r).err())
            .collect()
    }

    /// Wants `route` at its destination. A route tortie cannot express (an IPv6 prefix via
    /// an IPv4 gateway) is refused like the kernel would refuse it.
    pub fn want(&mut self, route: Route) -> Result<(), OpFailure> {
        let dst = route.dst.trunc();
        let already = self
            .initial
            .remove(&dst)
            .is_some_and(|have| route.satisfied_by(&have));
        let ok = match dst {
            IpNet::V4(n) => want_in(&mut self.v4, &mut self.devices, n, &route.next_hop, already),
            IpNet::V6(n) => want_in(&mut self.v6, &mut self.devices, n, &route.next_hop, already),
        };
        if ok {
            Ok(())
        } else {
            Err(OpFailure {
                op: RouteOp::Add(route),
                errno: UNSUPPORTED,
            })
        }
    }

    /// Wants no route at `dst`.
    pub fn unwant(&mut self, dst: IpNet) {
        let dst = dst.trunc();
        by_family!(self, dst, |t, n| {
            if let Some(slot) = t.slots.get_mut(&n) {
                slot.want = None;
                match slot.kernel {
                    Kernel::Absent => {
                        t.slots.remove(&n);
                    }
                    Kernel::Matches => slot.kernel = Kernel::Differs,
                    Kernel::Differs | Kernel::Stale => {}
                }
            }
        })
    }

    /// The kernel no longer holds our route at `dst` (someone deleted it). Returns whether
    /// we want one there, i.e. whether it must be written again.
    pub fn kernel_lost(&mut self, dst: IpNet) -> bool {
        let dst = dst.trunc();
        by_family!(self, dst, |t, n| {
            let Some(slot) = t.slots.get_mut(&n) else {
                return false;
            };
            if slot.want.is_some() {
                // Differs, not Absent: the repair is a replace, harmless if an announcement
                // arrives late for a route we already wrote again.
                slot.kernel = Kernel::Differs;
                true
            } else {
                t.slots.remove(&n);
                false
            }
        })
    }

    /// Sync is complete (End-of-RIB): stale routes nobody wants become deletable.
    pub fn sync_complete(&mut self) {
        self.synced = true;
        self.initial = HashMap::new();
        let unstale = |kernel: &mut Kernel| {
            if *kernel == Kernel::Stale {
                *kernel = Kernel::Differs;
            }
        };
        self.v4
            .slots
            .values_mut()
            .for_each(|s| unstale(&mut s.kernel));
        self.v6
            .slots
            .values_mut()
            .for_each(|s| unstale(&mut s.kernel));
    }

    /// Replaces our picture of the kernel with a fresh dump of its tortie routes.
    pub fn observe_kernel(&mut self, dump: Vec<Route>) {
        observe(&mut self.v4, &mut self.devices, &dump, |r| match r.dst {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        });
        observe(&mut self.v6, &mut self.devices, &dump, |r| match r.dst {
            IpNet::V6(n) => Some(n.trunc()),
            IpNet::V4(_) => None,
        });
        // A stale route is still one a source may name again as it is: that must stay a
        // no-op, not a rewrite, however many dumps come before sync completes.
        self.initial = dump
            .into_iter()
            .map(|r| (r.dst.trunc(), r))
            .filter(|(dst, _)| self.is_stale(*dst))
            .collect();
    }

    fn is_stale(&self, dst: IpNet) -> bool {
        let slot = match dst {
            IpNet::V4(n) => self.v4.slots.get(&n).map(|s| s.kernel),
            IpNet::V6(n) => self.v6.slots.get(&n).map(|s| s.kernel),
        };
        slot == Some(Kernel::Stale)
    }

    /// Every operation that brings the kernel to the desired state, deletes first.
    pub fn ops(&self) -> Vec<RouteOp> {
        let mut ops = Vec::new();
        for (n, slot) in &self.v4.slots {
            self.push_op(&mut ops, (*n).into(), slot);
        }
        for (n, slot) in &self.v6.slots {
            self.push_op(&mut ops, (*n).into(), slot);
        }
        deletes_first(&mut ops);
        ops
    }

    /// The operations needed at `dsts` only.
    pub fn ops_for<'a>(&self, dsts: impl IntoIterator<Item = &'a IpNet>) -> Vec<RouteOp> {
        let mut ops = Vec::new();
        for dst in dsts {
            let dst = dst.trunc();
            match dst {
                IpNet::V4(n) => {
                    if let Some(slot) = self.v4.slots.get(&n) {
                        self.push_op(&mut ops, dst, slot);
                    }
                }
                IpNet::V6(n) => {
                    if let Some(slot) = self.v6.slots.get(&n) {
                        self.push_op(&mut ops, dst, slot);
                    }
                }
            }
        }
        deletes_first(&mut ops);
        ops
    }

    fn push_op<A: Copy + Into<IpAddr>>(&self, ops: &mut Vec<RouteOp>, dst: IpNet, slot: &Slot<A>) {
        match (slot.want, slot.kernel) {
            (Some(h), Kernel::Absent) => ops.push(RouteOp::Add(self.route(dst, h))),
            (Some(h), Kernel::Differs | Kernel::Stale) => {
                ops.push(RouteOp::Replace(self.route(dst, h)))
            }
            (None, Kernel::Matches | Kernel::Differs) => {
                ops.push(RouteOp::Delete(Route::blackhole(dst)))
            }
            (None, Kernel::Stale) if self.synced => {
                ops.push(RouteOp::Delete(Route::blackhole(dst)))
            }
            _ => {}
        }
    }

    fn route<A: Into<IpAddr>>(&self, dst: IpNet, hop: Hop<A>) -> Route {
        let next_hop = match hop {
            Hop::Blackhole => NextHop::Blackhole,
            Hop::Link(dev) => NextHop::Link {
                dev: self.devices.name(dev),
            },
            Hop::Gateway { gw, dev, onlink } => NextHop::Gateway {
                gateway: gw.into(),
                dev: dev.map(|d| self.devices.name(d)),
                onlink,
            },
        };
        Route { dst, next_hop }
    }

    /// Records what the kernel accepted of `ops`.
    pub fn applied(&mut self, ops: &[RouteOp], failures: &[OpFailure]) {
        let failed: std::collections::HashSet<&RouteOp> = failures.iter().map(|f| &f.op).collect();
        for op in ops {
            if failed.contains(op) {
                continue;
            }
            let dst = op.route().dst.trunc();
            let is_delete = matches!(op, RouteOp::Delete(_));
            by_family!(self, dst, |t, n| {
                if is_delete {
                    match t.slots.get_mut(&n) {
                        Some(slot) if slot.want.is_some() => slot.kernel = Kernel::Absent,
                        Some(_) => {
                            t.slots.remove(&n);
                        }
                        None => {}
                    }
                } else if let Some(slot) = t.slots.get_mut(&n) {
                    slot.kernel = Kernel::Matches;
                }
            })
        }
    }
}

fn deletes_first(ops: &mut [RouteOp]) {
    // A prefix moving between routes never collides with itself, and deletes free room.
    ops.sort_by_key(|op| !matches!(op, RouteOp::Delete(_)));
}

/// Sets the wanted hop of `n`; `already` says the kernel is known to hold exactly it.
fn want_in<N: Family>(
    t: &mut Table<N>,
    devices: &mut Devices,
    n: N,
    nh: &NextHop,
    already: bool,
) -> bool {
    let Some(hop) = to_hop(devices, nh, N::addr) else {
        return false;
    };
    let slot = t.slots.entry(n).or_insert(Slot {
        want: None,
        kernel: Kernel::Absent,
    });
    if already {
        slot.want = Some(hop);
        slot.kernel = Kernel::Matches;
    } else if slot.want != Some(hop) {
        slot.want = Some(hop);
        if slot.kernel == Kernel::Matches {
            slot.kernel = Kernel::Differs;
        }
    }
    true
}

fn to_hop<A>(
    devices: &mut Devices,
    nh: &NextHop,
    addr: impl Fn(IpAddr) -> Option<A>,
) -> Option<Hop<A>> {
    Some(match nh {
        NextHop::Blackhole => Hop::Blackhole,
        NextHop::Link { dev } => Hop::Link(devices.intern(dev)?),
        NextHop::Gateway {
            gateway,
            dev,
            onlink,
        } => Hop::Gateway {
            gw: addr(*gateway)?,
            dev: match dev {
                Some(d) => Some(devices.intern(d)?),
                None => None,
            },
            onlink: *onlink,
        },
    })
}

fn observe<N: Family>(
    table: &mut Table<N>,
    devices: &mut Devices,
    dump: &[Route],
    key: impl Fn(&Route) -> Option<N>,
) {
    let mut seen: HashMap<N, Kernel> = HashMap::new();
    for r in dump {
        let Some(n) = key(r) else { continue };
        let state = match table.slots.get(&n) {
            Some(slot) => match slot.want {
                Some(want) if hop_satisfied(want, r, devices) => Kernel::Matches,
                None if slot.kernel == Kernel::Stale => Kernel::Stale,
                _ => Kernel::Differs,
            },
            None => Kernel::Differs,
        };
        seen.insert(n, state);
    }
    table.slots.retain(|n, slot| {
        slot.kernel = seen.remove(n).unwrap_or(Kernel::Absent);
        slot.want.is_some() || slot.kernel != Kernel::Absent
    });
    for (n, kernel) in seen {
        table.slots.insert(n, Slot { want: None, kernel });
    }
}

/// Whether the dumped route `have` is what `want` asks for; see [`Route::satisfied_by`].
fn hop_satisfied<A: Copy + Into<IpAddr>>(want: Hop<A>, have: &Route, devices: &Devices) -> bool {
    match (want, &have.next_hop) {
        (Hop::Blackhole, NextHop::Blackhole) => true,
        (Hop::Link(d), NextHop::Link { dev }) => devices.names.get(d.index()) == Some(dev),
        (
            Hop::Gateway { gw, dev, onlink },
            NextHop::Gateway {
                gateway,
                dev: have_dev,
                onlink: have_onlink,
            },
        ) => {
            gw.into() == *gateway
                && onlink == *have_onlink
                && match dev {
                    None => true,
                    Some(d) => have_dev.as_ref() == devices.names.get(d.index()),
                }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full table is half a million of these; a field that raises the alignment pads every
    /// one of them (`scripts/lab bench bgp` reports the RSS per route).
    #[test]
    fn an_ipv4_entry_stays_byte_packed() {
        assert_eq!(std::mem::align_of::<Slot<Ipv4Addr>>(), 1);
        assert!(
            std::mem::size_of::<(Ipv4Net, Slot<Ipv4Addr>)>() <= 15,
            "{} bytes",
            std::mem::size_of::<(Ipv4Net, Slot<Ipv4Addr>)>()
        );
    }
}
