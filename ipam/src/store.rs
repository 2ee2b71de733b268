//! The datastore the allocator runs over. Every write is a compare-and-swap on the object's
//! revision (Kubernetes' resourceVersion), so concurrent agents can never both win.

use std::fmt;
use std::future::Future;

use crate::affinity::BlockAffinity;
use crate::block::Block;
use crate::cidr::BlockCidr;
use crate::pool::IpPool;

/// An opaque object revision; only equality matters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Revision(pub String);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored object and the revision it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: Revision,
}

/// The object kinds, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pool,
    Block,
    Affinity,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Pool => "IPPool",
            Kind::Block => "IPAMBlock",
            Kind::Affinity => "BlockAffinity",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read: re-read and decide again.
    #[error("{kind} {name} was changed by someone else (revision conflict)")]
    Conflict { kind: Kind, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: Kind, name: String },
    #[error("{kind} {name} does not exist")]
    NotFound { kind: Kind, name: String },
    /// Anything else: the datastore unreachable, a timeout, a server error. The write may or
    /// may not have happened, and trying again later may succeed.
    #[error("datastore: {0}")]
    Backend(String),
    /// The datastore answered and refused the request for good (no permission, an object it
    /// will not accept): nothing was written, and the same request will be refused again.
    #[error("{kind} {name}: refused by the datastore: {reason}")]
    Refused {
        kind: Kind,
        name: String,
        reason: String,
    },
    /// A stored object that does not parse; it names the object and the problem.
    #[error("{kind} {name} is malformed: {reason}")]
    Malformed {
        kind: Kind,
        name: String,
        reason: String,
    },
}

/// Storage for pools, blocks and affinities. Implementations must make `create_*` fail with
/// `AlreadyExists` when the name is taken and `update_*`/`delete_*` fail with `Conflict` when
/// the stored revision differs from the one given.
pub trait Store: Send + Sync {
    /// Every pool, oldest first (ties in a stable order, e.g. by name): when two pools
    /// overlap, the allocator keeps the one listed first ([`without_overlaps`]).
    ///
    /// [`without_overlaps`]: crate::without_overlaps
    fn list_pools(&self) -> impl Future<Output = Result<Vec<IpPool>, StoreError>> + Send;

    fn list_blocks(&self)
    -> impl Future<Output = Result<Vec<Versioned<Block>>, StoreError>> + Send;
    fn get_block(
        &self,
        cidr: BlockCidr,
    ) -> impl Future<Output = Result<Option<Versioned<Block>>, StoreError>> + Send;
    fn create_block(
        &self,
        block: &Block,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;
    fn update_block(
        &self,
        block: &Block,
        revision: &Revision,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;
    fn delete_block(
        &self,
        cidr: BlockCidr,
        revision: &Revision,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The affinities of `node`.
    fn list_affinities(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Vec<Versioned<BlockAffinity>>, StoreError>> + Send;
    fn create_affinity(
        &self,
        affinity: &BlockAffinity,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;
    fn update_affinity(
        &self,
        affinity: &BlockAffinity,
        revision: &Revision,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;
    fn delete_affinity(
        &self,
        affinity: &BlockAffinity,
        revision: &Revision,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
