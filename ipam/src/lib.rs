//! tortie-ipam: Calico-style block IPAM as a pure allocator over a compare-and-swap store.
//!
//! - [`IpPool`]s are cut into [`Block`]s of `block_size`; a node claims a block through a
//!   [`BlockAffinity`] and hands out its addresses to [`Handle`]s (`<network>.<containerID>`).
//! - The [`Allocator`] decides; the [`Store`] (the apiserver in the agent, [`MemStore`] in
//!   tests) keeps the objects and refuses stale writes. See `README.md` for the rules.
//!
//! This crate does no I/O of its own: no kube, no netlink, no tokio.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod affinity;
mod allocator;
mod block;
mod cidr;
mod counting;
mod memstore;
mod pool;
pub mod record;
mod selector;
mod store;

pub use affinity::{AffinityState, AffinityStateError, BlockAffinity};
pub use allocator::{
    AllocRequest, Allocated, Allocator, GcScope, IpamConfig, IpamError, NodeUsage,
};
pub use block::{Allocation, Block, BlockError, Handle, PodRef};
pub use cidr::{BlockCidr, CidrError, IpFamily, MAX_BLOCK_HOST_BITS};
pub use counting::{CountingStore, StoreStats};
pub use memstore::{Fault, MemStore};
pub use pool::{
    DEFAULT_BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V6, IpPool, Overlap, PoolError, VxlanMode,
    nets_overlap, overlapping, without_overlaps,
};
pub use record::RecordError;
pub use selector::{Selector, SelectorError};
pub use store::{Kind, Revision, Store, StoreError, Versioned};

#[cfg(test)]
mod tests;
