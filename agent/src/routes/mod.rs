//! Kernel routes: what they should be ([`desired_routes`], pure) and the one task that
//! makes the kernel agree ([`spawn_reconciler`]).
//!
//! Where a route comes from: a local pod's `/32 dev tortX scope link` from its endpoint,
//! a `blackhole` from each block affine to this node, and a remote block `via` the node
//! that advertised it over BGP. Everything is written with protocol 116 by `netlink`.

mod desired;
mod reconciler;
mod state;

pub use desired::{LocalEndpoint, RemoteBlock, RouteModel, RouteSet, desired_routes};
pub use reconciler::{
    ReconcilerConfig, ReconcilerError, RouteUpdate, RoutesHandle, spawn_reconciler,
    watch_route_deletions,
};
pub use state::RouteState;
