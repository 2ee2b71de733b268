//! Between the allocator's types and the stored objects. Everything read from the apiserver
//! is checked here; a bad object becomes an error that names it and says what is wrong.

use kube::api::ObjectMeta;
use tortie_ipam as ipam;
use tortie_ipam::{Kind, Revision, StoreError, Versioned};

use super::crd;

fn malformed(kind: Kind, name: &str, reason: impl ToString) -> StoreError {
    StoreError::Malformed {
        kind,
        name: name.to_owned(),
        reason: reason.to_string(),
    }
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("<unnamed>")
}

fn revision_of(kind: Kind, meta: &ObjectMeta) -> Result<Revision, StoreError> {
    meta.resource_version
        .clone()
        .map(Revision)
        .ok_or_else(|| malformed(kind, name_of(meta), "no metadata.resourceVersion"))
}

fn meta(name: String, revision: Option<&Revision>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        resource_version: revision.map(|r| r.0.clone()),
        ..ObjectMeta::default()
    }
}

pub fn pool_from_crd(p: &crd::IPPool) -> Result<ipam::IpPool, StoreError> {
    let name = name_of(&p.metadata);
    let bad = |reason: String| malformed(Kind::Pool, name, reason);
    let cidr: ipnet::IpNet = p
        .spec
        .cidr
        .parse()
        .map_err(|e| bad(format!("cidr {:?}: {e}", p.spec.cidr)))?;
    let default_size = match cidr {
        ipnet::IpNet::V4(_) => ipam::DEFAULT_BLOCK_SIZE_V4,
        ipnet::IpNet::V6(_) => ipam::DEFAULT_BLOCK_SIZE_V6,
    };
    let mut pool = ipam::IpPool::new(name, cidr, p.spec.block_size.unwrap_or(default_size))
        .map_err(|e| bad(e.to_string()))?;
    pool.vxlan_mode = match p.spec.vxlan_mode {
        crd::VxlanMode::Never => ipam::VxlanMode::Never,
        crd::VxlanMode::Always => ipam::VxlanMode::Always,
        crd::VxlanMode::CrossSubnet => ipam::VxlanMode::CrossSubnet,
    };
    pool.nat_outgoing = p.spec.nat_outgoing;
    pool.disabled = p.spec.disabled;
    pool.strict_affinity = p.spec.strict_affinity;
    if let Some(sel) = &p.spec.node_selector {
        pool.node_selector = sel
            .parse()
            .map_err(|e: ipam::SelectorError| bad(e.to_string()))?;
    }
    Ok(pool)
}

pub fn pool_to_crd(p: &ipam::IpPool) -> crd::IPPool {
    let mut obj = crd::IPPool::new(
        &p.name,
        crd::IPPoolSpec {
            cidr: p.cidr().to_string(),
            block_size: Some(p.block_size()),
            vxlan_mode: match p.vxlan_mode {
                ipam::VxlanMode::Never => crd::VxlanMode::Never,
                ipam::VxlanMode::Always => crd::VxlanMode::Always,
                ipam::VxlanMode::CrossSubnet => crd::VxlanMode::CrossSubnet,
            },
            nat_outgoing: p.nat_outgoing,
            disabled: p.disabled,
            node_selector: Some(p.node_selector.to_string()),
            strict_affinity: p.strict_affinity,
        },
    );
    obj.metadata = meta(p.name.clone(), None);
    obj
}

pub fn block_from_crd(b: &crd::IPAMBlock) -> Result<Versioned<ipam::Block>, StoreError> {
    let name = name_of(&b.metadata);
    let bad = |reason: String| malformed(Kind::Block, name, reason);
    let cidr: ipam::BlockCidr = b
        .spec
        .cidr
        .parse()
        .map_err(|e: ipam::CidrError| bad(e.to_string()))?;
    if cidr.object_name() != name {
        return Err(bad(format!(
            "its name should be {} for cidr {cidr}",
            cidr.object_name()
        )));
    }
    let allocations = b
        .spec
        .allocations
        .iter()
        .map(|r| ipam::record::decode(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let block = ipam::Block::from_parts(
        cidr,
        b.spec.affinity.clone(),
        allocations,
        b.spec.sequence_number,
        b.spec.cursor,
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok(Versioned {
        value: block,
        revision: revision_of(Kind::Block, &b.metadata)?,
    })
}

pub fn block_to_crd(b: &ipam::Block, revision: Option<&Revision>) -> crd::IPAMBlock {
    let name = b.cidr().object_name();
    let mut obj = crd::IPAMBlock::new(
        &name,
        crd::IPAMBlockSpec {
            cidr: b.cidr().to_string(),
            affinity: b.affinity.clone(),
            allocations: b
                .allocations()
                .map(|(ordinal, a)| ipam::record::encode(ordinal, a))
                .collect(),
            sequence_number: b.sequence(),
            cursor: b.cursor(),
        },
    );
    obj.metadata = meta(name, revision);
    obj
}

pub fn affinity_from_crd(
    a: &crd::BlockAffinity,
) -> Result<Versioned<ipam::BlockAffinity>, StoreError> {
    let name = name_of(&a.metadata);
    let cidr: ipam::BlockCidr = a
        .spec
        .cidr
        .parse()
        .map_err(|e: ipam::CidrError| malformed(Kind::Affinity, name, e.to_string()))?;
    let state = match a.spec.state {
        crd::AffinityState::Pending => ipam::AffinityState::Pending,
        crd::AffinityState::Confirmed => ipam::AffinityState::Confirmed,
        crd::AffinityState::PendingDeletion => ipam::AffinityState::PendingDeletion,
    };
    Ok(Versioned {
        value: ipam::BlockAffinity {
            node: a.spec.node.clone(),
            cidr,
            state,
        },
        revision: revision_of(Kind::Affinity, &a.metadata)?,
    })
}

pub fn affinity_to_crd(a: &ipam::BlockAffinity, revision: Option<&Revision>) -> crd::BlockAffinity {
    let name = a.object_name();
    let mut obj = crd::BlockAffinity::new(
        &name,
        crd::BlockAffinitySpec {
            node: a.node.clone(),
            cidr: a.cidr.to_string(),
            state: match a.state {
                ipam::AffinityState::Pending => crd::AffinityState::Pending,
                ipam::AffinityState::Confirmed => crd::AffinityState::Confirmed,
                ipam::AffinityState::PendingDeletion => crd::AffinityState::PendingDeletion,
            },
        },
    );
    obj.metadata = meta(name, revision);
    obj
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips() {
        let cidr: ipam::BlockCidr = "10.244.1.64/26".parse().unwrap();
        let mut b = ipam::Block::new(cidr, Some("node-1".into()));
        let pod = ipam::PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: Some("u".into()),
        };
        b.assign(
            ipam::Handle::for_container("net", "abc"),
            "node-1".into(),
            Some(pod),
        );
        b.assign(ipam::Handle::from_raw("tunnel"), "node-1".into(), None);
        let mut obj = block_to_crd(&b, Some(&Revision("7".into())));
        assert_eq!(obj.metadata.name.as_deref(), Some("10-244-1-64-26"));
        let back = block_from_crd(&obj).unwrap();
        assert_eq!(back.value, b);
        assert_eq!(back.revision, Revision("7".into()));
        obj.spec.allocations[0] = obj.spec.allocations[0].replacen("0 ", "64 ", 1);
        let err = block_from_crd(&obj).unwrap_err().to_string();
        assert!(
            err.contains("10-244-1-64-26") && err.contains("ordinal 64"),
            "{err}"
        );
    }

    #[test]
    fn pool_defaults_and_errors_name_the_object() {
        let mut p = crd::IPPool::new(
            "default",
            crd::IPPoolSpec {
                cidr: "192.168.0.0/16".into(),
                block_size: None,
                vxlan_mode: crd::VxlanMode::CrossSubnet,
                nat_outgoing: true,
                disabled: false,
                node_selector: None,
                strict_affinity: false,
            },
        );
        let pool = pool_from_crd(&p).unwrap();
        assert_eq!(
            (pool.block_size(), pool.vxlan_mode, pool.nat_outgoing),
            (26, ipam::VxlanMode::CrossSubnet, true)
        );
        assert_eq!(pool_from_crd(&pool_to_crd(&pool)).unwrap(), pool);
        p.spec.cidr = "192.168.0.0/33".into();
        let err = pool_from_crd(&p).unwrap_err().to_string();
        assert!(
            err.contains("IPPool default") && err.contains("192.168.0.0/33"),
            "{err}"
        );
    }

    #[test]
    fn affinity_round_trips() {
        let a = ipam::BlockAffinity {
            node: "n.example".into(),
            cidr: "fd00::40/122".parse().unwrap(),
            state: ipam::AffinityState::PendingDeletion,
        };
        let obj = affinity_to_crd(&a, Some(&Revision("1".into())));
        assert_eq!(obj.metadata.name.as_deref(), Some("n.example-fd00--40-122"));
        assert_eq!(affinity_from_crd(&obj).unwrap().value, a);
    }
}
