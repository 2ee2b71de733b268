//! `tortiectl ipam show`: pool and block usage in calicoctl's table, and who holds an address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use tortie_ipam::{Allocation, Block, BlockAffinity, BlockCidr, IpPool, record};

use super::{CtlError, list_all, table};
use crate::datastore::{self, crd};

/// The IPAM objects in the apiserver, read as agents read them.
#[derive(Debug, Default)]
pub struct IpamState {
    /// The pools agents can use, by network.
    pub pools: Vec<IpPool>,
    /// By network.
    pub blocks: Vec<StoredBlock>,
    pub affinities: Vec<BlockAffinity>,
    /// Objects agents refuse or skip, each as the error that says which and why.
    pub invalid: Vec<String>,
}

/// A block and every allocation record it stores.
#[derive(Debug)]
pub struct StoredBlock {
    pub block: Block,
    /// Each stored record with its address. Two records for one ordinal both appear here,
    /// while [`Block`] keeps only one of them: that is how a double allocation is seen.
    pub records: Vec<(IpAddr, Allocation)>,
}

impl IpamState {
    /// Converts listed objects with the agent's own conversions.
    pub fn from_objects(
        pools: &[crd::IPPool],
        blocks: &[crd::IPAMBlock],
        affinities: &[crd::BlockAffinity],
    ) -> IpamState {
        let mut state = IpamState::default();
        for p in pools {
            match datastore::pool_from_crd(p) {
                Ok(pool) => state.pools.push(pool),
                Err(e) => state.invalid.push(e.to_string()),
            }
        }
        for b in blocks {
            match datastore::block_from_crd(b) {
                Ok(versioned) => {
                    let block = versioned.value;
                    let cidr = block.cidr();
                    // block_from_crd has just decoded every record: none fails here.
                    let records = b
                        .spec
                        .allocations
                        .iter()
                        .filter_map(|r| record::decode(r).ok())
                        .filter_map(|(ordinal, a)| Some((cidr.addr(ordinal)?, a)))
                        .collect();
                    state.blocks.push(StoredBlock { block, records });
                }
                Err(e) => state.invalid.push(e.to_string()),
            }
        }
        for a in affinities {
            match datastore::affinity_from_crd(a) {
                Ok(versioned) => state.affinities.push(versioned.value),
                Err(e) => state.invalid.push(e.to_string()),
            }
        }
        state
            .pools
            .sort_by(|a, b| (a.cidr(), &a.name).cmp(&(b.cidr(), &b.name)));
        state.blocks.sort_by_key(|b| b.block.cidr().net());
        state
            .affinities
            .sort_by(|a, b| (&a.node, a.cidr.net()).cmp(&(&b.node, b.cidr.net())));
        state
    }

    /// Lists IPPools, IPAMBlocks and BlockAffinities.
    pub async fn load(client: &kube::Client) -> Result<IpamState, CtlError> {
        let pools: Vec<crd::IPPool> = list_all(client, "IP pools").await?;
        let blocks: Vec<crd::IPAMBlock> = list_all(client, "IPAM blocks").await?;
        let affinities: Vec<crd::BlockAffinity> = list_all(client, "block affinities").await?;
        Ok(IpamState::from_objects(&pools, &blocks, &affinities))
    }

    /// The pools a block lies in (more than one only when pools overlap).
    pub fn pools_of_block(&self, cidr: &BlockCidr) -> impl Iterator<Item = &IpPool> {
        self.pools.iter().filter(move |p| p.contains_block(cidr))
    }

    /// The number of allocations stored: one per address (as agents count them).
    pub fn allocation_count(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.block.allocations().count())
            .sum()
    }
}

/// How many addresses a network holds (saturating for a whole IPv6 space).
fn size_of(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// One line of calicoctl's `ipam show` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// `IP Pool` or `Block`.
    pub grouping: &'static str,
    pub cidr: IpNet,
    /// For a block: the node it is affine to, or `None` when it is affine to none.
    pub affinity: Option<String>,
    pub total: u128,
    pub in_use: u128,
}

/// Pool usage; with `show_blocks`, each pool's blocks right after it, and blocks outside
/// every pool at the end (`ipam check` reports those).
pub fn usage(state: &IpamState, show_blocks: bool) -> Vec<UsageRow> {
    let block_row = |b: &StoredBlock| UsageRow {
        grouping: "Block",
        cidr: b.block.cidr().net(),
        affinity: b.block.affinity.clone(),
        total: u128::from(b.block.cidr().size()),
        in_use: b.block.allocations().count() as u128,
    };
    let mut rows = Vec::new();
    for pool in &state.pools {
        let blocks: Vec<&StoredBlock> = state
            .blocks
            .iter()
            .filter(|b| pool.contains_block(&b.block.cidr()))
            .collect();
        rows.push(UsageRow {
            grouping: "IP Pool",
            cidr: pool.cidr(),
            affinity: None,
            total: size_of(&pool.cidr()),
            in_use: blocks
                .iter()
                .map(|b| b.block.allocations().count() as u128)
                .sum(),
        });
        if show_blocks {
            rows.extend(blocks.into_iter().map(block_row));
        }
    }
    if show_blocks {
        rows.extend(
            state
                .blocks
                .iter()
                .filter(|b| state.pools_of_block(&b.block.cidr()).next().is_none())
                .map(block_row),
        );
    }
    rows
}

/// `N (P%)`, the percentage rounded to a whole number as calicoctl prints it.
fn count_with_share(n: u128, total: u128) -> String {
    let percent = if total == 0 {
        0.0
    } else {
        n as f64 * 100.0 / total as f64
    };
    format!("{n} ({percent:.0}%)")
}

/// calicoctl's table; with `show_blocks`, an AFFINITY column says which node each block is
/// affine to (`none` when no node).
pub fn render_usage(rows: &[UsageRow], show_blocks: bool) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let affinity = match (r.grouping, &r.affinity) {
                ("Block", Some(node)) => node.clone(),
                ("Block", None) => "none".to_owned(),
                _ => String::new(),
            };
            [
                r.grouping.to_owned(),
                r.cidr.to_string(),
                affinity,
                r.total.to_string(),
                count_with_share(r.in_use, r.total),
                count_with_share(r.total - r.in_use, r.total),
            ]
        })
        .collect();
    if show_blocks {
        table(
            [
                "GROUPING",
                "CIDR",
                "AFFINITY",
                "IPS TOTAL",
                "IPS IN USE",
                "IPS FREE",
            ],
            &cells,
        )
    } else {
        let cells: Vec<[String; 5]> = cells
            .into_iter()
            .map(|[g, c, _, t, u, f]| [g, c, t, u, f])
            .collect();
        table(
            ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
            &cells,
        )
    }
}

/// `ipam show --ip` for an address outside every pool: the one answer that is an error.
#[derive(Debug, thiserror::Error)]
#[error("{ip} is not in any IP pool ({pools}): no tortie node hands it out")]
pub struct NotInAnyPool {
    pub ip: IpAddr,
    /// The pools there are, for the reader to compare with.
    pub pools: String,
}

fn affinity_text(block: &Block) -> String {
    match &block.affinity {
        Some(node) => format!("affine to node {node}"),
        None => "affine to no node".to_owned(),
    }
}

/// Who holds `ip` (pod, node, handle, block, pool), or that it is not assigned and which
/// block and pool it would come from.
pub fn show_ip(state: &IpamState, ip: IpAddr) -> Result<String, NotInAnyPool> {
    let pools: Vec<&IpPool> = state
        .pools
        .iter()
        .filter(|p| p.cidr().contains(&ip))
        .collect();
    let holders: Vec<(&StoredBlock, &Allocation)> = state
        .blocks
        .iter()
        .flat_map(|b| b.records.iter().map(move |(addr, a)| (b, addr, a)))
        .filter(|(_, addr, _)| **addr == ip)
        .map(|(b, _, a)| (b, a))
        .collect();
    let pool_names = || {
        if pools.is_empty() {
            "none: outside every IP pool".to_owned()
        } else {
            pools
                .iter()
                .map(|p| format!("{} ({})", p.name, p.cidr()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = String::new();
    if !holders.is_empty() {
        let _ = writeln!(out, "IP {ip} is in use");
        for (b, a) in holders {
            let pod = a.pod.as_ref().map_or_else(
                || "none".to_owned(),
                |p| format!("{}/{}", p.namespace, p.name),
            );
            let _ = writeln!(out, "  pod:     {pod}");
            let _ = writeln!(out, "  node:    {}", a.node);
            let _ = writeln!(out, "  handle:  {}", a.handle);
            let _ = writeln!(
                out,
                "  block:   {} ({})",
                b.block.cidr(),
                affinity_text(&b.block)
            );
        }
        let _ = writeln!(out, "  pool:    {}", pool_names());
        return Ok(out);
    }
    let Some(pool) = pools.first() else {
        let all = state
            .pools
            .iter()
            .map(|p| format!("{} {}", p.name, p.cidr()))
            .collect::<Vec<_>>();
        return Err(NotInAnyPool {
            ip,
            pools: if all.is_empty() {
                "there are no pools".to_owned()
            } else {
                format!("pools: {}", all.join(", "))
            },
        });
    };
    let _ = writeln!(out, "IP {ip} is not assigned");
    match state.blocks.iter().find(|b| b.block.cidr().contains(ip)) {
        Some(b) => {
            let _ = writeln!(
                out,
                "  block:   {} ({})",
                b.block.cidr(),
                affinity_text(&b.block)
            );
        }
        None => {
            // The block the pool's block size cuts around the address.
            let block = IpNet::new(ip, pool.block_size())
                .map(|n| n.trunc().to_string())
                .unwrap_or_default();
            let _ = writeln!(out, "  block:   {block} (not claimed by any node yet)");
        }
    }
    let _ = writeln!(out, "  pool:    {}", pool_names());
    Ok(out)
}

/// Allocations by address, across blocks: more than one holder is a double allocation.
pub fn holders_by_address(state: &IpamState) -> BTreeMap<IpAddr, Vec<(BlockCidr, &Allocation)>> {
    let mut by_address: BTreeMap<IpAddr, Vec<(BlockCidr, &Allocation)>> = BTreeMap::new();
    for b in &state.blocks {
        for (ip, a) in &b.records {
            by_address.entry(*ip).or_default().push((b.block.cidr(), a));
        }
    }
    by_address
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use tortie_ipam::{Handle, PodRef};

    use super::*;

    pub fn pool(name: &str, cidr: &str, block_size: u8) -> crd::IPPool {
        let mut p = crd::IPPool::new(
            name,
            crd::IPPoolSpec {
                cidr: cidr.into(),
                block_size: Some(block_size),
                vxlan_mode: crd::VxlanMode::Never,
                nat_outgoing: true,
                disabled: false,
                node_selector: None,
                strict_affinity: false,
            },
        );
        p.metadata.resource_version = Some("1".into());
        p
    }

    /// A stored block whose records are `(ordinal, handle's container, pod name)`.
    pub fn block(
        cidr: &str,
        affinity: Option<&str>,
        records: &[(u32, &str, &str)],
    ) -> crd::IPAMBlock {
        let cidr: BlockCidr = cidr.parse().unwrap();
        let mut b = crd::IPAMBlock::new(
            &cidr.object_name(),
            crd::IPAMBlockSpec {
                cidr: cidr.to_string(),
                affinity: affinity.map(str::to_owned),
                allocations: records
                    .iter()
                    .map(|(ordinal, container, pod)| {
                        record::encode(
                            *ordinal,
                            &Allocation {
                                handle: Handle::for_container("k8s-pod-network", container),
                                node: affinity.unwrap_or("gone").to_owned(),
                                pod: Some(PodRef {
                                    namespace: "default".into(),
                                    name: (*pod).to_owned(),
                                    uid: None,
                                }),
                                sequence: 1,
                            },
                        )
                    })
                    .collect(),
                sequence_number: 1,
                cursor: 0,
            },
        );
        b.metadata.resource_version = Some("1".into());
        b
    }

    pub fn affinity(node: &str, cidr: &str) -> crd::BlockAffinity {
        let mut a = crd::BlockAffinity::new(
            &format!("{node}-{}", cidr.replace(['.', '/'], "-")),
            crd::BlockAffinitySpec {
                node: node.into(),
                cidr: cidr.into(),
                state: crd::AffinityState::Confirmed,
            },
        );
        a.metadata.resource_version = Some("1".into());
        a
    }

    fn state() -> IpamState {
        IpamState::from_objects(
            &[pool("b", "10.2.0.0/24", 26), pool("a", "10.1.0.0/16", 26)],
            &[
                block(
                    "10.1.0.64/26",
                    Some("n1"),
                    &[(0, "c1", "p1"), (5, "c2", "p2")],
                ),
                block("10.1.0.0/26", None, &[(1, "c3", "p3")]),
            ],
            &[affinity("n1", "10.1.0.64/26")],
        )
    }

    #[test]
    fn usage_counts_pools_and_blocks_by_network() {
        let rows = usage(&state(), true);
        let text = render_usage(&rows, true);
        assert_eq!(
            text,
            "\
+----------+--------------+----------+-----------+------------+--------------+
| GROUPING |     CIDR     | AFFINITY | IPS TOTAL | IPS IN USE |   IPS FREE   |
+----------+--------------+----------+-----------+------------+--------------+
| IP Pool  | 10.1.0.0/16  |          | 65536     | 3 (0%)     | 65533 (100%) |
| Block    | 10.1.0.0/26  | none     | 64        | 1 (2%)     | 63 (98%)     |
| Block    | 10.1.0.64/26 | n1       | 64        | 2 (3%)     | 62 (97%)     |
| IP Pool  | 10.2.0.0/24  |          | 256       | 0 (0%)     | 256 (100%)   |
+----------+--------------+----------+-----------+------------+--------------+
"
        );
        assert_eq!(usage(&state(), false).len(), 2, "pools only");
    }

    #[test]
    fn show_ip_names_the_holder_or_the_block_it_would_come_from() {
        let s = state();
        let held = show_ip(&s, "10.1.0.69".parse().unwrap()).unwrap();
        assert!(held.starts_with("IP 10.1.0.69 is in use\n"), "{held}");
        assert!(held.contains("pod:     default/p2\n"), "{held}");
        assert!(held.contains("handle:  k8s-pod-network.c2\n"), "{held}");
        assert!(
            held.contains("block:   10.1.0.64/26 (affine to node n1)\n"),
            "{held}"
        );
        assert!(held.contains("pool:    a (10.1.0.0/16)\n"), "{held}");

        let free = show_ip(&s, "10.1.0.70".parse().unwrap()).unwrap();
        assert!(free.starts_with("IP 10.1.0.70 is not assigned\n"), "{free}");
        assert!(
            free.contains("block:   10.1.0.64/26 (affine to node n1)"),
            "{free}"
        );

        let unclaimed = show_ip(&s, "10.1.7.9".parse().unwrap()).unwrap();
        assert!(
            unclaimed.contains("block:   10.1.7.0/26 (not claimed by any node yet)"),
            "{unclaimed}"
        );

        let err = show_ip(&s, "192.0.2.1".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "192.0.2.1 is not in any IP pool (pools: a 10.1.0.0/16, b 10.2.0.0/24): no tortie node hands it out"
        );
    }

    #[test]
    fn a_bad_object_is_reported_not_dropped_silently() {
        let mut bad = block("10.1.0.128/26", Some("n1"), &[]);
        bad.metadata.name = Some("wrong-name".into());
        let s = IpamState::from_objects(&[pool("x", "10.0.0.0/33", 26)], &[bad], &[]);
        assert!(s.pools.is_empty() && s.blocks.is_empty());
        assert_eq!(s.invalid.len(), 2, "{:?}", s.invalid);
        assert!(s.invalid[0].contains("IPPool x"), "{:?}", s.invalid);
        assert!(s.invalid[1].contains("wrong-name"), "{:?}", s.invalid);
    }
}
