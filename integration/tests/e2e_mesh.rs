//! Root, real parts: the node-to-node BGP mesh of `tortie-node run`. A three-node lab with
//! its real agents and apiserver, one pod per node; pods on different nodes reach each other
//! only through routes the agents learned from each other over BGP, and `tortiectl node
//! status` on a node lists the other nodes as Established mesh peers.
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::process::Command;
use std::time::{Duration, Instant};

use lab_support::{TestLab, text};
use serde_json::Value;

const NODES: u32 = 3;

fn pings(t: &TestLab, from: &str, to: &str) -> bool {
    t.output(&mut t.cmd(&["ping", "-c", "1", from, to]))
        .status
        .success()
}

fn established_mesh_peers(status: &Value) -> Vec<String> {
    status["ipv4_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["peer_type"] == "node-to-node mesh" && p["state"] == "up")
        .filter_map(|p| p["peer_address"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_the_mesh() {
    let t = TestLab::up_with_real_agents("m", NODES, 1);

    let others: Vec<String> = (2..=NODES)
        .map(|i| {
            tortie_lab::lab::node_ip(i)
                .unwrap_or_else(|| panic!("node {i} has no address"))
                .to_string()
        })
        .collect();

    // The mesh: node-1 has every other node as an Established peer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = t.node_status("node-1");
        let mut up = established_mesh_peers(&s);
        up.sort();
        if up == others {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "node-1's mesh peers are not all up (want {others:?}): {s:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        status["ipv4_peers"].as_array().map(Vec::len),
        Some(others.len()),
        "{status:#}"
    );

    // Pods on different nodes, both ways, through routes learned over BGP.
    let p1 = "default/pod-node-1-1";
    let p2 = "default/pod-node-2-1";
    let ip1 = t.pod_ip(p1).to_string();
    let ip2 = t.pod_ip(p2).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pings(&t, p1, p2) {
        assert!(Instant::now() < deadline, "{p1} cannot reach {p2} ({ip2})");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(pings(&t, p2, p1), "{p2} cannot reach {p1} ({ip1})");
    if NODES >= 3 {
        let p3 = "default/pod-node-3-1";
        let ip3 = t.pod_ip(p3).to_string();
        assert!(pings(&t, p1, p3), "{p1} cannot reach pod-node-3-1 ({ip3})");
    }

    // The route to node-2's pod is a BGP route: protocol 116, via node-2, onlink.
    let routes = proto_116_routes(&t, "node-1");
    let via_node2 = routes.as_array().into_iter().flatten().any(|r| {
        r["gateway"] == others[0].as_str()
            && r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"))
    });
    assert!(
        via_node2,
        "no onlink route via node-2 in node-1: {routes:#}"
    );

    // node-2's agent restarts: the sessions come back and so does the path between pods.
    t.stop_agent("node-2");
    t.restart_agents();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = t.node_status("node-1");
        let mut up = established_mesh_peers(&s);
        up.sort();
        if up == others && pings(&t, p1, p2) && pings(&t, p2, p1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after node-2's agent restarted: peers up {up:?} (want {others:?}), pods not both ways reachable: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A Node that goes away stops being a peer, and what it advertised leaves the table.
    let gone = others[others.len() - 1].clone();
    t.ok(&["kubectl", "delete", "node", &format!("node-{NODES}")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = t.node_status("node-1");
        let peers: Vec<&str> = s["ipv4_peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["peer_address"].as_str())
            .collect();
        let routes = proto_116_gateways(&t, "node-1");
        if !peers.contains(&gone.as_str()) && !routes.contains(&gone) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-{NODES} was deleted but node-1 still has it: peers {peers:?}, route gateways {routes:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Node's protocol-116 (BGP) IPv4 routes, as `ip -j` prints them.
fn proto_116_routes(t: &TestLab, node: &str) -> Value {
    let mut cmd = Command::new("ip");
    cmd.args([
        "-j",
        "-4",
        "-n",
        &t.lab.node_netns(node),
        "route",
        "show",
        "proto",
        "116",
    ]);
    serde_json::from_str(&text(&t.output(&mut cmd).stdout)).unwrap_or_else(|e| panic!("{e}"))
}

/// The gateways of node's protocol-116 IPv4 routes.
fn proto_116_gateways(t: &TestLab, node: &str) -> Vec<String> {
    proto_116_routes(t, node)
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["gateway"].as_str().map(str::to_owned))
        .collect()
}
