//! The allocator: one per node agent. It decides which block an address comes from and
//! writes that decision with compare-and-swap; on every conflict it re-reads and decides
//! again, so no address is ever handed out twice.
//!
//! It caches pools and blocks. The cache may be stale, which is safe: every write carries
//! the revision it was decided on, and a stale revision is refused by the store. A write
//! whose outcome is unknown (connection lost) drops the whole cache, so the next call
//! starts from what is really stored.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::affinity::{AffinityState, BlockAffinity};
use crate::block::{Block, Handle, PodRef};
use crate::cidr::{BlockCidr, IpFamily};
use crate::pool::{IpPool, Overlap, without_overlaps};
use crate::store::{Store, StoreError, Versioned};

/// Tunables, with Calico's defaults.
#[derive(Clone, Debug)]
pub struct IpamConfig {
    /// How many blocks one node may claim per address family before it borrows.
    pub max_blocks_per_node: usize,
    /// How long an affine block must stay empty before the node gives it back.
    pub block_release_grace: Duration,
    /// How long a handle whose pod is gone is kept before it is released.
    pub leak_grace: Duration,
    /// Compare-and-swap attempts per operation before giving up.
    pub max_attempts: usize,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            max_blocks_per_node: 20,
            block_release_grace: Duration::from_secs(5 * 60),
            leak_grace: Duration::from_secs(15 * 60),
            max_attempts: 100,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no enabled {family} IP pool selects node {node}: create one, or fix the pools' nodeSelector{}",
        ignored_note(ignored)
    )]
    NoPool {
        family: IpFamily,
        node: String,
        /// Pools of that family left out because they overlap an older pool.
        ignored: Vec<Overlap>,
    },
    #[error(
        "{family} pools for node {node} are exhausted: no free address in any block it may use"
    )]
    Exhausted { family: IpFamily, node: String },
    #[error(
        "{op}: gave up after {attempts} compare-and-swap conflicts; the datastore is too contended"
    )]
    Contention { op: &'static str, attempts: usize },
}

fn ignored_note(ignored: &[Overlap]) -> String {
    ignored.iter().map(|o| format!("; {o}")).collect()
}

/// What [`Allocator::allocate`] hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    pub ip: IpAddr,
    pub block: BlockCidr,
    /// The pool the block belongs to (for its VXLAN and NAT settings).
    pub pool: String,
}

/// One request of [`Allocator::allocate_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocRequest {
    pub handle: Handle,
    pub family: IpFamily,
    pub pod: Option<PodRef>,
}

/// Which allocations leak GC looks at.
#[derive(Clone, Copy, Debug)]
pub enum GcScope<'a> {
    /// Only those made by this node's agent.
    Node(&'a str),
    /// Those made by this node's agent, and those made by nodes that no longer exist (not in
    /// `existing`). Nothing can run a deleted node's pods, so its allocations count as leaked
    /// whatever the pod check says; the grace period still applies, so a Node deleted and
    /// registered again within it keeps its pods' addresses.
    NodeAndDeleted {
        node: &'a str,
        existing: &'a HashSet<String>,
    },
    /// Every allocation.
    AllNodes,
}

impl GcScope<'_> {
    /// Whether an allocation made by `node` is looked at, and if so whether it counts as
    /// leaked without asking about its pod.
    fn covers(&self, node: &str) -> Option<bool> {
        match self {
            GcScope::Node(n) => (*n == node).then_some(false),
            GcScope::NodeAndDeleted {
                node: own,
                existing,
            } => {
                if *own == node {
                    Some(false)
                } else {
                    (!existing.contains(node)).then_some(true)
                }
            }
            GcScope::AllNodes => Some(false),
        }
    }
}

#[derive(Default)]
struct Cache {
    pools: Vec<IpPool>,
    blocks: BTreeMap<BlockCidr, Versioned<Block>>,
}

enum Claim {
    Claimed,
    /// Someone else created the block first.
    Lost,
    /// Every block of every usable pool exists.
    PoolsFull,
}

/// What [`Allocator::usage`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub affine_blocks: usize,
    pub addresses: usize,
}

/// A node's allocator. Methods take `&mut self`: one task owns it and serialises requests.
pub struct Allocator<S> {
    store: S,
    node: String,
    node_labels: BTreeMap<String, String>,
    config: IpamConfig,
    cache: Option<Cache>,
    empty_since: HashMap<BlockCidr, Instant>,
    leak_since: HashMap<Handle, Instant>,
    /// Pools left out for overlapping an older pool, as last reported.
    overlaps: Vec<Overlap>,
}

fn is_stale(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. } | StoreError::NotFound { .. })
}

fn fill_pending(results: &mut [Option<Result<Allocated, IpamError>>], e: &IpamError) {
    for r in results.iter_mut().filter(|r| r.is_none()) {
        *r = Some(Err(e.clone()));
    }
}

/// FNV-1a: a stable spread of nodes over the pool, so racing nodes try different blocks first.
fn node_hash(node: &str) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u128::from(h)
}

impl<S: Store> Allocator<S> {
    pub fn new(
        store: S,
        node: impl Into<String>,
        node_labels: BTreeMap<String, String>,
        config: IpamConfig,
    ) -> Self {
        Allocator {
            store,
            node: node.into(),
            node_labels,
            config,
            cache: None,
            empty_since: HashMap::new(),
            leak_since: HashMap::new(),
            overlaps: Vec::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// New node labels (they decide which pools select this node).
    pub fn set_node_labels(&mut self, labels: BTreeMap<String, String>) {
        self.node_labels = labels;
    }

    /// Forgets the cache; the next call re-reads pools and blocks. Call it when pools change.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// The pools IPAM may use, by name: a pool that overlaps an older one is left out, and
    /// reported once each time the set of such pools changes.
    async fn read_pools(&mut self) -> Result<Vec<IpPool>, IpamError> {
        let (mut pools, overlaps) = without_overlaps(self.store.list_pools().await?);
        if overlaps != self.overlaps {
            for o in &overlaps {
                warn!("{o}");
            }
            self.overlaps = overlaps;
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// Pools left out because they overlap an older pool, as of the last read.
    pub fn ignored_pools(&self) -> &[Overlap] {
        &self.overlaps
    }

    async fn ensure_loaded(&mut self) -> Result<&mut Cache, IpamError> {
        if self.cache.is_none() {
            let pools = self.read_pools().await?;
            let blocks = self.store.list_blocks().await?;
            self.cache = Some(Cache {
                pools,
                blocks: blocks.into_iter().map(|b| (b.value.cidr(), b)).collect(),
            });
        }
        Ok(self.cache.get_or_insert_with(Cache::default))
    }

    async fn reload_pools(&mut self) -> Result<(), IpamError> {
        let pools = self.read_pools().await?;
        let cache = self.ensure_loaded().await?;
        cache.pools = pools;
        Ok(())
    }

    async fn reload_blocks(&mut self) -> Result<(), IpamError> {
        let blocks = self.store.list_blocks().await?;
        let cache = self.ensure_loaded().await?;
        cache.blocks = blocks.into_iter().map(|b| (b.value.cidr(), b)).collect();
        Ok(())
    }

    async fn refetch_block(&mut self, cidr: BlockCidr) -> Result<(), IpamError> {
        let fresh = self.store.get_block(cidr).await?;
        let cache = self.ensure_loaded().await?;
        match fresh {
            Some(v) => cache.blocks.insert(cidr, v),
            None => cache.blocks.remove(&cidr),
        };
        Ok(())
    }

    /// A write failed in a way that leaves its outcome unknown: trust nothing cached.
    fn unknown(&mut self, e: StoreError) -> IpamError {
        warn!(error = %e, "datastore write outcome unknown; dropping the IPAM cache");
        self.cache = None;
        IpamError::Store(e)
    }

    fn cached_block(&self, cidr: BlockCidr) -> Option<Versioned<Block>> {
        self.cache.as_ref()?.blocks.get(&cidr).cloned()
    }

    fn usable_pools(&self, family: IpFamily) -> Vec<IpPool> {
        let Some(cache) = &self.cache else {
            return Vec::new();
        };
        cache
            .pools
            .iter()
            .filter(|p| !p.disabled && p.family() == family && p.selects(&self.node_labels))
            .cloned()
            .collect()
    }

    fn find_block(&self, pools: &[IpPool], pred: impl Fn(&Block) -> bool) -> Option<BlockCidr> {
        let cache = self.cache.as_ref()?;
        cache
            .blocks
            .values()
            .map(|v| &v.value)
            .find(|b| pools.iter().any(|p| p.contains_block(&b.cidr())) && pred(b))
            .map(Block::cidr)
    }

    fn lookup_cached(&self, handle: &Handle, family: IpFamily) -> Option<Allocated> {
        let cache = self.cache.as_ref()?;
        cache
            .blocks
            .values()
            .filter(|v| v.value.cidr().family() == family)
            .find_map(|v| {
                let ip = v.value.find(handle)?;
                let pool = cache
                    .pools
                    .iter()
                    .find(|p| p.contains_block(&v.value.cidr()))
                    .map(|p| p.name.clone());
                Some(Allocated {
                    ip,
                    block: v.value.cidr(),
                    pool: pool.unwrap_or_default(),
                })
            })
    }

    /// Every address `handle` holds, from the cache (loading it if needed).
    pub async fn lookup(&mut self, handle: &Handle) -> Result<Vec<IpAddr>, IpamError> {
        let cache = self.ensure_loaded().await?;
        Ok(cache
            .blocks
            .values()
            .filter_map(|v| v.value.find(handle))
            .collect())
    }

    /// The blocks affine to this node, as last seen.
    pub async fn affine_blocks(&mut self) -> Result<Vec<BlockCidr>, IpamError> {
        let node = self.node.clone();
        let cache = self.ensure_loaded().await?;
        Ok(cache
            .blocks
            .values()
            .filter(|v| v.value.is_affine_to(&node))
            .map(|v| v.value.cidr())
            .collect())
    }

    /// How much of the pools this node uses: its affine blocks and the addresses held by
    /// its pods in any block (borrowed ones included), as last seen.
    pub async fn usage(&mut self) -> Result<NodeUsage, IpamError> {
        let node = self.node.clone();
        let cache = self.ensure_loaded().await?;
        let mut usage = NodeUsage::default();
        for v in cache.blocks.values() {
            if v.value.is_affine_to(&node) {
                usage.affine_blocks += 1;
            }
            usage.addresses += v.value.addresses().filter(|(_, a)| a.node == node).count();
        }
        Ok(usage)
    }

    /// Addresses this node's agent borrowed from blocks it does not own: it advertises them
    /// as /32s (/128s), as Calico does, while the owner advertises the block.
    pub async fn borrowed(&mut self) -> Result<Vec<IpAddr>, IpamError> {
        let node = self.node.clone();
        let cache = self.ensure_loaded().await?;
        Ok(cache
            .blocks
            .values()
            .filter(|v| !v.value.is_affine_to(&node))
            .flat_map(|v| {
                v.value
                    .addresses()
                    .filter(|(_, a)| a.node == node)
                    .map(|(ip, _)| ip)
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    fn affine_count(&self, family: IpFamily) -> usize {
        self.cache.as_ref().map_or(0, |c| {
            c.blocks
                .values()
                .filter(|v| v.value.cidr().family() == family && v.value.is_affine_to(&self.node))
                .count()
        })
    }

    /// An address of `family` for `handle`. A handle that already holds one gets the same
    /// one back. In the steady state (an affine block with room, cache warm) this is exactly
    /// one store write: the block update that records the address and its handle.
    pub async fn allocate(
        &mut self,
        handle: &Handle,
        family: IpFamily,
        pod: Option<PodRef>,
    ) -> Result<Allocated, IpamError> {
        let mut fresh = false;
        for _ in 0..self.config.max_attempts {
            self.ensure_loaded().await?;
            if let Some(found) = self.lookup_cached(handle, family) {
                return Ok(found);
            }
            let pools = self.usable_pools(family);
            if pools.is_empty() {
                return Err(IpamError::NoPool {
                    family,
                    node: self.node.clone(),
                    ignored: self
                        .overlaps
                        .iter()
                        .filter(|o| IpFamily::of_net(&o.ignored_cidr) == family)
                        .cloned()
                        .collect(),
                });
            }
            let node = self.node.clone();

            // 1. A block of our own with room.
            if let Some(cidr) = self.find_block(&pools, |b| b.is_affine_to(&node) && b.free() > 0) {
                if let Some(a) = self.try_assign(cidr, handle, &pod, &pools).await? {
                    return Ok(a);
                }
                continue;
            }
            // 2. A new block, while under the cap.
            if self.affine_count(family) < self.config.max_blocks_per_node {
                fresh = true;
                match self.claim_free_block(family).await? {
                    Claim::Claimed | Claim::Lost => continue,
                    Claim::PoolsFull => {}
                }
            }
            // 3. Borrow a free address from another node's block.
            let lenient: Vec<IpPool> = pools
                .iter()
                .filter(|p| !p.strict_affinity)
                .cloned()
                .collect();
            if let Some(cidr) =
                self.find_block(&lenient, |b| !b.is_affine_to(&node) && b.free() > 0)
            {
                debug!(%handle, block = %cidr, "borrowing from another node's block");
                if let Some(a) = self.try_assign(cidr, handle, &pod, &pools).await? {
                    return Ok(a);
                }
                continue;
            }
            // "Full" may only be stale news: look once more at what is really stored.
            if !fresh {
                fresh = true;
                self.reload_blocks().await?;
                continue;
            }
            return Err(IpamError::Exhausted { family, node });
        }
        Err(IpamError::Contention {
            op: "allocate",
            attempts: self.config.max_attempts,
        })
    }

    /// Serves several requests at once, as a burst of concurrent ADDs queues them: as many
    /// as fit go into one affine block with a single write, so a burst of N ADDs costs about
    /// one write, not N, and every allocation is still stored before its caller hears of
    /// it. Requests that need a claim or a borrow go through [`allocate`](Self::allocate)
    /// one by one. Results come in request order; a handle asked twice gets one address.
    pub async fn allocate_batch(
        &mut self,
        reqs: &[AllocRequest],
    ) -> Vec<Result<Allocated, IpamError>> {
        let mut results: Vec<Option<Result<Allocated, IpamError>>> = vec![None; reqs.len()];
        for _ in 0..self.config.max_attempts {
            if let Err(e) = self.ensure_loaded().await {
                fill_pending(&mut results, &e);
                break;
            }
            for (i, r) in reqs.iter().enumerate() {
                if results[i].is_none() {
                    results[i] = self.lookup_cached(&r.handle, r.family).map(Ok);
                }
            }
            let Some(first) = results.iter().position(Option::is_none) else {
                break;
            };
            let family = reqs[first].family;
            let pools = self.usable_pools(family);
            let node = self.node.clone();
            let Some(cidr) = self.find_block(&pools, |b| b.is_affine_to(&node) && b.free() > 0)
            else {
                // No room in our own blocks: claims and borrowing are the single path's job.
                results[first] = Some(
                    self.allocate(&reqs[first].handle, family, reqs[first].pod.clone())
                        .await,
                );
                continue;
            };
            let Some(entry) = self.cached_block(cidr) else {
                continue;
            };
            let mut block = entry.value;
            let mut taken = Vec::new();
            for (i, r) in reqs.iter().enumerate() {
                if results[i].is_some() || r.family != family {
                    continue;
                }
                if block.find(&r.handle).is_some() {
                    continue;
                }
                if block
                    .assign(r.handle.clone(), node.clone(), r.pod.clone())
                    .is_none()
                {
                    break;
                }
                taken.push(i);
            }
            match self.store.update_block(&block, &entry.revision).await {
                Ok(revision) => {
                    if let Some(cache) = self.cache.as_mut() {
                        cache.blocks.insert(
                            cidr,
                            Versioned {
                                value: block,
                                revision,
                            },
                        );
                    }
                    debug!(block = %cidr, count = taken.len(), "allocated a batch with one write");
                }
                Err(e) if is_stale(&e) => {
                    if let Err(e) = self.refetch_block(cidr).await {
                        fill_pending(&mut results, &e);
                        break;
                    }
                }
                Err(e) => {
                    let e = self.unknown(e);
                    for i in taken {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        let contention = IpamError::Contention {
            op: "allocate",
            attempts: self.config.max_attempts,
        };
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(contention.clone())))
            .collect()
    }

    /// Writes one new allocation into `cidr`. `Ok(None)` means the block was stale or full:
    /// the cache now holds the fresh block and the caller decides again.
    async fn try_assign(
        &mut self,
        cidr: BlockCidr,
        handle: &Handle,
        pod: &Option<PodRef>,
        pools: &[IpPool],
    ) -> Result<Option<Allocated>, IpamError> {
        let Some(entry) = self.cached_block(cidr) else {
            return Ok(None);
        };
        let mut block = entry.value;
        let Some(ip) = block.assign(handle.clone(), self.node.clone(), pod.clone()) else {
            return Ok(None);
        };
        match self.store.update_block(&block, &entry.revision).await {
            Ok(revision) => {
                if let Some(cache) = self.cache.as_mut() {
                    cache.blocks.insert(
                        cidr,
                        Versioned {
                            value: block,
                            revision,
                        },
                    );
                }
                let pool = pools
                    .iter()
                    .find(|p| p.contains_block(&cidr))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                debug!(%handle, %ip, block = %cidr, "allocated");
                Ok(Some(Allocated {
                    ip,
                    block: cidr,
                    pool,
                }))
            }
            Err(e) if is_stale(&e) => {
                debug!(%handle, block = %cidr, "block changed under us; retrying on fresh data");
                self.refetch_block(cidr).await?;
                Ok(None)
            }
            Err(e) => Err(self.unknown(e)),
        }
    }

    async fn claim_free_block(&mut self, family: IpFamily) -> Result<Claim, IpamError> {
        // Claims are rare: look at what is really stored, blocks and pools alike (a pool
        // disabled meanwhile is then not claimed from).
        self.reload_pools().await?;
        self.reload_blocks().await?;
        let start = node_hash(&self.node);
        for pool in self.usable_pools(family) {
            let n = pool.block_count();
            let first = start % n;
            let mut i: u128 = 0;
            while i < n {
                let index = if i < n - first {
                    first + i
                } else {
                    i - (n - first)
                };
                i += 1;
                let Some(cidr) = pool.block_at(index) else {
                    continue;
                };
                // Overlap, not just equality: a pool recreated with another block size must
                // not hand out addresses that an older, differently sized block holds.
                if self.cache.as_ref().is_some_and(|c| {
                    c.blocks.contains_key(&cidr)
                        || c.blocks
                            .keys()
                            .any(|b| b.net().contains(&cidr.net()) || cidr.net().contains(&b.net()))
                }) {
                    continue;
                }
                return self.claim(cidr).await;
            }
        }
        Ok(Claim::PoolsFull)
    }

    /// Claims `cidr` for this node: affinity `Pending`, then the block (the create is the
    /// compare-and-swap that decides the owner), then affinity `Confirmed`.
    async fn claim(&mut self, cidr: BlockCidr) -> Result<Claim, IpamError> {
        let pending = BlockAffinity {
            node: self.node.clone(),
            cidr,
            state: AffinityState::Pending,
        };
        match self.store.create_affinity(&pending).await {
            Ok(_) => {}
            // Left over from an earlier attempt of ours that died halfway: carry on with it.
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(self.unknown(e)),
        }
        let block = Block::new(cidr, Some(self.node.clone()));
        match self.store.create_block(&block).await {
            Ok(revision) => {
                if let Some(cache) = self.cache.as_mut() {
                    cache.blocks.insert(
                        cidr,
                        Versioned {
                            value: block,
                            revision,
                        },
                    );
                }
            }
            Err(StoreError::AlreadyExists { .. }) => {
                self.refetch_block(cidr).await?;
                let ours = self
                    .cached_block(cidr)
                    .is_some_and(|b| b.value.is_affine_to(&self.node));
                if !ours {
                    debug!(block = %cidr, "another node claimed the block first");
                    self.delete_affinity(cidr).await?;
                    return Ok(Claim::Lost);
                }
            }
            Err(e) => return Err(self.unknown(e)),
        }
        self.set_affinity_state(cidr, AffinityState::Confirmed)
            .await?;
        info!(block = %cidr, node = %self.node, "claimed block");
        Ok(Claim::Claimed)
    }

    async fn find_affinity(
        &self,
        node: &str,
        cidr: BlockCidr,
    ) -> Result<Option<Versioned<BlockAffinity>>, IpamError> {
        Ok(self
            .store
            .list_affinities(node)
            .await?
            .into_iter()
            .find(|a| a.value.cidr == cidr))
    }

    /// Makes this node's affinity for `cidr` exist in `state`.
    async fn set_affinity_state(
        &mut self,
        cidr: BlockCidr,
        state: AffinityState,
    ) -> Result<(), IpamError> {
        let wanted = BlockAffinity {
            node: self.node.clone(),
            cidr,
            state,
        };
        for _ in 0..self.config.max_attempts {
            let result = match self.find_affinity(&self.node, cidr).await? {
                Some(cur) if cur.value.state == state => return Ok(()),
                Some(cur) => self
                    .store
                    .update_affinity(&wanted, &cur.revision)
                    .await
                    .map(drop),
                None => self.store.create_affinity(&wanted).await.map(drop),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if is_stale(&e) || matches!(e, StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(self.unknown(e)),
            }
        }
        Err(IpamError::Contention {
            op: "set block affinity",
            attempts: self.config.max_attempts,
        })
    }

    /// Deletes `node`'s affinity for `cidr`, if it exists.
    async fn delete_affinity_of(&mut self, node: &str, cidr: BlockCidr) -> Result<(), IpamError> {
        for _ in 0..self.config.max_attempts {
            let Some(cur) = self.find_affinity(node, cidr).await? else {
                return Ok(());
            };
            match self.store.delete_affinity(&cur.value, &cur.revision).await {
                Ok(()) => return Ok(()),
                Err(e) if is_stale(&e) => continue,
                Err(e) => return Err(self.unknown(e)),
            }
        }
        Err(IpamError::Contention {
            op: "delete block affinity",
            attempts: self.config.max_attempts,
        })
    }

    async fn delete_affinity(&mut self, cidr: BlockCidr) -> Result<(), IpamError> {
        let node = self.node.clone();
        self.delete_affinity_of(&node, cidr).await
    }

    /// Frees every address `handle` holds (in any block, including borrowed ones). Releasing
    /// an unknown handle is a success with nothing released, as CNI DEL requires.
    pub async fn release(&mut self, handle: &Handle) -> Result<Vec<IpAddr>, IpamError> {
        let mut released = Vec::new();
        for _ in 0..self.config.max_attempts {
            let cache = self.ensure_loaded().await?;
            let Some(entry) = cache
                .blocks
                .values()
                .find(|v| v.value.find(handle).is_some())
                .cloned()
            else {
                return Ok(released);
            };
            let cidr = entry.value.cidr();
            let mut block = entry.value;
            let ips = block.release(handle);
            // A block nobody is affine to lives only while it holds addresses.
            let result = if block.is_empty() && block.affinity.is_none() {
                self.store
                    .delete_block(cidr, &entry.revision)
                    .await
                    .map(|()| None)
            } else {
                self.store
                    .update_block(&block, &entry.revision)
                    .await
                    .map(Some)
            };
            match result {
                Ok(revision) => {
                    if let Some(cache) = self.cache.as_mut() {
                        match revision {
                            Some(revision) => cache.blocks.insert(
                                cidr,
                                Versioned {
                                    value: block,
                                    revision,
                                },
                            ),
                            None => cache.blocks.remove(&cidr),
                        };
                    }
                    debug!(%handle, ?ips, block = %cidr, "released");
                    released.extend(ips);
                }
                Err(e) if is_stale(&e) => self.refetch_block(cidr).await?,
                Err(e) => return Err(self.unknown(e)),
            }
        }
        Err(IpamError::Contention {
            op: "release",
            attempts: self.config.max_attempts,
        })
    }

    /// Housekeeping for this node's blocks; call it periodically. It re-reads the pools (so a
    /// pool disabled or added is seen within one period even without `invalidate`), finishes
    /// claims and releases that a crash interrupted, and gives back blocks that stayed empty
    /// for the grace period. Returns the blocks given back.
    pub async fn release_empty_blocks(
        &mut self,
        now: Instant,
    ) -> Result<Vec<BlockCidr>, IpamError> {
        self.reload_pools().await?;
        self.reload_blocks().await?;
        let node = self.node.clone();
        let affinities = self.store.list_affinities(&node).await?;
        let mut with_affinity = HashSet::new();
        for aff in affinities {
            let cidr = aff.value.cidr;
            with_affinity.insert(cidr);
            let block = self
                .cached_block(cidr)
                .filter(|b| b.value.is_affine_to(&node));
            match (aff.value.state, block) {
                (_, None) => {
                    debug!(block = %cidr, state = %aff.value.state, "dropping affinity for a block we do not own");
                    self.delete_affinity(cidr).await?;
                }
                (AffinityState::Pending, Some(_)) => {
                    self.set_affinity_state(cidr, AffinityState::Confirmed)
                        .await?
                }
                (AffinityState::PendingDeletion, Some(b)) if b.value.is_empty() => {
                    self.release_block(cidr).await?;
                }
                (AffinityState::PendingDeletion, Some(_)) => {
                    self.set_affinity_state(cidr, AffinityState::Confirmed)
                        .await?;
                }
                (AffinityState::Confirmed, Some(_)) => {}
            }
        }
        let owned: Vec<Versioned<Block>> = self
            .cache
            .as_ref()
            .map(|c| {
                c.blocks
                    .values()
                    .filter(|v| v.value.is_affine_to(&node))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for b in &owned {
            if !with_affinity.contains(&b.value.cidr()) {
                self.set_affinity_state(b.value.cidr(), AffinityState::Confirmed)
                    .await?;
            }
        }
        let empty: HashSet<BlockCidr> = owned
            .iter()
            .filter(|v| v.value.is_empty())
            .map(|v| v.value.cidr())
            .collect();
        self.empty_since.retain(|c, _| empty.contains(c));
        let mut released = Vec::new();
        for cidr in empty {
            let since = *self.empty_since.entry(cidr).or_insert(now);
            if now.saturating_duration_since(since) >= self.config.block_release_grace
                && self.release_block(cidr).await?
            {
                self.empty_since.remove(&cidr);
                released.push(cidr);
            }
        }
        released.sort();
        Ok(released)
    }

    /// Gives back one empty affine block. `Ok(false)` when it turned out not to be empty.
    async fn release_block(&mut self, cidr: BlockCidr) -> Result<bool, IpamError> {
        // Mark first, so that a crash between the two deletes is finished by the next pass.
        self.set_affinity_state(cidr, AffinityState::PendingDeletion)
            .await?;
        for _ in 0..self.config.max_attempts {
            let Some(entry) = self.cached_block(cidr) else {
                break;
            };
            if !entry.value.is_empty() || !entry.value.is_affine_to(&self.node) {
                // Someone borrowed from it meanwhile: keep it.
                self.set_affinity_state(cidr, AffinityState::Confirmed)
                    .await?;
                return Ok(false);
            }
            match self.store.delete_block(cidr, &entry.revision).await {
                Ok(()) => {
                    if let Some(cache) = self.cache.as_mut() {
                        cache.blocks.remove(&cidr);
                    }
                    break;
                }
                Err(e) if is_stale(&e) => self.refetch_block(cidr).await?,
                Err(e) => return Err(self.unknown(e)),
            }
        }
        self.delete_affinity(cidr).await?;
        info!(block = %cidr, node = %self.node, "released empty block");
        Ok(true)
    }

    /// CNI GC: releases this node's allocations of `network` whose handle is not in `valid`.
    pub async fn gc_handles(
        &mut self,
        network: &str,
        valid: &HashSet<Handle>,
    ) -> Result<Vec<Handle>, IpamError> {
        self.reload_blocks().await?;
        let stale: BTreeSet<Handle> = self
            .cache
            .iter()
            .flat_map(|c| c.blocks.values())
            .flat_map(|v| v.value.allocations().map(|(_, a)| a))
            .filter(|a| {
                a.node == self.node && a.handle.is_of_network(network) && !valid.contains(&a.handle)
            })
            .map(|a| a.handle.clone())
            .collect();
        for h in &stale {
            self.release(h).await?;
        }
        Ok(stale.into_iter().collect())
    }

    /// Leak GC: an allocation whose pod `pod_exists` denies is released once it has been seen
    /// leaked for the leak grace period (a pod may be created just after its ADD, and the
    /// caller's view of pods may lag). Allocations with no pod (the agent's own) are kept.
    pub async fn gc_leaks(
        &mut self,
        scope: GcScope<'_>,
        now: Instant,
        pod_exists: impl Fn(&PodRef) -> bool,
    ) -> Result<Vec<Handle>, IpamError> {
        self.reload_blocks().await?;
        // Handle → (its pod, whether its node is gone).
        let in_scope: BTreeMap<Handle, (PodRef, bool)> = self
            .cache
            .iter()
            .flat_map(|c| c.blocks.values())
            .flat_map(|v| v.value.allocations().map(|(_, a)| a))
            .filter_map(|a| {
                let node_gone = scope.covers(&a.node)?;
                Some((a.handle.clone(), (a.pod.clone()?, node_gone)))
            })
            .collect();
        self.leak_since.retain(|h, _| in_scope.contains_key(h));
        let mut leaked = Vec::new();
        for (handle, (pod, node_gone)) in in_scope {
            if !node_gone && pod_exists(&pod) {
                self.leak_since.remove(&handle);
                continue;
            }
            let since = *self.leak_since.entry(handle.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= self.config.leak_grace {
                leaked.push(handle);
            }
        }
        for h in &leaked {
            info!(handle = %h, "releasing leaked allocation: its pod is gone");
            self.release(h).await?;
            self.leak_since.remove(h);
        }
        Ok(leaked)
    }

    /// A node was deleted: its empty blocks go, its other blocks lose their affinity (they go
    /// when their last address is released), and its affinities are deleted.
    pub async fn release_node(&mut self, node: &str) -> Result<(), IpamError> {
        let mut done = false;
        for _ in 0..self.config.max_attempts {
            self.reload_blocks().await?;
            let owned: Vec<Versioned<Block>> = self
                .cache
                .iter()
                .flat_map(|c| c.blocks.values())
                .filter(|v| v.value.is_affine_to(node))
                .cloned()
                .collect();
            let mut stale = false;
            for v in owned {
                let cidr = v.value.cidr();
                let result = if v.value.is_empty() {
                    self.store.delete_block(cidr, &v.revision).await
                } else {
                    let mut block = v.value.clone();
                    block.affinity = None;
                    self.store.update_block(&block, &v.revision).await.map(drop)
                };
                match result {
                    Ok(()) => {}
                    Err(e) if is_stale(&e) => stale = true,
                    Err(e) => return Err(self.unknown(e)),
                }
            }
            if !stale {
                done = true;
                break;
            }
        }
        if !done {
            return Err(IpamError::Contention {
                op: "release node",
                attempts: self.config.max_attempts,
            });
        }
        for aff in self.store.list_affinities(node).await? {
            self.delete_affinity_of(node, aff.value.cidr).await?;
        }
        self.reload_blocks().await?;
        info!(%node, "released the deleted node's blocks and affinities");
        Ok(())
    }
}
