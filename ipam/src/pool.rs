//! IP pools: where blocks come from.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use crate::cidr::{BlockCidr, IpFamily, MAX_BLOCK_HOST_BITS, addr_to_u128, u128_to_addr};
use crate::selector::Selector;

/// Calico's default block size for IPv4 pools.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Calico's default block size for IPv6 pools.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// When pod traffic to another node is encapsulated in VXLAN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VxlanMode {
    #[default]
    Never,
    Always,
    /// Only toward nodes in another subnet.
    CrossSubnet,
}

impl FromStr for VxlanMode {
    type Err = PoolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Never" => Ok(VxlanMode::Never),
            "Always" => Ok(VxlanMode::Always),
            "CrossSubnet" => Ok(VxlanMode::CrossSubnet),
            _ => Err(PoolError::VxlanMode(s.to_owned())),
        }
    }
}

impl fmt::Display for VxlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VxlanMode::Never => "Never",
            VxlanMode::Always => "Always",
            VxlanMode::CrossSubnet => "CrossSubnet",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool cidr {net} has host bits set: did you mean {network}?")]
    HostBits { net: IpNet, network: IpNet },
    #[error(
        "block size /{block_size} does not fit pool {cidr}: it must be between /{min} and /{max}"
    )]
    BlockSize {
        cidr: IpNet,
        block_size: u8,
        min: u8,
        max: u8,
    },
    #[error("vxlanMode {0:?} is not one of Never, Always, CrossSubnet")]
    VxlanMode(String),
}

/// An IPPool, in the allocator's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPool {
    pub name: String,
    cidr: IpNet,
    block_size: u8,
    pub vxlan_mode: VxlanMode,
    pub nat_outgoing: bool,
    /// A disabled pool hands out no new addresses, not even from existing blocks.
    pub disabled: bool,
    pub node_selector: Selector,
    /// When set, a node never borrows addresses from another node's block of this pool.
    pub strict_affinity: bool,
}

impl IpPool {
    /// A pool with Calico's defaults for everything but the CIDR and block size.
    pub fn new(name: impl Into<String>, cidr: IpNet, block_size: u8) -> Result<IpPool, PoolError> {
        if cidr.addr() != cidr.network() {
            return Err(PoolError::HostBits {
                net: cidr,
                network: cidr.trunc(),
            });
        }
        let max = cidr.max_prefix_len();
        let min = cidr.prefix_len().max(max - MAX_BLOCK_HOST_BITS);
        if block_size < min || block_size > max {
            return Err(PoolError::BlockSize {
                cidr,
                block_size,
                min,
                max,
            });
        }
        Ok(IpPool {
            name: name.into(),
            cidr,
            block_size,
            vxlan_mode: VxlanMode::Never,
            nat_outgoing: false,
            disabled: false,
            node_selector: Selector::all(),
            strict_affinity: false,
        })
    }

    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    pub fn block_size(&self) -> u8 {
        self.block_size
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    pub fn selects(&self, node_labels: &BTreeMap<String, String>) -> bool {
        self.node_selector.matches(node_labels)
    }

    pub fn contains_block(&self, block: &BlockCidr) -> bool {
        self.cidr.contains(&block.net())
    }

    /// How many blocks the pool holds (saturating for absurd IPv6 pools).
    pub fn block_count(&self) -> u128 {
        1u128
            .checked_shl(u32::from(self.block_size - self.cidr.prefix_len()))
            .unwrap_or(u128::MAX)
    }

    /// The `index`-th block of the pool, or None past the end.
    pub fn block_at(&self, index: u128) -> Option<BlockCidr> {
        if index >= self.block_count() {
            return None;
        }
        let shift = u32::from(self.cidr.max_prefix_len() - self.block_size);
        let base = addr_to_u128(self.cidr.network()) + index.checked_shl(shift)?;
        let net = IpNet::new(u128_to_addr(self.family(), base), self.block_size).ok()?;
        BlockCidr::new(net).ok()
    }
}

/// Two pools whose networks overlap. Overlapping pools with different block sizes could let
/// two nodes claim overlapping blocks at once (the block CAS is per name), so IPAM uses only
/// the older of the two and ignores the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The pool IPAM ignores.
    pub ignored: String,
    pub ignored_cidr: IpNet,
    /// The older pool it overlaps, which IPAM uses.
    pub kept: String,
    pub kept_cidr: IpNet,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPPool {} ({}) overlaps the older IPPool {} ({}) and is ignored: delete it, or give it a network of its own",
            self.ignored, self.ignored_cidr, self.kept, self.kept_cidr
        )
    }
}

/// Whether two networks share an address (never across families).
pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first pool of `existing` that `pool`'s network overlaps, other than a pool of the
/// same name (the same pool, read back).
pub fn overlapping<'a>(pool: &IpPool, existing: &'a [IpPool]) -> Option<&'a IpPool> {
    existing
        .iter()
        .find(|p| p.name != pool.name && nets_overlap(&p.cidr, &pool.cidr))
}

/// The pools IPAM may use, from `pools` listed oldest first ([`Store::list_pools`]'s order):
/// a pool that overlaps one listed before it is dropped and reported. Disabled pools still
/// count, since their blocks still hold addresses. The kept pools come back in the order
/// given.
///
/// [`Store::list_pools`]: crate::Store::list_pools
pub fn without_overlaps(pools: Vec<IpPool>) -> (Vec<IpPool>, Vec<Overlap>) {
    let mut kept: Vec<IpPool> = Vec::with_capacity(pools.len());
    let mut overlaps = Vec::new();
    for pool in pools {
        match overlapping(&pool, &kept) {
            Some(older) => overlaps.push(Overlap {
                ignored: pool.name.clone(),
                ignored_cidr: pool.cidr,
                kept: older.name.clone(),
                kept_cidr: older.cidr,
            }),
            None => kept.push(pool),
        }
    }
    (kept, overlaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, cidr: &str, block_size: u8) -> IpPool {
        IpPool::new(name, cidr.parse().unwrap(), block_size).unwrap()
    }

    #[test]
    fn a_pool_overlapping_an_older_one_is_dropped_and_reported() {
        let (kept, overlaps) = without_overlaps(vec![
            p("zz-old", "10.0.0.0/16", 26),
            // Inside the older one, and around it: both overlap.
            p("aa-inside", "10.0.3.0/24", 28),
            p("bb-around", "10.0.0.0/8", 24),
            p("separate", "10.1.0.0/16", 26),
            // Another family never overlaps.
            p("v6", "fd00::/120", 122),
        ]);
        let names: Vec<&str> = kept.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["zz-old", "separate", "v6"]);
        assert_eq!(
            overlaps,
            vec![
                Overlap {
                    ignored: "aa-inside".into(),
                    ignored_cidr: "10.0.3.0/24".parse().unwrap(),
                    kept: "zz-old".into(),
                    kept_cidr: "10.0.0.0/16".parse().unwrap(),
                },
                Overlap {
                    ignored: "bb-around".into(),
                    ignored_cidr: "10.0.0.0/8".parse().unwrap(),
                    kept: "zz-old".into(),
                    kept_cidr: "10.0.0.0/16".parse().unwrap(),
                },
            ]
        );
        assert_eq!(
            overlaps[0].to_string(),
            "IPPool aa-inside (10.0.3.0/24) overlaps the older IPPool zz-old (10.0.0.0/16) and is ignored: delete it, or give it a network of its own"
        );
    }

    #[test]
    fn an_ignored_pool_does_not_shadow_a_later_one() {
        // b is dropped for overlapping a; c overlaps only b, so c is kept.
        let (kept, overlaps) = without_overlaps(vec![
            p("a", "10.0.0.0/24", 26),
            p("b", "10.0.0.0/23", 26),
            p("c", "10.0.1.0/24", 26),
        ]);
        let names: Vec<&str> = kept.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(overlaps.len(), 1);
        assert_eq!(overlaps[0].ignored, "b");
    }

    #[test]
    fn overlapping_skips_the_pool_itself() {
        let mine = p("default", "10.244.0.0/16", 26);
        let existing = vec![
            p("default", "10.244.0.0/16", 26),
            p("other", "10.1.0.0/16", 26),
        ];
        assert_eq!(overlapping(&mine, &existing), None);
        let existing = vec![p("mine", "10.244.8.0/24", 26)];
        assert_eq!(
            overlapping(&mine, &existing).map(|p| p.name.as_str()),
            Some("mine")
        );
        assert!(!nets_overlap(
            &"10.0.0.0/24".parse().unwrap(),
            &"10.0.1.0/24".parse().unwrap()
        ));
    }

    #[test]
    fn validates_cidr_and_block_size() {
        assert!(matches!(
            IpPool::new("p", "10.0.0.1/16".parse().unwrap(), 26),
            Err(PoolError::HostBits { .. })
        ));
        assert!(matches!(
            IpPool::new("p", "10.0.0.0/16".parse().unwrap(), 15),
            Err(PoolError::BlockSize {
                min: 20,
                max: 32,
                ..
            })
        ));
        assert!(matches!(
            IpPool::new("p", "10.0.0.0/24".parse().unwrap(), 23),
            Err(PoolError::BlockSize { min: 24, .. })
        ));
        assert!(IpPool::new("p", "10.0.0.0/16".parse().unwrap(), 26).is_ok());
    }

    #[test]
    fn enumerates_blocks() {
        let p = IpPool::new("p", "10.0.0.0/24".parse().unwrap(), 26).unwrap();
        assert_eq!(p.block_count(), 4);
        assert_eq!(p.block_at(0).unwrap().to_string(), "10.0.0.0/26");
        assert_eq!(p.block_at(3).unwrap().to_string(), "10.0.0.192/26");
        assert_eq!(p.block_at(4), None);
        let v6 = IpPool::new("p6", "fd00::/120".parse().unwrap(), 122).unwrap();
        assert_eq!(v6.block_at(1).unwrap().to_string(), "fd00::40/122");
    }
}
