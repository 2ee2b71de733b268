//! Root, real parts: a route reflector instead of the node-to-node mesh. A three-node lab
//! with its real agents and apiserver, one pod per node, set up as Calico's route
//! reflector guide does: node-1 labelled `route-reflector=true`, BGPConfiguration `default`
//! with `nodeToNodeMeshEnabled: false`, and one BGPPeer with `nodeSelector: all()` and
//! `peerSelector: has(route-reflector)`.
//!
//! - node-2 and node-3 peer with node-1 only, never with each other;
//! - node-2 learns node-3's block through node-1, with node-3 as next hop (a reflector does
//!   not change it, RFC 4456 §10), and the other way round;
//! - every pod reaches every other pod.
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod bgp_lab;
mod lab_support;

use std::net::IpAddr;
use std::process::Command;

use bgp_lab::{apply, mesh_rows, node_ip, peer_row, wait};
use ipnet::IpNet;
use lab_support::{TestLab, text};
use serde_json::Value;

const PODS: [&str; 3] = [
    "default/pod-node-1-1",
    "default/pod-node-2-1",
    "default/pod-node-3-1",
];

fn pings(t: &TestLab, from: &str, to: &str) -> bool {
    t.output(&mut t.cmd(&["ping", "-c", "1", from, to]))
        .status
        .success()
}

/// `node`'s BGP (protocol 116) IPv4 routes as (destination, gateway).
fn bgp_routes(t: &TestLab, node: &str) -> Vec<(IpNet, String)> {
    let mut cmd = Command::new("ip");
    cmd.args(["-j", "-4", "-n", &t.lab.node_netns(node)])
        .args(["route", "show", "proto", "116"]);
    let v: Value =
        serde_json::from_str(&text(&t.output(&mut cmd).stdout)).unwrap_or_else(|e| panic!("{e}"));
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["dst"].as_str()?.parse().ok()?,
                r["gateway"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The addresses `node` has up sessions with, and their types.
fn sessions(status: &Value) -> Vec<(String, String)> {
    status["ipv4_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "up")
        .map(|p| {
            (
                p["peer_address"].as_str().unwrap_or_default().to_owned(),
                p["peer_type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn one_route_reflector_replaces_the_mesh() {
    let t = TestLab::up_with_real_agents("rr", 3, 1);
    let [ip1, ip2, ip3] = [1, 2, 3].map(node_ip);
    t.ok(&["kubectl", "label", "node", "node-1", "route-reflector=true"]);
    apply(
        &t,
        "apiVersion: crd.tortie.dev/v1\nkind: BGPPeer\nmetadata:\n  name: peer-with-route-reflectors\nspec:\n  nodeSelector: all()\n  peerSelector: has(route-reflector)\n",
    );
    apply(
        &t,
        "apiVersion: crd.tortie.dev/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n",
    );

    let node_specific = |ip: &str| (ip.to_owned(), "node specific".to_owned());
    wait("node-1 to reflect for node-2 and node-3", || {
        let s = t.node_status("node-1");
        (
            sessions(&s) == [node_specific(&ip2), node_specific(&ip3)] && mesh_rows(&s) == 0,
            format!("{s:#}"),
        )
    });
    for node in ["node-2", "node-3"] {
        wait(&format!("{node} to peer with node-1 only"), || {
            let s = t.node_status(node);
            let only_rr = s["ipv4_peers"].as_array().map(Vec::len) == Some(1)
                && peer_row(&s, &ip1).is_some_and(|r| r["state"] == "up");
            (only_rr, format!("{s:#}"))
        });
    }

    // Each client learns the other's block, through the reflector (its only session: the
    // reflector's own block and the other's both come over it) but via the other.
    let blocks: Vec<IpAddr> = PODS.iter().map(|p| t.pod_ip(p)).collect();
    for (node, other_pod, other_ip) in [("node-2", blocks[2], &ip3), ("node-3", blocks[1], &ip2)] {
        wait(
            &format!("{node} to learn the block of {other_pod} with next hop {other_ip}"),
            || {
                let routes = bgp_routes(&t, node);
                let s = t.node_status(node);
                let reflected = peer_row(&s, &ip1)
                    .and_then(|r| r["prefixes_accepted"].as_u64())
                    .is_some_and(|n| n >= 2);
                let learned = routes
                    .iter()
                    .any(|(dst, gw)| dst.contains(&other_pod) && gw == other_ip);
                (reflected && learned, format!("{routes:?} {s:#}"))
            },
        );
    }

    // Every pod reaches every other.
    for from in PODS {
        for to in PODS.iter().filter(|p| **p != from) {
            wait(&format!("{from} to reach {to}"), || {
                (pings(&t, from, to), String::new())
            });
        }
    }
}
