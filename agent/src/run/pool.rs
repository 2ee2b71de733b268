//! The default IP pools: created at start from `CALICO_IPV4POOL_*` / `CALICO_IPV6POOL_*`,
//! per address family, only when no pool of that family exists (as calico-node does), and
//! never over an existing pool's addresses. Every agent tries; the first create wins, the
//! others find it there.

use ipnet::IpNet;
use tortie_ipam::{IpFamily, IpPool, PoolError, StoreError, VxlanMode, nets_overlap};

use crate::config::{self, Config};
use crate::datastore::{KubeStore, StoredPool};
use crate::run::retry::{self, Transient};

pub const DEFAULT_IPV4_POOL: &str = "default-ipv4-ippool";
pub const DEFAULT_IPV6_POOL: &str = "default-ipv6-ippool";

fn vxlan(mode: config::VxlanMode) -> VxlanMode {
    match mode {
        config::VxlanMode::Never => VxlanMode::Never,
        config::VxlanMode::Always => VxlanMode::Always,
        config::VxlanMode::CrossSubnet => VxlanMode::CrossSubnet,
    }
}

/// The pools the configuration asks for. The config parser has checked the same rules the
/// pool type checks, so an error here means the two disagree.
pub fn default_pools(config: &Config) -> Result<Vec<IpPool>, PoolError> {
    let p4 = &config.ipv4_pool;
    let mut v4 = IpPool::new(DEFAULT_IPV4_POOL, IpNet::V4(p4.cidr), p4.block_size)?;
    v4.vxlan_mode = vxlan(p4.vxlan);
    v4.nat_outgoing = p4.nat_outgoing;
    let mut out = vec![v4];
    if let Some(p6) = &config.ipv6_pool {
        // Calico's IPv6 default pool: no VXLAN, no NAT.
        out.push(IpPool::new(
            DEFAULT_IPV6_POOL,
            IpNet::V6(p6.cidr),
            p6.block_size,
        )?);
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum PoolSetupError {
    #[error("the default pool from the configuration is invalid: {0}")]
    Invalid(#[from] PoolError),
    #[error("{error}{hint}", error = .0, hint = crd_hint(.0))]
    Store(#[from] StoreError),
}

fn crd_hint(e: &StoreError) -> &'static str {
    match e {
        StoreError::NotFound { .. } => {
            " (are the tortie CRDs installed? `tortie-node crds | kubectl apply -f -`)"
        }
        _ => "",
    }
}

impl Transient for PoolSetupError {
    fn is_transient(&self) -> bool {
        match self {
            PoolSetupError::Invalid(_) => false,
            PoolSetupError::Store(e) => e.is_transient(),
        }
    }
}

/// What to do about one default pool, given the pools stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Create,
    /// A pool of the family exists (this one, or the user's): Calico leaves them alone.
    FamilyHasPool(String),
    /// Creating it would overlap a pool that exists: refused, since IPAM would ignore the
    /// newer of the two.
    Overlaps {
        name: String,
        cidr: IpNet,
    },
}

/// Decides for `pool` against the `stored` pools. Overlap is checked first, so that a
/// configured CIDR that collides with an existing pool is reported as such.
pub fn decide(pool: &IpPool, stored: &[StoredPool]) -> Decision {
    if let Some((name, cidr)) = stored.iter().filter(|p| p.name != pool.name).find_map(|p| {
        let cidr = p.cidr?;
        nets_overlap(&cidr, &pool.cidr()).then(|| (p.name.clone(), cidr))
    }) {
        return Decision::Overlaps { name, cidr };
    }
    // A pool whose CIDR does not parse belongs to no family and takes no addresses.
    match stored.iter().find(|p| {
        p.cidr
            .is_some_and(|c| IpFamily::of_net(&c) == pool.family())
    }) {
        Some(p) => Decision::FamilyHasPool(p.name.clone()),
        None => Decision::Create,
    }
}

/// The variable a default pool's CIDR came from.
fn cidr_variable(pool: &IpPool) -> &'static str {
    match pool.family() {
        IpFamily::V4 => "CALICO_IPV4POOL_CIDR",
        IpFamily::V6 => "CALICO_IPV6POOL_CIDR",
    }
}

/// Creates the default pools whose family has none, waiting for the apiserver if it is
/// away. Returns the names created by this call.
pub async fn ensure_default_pools(
    store: &KubeStore,
    config: &Config,
) -> Result<Vec<String>, PoolSetupError> {
    let pools = default_pools(config)?;
    retry::until_done("creating the default IP pools", async || {
        let mut created = Vec::new();
        for pool in &pools {
            match decide(pool, &store.stored_pools().await?) {
                Decision::Create => {
                    if store.create_pool(pool).await? {
                        tracing::info!(pool = %pool.name, cidr = %pool.cidr(), block_size = pool.block_size(), "created the default IP pool");
                        created.push(pool.name.clone());
                    } else {
                        tracing::info!(pool = %pool.name, "another agent created the default IP pool first");
                    }
                }
                Decision::FamilyHasPool(existing) => {
                    tracing::info!(family = %pool.family(), %existing, "an IP pool of this family exists already; not creating {}", pool.name);
                }
                Decision::Overlaps { name, cidr } => {
                    tracing::warn!(
                        "not creating IPPool {} ({}={}): it overlaps IPPool {name} ({cidr}), and pools must not overlap; {name} is used",
                        pool.name,
                        cidr_variable(pool),
                        pool.cidr()
                    );
                }
            }
        }
        Ok(created)
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(&vars, || Ok("n1".into())).unwrap()
    }

    #[test]
    fn default_pool_from_config() {
        let pools = default_pools(&config(&[
            ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
            ("CALICO_IPV4POOL_BLOCK_SIZE", "24"),
            ("CALICO_IPV4POOL_VXLAN", "CrossSubnet"),
            ("CALICO_IPV4POOL_NAT_OUTGOING", "false"),
        ]))
        .unwrap();
        assert_eq!(pools.len(), 1);
        let p = &pools[0];
        assert_eq!(
            (p.name.as_str(), p.cidr().to_string(), p.block_size()),
            ("default-ipv4-ippool", "10.244.0.0/16".to_owned(), 24)
        );
        assert_eq!(p.vxlan_mode, VxlanMode::CrossSubnet);
        assert!(!p.nat_outgoing);
        assert!(!p.disabled);
    }

    #[test]
    fn dual_stack_adds_the_ipv6_pool() {
        let pools = default_pools(&config(&[("CALICO_IPV6POOL_CIDR", "fd00:10::/64")])).unwrap();
        let got: Vec<(String, String, u8)> = pools
            .iter()
            .map(|p| (p.name.clone(), p.cidr().to_string(), p.block_size()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "default-ipv4-ippool".to_owned(),
                    "192.168.0.0/16".to_owned(),
                    26
                ),
                (
                    "default-ipv6-ippool".to_owned(),
                    "fd00:10::/64".to_owned(),
                    122
                ),
            ]
        );
    }

    fn stored(name: &str, cidr: &str) -> StoredPool {
        StoredPool {
            name: name.into(),
            cidr: cidr.parse().ok(),
        }
    }

    fn default_v4(cidr: &str) -> IpPool {
        let pools = default_pools(&config(&[("CALICO_IPV4POOL_CIDR", cidr)])).unwrap();
        pools.into_iter().next().unwrap()
    }

    #[test]
    fn the_default_pool_is_created_only_when_its_family_has_none() {
        let pool = default_v4("10.244.0.0/16");
        assert_eq!(decide(&pool, &[]), Decision::Create);
        // Another family's pool, or one whose CIDR does not parse, does not count.
        assert_eq!(
            decide(
                &pool,
                &[stored("v6", "fd00::/64"), stored("broken", "10.0.0.0/40")]
            ),
            Decision::Create
        );
        assert_eq!(
            decide(&pool, &[stored("mine", "10.50.0.0/16")]),
            Decision::FamilyHasPool("mine".into())
        );
        // The default pool itself, perhaps from another CIDR: left alone.
        assert_eq!(
            decide(&pool, &[stored("default-ipv4-ippool", "10.99.0.0/16")]),
            Decision::FamilyHasPool("default-ipv4-ippool".into())
        );
    }

    #[test]
    fn a_default_pool_overlapping_an_existing_pool_is_refused() {
        let pool = default_v4("10.244.0.0/16");
        for other in ["10.244.8.0/24", "10.0.0.0/8", "10.244.0.0/16"] {
            assert_eq!(
                decide(&pool, &[stored("v6", "fd00::/64"), stored("mine", other)]),
                Decision::Overlaps {
                    name: "mine".into(),
                    cidr: other.parse().unwrap()
                },
                "{other}"
            );
        }
    }

    #[test]
    fn only_a_missing_crd_gets_the_install_hint() {
        let missing = PoolSetupError::Store(StoreError::NotFound {
            kind: tortie_ipam::Kind::Pool,
            name: "*".into(),
        });
        assert_eq!(
            missing.to_string(),
            "IPPool * does not exist (are the tortie CRDs installed? `tortie-node crds | kubectl apply -f -`)"
        );
        assert!(missing.is_transient());
        let forbidden = PoolSetupError::Store(StoreError::Refused {
            kind: tortie_ipam::Kind::Pool,
            name: "*".into(),
            reason: "forbidden (403)".into(),
        });
        assert_eq!(
            forbidden.to_string(),
            "IPPool *: refused by the datastore: forbidden (403)"
        );
        assert!(!forbidden.is_transient());
    }

    #[test]
    fn every_block_size_the_config_accepts_the_pool_accepts() {
        for bs in 20..=32u8 {
            let c = config(&[
                ("CALICO_IPV4POOL_CIDR", "10.0.0.0/8"),
                ("CALICO_IPV4POOL_BLOCK_SIZE", &bs.to_string()),
            ]);
            assert!(default_pools(&c).is_ok(), "block size {bs}");
        }
    }
}
