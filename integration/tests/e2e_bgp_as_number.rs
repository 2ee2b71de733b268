//! Root, real parts: BGPConfiguration `default`'s `asNumber` is the AS of the nodes that
//! set no `AS` of their own, and a change takes effect live. A two-node lab with its real
//! agents and apiserver, run from the repository's manifests, whose DaemonSet sets no `AS`
//! (it would take precedence, as in Calico):
//!
//! - without `asNumber` the nodes are in 64512 and say so in `tortie.dev/as-number`;
//! - `asNumber: 65100`: every node restarts its sessions in the new AS, writes it into its
//!   annotation, and the mesh comes back up between the nodes in 65100;
//! - a BIRD on the LAN that expects the nodes in 65100 (`peer add --node-asn 65100`)
//!   establishes with both and learns both nodes' blocks.
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod bgp_lab;
mod lab_support;

use std::net::IpAddr;

use bgp_lab::{
    apply, node_ip, peer_row, record, wait, wait_learns_every_block, wait_up_everywhere,
};
use lab_support::TestLab;
use tortie_lab::peers;

const NODES: [&str; 2] = ["node-1", "node-2"];
const CLUSTER_ASN: u32 = 65100;

/// Each node's `tortie.dev/as-number` annotation.
fn annotated_asns(t: &TestLab) -> Vec<String> {
    NODES
        .iter()
        .map(|n| {
            t.ok(&[
                "kubectl",
                "get",
                "node",
                n,
                "-o",
                r"jsonpath={.metadata.annotations.tortie\.dev/as-number}",
            ])
            .trim()
            .to_owned()
        })
        .collect()
}

/// Waits until each node's mesh session with the other is up and the other is in `asn`.
fn wait_mesh_in(t: &TestLab, asn: u32) {
    for (node, other) in [("node-1", node_ip(2)), ("node-2", node_ip(1))] {
        wait(
            &format!("{node}'s mesh session with {other} to be up in AS {asn}"),
            || {
                let s = t.node_status(node);
                let up = peer_row(&s, &other).is_some_and(|r| {
                    r["state"] == "up" && r["peer_type"] == "node-to-node mesh" && r["asn"] == asn
                });
                (up, format!("{s:#}"))
            },
        );
    }
}

#[test]
fn the_bgp_configuration_as_number_becomes_the_nodes_as_live() {
    // The manifest leaves `AS` unset, as calico.yaml does; otherwise it would win over
    // asNumber on every node.
    let manifest =
        std::fs::read_to_string(tortie_lab::objects::manifests_dir().join("tortie.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !manifest.lines().any(|l| l.trim() == "- name: AS"),
        "manifests/tortie.yaml sets AS"
    );
    let t = TestLab::new("as");
    t.ok(&["up", "--nodes", "2", "--agent-timeout", "90"]);
    wait_mesh_in(&t, peers::NODE_ASN);
    wait("both nodes to announce AS 64512", || {
        let asns = annotated_asns(&t);
        (asns.iter().all(|a| a == "64512"), format!("{asns:?}"))
    });

    apply(
        &t,
        &format!(
            "apiVersion: crd.tortie.dev/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: {CLUSTER_ASN}\n"
        ),
    );
    wait("both nodes to announce the new AS", || {
        let asns = annotated_asns(&t);
        (
            asns.iter().all(|a| *a == CLUSTER_ASN.to_string()),
            format!("{asns:?}"),
        )
    });
    wait_mesh_in(&t, CLUSTER_ASN);
    for node in NODES {
        let log = std::fs::read_to_string(t.lab.agent_log(node)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            log.contains("BGP AS number changed: restarting every BGP session with the new AS"),
            "{node} did not log the AS change"
        );
    }

    // A router configured for the nodes' new AS peers with both.
    t.ok(&[
        "peer",
        "add",
        "--kind",
        "bird",
        "tor",
        "--node-asn",
        &CLUSTER_ASN.to_string(),
    ]);
    let tor = record(&t, "tor");
    let bird = peers::router(&t.lab, &tor);
    wait_up_everywhere(&t, &NODES, &tor.address.to_string(), "global");
    for i in 1..=2 {
        let ip: IpAddr = node_ip(i).parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            bird.established(ip).unwrap_or(false),
            "BIRD sees no session with {ip}"
        );
    }
    wait_learns_every_block(&t, &bird, 2);
}
