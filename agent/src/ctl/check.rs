//! `tortiectl ipam check`: read-only; finds leaked allocations, double allocations and
//! overlapping or pool-less blocks, and affinities of nodes that are gone.
//!
//! "Leaked" means what the agent's leak GC (agent/src/run/leak_gc.rs) would release after
//! its grace period, plus an allocation whose pod exists but has another address.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};
use tortie_ipam::nets_overlap;

use super::ipam::{IpamState, holders_by_address};
use super::{CtlError, list_all};
use crate::run::leak_gc::live_pods;

/// What `ipam check` compares the IPAM objects with.
#[derive(Debug, Default)]
pub struct Cluster {
    pub pods: Vec<Pod>,
    pub nodes: BTreeSet<String>,
}

impl Cluster {
    /// Lists every pod and every node.
    pub async fn load(client: &kube::Client) -> Result<Cluster, CtlError> {
        let pods: Vec<Pod> = list_all(client, "pods").await?;
        let nodes: Vec<Node> = list_all(client, "nodes").await?;
        Ok(Cluster {
            pods,
            nodes: nodes.into_iter().filter_map(|n| n.metadata.name).collect(),
        })
    }

    /// Each pod's addresses, keyed as allocations name pods.
    fn pod_addresses(&self) -> BTreeMap<(String, String), Vec<IpAddr>> {
        self.pods
            .iter()
            .map(|p| {
                let key = (
                    p.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    p.metadata.name.clone().unwrap_or_default(),
                );
                let status = p.status.as_ref();
                // podIP is also the first of podIPs when both are set.
                let ips: BTreeSet<IpAddr> = status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|i| i.ip.as_str())
                    .chain(status.and_then(|s| s.pod_ip.as_deref()))
                    .filter_map(|ip| ip.parse().ok())
                    .collect();
                (key, ips.into_iter().collect())
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// An allocation whose pod is gone, or has another address.
    Leak,
    /// An address allocated twice, overlapping blocks or pools, a block outside every pool.
    Conflict,
    /// An affinity, or a block's affinity, naming a node that does not exist; a block
    /// affine to no node that still holds addresses.
    OrphanedAffinity,
    /// An object agents refuse to read.
    Invalid,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Leak => "Leaked allocations",
            ProblemKind::Conflict => "Conflicts",
            ProblemKind::OrphanedAffinity => "Orphaned affinities",
            ProblemKind::Invalid => "Invalid objects",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub text: String,
}

/// What `ipam check` found.
#[derive(Debug)]
pub struct Report {
    /// What was read, for the summary line.
    pub counts: String,
    pub problems: Vec<Problem>,
}

/// Compares the IPAM objects with each other and with the cluster. Pure.
pub fn check(state: &IpamState, cluster: &Cluster) -> Report {
    let mut problems = Vec::new();
    let mut add = |kind, text: String| problems.push(Problem { kind, text });

    // Leaks: the pod an allocation names is gone (same rule as leak GC), or it has an
    // address and this is not it. A pod without an address yet is not judged: its ADD may
    // be under way.
    let live = live_pods(&cluster.pods);
    let addresses = cluster.pod_addresses();
    for b in &state.blocks {
        for (ip, a) in b.block.addresses() {
            let Some(pod) = &a.pod else { continue };
            let who = format!("{ip} (handle {}, node {})", a.handle, a.node);
            if !live.has(pod) {
                let uid = pod
                    .uid
                    .as_deref()
                    .map(|u| format!(" uid {u}"))
                    .unwrap_or_default();
                add(
                    ProblemKind::Leak,
                    format!(
                        "{who}: pod {}/{}{uid} does not exist",
                        pod.namespace, pod.name
                    ),
                );
                continue;
            }
            let ips = addresses
                .get(&(pod.namespace.clone(), pod.name.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !ips.is_empty() && !ips.contains(&ip) {
                let has: Vec<String> = ips.iter().map(ToString::to_string).collect();
                add(
                    ProblemKind::Leak,
                    format!(
                        "{who}: pod {}/{} has address {}, not this one",
                        pod.namespace,
                        pod.name,
                        has.join(", ")
                    ),
                );
            }
        }
    }

    // Conflicts.
    for (ip, holders) in holders_by_address(state) {
        if holders.len() > 1 {
            let who: Vec<String> = holders
                .iter()
                .map(|(cidr, a)| format!("handle {} in block {cidr}", a.handle))
                .collect();
            add(
                ProblemKind::Conflict,
                format!(
                    "{ip} is allocated {} times: {}",
                    holders.len(),
                    who.join(", ")
                ),
            );
        }
    }
    for (i, a) in state.blocks.iter().enumerate() {
        let a = a.block.cidr();
        for b in &state.blocks[i + 1..] {
            let b = b.block.cidr();
            if nets_overlap(&a.net(), &b.net()) {
                add(
                    ProblemKind::Conflict,
                    format!("block {a} overlaps block {b}"),
                );
            }
        }
        if state.pools_of_block(&a).next().is_none() {
            add(
                ProblemKind::Conflict,
                format!("block {a} is outside every IP pool"),
            );
        }
    }
    for (i, a) in state.pools.iter().enumerate() {
        for b in &state.pools[i + 1..] {
            if nets_overlap(&a.cidr(), &b.cidr()) {
                add(
                    ProblemKind::Conflict,
                    format!(
                        "IPPool {} ({}) overlaps IPPool {} ({}): agents use only the older one",
                        a.name,
                        a.cidr(),
                        b.name,
                        b.cidr()
                    ),
                );
            }
        }
    }

    // Orphaned affinities.
    for a in &state.affinities {
        if !cluster.nodes.contains(&a.node) {
            add(
                ProblemKind::OrphanedAffinity,
                format!(
                    "BlockAffinity {} ({} {}): node {} does not exist",
                    a.object_name(),
                    a.cidr,
                    a.state,
                    a.node
                ),
            );
        }
    }
    for b in &state.blocks {
        let in_use = b.block.allocations().count();
        match &b.block.affinity {
            Some(node) if !cluster.nodes.contains(node) => add(
                ProblemKind::OrphanedAffinity,
                format!(
                    "block {} is affine to node {node}, which does not exist ({in_use} addresses in use)",
                    b.block.cidr()
                ),
            ),
            None if in_use > 0 => add(
                ProblemKind::OrphanedAffinity,
                format!(
                    "block {} is affine to no node and holds {in_use} addresses: no node routes them",
                    b.block.cidr()
                ),
            ),
            _ => {}
        }
    }

    for e in &state.invalid {
        add(ProblemKind::Invalid, e.clone());
    }

    problems.sort_by_key(|p| p.kind);
    Report {
        counts: format!(
            "{} IP pools, {} blocks, {} block affinities, {} allocations; {} pods, {} nodes",
            state.pools.len(),
            state.blocks.len(),
            state.affinities.len(),
            state.allocation_count(),
            cluster.pods.len(),
            cluster.nodes.len()
        ),
        problems,
    }
}

/// The report as text: what was read, each kind of problem with its count and items, and
/// a last line with the total.
pub fn render_check(report: &Report) -> String {
    let mut out = format!("Checked {}.\n", report.counts);
    for kind in [
        ProblemKind::Leak,
        ProblemKind::Conflict,
        ProblemKind::OrphanedAffinity,
        ProblemKind::Invalid,
    ] {
        let items: Vec<&Problem> = report.problems.iter().filter(|p| p.kind == kind).collect();
        let _ = writeln!(out, "\n{kind}: {}", items.len());
        for p in items {
            let _ = writeln!(out, "  - {}", p.text);
        }
    }
    let n = report.problems.len();
    let _ = match n {
        0 => writeln!(out, "\nNo problems found."),
        1 => writeln!(out, "\nFound 1 problem."),
        _ => writeln!(out, "\nFound {n} problems."),
    };
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::ipam::tests::{affinity, block, pool};
    use super::*;

    fn pod(name: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "default" },
            "status": { "podIP": ip },
        }))
        .unwrap()
    }

    fn cluster(pods: &[(&str, Option<&str>)], nodes: &[&str]) -> Cluster {
        Cluster {
            pods: pods.iter().map(|(n, ip)| pod(n, *ip)).collect(),
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    fn kinds(state: &IpamState, cluster: &Cluster) -> Vec<ProblemKind> {
        check(state, cluster)
            .problems
            .iter()
            .map(|p| p.kind)
            .collect()
    }

    #[test]
    fn a_consistent_state_has_no_problems() {
        let state = IpamState::from_objects(
            &[pool("p", "10.1.0.0/24", 26)],
            &[block(
                "10.1.0.0/26",
                Some("n1"),
                &[(1, "c1", "a"), (2, "c2", "pending")],
            )],
            &[affinity("n1", "10.1.0.0/26")],
        );
        let c = cluster(&[("a", Some("10.1.0.1")), ("pending", None)], &["n1"]);
        let report = check(&state, &c);
        assert_eq!(report.problems, []);
        assert!(render_check(&report).ends_with("\nNo problems found.\n"));
    }

    #[test]
    fn each_kind_of_problem_is_found() {
        let pools = [pool("p", "10.1.0.0/24", 26)];
        let affinities = [affinity("n1", "10.1.0.0/26")];
        let nodes = ["n1"];

        // A pod that is gone, and one with another address.
        let state = IpamState::from_objects(
            &pools,
            &[block(
                "10.1.0.0/26",
                Some("n1"),
                &[(1, "c1", "gone"), (2, "c2", "moved")],
            )],
            &affinities,
        );
        let c = cluster(&[("moved", Some("10.1.0.9"))], &nodes);
        let report = check(&state, &c);
        assert_eq!(kinds(&state, &c), [ProblemKind::Leak, ProblemKind::Leak]);
        let text = render_check(&report);
        assert!(
            text.contains(
                "10.1.0.1 (handle k8s-pod-network.c1, node n1): pod default/gone does not exist"
            ),
            "{text}"
        );
        assert!(
            text.contains("pod default/moved has address 10.1.0.9, not this one"),
            "{text}"
        );
        assert!(text.ends_with("\nFound 2 problems.\n"), "{text}");

        // One ordinal stored twice, a block overlapping it, a block outside every pool.
        let state = IpamState::from_objects(
            &pools,
            &[
                block("10.1.0.0/26", Some("n1"), &[(1, "c1", "a"), (1, "c2", "b")]),
                block("10.1.0.0/27", Some("n1"), &[]),
                block("10.9.0.0/26", Some("n1"), &[]),
            ],
            &affinities,
        );
        let c = cluster(&[("a", None), ("b", None)], &nodes);
        let texts: Vec<String> = check(&state, &c)
            .problems
            .into_iter()
            .map(|p| p.text)
            .collect();
        assert_eq!(
            texts,
            [
                "10.1.0.1 is allocated 2 times: handle k8s-pod-network.c1 in block 10.1.0.0/26, handle k8s-pod-network.c2 in block 10.1.0.0/26",
                "block 10.1.0.0/26 overlaps block 10.1.0.0/27",
                "block 10.9.0.0/26 is outside every IP pool",
            ]
        );

        // An affinity and a block of a node that is gone; a block affine to none, in use.
        let state = IpamState::from_objects(
            &pools,
            &[
                block("10.1.0.64/26", Some("ghost"), &[]),
                block("10.1.0.128/26", None, &[(0, "c1", "a")]),
            ],
            &[affinity("ghost", "10.1.0.64/26")],
        );
        let c = cluster(&[("a", Some("10.1.0.128"))], &nodes);
        assert_eq!(kinds(&state, &c), [ProblemKind::OrphanedAffinity; 3]);
    }
}
