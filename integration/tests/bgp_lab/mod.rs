//! Shared by the `e2e_*` tests of BGP objects in a lab with real agents: waiting on
//! `tortiectl node status`, applying objects with kubectl, and the peers `peer add` made.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;
use tortie_lab::peers::{self, PeerRecord};
use tortie_lab::routers::Router;

use crate::lab_support::{TestLab, text};

pub const WAIT: Duration = Duration::from_secs(90);

/// Polls `cond` every half second until it holds; fails with `what` and the last state
/// `cond` described after [`WAIT`].
pub fn wait(what: &str, mut cond: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (done, state) = cond();
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {state}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A node's peer row for `address`, if it has one.
pub fn peer_row(status: &Value, address: &str) -> Option<Value> {
    status["ipv4_peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_address"] == address)
        .cloned()
}

pub fn is_up(row: &Option<Value>, peer_type: &str) -> bool {
    row.as_ref()
        .is_some_and(|r| r["state"] == "up" && r["peer_type"] == peer_type)
}

pub fn mesh_rows(status: &Value) -> usize {
    status["ipv4_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["peer_type"] == "node-to-node mesh")
        .count()
}

/// Waits until each of `nodes` has an up `peer_type` session with `address`.
pub fn wait_up_everywhere(t: &TestLab, nodes: &[&str], address: &str, peer_type: &str) {
    for node in nodes {
        wait(
            &format!("{node}'s {peer_type} session with {address} to be up"),
            || {
                let s = t.node_status(node);
                (is_up(&peer_row(&s, address), peer_type), format!("{s:#}"))
            },
        );
    }
}

/// The blocks IPAM gave the nodes, as `kubectl get ipamblocks` lists them.
pub fn node_blocks(t: &TestLab) -> BTreeSet<IpNet> {
    let out = t.ok(&["kubectl", "get", "ipamblocks.crd.tortie.dev", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["spec"]["affinity"].is_string())
        .filter_map(|b| b["spec"]["cidr"].as_str()?.parse().ok())
        .collect()
}

/// `kubectl apply -f -` with `yaml` on stdin, as admin.
pub fn apply(t: &TestLab, yaml: &str) {
    let mut child = t
        .cmd(&["kubectl", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
        stdin
            .write_all(yaml.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "kubectl apply: {}", text(&out.stderr));
}

/// What `peer add` recorded for `name`.
pub fn record(t: &TestLab, name: &str) -> PeerRecord {
    peers::load_all(&t.lab)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("peer add recorded no {name}"))
}

/// The lab address of node `i` (1-based), as text.
pub fn node_ip(i: u32) -> String {
    tortie_lab::lab::node_ip(i)
        .unwrap_or_else(|| panic!("node {i} has no address"))
        .to_string()
}

/// Waits until `router` has learned the block of each of the lab's `nodes` (one each).
pub fn wait_learns_every_block(t: &TestLab, router: &Router, nodes: usize) {
    let blocks = node_blocks(t);
    assert_eq!(blocks.len(), nodes, "one block per node: {blocks:?}");
    wait(
        &format!("{:?} to learn every node's block", router.kind()),
        || {
            let learned = router.learned().unwrap_or_default();
            (
                blocks.is_subset(&learned),
                format!("{learned:?} (want {blocks:?})"),
            )
        },
    );
}
