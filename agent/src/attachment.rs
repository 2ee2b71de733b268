//! One CNI attachment as the agent's tasks see it: its IPAM handle, its pod, its wired
//! endpoint, and why a request about it failed; and the two services the gRPC layer asks of
//! the tasks that own the state, [`Ipam`] and [`Endpoints`]. It sits below both the gRPC
//! layer ([`crate::server`]) and those tasks, so each of them depends only downwards.

use std::fmt;
use std::future::Future;

use ipnet::IpNet;

/// An IPAM handle: one CNI attachment, `<network>.<containerID>`. Both parts are kept, so
/// a network name with a dot is never confused with another network's handles.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    pub network: String,
    pub container_id: String,
}

/// Shown as the handle ID the datastore stores: `<network>.<containerID>`.
impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.network, self.container_id)
    }
}

/// The pod an attachment belongs to, for the allocation's attributes and GC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateParams {
    pub handle: Handle,
    pub pod: PodRef,
}

/// A local pod, wired and ready for its host route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub handle: Handle,
    pub pod: PodRef,
    pub host_ifname: String,
    /// Host prefixes (/32, /128).
    pub addresses: Vec<IpNet>,
}

/// Why a request could not be served; the gRPC layer maps each to one code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Internal(String),
}

/// Address management, as the Cni service needs it. Implemented over the IPAM owner task
/// ([`crate::ipam_task`]).
pub trait Ipam: Send + Sync + 'static {
    /// The handle's addresses (host prefixes), allocating them when it has none. Returns only
    /// once the allocation is durable; a repeated call returns the same addresses.
    fn allocate(
        &self,
        params: AllocateParams,
    ) -> impl Future<Output = Result<Vec<IpNet>, Failure>> + Send;
    /// Releases the handle's addresses; returns how many. An unknown handle is 0, not an error.
    fn release(&self, handle: &Handle) -> impl Future<Output = Result<u32, Failure>> + Send;
    /// The handle's addresses; empty when it holds none.
    fn addresses(
        &self,
        handle: &Handle,
    ) -> impl Future<Output = Result<Vec<IpNet>, Failure>> + Send;
    /// Releases every handle of `network` on this node not in `keep`.
    fn gc(
        &self,
        network: &str,
        keep: &[Handle],
    ) -> impl Future<Output = Result<GcOutcome, Failure>> + Send;
}

/// What a GC released: the attachments (handles), each with all its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    pub handles: Vec<Handle>,
}

/// Local endpoints' host routes. Implemented over the route reconciler
/// ([`crate::endpoints`]), wrapped by the policy task's `Enforced`, which answers only once
/// the pod's policy is written.
pub trait Endpoints: Send + Sync + 'static {
    /// Installs the endpoint's host routes; returns once they are in the kernel.
    fn ready(&self, endpoint: Endpoint) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Forgets the handle's endpoint, so its routes are neither kept nor repaired.
    fn removed(&self, handle: &Handle) -> impl Future<Output = Result<(), Failure>> + Send;
}
