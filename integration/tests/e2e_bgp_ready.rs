//! Root, real parts: readiness follows BGP as calico-node's `-bird-ready` does
//! (agent/src/run/health.rs `bgp_ready`), and only readiness does. Three real agents in a
//! node-to-node mesh; agents are stopped, and node-1's `tortie-node health --ready` (the
//! DaemonSet's probe, run inside the node) is asked. The start-up window is the default
//! (60 s): node-1's verdicts below are the ones after it, waited for by polling.

mod lab_support;

use std::time::{Duration, Instant};

use lab_support::{TestLab, text};

const NODE_2: &str = "172.31.0.12";
const NODE_3: &str = "172.31.0.13";

/// node-1's peers as `tortiectl node status -o json` shows them: address and STATE.
fn peer_states(t: &TestLab) -> Vec<(String, String)> {
    let status = t.node_status("node-1");
    status["ipv4_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["peer_address"].as_str().unwrap_or_default().to_owned(),
                p["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn state_of(t: &TestLab, address: &str) -> String {
    peer_states(t)
        .into_iter()
        .find(|(a, _)| a == address)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("{address} is not a peer of node-1: {:?}", peer_states(t)))
}

/// `tortie-node health --ready` in node-1: `Ok(stdout)` on exit 0, else `Err(stderr)`.
fn ready(t: &TestLab) -> Result<String, String> {
    let out = t.output(&mut t.cmd(&["exec", "node-1", "--", "tortie-node", "health", "--ready"]));
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// Polls until `done` holds, failing the test with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match done() {
            Ok(()) => return,
            Err(last) => assert!(Instant::now() < deadline, "{what}: {last}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_dead_peer_does_not_hold_readiness_after_the_window_and_never_stops_pods() {
    let t = TestLab::up_with_real_agents("r", 3, 0);

    t.stop_agent("node-3");
    wait_until(
        "node-1 sees node-3 down",
        Duration::from_secs(60),
        || match state_of(&t, NODE_3).as_str() {
            "up" => Err(format!("{:?}", peer_states(&t))),
            _ => Ok(()),
        },
    );
    // After the window, one Established peer is enough.
    wait_until(
        "node-1 ready with node-3 down",
        Duration::from_secs(180),
        || ready(&t).map(|_| ()),
    );
    assert_eq!(state_of(&t, NODE_3), "start", "node-3's agent is stopped");
    assert_eq!(state_of(&t, NODE_2), "up");

    // With no peer Established, it is not ready, and says why in one line...
    t.stop_agent("node-2");
    wait_until(
        "node-1 unready with no peer",
        Duration::from_secs(60),
        || match ready(&t) {
            Ok(out) => Err(out),
            Err(why) => {
                assert_eq!(why.lines().count(), 1, "{why}");
                if why.starts_with("tortie-node is not ready: no BGP peer is Established: ")
                    && why.contains(NODE_2)
                    && why.contains(NODE_3)
                {
                    Ok(())
                } else {
                    Err(why)
                }
            }
        },
    );
    // ...but it is live, and a pod still starts: BGP never gates the CNI service.
    t.ok(&["exec", "node-1", "--", "tortie-node", "health", "--live"]);
    let added = t.ok(&[
        "pod",
        "add",
        "default/while-bgp-is-down",
        "--node",
        "node-1",
    ]);
    assert!(!added.is_empty(), "pod add printed nothing");
    assert!(
        ready(&t).is_err_and(|why| why.contains("no BGP peer is Established")),
        "still not ready after the pod started"
    );
}
