//! The allocator's [`Store`] over the apiserver. Compare-and-swap is the apiserver's own:
//! a replace or delete carries the resourceVersion it was decided on, and a 409 Conflict
//! sends the allocator back to re-read.

use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use tortie_ipam as ipam;
use tortie_ipam::{BlockCidr, Kind, Revision, Store, StoreError, Versioned};
use tracing::warn;

use super::convert;
use super::crd;

/// The IPAM objects in the apiserver. Cheap to clone.
#[derive(Clone)]
pub struct KubeStore {
    pools: Api<crd::IPPool>,
    blocks: Api<crd::IPAMBlock>,
    affinities: Api<crd::BlockAffinity>,
}

/// Maps an apiserver answer to the allocator's terms. 409 means two things: `AlreadyExists`
/// on a create, `Conflict` on a stale resourceVersion. Any other 4xx but 408 (timeout) and
/// 429 (throttled) is the apiserver's final word (`Refused`: no permission, an object it will
/// not take); everything else (unreachable, 5xx) is `Backend`, worth retrying.
fn store_error(kind: Kind, name: &str, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(s) if s.is_already_exists() => StoreError::AlreadyExists {
            kind,
            name: name.to_owned(),
        },
        kube::Error::Api(s) if s.is_conflict() || s.code == 409 => StoreError::Conflict {
            kind,
            name: name.to_owned(),
        },
        kube::Error::Api(s) if s.is_not_found() => StoreError::NotFound {
            kind,
            name: name.to_owned(),
        },
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 408 && s.code != 429 => {
            StoreError::Refused {
                kind,
                name: name.to_owned(),
                reason: format!("{} ({})", s.message, s.code),
            }
        }
        _ => StoreError::Backend(format!("{kind} {name}: {e}")),
    }
}

fn revision(kind: Kind, name: &str, meta: &kube::api::ObjectMeta) -> Result<Revision, StoreError> {
    meta.resource_version
        .clone()
        .map(Revision)
        .ok_or_else(|| StoreError::Malformed {
            kind,
            name: name.to_owned(),
            reason: "the apiserver returned it without a resourceVersion".into(),
        })
}

fn precondition(revision: &Revision) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(revision.0.clone()),
            uid: None,
        }),
        ..DeleteParams::default()
    }
}

impl KubeStore {
    pub fn new(client: Client) -> KubeStore {
        KubeStore {
            pools: Api::all(client.clone()),
            blocks: Api::all(client.clone()),
            affinities: Api::all(client),
        }
    }

    /// Every IPPool as stored, oldest first, including those IPAM would refuse: a pool with
    /// a bad block size still belongs to its family and still takes its address space.
    pub async fn stored_pools(&self) -> Result<Vec<StoredPool>, StoreError> {
        let list = self
            .pools
            .list(&ListParams::default())
            .await
            .map_err(|e| store_error(Kind::Pool, "*", e))?;
        let mut items = list.items;
        oldest_first(&mut items);
        Ok(items
            .iter()
            .map(|p| StoredPool {
                name: p.metadata.name.clone().unwrap_or_default(),
                cidr: p.spec.cidr.parse().ok(),
            })
            .collect())
    }

    /// Creates `pool`. Returns false when a pool of that name exists already (another agent
    /// created it first).
    pub async fn create_pool(&self, pool: &ipam::IpPool) -> Result<bool, StoreError> {
        match self
            .pools
            .create(&PostParams::default(), &convert::pool_to_crd(pool))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match store_error(Kind::Pool, &pool.name, e) {
                StoreError::AlreadyExists { .. } => Ok(false),
                other => Err(other),
            },
        }
    }
}

/// An IPPool as stored: its name, and its network when that parses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPool {
    pub name: String,
    pub cidr: Option<ipnet::IpNet>,
}

/// The order [`Store::list_pools`] promises: oldest first, then by name, so that every agent
/// resolves overlapping pools the same way (the older one wins).
fn oldest_first(pools: &mut [crd::IPPool]) {
    pools.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
}

impl Store for KubeStore {
    async fn list_pools(&self) -> Result<Vec<ipam::IpPool>, StoreError> {
        let list = self
            .pools
            .list(&ListParams::default())
            .await
            .map_err(|e| store_error(Kind::Pool, "*", e))?;
        let mut items = list.items;
        oldest_first(&mut items);
        // A bad pool must not stop allocation from the good ones: skip it, loudly.
        Ok(items
            .iter()
            .filter_map(|p| {
                convert::pool_from_crd(p)
                    .map_err(|e| warn!(error = %e, "ignoring IPPool"))
                    .ok()
            })
            .collect())
    }

    async fn list_blocks(&self) -> Result<Vec<Versioned<ipam::Block>>, StoreError> {
        let list = self
            .blocks
            .list(&ListParams::default())
            .await
            .map_err(|e| store_error(Kind::Block, "*", e))?;
        // A bad block must stop allocation: skipping it would make its addresses look free.
        list.items.iter().map(convert::block_from_crd).collect()
    }

    async fn get_block(
        &self,
        cidr: BlockCidr,
    ) -> Result<Option<Versioned<ipam::Block>>, StoreError> {
        let name = cidr.object_name();
        match self
            .blocks
            .get_opt(&name)
            .await
            .map_err(|e| store_error(Kind::Block, &name, e))?
        {
            Some(b) => Ok(Some(convert::block_from_crd(&b)?)),
            None => Ok(None),
        }
    }

    async fn create_block(&self, block: &ipam::Block) -> Result<Revision, StoreError> {
        let obj = convert::block_to_crd(block, None);
        let name = block.cidr().object_name();
        let created = self
            .blocks
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| store_error(Kind::Block, &name, e))?;
        revision(Kind::Block, &name, &created.metadata)
    }

    async fn update_block(
        &self,
        block: &ipam::Block,
        rev: &Revision,
    ) -> Result<Revision, StoreError> {
        let obj = convert::block_to_crd(block, Some(rev));
        let name = block.cidr().object_name();
        let stored = self
            .blocks
            .replace(&name, &PostParams::default(), &obj)
            .await
            .map_err(|e| store_error(Kind::Block, &name, e))?;
        revision(Kind::Block, &name, &stored.metadata)
    }

    async fn delete_block(&self, cidr: BlockCidr, rev: &Revision) -> Result<(), StoreError> {
        let name = cidr.object_name();
        self.blocks
            .delete(&name, &precondition(rev))
            .await
            .map_err(|e| store_error(Kind::Block, &name, e))?;
        Ok(())
    }

    async fn list_affinities(
        &self,
        node: &str,
    ) -> Result<Vec<Versioned<ipam::BlockAffinity>>, StoreError> {
        let list = self
            .affinities
            .list(&ListParams::default())
            .await
            .map_err(|e| store_error(Kind::Affinity, "*", e))?;
        list.items
            .iter()
            .filter(|a| a.spec.node == node)
            .map(convert::affinity_from_crd)
            .collect()
    }

    async fn create_affinity(
        &self,
        affinity: &ipam::BlockAffinity,
    ) -> Result<Revision, StoreError> {
        let obj = convert::affinity_to_crd(affinity, None);
        let name = affinity.object_name();
        let created = self
            .affinities
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| store_error(Kind::Affinity, &name, e))?;
        revision(Kind::Affinity, &name, &created.metadata)
    }

    async fn update_affinity(
        &self,
        affinity: &ipam::BlockAffinity,
        rev: &Revision,
    ) -> Result<Revision, StoreError> {
        let obj = convert::affinity_to_crd(affinity, Some(rev));
        let name = affinity.object_name();
        let stored = self
            .affinities
            .replace(&name, &PostParams::default(), &obj)
            .await
            .map_err(|e| store_error(Kind::Affinity, &name, e))?;
        revision(Kind::Affinity, &name, &stored.metadata)
    }

    async fn delete_affinity(
        &self,
        affinity: &ipam::BlockAffinity,
        rev: &Revision,
    ) -> Result<(), StoreError> {
        let name = affinity.object_name();
        self.affinities
            .delete(&name, &precondition(rev))
            .await
            .map_err(|e| store_error(Kind::Affinity, &name, e))?;
        Ok(())
    }
}
