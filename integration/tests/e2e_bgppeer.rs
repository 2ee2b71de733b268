//! Root, real parts: BGPPeer and BGPConfiguration objects drive the agents' sessions. A
//! two-node lab with its real agents and apiserver, a BIRD and an FRR on the LAN as
//! top-of-rack routers (`tortie-lab peer add`), and the objects changed live with kubectl:
//!
//! - BIRD learns both nodes' blocks through a global BGPPeer, and `tortiectl node status`
//!   shows it as an Established `global` peer on each node;
//! - FRR peers with a TCP MD5 password read from a Secret;
//! - `keepOriginalNextHop` on FRR's BGPPeer: a route the nodes learned from BIRD reaches
//!   FRR with BIRD's next hop instead of a node's;
//! - `tortie.dev/max-prefixes` on BIRD's BGPPeer: BIRD sends more, its sessions are closed
//!   with a Cease and FRR's are not touched;
//! - BGPConfiguration `default` with `nodeToNodeMeshEnabled: false`: the mesh sessions go,
//!   and the routers' sessions are not reset;
//! - `node: node-1` on FRR's BGPPeer: only node-1 keeps that session, as `node specific`;
//! - a wrong password in the Secret, the BGPPeer untouched: the agents read the Secret
//!   again by themselves, node-1's FRR session goes down and stays down (TCP MD5 failures
//!   counted in node-1's namespace), and no agent log holds either password.
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod bgp_lab;
mod lab_support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use bgp_lab::{
    apply, is_up, mesh_rows, node_ip, peer_row, record, wait, wait_learns_every_block,
    wait_up_everywhere,
};
use ipnet::IpNet;
use lab_support::{TestLab, text};
use serde_json::Value;
use tortie_lab::peers;
use tortie_lab::routers::Router;

const NODES: [&str; 2] = ["node-1", "node-2"];
const RIGHT_PASSWORD: &str = "tor2-right-Pw7";
const WRONG_PASSWORD: &str = "tor2-wrong-Qx9";

/// When each node's session with `address` last changed state (`since_unix`).
fn sessions_since(t: &TestLab, address: &str) -> Vec<i64> {
    NODES
        .iter()
        .map(|n| {
            let row = peer_row(&t.node_status(n), address);
            row.and_then(|r| r["since_unix"].as_i64())
                .unwrap_or_else(|| panic!("{n} has no session with {address}"))
        })
        .collect()
}

/// BIRD's `show protocols` line of its session with `node_ip` (name, state, since, info).
fn bird_protocol_line(bird: &Router, node_ip: &str) -> String {
    let out = bird
        .birdc(&["show", "protocols"])
        .unwrap_or_else(|e| panic!("{e}"));
    let ip: IpAddr = node_ip.parse().unwrap_or_else(|e| panic!("{e}"));
    let name = bird.bird_protocol(ip).unwrap_or_else(|e| panic!("{e}"));
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no protocol {name} in:\n{out}"))
}

/// Merges `patch` (JSON) into BGPPeer `name`.
fn patch_bgp_peer(t: &TestLab, name: &str, patch: &str) {
    t.ok(&[
        "kubectl",
        "patch",
        "bgppeers.crd.tortie.dev",
        name,
        "--type=merge",
        "-p",
        patch,
    ]);
}

/// The next hops of every path FRR has for `prefix`.
fn frr_next_hops(frr: &Router, prefix: IpNet) -> BTreeSet<String> {
    let out = frr
        .vtysh(&[&format!("show bgp ipv4 unicast {prefix} json")])
        .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["nexthops"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h["ip"].as_str().map(str::to_owned))
        .collect()
}

/// TCP segments the kernel of `netns` dropped for a wrong or missing MD5 signature.
fn md5_failures(netns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/proc/net/netstat"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
        panic!("no TcpExt in /proc/net/netstat of {netns}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| *n == "TCPMD5Failure" || *n == "TCPMD5Unexpected")
        .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
        .sum()
}

#[test]
fn bgp_peers_and_the_bgp_configuration_drive_the_sessions() {
    let t = TestLab::up_with_real_agents("bp", 2, 1);
    let node_ips: Vec<String> = (1..=2).map(node_ip).collect();

    // A BIRD top-of-rack router through a global BGPPeer: it learns both nodes' blocks.
    t.ok(&["peer", "add", "--kind", "bird", "tor"]);
    let tor = record(&t, "tor");
    let tor_ip = tor.address.to_string();
    let mut bird = peers::router(&t.lab, &tor);
    wait_up_everywhere(&t, &NODES, &tor_ip, "global");
    wait_learns_every_block(&t, &bird, 2);
    for node in NODES {
        let s = t.node_status(node);
        assert_eq!(mesh_rows(&s), 1, "{node} still has its mesh peer: {s:#}");
    }

    // An FRR with a TCP MD5 password read from a Secret.
    let mut add_tor2 = t.cmd(&[
        "peer",
        "add",
        "--kind",
        "frr",
        "tor2",
        // Another AS than BIRD's, so that FRR takes BIRD's routes through the nodes.
        "--asn",
        "65002",
        "--password-from-env",
        "TOR2_PASSWORD",
    ]);
    add_tor2.env("TOR2_PASSWORD", RIGHT_PASSWORD);
    let out = t.output(&mut add_tor2);
    assert!(out.status.success(), "peer add tor2: {}", text(&out.stderr));
    let tor2 = record(&t, "tor2");
    let tor2_ip = tor2.address.to_string();
    let frr = peers::router(&t.lab, &tor2);
    wait_up_everywhere(&t, &NODES, &tor2_ip, "global");
    for ip in &node_ips {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            frr.established(ip).unwrap_or(false),
            "FRR sees no session with {ip}"
        );
    }

    // keepOriginalNextHop: a prefix inside the pool that BIRD announces reaches FRR
    // through the nodes, first with a node's next hop, then, once FRR's BGPPeer keeps the
    // original next hop, with BIRD's.
    let from_bird: IpNet = "10.244.200.0/24".parse().unwrap_or_else(|e| panic!("{e}"));
    bird.announce(from_bird).unwrap_or_else(|e| panic!("{e}"));
    let node_ip_set: BTreeSet<String> = node_ips.iter().cloned().collect();
    wait("FRR to learn BIRD's prefix with a node as next hop", || {
        let hops = frr_next_hops(&frr, from_bird);
        (
            !hops.is_empty() && hops.is_subset(&node_ip_set),
            format!("{hops:?}"),
        )
    });
    patch_bgp_peer(&t, "tor2", r#"{"spec":{"keepOriginalNextHop":true}}"#);
    wait("FRR to learn BIRD's prefix with BIRD as next hop", || {
        let hops = frr_next_hops(&frr, from_bird);
        (
            hops == BTreeSet::from([tor_ip.clone()]),
            format!("{hops:?}"),
        )
    });
    wait_up_everywhere(&t, &NODES, &tor2_ip, "global");

    // Max-prefix: BIRD announces more than its BGPPeer allows. Its sessions close with a
    // Cease and stay down; FRR's sessions are not touched.
    let tor2_since = sessions_since(&t, &tor2_ip);
    for p in [
        "10.99.0.0/24",
        "10.99.1.0/24",
        "10.99.2.0/24",
        "10.99.3.0/24",
    ] {
        bird.announce(p.parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    t.ok(&[
        "kubectl",
        "annotate",
        "bgppeers.crd.tortie.dev",
        "tor",
        "tortie.dev/max-prefixes=3",
    ]);
    for node in NODES {
        wait(
            &format!("{node}'s session with BIRD to hit its prefix limit"),
            || {
                let s = t.node_status(node);
                let row = peer_row(&s, &tor_ip);
                let hit = row.as_ref().is_some_and(|r| {
                    r["state"] != "up" && r["last_error"] == "maximum number of prefixes reached"
                });
                (hit, format!("{s:#}"))
            },
        );
    }
    assert_eq!(
        sessions_since(&t, &tor2_ip),
        tor2_since,
        "FRR's sessions were reset"
    );
    // Lifting the limit brings BIRD's sessions back.
    t.ok(&[
        "kubectl",
        "annotate",
        "bgppeers.crd.tortie.dev",
        "tor",
        "tortie.dev/max-prefixes-",
    ]);
    wait_up_everywhere(&t, &NODES, &tor_ip, "global");

    // The mesh turned off: the mesh sessions go, the routers' sessions stay as they were.
    let tor_since = sessions_since(&t, &tor_ip);
    let bird_lines: Vec<String> = node_ips
        .iter()
        .map(|ip| bird_protocol_line(&bird, ip))
        .collect();
    apply(
        &t,
        "apiVersion: crd.tortie.dev/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n",
    );
    for node in NODES {
        wait(&format!("{node}'s mesh sessions to go"), || {
            let s = t.node_status(node);
            (mesh_rows(&s) == 0, format!("{s:#}"))
        });
    }
    assert_eq!(
        sessions_since(&t, &tor_ip),
        tor_since,
        "BIRD's sessions were reset"
    );
    assert_eq!(
        sessions_since(&t, &tor2_ip),
        tor2_since,
        "FRR's sessions were reset"
    );
    let bird_after: Vec<String> = node_ips
        .iter()
        .map(|ip| bird_protocol_line(&bird, ip))
        .collect();
    assert_eq!(bird_after, bird_lines, "BIRD saw its sessions change");

    // FRR's BGPPeer becomes node-specific: node-2 drops that session, node-1 keeps one.
    patch_bgp_peer(&t, "tor2", r#"{"spec":{"node":"node-1"}}"#);
    wait("node-1's FRR session to be node specific and up", || {
        let s = t.node_status("node-1");
        (
            is_up(&peer_row(&s, &tor2_ip), "node specific"),
            format!("{s:#}"),
        )
    });
    wait("node-2's FRR session to go", || {
        let s = t.node_status("node-2");
        (peer_row(&s, &tor2_ip).is_none(), format!("{s:#}"))
    });
    assert_eq!(
        sessions_since(&t, &tor_ip),
        tor_since,
        "BIRD's sessions were reset"
    );

    // A wrong password in the Secret, nothing else changed: node-1 reads it again within
    // half a minute, its FRR session goes down, and the kernel keeps dropping the attempts
    // that follow.
    let node1_netns = t.lab.node_netns("node-1");
    apply(
        &t,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n  namespace: kube-system\nstringData:\n  {}: {WRONG_PASSWORD}\n",
            peers::secret_name("tor2"),
            peers::SECRET_KEY
        ),
    );
    wait("node-1's FRR session to go down", || {
        let s = t.node_status("node-1");
        let row = peer_row(&s, &tor2_ip);
        (
            row.as_ref().is_some_and(|r| r["state"] != "up"),
            format!("{s:#}"),
        )
    });
    let failures = md5_failures(&node1_netns);
    wait("two more MD5-rejected attempts on node-1", || {
        let now = md5_failures(&node1_netns);
        (now >= failures + 2, format!("{now} (from {failures})"))
    });
    let s = t.node_status("node-1");
    assert!(
        peer_row(&s, &tor2_ip).is_some_and(|r| r["state"] != "up"),
        "node-1's FRR session came up with a wrong password: {s:#}"
    );
    let node1_ip: IpAddr = node_ips[0].parse().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !frr.established(node1_ip).unwrap_or(true),
        "FRR is Established with node-1 despite the wrong password"
    );

    // No secret in any agent's log.
    for node in NODES {
        let log = std::fs::read_to_string(t.lab.agent_log(node)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            log.contains("BGP peer added"),
            "{node}'s log is not the agent's"
        );
        for secret in [RIGHT_PASSWORD, WRONG_PASSWORD] {
            assert!(!log.contains(secret), "{node}'s agent log holds a password");
        }
    }
}
