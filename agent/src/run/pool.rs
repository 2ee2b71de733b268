//! The default IP pools: created at start from `CALICO_IPV4POOL_*` / `CALICO_IPV6POOL_*`,
//! per address family, only when no pool of that family exists (as calico-node does).
//! Every agent tries; the first create wins, the others find it there.

use ipnet::IpNet;
use tortie_ipam::{IpPool, PoolError, StoreError, VxlanMode};

use crate::config::{self, Config};
use crate::datastore::KubeStore;

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the default pools whose family has none. Returns the names created by this call.
pub async fn ensure_default_pools(
    store: &KubeStore,
    config: &Config,
) -> Result<Vec<String>, PoolSetupError> {
    let mut created = Vec::new();
    for pool in default_pools(config)? {
        if store.create_pool_if_none(&pool).await? {
            tracing::info!(pool = %pool.name, cidr = %pool.cidr(), block_size = pool.block_size(), "created the default IP pool");
            created.push(pool.name.clone());
        } else {
            tracing::info!(family = ?pool.family(), "an IP pool exists already; not creating {}", pool.name);
        }
    }
    Ok(created)
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
