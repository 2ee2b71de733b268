//! An in-memory [`Store`] for tests, with injectable faults and a write counter.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::affinity::BlockAffinity;
use crate::block::Block;
use crate::cidr::BlockCidr;
use crate::pool::IpPool;
use crate::store::{Kind, Revision, Store, StoreError, Versioned};

/// A fault the next write will hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Another writer touched the object first: its revision moves on and the write fails
    /// with `Conflict`.
    Conflict,
    /// The connection broke: the write fails with `Backend`, after it was applied or not.
    Lost { applied: bool },
}

#[derive(Default)]
struct Inner {
    next_revision: u64,
    pools: Vec<IpPool>,
    blocks: BTreeMap<BlockCidr, (Block, u64)>,
    affinities: BTreeMap<String, (BlockAffinity, u64)>,
    faults: VecDeque<(Kind, Fault)>,
    writes: u64,
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.next_revision += 1;
        self.next_revision
    }
}

/// Cheap to clone: clones share the same data, as several agents share one apiserver.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    /// Yield the thread before each operation, so racing threads interleave more.
    yield_each_op: bool,
}

fn rev(n: u64) -> Revision {
    Revision(n.to_string())
}

fn parse_rev(r: &Revision) -> u64 {
    r.0.parse().unwrap_or(0)
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// A handle on the same data that yields the thread before every operation.
    pub fn yielding(&self) -> MemStore {
        MemStore {
            inner: self.inner.clone(),
            yield_each_op: true,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        if self.yield_each_op {
            std::thread::yield_now();
        }
        // A panicking test thread must not hide the data from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a pool newer than every pool so far.
    pub fn add_pool(&self, pool: IpPool) {
        self.lock().pools.push(pool);
    }

    /// Replaces the pools, given oldest first (the order `list_pools` returns them in).
    pub fn set_pools(&self, pools: Vec<IpPool>) {
        self.lock().pools = pools;
    }

    /// Queues faults for the next writes of `kind`, in order.
    pub fn inject(&self, kind: Kind, faults: &[Fault]) {
        self.lock().faults.extend(faults.iter().map(|f| (kind, *f)));
    }

    /// Number of successful writes so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    pub fn blocks(&self) -> Vec<Block> {
        self.lock()
            .blocks
            .values()
            .map(|(b, _)| b.clone())
            .collect()
    }

    pub fn affinities(&self) -> Vec<BlockAffinity> {
        self.lock()
            .affinities
            .values()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Replaces a block behind everyone's back, as another agent would.
    pub fn put_block(&self, block: Block) {
        let mut g = self.lock();
        let r = g.bump();
        g.blocks.insert(block.cidr(), (block, r));
    }

    /// Applies the next queued fault, if any. `Ok(true)` means "apply the write, then fail".
    fn fault(g: &mut Inner, kind: Kind, name: &str) -> Result<bool, StoreError> {
        let next = g
            .faults
            .iter()
            .position(|(k, _)| *k == kind)
            .and_then(|i| g.faults.remove(i));
        match next.map(|(_, f)| f) {
            None => Ok(false),
            Some(Fault::Conflict) => Err(StoreError::Conflict {
                kind,
                name: name.to_owned(),
            }),
            Some(Fault::Lost { applied: false }) => {
                Err(StoreError::Backend("connection reset (injected)".into()))
            }
            Some(Fault::Lost { applied: true }) => Ok(true),
        }
    }

    /// A fault on an existing affinity; a conflict moves its revision on.
    fn affinity_fault(g: &mut Inner, name: &str) -> Result<bool, StoreError> {
        match Self::fault(g, Kind::Affinity, name) {
            Err(e @ StoreError::Conflict { .. }) => {
                let r = g.bump();
                if let Some(entry) = g.affinities.get_mut(name) {
                    entry.1 = r;
                }
                Err(e)
            }
            other => other,
        }
    }

    fn finish<T>(g: &mut Inner, lost: bool, value: T) -> Result<T, StoreError> {
        g.writes += 1;
        if lost {
            Err(StoreError::Backend(
                "response lost after the write (injected)".into(),
            ))
        } else {
            Ok(value)
        }
    }
}

impl Store for MemStore {
    async fn list_pools(&self) -> Result<Vec<IpPool>, StoreError> {
        Ok(self.lock().pools.clone())
    }

    async fn list_blocks(&self) -> Result<Vec<Versioned<Block>>, StoreError> {
        Ok(self
            .lock()
            .blocks
            .values()
            .map(|(b, r)| Versioned {
                value: b.clone(),
                revision: rev(*r),
            })
            .collect())
    }

    async fn get_block(&self, cidr: BlockCidr) -> Result<Option<Versioned<Block>>, StoreError> {
        Ok(self.lock().blocks.get(&cidr).map(|(b, r)| Versioned {
            value: b.clone(),
            revision: rev(*r),
        }))
    }

    async fn create_block(&self, block: &Block) -> Result<Revision, StoreError> {
        let mut g = self.lock();
        let name = block.cidr().object_name();
        if g.blocks.contains_key(&block.cidr()) {
            return Err(StoreError::AlreadyExists {
                kind: Kind::Block,
                name,
            });
        }
        let lost = match Self::fault(&mut g, Kind::Block, &name) {
            // A conflicting creator got there first: the name is taken.
            Err(StoreError::Conflict { .. }) => {
                let r = g.bump();
                g.blocks.insert(
                    block.cidr(),
                    (Block::new(block.cidr(), Some("someone-else".into())), r),
                );
                return Err(StoreError::AlreadyExists {
                    kind: Kind::Block,
                    name,
                });
            }
            other => other?,
        };
        let r = g.bump();
        g.blocks.insert(block.cidr(), (block.clone(), r));
        Self::finish(&mut g, lost, rev(r))
    }

    async fn update_block(
        &self,
        block: &Block,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        let mut g = self.lock();
        let name = block.cidr().object_name();
        let Some((_, current)) = g.blocks.get(&block.cidr()) else {
            return Err(StoreError::NotFound {
                kind: Kind::Block,
                name,
            });
        };
        if *current != parse_rev(revision) {
            return Err(StoreError::Conflict {
                kind: Kind::Block,
                name,
            });
        }
        let lost = match Self::fault(&mut g, Kind::Block, &name) {
            Err(e @ StoreError::Conflict { .. }) => {
                let r = g.bump();
                if let Some(entry) = g.blocks.get_mut(&block.cidr()) {
                    entry.1 = r;
                }
                return Err(e);
            }
            other => other?,
        };
        let r = g.bump();
        g.blocks.insert(block.cidr(), (block.clone(), r));
        Self::finish(&mut g, lost, rev(r))
    }

    async fn delete_block(&self, cidr: BlockCidr, revision: &Revision) -> Result<(), StoreError> {
        let mut g = self.lock();
        let name = cidr.object_name();
        let Some((_, current)) = g.blocks.get(&cidr) else {
            return Err(StoreError::NotFound {
                kind: Kind::Block,
                name,
            });
        };
        if *current != parse_rev(revision) {
            return Err(StoreError::Conflict {
                kind: Kind::Block,
                name,
            });
        }
        let lost = match Self::fault(&mut g, Kind::Block, &name) {
            Err(e @ StoreError::Conflict { .. }) => {
                let r = g.bump();
                if let Some(entry) = g.blocks.get_mut(&cidr) {
                    entry.1 = r;
                }
                return Err(e);
            }
            other => other?,
        };
        g.blocks.remove(&cidr);
        Self::finish(&mut g, lost, ())
    }

    async fn list_affinities(
        &self,
        node: &str,
    ) -> Result<Vec<Versioned<BlockAffinity>>, StoreError> {
        Ok(self
            .lock()
            .affinities
            .values()
            .filter(|(a, _)| a.node == node)
            .map(|(a, r)| Versioned {
                value: a.clone(),
                revision: rev(*r),
            })
            .collect())
    }

    async fn create_affinity(&self, affinity: &BlockAffinity) -> Result<Revision, StoreError> {
        let mut g = self.lock();
        let name = affinity.object_name();
        if g.affinities.contains_key(&name) {
            return Err(StoreError::AlreadyExists {
                kind: Kind::Affinity,
                name,
            });
        }
        let lost = Self::fault(&mut g, Kind::Affinity, &name)?;
        let r = g.bump();
        g.affinities.insert(name, (affinity.clone(), r));
        Self::finish(&mut g, lost, rev(r))
    }

    async fn update_affinity(
        &self,
        affinity: &BlockAffinity,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        let mut g = self.lock();
        let name = affinity.object_name();
        let Some((_, current)) = g.affinities.get(&name) else {
            return Err(StoreError::NotFound {
                kind: Kind::Affinity,
                name,
            });
        };
        if *current != parse_rev(revision) {
            return Err(StoreError::Conflict {
                kind: Kind::Affinity,
                name,
            });
        }
        let lost = Self::affinity_fault(&mut g, &name)?;
        let r = g.bump();
        g.affinities.insert(name, (affinity.clone(), r));
        Self::finish(&mut g, lost, rev(r))
    }

    async fn delete_affinity(
        &self,
        affinity: &BlockAffinity,
        revision: &Revision,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let name = affinity.object_name();
        let Some((_, current)) = g.affinities.get(&name) else {
            return Err(StoreError::NotFound {
                kind: Kind::Affinity,
                name,
            });
        };
        if *current != parse_rev(revision) {
            return Err(StoreError::Conflict {
                kind: Kind::Affinity,
                name,
            });
        }
        let lost = Self::affinity_fault(&mut g, &name)?;
        g.affinities.remove(&name);
        Self::finish(&mut g, lost, ())
    }
}
