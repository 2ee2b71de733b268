//! A [`Store`] wrapper that counts what goes through it: how many reads and writes an
//! operation costs, and how often compare-and-swap lost. Tests use it to hold the allocator
//! to its budget (one write per steady ADD) on any store, the real apiserver included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::affinity::BlockAffinity;
use crate::block::Block;
use crate::cidr::BlockCidr;
use crate::pool::IpPool;
use crate::store::{Revision, Store, StoreError, Versioned};

/// Counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub reads: u64,
    /// Write requests, whatever their outcome.
    pub writes: u64,
    /// Writes refused because someone else got there first (`Conflict` or `AlreadyExists`).
    pub lost_races: u64,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    lost_races: AtomicU64,
}

/// Wraps a store; clones share the counters.
#[derive(Clone)]
pub struct CountingStore<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            counters: Arc::default(),
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            reads: self.counters.reads.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            lost_races: self.counters.lost_races.load(Ordering::Relaxed),
        }
    }

    fn read<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn write<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if matches!(
            r,
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })
        ) {
            self.counters.lost_races.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<S: Store> Store for CountingStore<S> {
    async fn list_pools(&self) -> Result<Vec<IpPool>, StoreError> {
        self.read(self.inner.list_pools().await)
    }
    async fn list_blocks(&self) -> Result<Vec<Versioned<Block>>, StoreError> {
        self.read(self.inner.list_blocks().await)
    }
    async fn get_block(&self, cidr: BlockCidr) -> Result<Option<Versioned<Block>>, StoreError> {
        self.read(self.inner.get_block(cidr).await)
    }
    async fn create_block(&self, block: &Block) -> Result<Revision, StoreError> {
        self.write(self.inner.create_block(block).await)
    }
    async fn update_block(
        &self,
        block: &Block,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.write(self.inner.update_block(block, revision).await)
    }
    async fn delete_block(&self, cidr: BlockCidr, revision: &Revision) -> Result<(), StoreError> {
        self.write(self.inner.delete_block(cidr, revision).await)
    }
    async fn list_affinities(
        &self,
        node: &str,
    ) -> Result<Vec<Versioned<BlockAffinity>>, StoreError> {
        self.read(self.inner.list_affinities(node).await)
    }
    async fn create_affinity(&self, affinity: &BlockAffinity) -> Result<Revision, StoreError> {
        self.write(self.inner.create_affinity(affinity).await)
    }
    async fn update_affinity(
        &self,
        affinity: &BlockAffinity,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.write(self.inner.update_affinity(affinity, revision).await)
    }
    async fn delete_affinity(
        &self,
        affinity: &BlockAffinity,
        revision: &Revision,
    ) -> Result<(), StoreError> {
        self.write(self.inner.delete_affinity(affinity, revision).await)
    }
}
