//! The kernel's routing table and sysctls. This is the only module that sees rtnetlink's
//! packet types: the rest of the agent speaks [`Route`] and [`RouteOp`].
//!
//! Routes go through the small [`RouteTable`] trait. [`KernelRouteTable`] is the real one,
//! over a netlink socket, and writes batches pipelined (see `kernel.rs`); [`FakeRouteTable`]
//! records what it is asked so the reconciler can be unit-tested without root.

mod deletions;
mod fake;
mod kernel;
pub mod sysctl;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use deletions::RouteDeletions;
pub use fake::FakeRouteTable;
pub use kernel::KernelRouteTable;

/// The route protocol number on every route tortie writes (docs/decisions.md). The
/// reconciler reads, changes and deletes only routes that carry it.
pub const TORTIE_PROTO: u8 = 116;

/// Where a route sends packets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    /// `blackhole DST`: the node owns the block, packets to unassigned addresses are dropped.
    Blackhole,
    /// `DST dev X scope link`: a local pod behind its host veth.
    Link { dev: String },
    /// `DST via GW [dev X] [onlink]`. Without a device the kernel resolves the gateway
    /// through its own table (a BGP next hop on a connected subnet).
    Gateway {
        gateway: IpAddr,
        dev: Option<String>,
        onlink: bool,
    },
}

/// One route in the main table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub next_hop: NextHop,
}

impl Route {
    pub fn blackhole(dst: IpNet) -> Route {
        Route {
            dst,
            next_hop: NextHop::Blackhole,
        }
    }

    pub fn link(dst: IpNet, dev: impl Into<String>) -> Route {
        Route {
            dst,
            next_hop: NextHop::Link { dev: dev.into() },
        }
    }

    pub fn via(dst: IpNet, gateway: IpAddr) -> Route {
        Route {
            dst,
            next_hop: NextHop::Gateway {
                gateway,
                dev: None,
                onlink: false,
            },
        }
    }

    pub fn via_onlink(dst: IpNet, gateway: IpAddr, dev: impl Into<String>) -> Route {
        Route {
            dst,
            next_hop: NextHop::Gateway {
                gateway,
                dev: Some(dev.into()),
                onlink: true,
            },
        }
    }

    /// True when `kernel` (as dumped) is what this desired route asks for. A desired
    /// gateway route without a device accepts whatever device the kernel resolved.
    pub fn satisfied_by(&self, kernel: &Route) -> bool {
        if self.dst != kernel.dst {
            return false;
        }
        match (&self.next_hop, &kernel.next_hop) {
            (
                NextHop::Gateway {
                    gateway: g1,
                    dev: None,
                    onlink: o1,
                },
                NextHop::Gateway {
                    gateway: g2,
                    onlink: o2,
                    ..
                },
            ) => g1 == g2 && o1 == o2,
            (want, have) => want == have,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.next_hop {
            NextHop::Blackhole => write!(f, "blackhole {}", self.dst),
            NextHop::Link { dev } => write!(f, "{} dev {dev} scope link", self.dst),
            NextHop::Gateway {
                gateway,
                dev,
                onlink,
            } => {
                write!(f, "{} via {gateway}", self.dst)?;
                if let Some(dev) = dev {
                    write!(f, " dev {dev}")?;
                }
                if *onlink {
                    write!(f, " onlink")?;
                }
                Ok(())
            }
        }
    }
}

/// One change to the kernel table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteOp {
    /// Create a route that must not exist yet (NLM_F_EXCL): a foreign route with the same
    /// destination makes this fail with EEXIST instead of being overwritten.
    Add(Route),
    /// Replace a route of ours whose next hop changed.
    Replace(Route),
    /// Delete a route of ours; the request carries our protocol, so the kernel never
    /// deletes someone else's route with the same destination.
    Delete(Route),
}

impl RouteOp {
    pub fn route(&self) -> &Route {
        match self {
            RouteOp::Add(r) | RouteOp::Replace(r) | RouteOp::Delete(r) => r,
        }
    }
}

/// An operation the kernel (or we, before sending) refused. The batch goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure {
    pub op: RouteOp,
    /// The errno (positive), e.g. `libc::ENODEV` for an unknown device.
    pub errno: i32,
}

impl fmt::Display for OpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.op {
            RouteOp::Add(_) => "add",
            RouteOp::Replace(_) => "replace",
            RouteOp::Delete(_) => "delete",
        };
        write!(
            f,
            "{what} {}: {}",
            self.op.route(),
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: no answer from the kernel within {0:?} (lost ACKs?)")]
    Timeout(std::time::Duration),
    #[error("netlink: cannot parse the kernel's answer: {0}")]
    Decode(String),
    #[error("netlink: the kernel refused the request: {0}")]
    Refused(std::io::Error),
    #[error("entering network namespace {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
}

/// The kernel's main routing table, restricted to tortie's protocol.
pub trait RouteTable: Send {
    /// All routes in the main table that carry [`TORTIE_PROTO`], IPv4 and IPv6.
    fn dump(&mut self) -> Result<Vec<Route>, NetlinkError>;

    /// Applies `ops` in order. Per-route refusals come back as failures, and the other
    /// routes of the batch are still applied; `Err` means the socket itself failed.
    fn apply(&mut self, ops: &[RouteOp]) -> Result<Vec<OpFailure>, NetlinkError>;
}

impl<T: RouteTable + ?Sized> RouteTable for Box<T> {
    fn dump(&mut self) -> Result<Vec<Route>, NetlinkError> {
        (**self).dump()
    }
    fn apply(&mut self, ops: &[RouteOp]) -> Result<Vec<OpFailure>, NetlinkError> {
        (**self).apply(ops)
    }
}
