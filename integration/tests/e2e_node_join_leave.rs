//! Root, real parts: a node joins a running two-node lab (`node add`) and leaves it again
//! (`node del`), with the real agents, apiserver and kernel routes; `ping --all` judges
//! reachability and fails, naming the pair, when a pod is cut off.
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::process::Command;
use std::time::{Duration, Instant};

use lab_support::{TestLab, text};
use tortie_lab::lab::node_ip;

/// Routes follow a new or deleted Node within the mesh's reaction (a few seconds); this
/// bound only keeps a broken run from hanging.
const CONVERGENCE: Duration = Duration::from_secs(60);

/// Leak GC releases a deleted node's blocks once per round, and a round comes every
/// `interval(TORTIE_IPAM_GC_GRACE)` = grace / 2 capped at 60 s (agent/src/run/leak_gc.rs);
/// the lab runs the manifest's default grace (15 min), so rounds are 60 s apart. Two rounds
/// plus slack.
const LEAK_GC_ROUNDS: Duration = Duration::from_secs(150);

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match done() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("waited {timeout:?} for {what}; last:\n{last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// `ping --all`: its exit code and what it printed.
fn ping_all(t: &TestLab) -> (Option<i32>, String) {
    let out = t.output(&mut t.cmd(&["ping", "--all", "-c", "2"]));
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn wait_all_reach_each_other(t: &TestLab, when: &str) -> String {
    let mut table = String::new();
    wait_until(&format!("ping --all to pass {when}"), CONVERGENCE, || {
        let (code, out) = ping_all(t);
        table = out.clone();
        if code == Some(0) { Ok(()) } else { Err(out) }
    });
    table
}

/// The CIDR of `node`'s block, from its BlockAffinity.
fn block_of(t: &TestLab, node: &str) -> String {
    let out = t.ok(&[
        "kubectl",
        "get",
        "blockaffinities.crd.tortie.dev",
        "-o",
        "jsonpath={range .items[*]}{.spec.node} {.spec.cidr}{\"\\n\"}{end}",
    ]);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{node} ")))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no BlockAffinity of {node}:\n{out}"))
}

/// `ip route show <cidr>` inside `node`'s namespace.
fn route_to(t: &TestLab, node: &str, cidr: &str) -> String {
    let out =
        t.output(Command::new("ip").args(["-n", &t.lab.node_netns(node), "route", "show", cidr]));
    assert!(out.status.success(), "ip route: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

#[test]
fn a_joining_node_is_reachable_and_a_leaving_one_is_withdrawn_and_released() {
    let t = TestLab::up_with_real_agents("nj", 2, 1);

    let added = t.ok(&["node", "add", "--agent-timeout", "90"]);
    assert!(added.contains("node node-3 added with 1 pod(s)"), "{added}");
    let table = wait_all_reach_each_other(&t, "after node add");
    assert!(
        table.contains("default/pod-node-3-1") && table.contains("all 12 pairs answered"),
        "the new pod and node are in the matrix:\n{table}"
    );
    let block3 = block_of(&t, "node-3");
    let via3 = format!("via {}", node_ip(3).unwrap_or_else(|| panic!("node-3 ip")));
    for node in ["node-1", "node-2"] {
        let route = route_to(&t, node, &block3);
        assert!(
            route.contains(&via3),
            "{node} routes node-3's block {block3} {via3}: {route:?}"
        );
    }

    let deleted = t.ok(&["node", "del", "node-3"]);
    assert!(deleted.contains("node node-3 deleted"), "{deleted}");
    for node in ["node-1", "node-2"] {
        wait_until(
            &format!("{node}'s route to node-3's block {block3} to go"),
            CONVERGENCE,
            || match route_to(&t, node, &block3) {
                r if r.is_empty() => Ok(()),
                r => Err(r),
            },
        );
    }
    assert!(
        !t.lab.state_dir().join("pods/default.pod-node-3-1").exists(),
        "the pod's record is gone"
    );
    let netns = t.output(Command::new("ip").args(["netns", "list"]));
    let netns = text(&netns.stdout);
    for gone in [
        t.lab.node_netns("node-3"),
        t.lab.pod_netns("default", "pod-node-3-1"),
    ] {
        assert!(
            !netns
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&gone)),
            "{gone} deleted:\n{netns}"
        );
    }
    let nodes = t.ok(&["kubectl", "get", "nodes", "-o", "name"]);
    assert_eq!(
        nodes.lines().collect::<Vec<_>>(),
        ["node/node-1", "node/node-2"]
    );
    let table = wait_all_reach_each_other(&t, "after node del");
    assert!(
        !table.contains("node-3") && table.contains("all 4 pairs answered"),
        "{table}"
    );

    // Leak GC of the remaining agents releases node-3's affinity and its block's affinity.
    wait_until(
        "node-3's block affinity to be released",
        LEAK_GC_ROUNDS,
        || {
            let affinities = t.ok(&[
                "kubectl",
                "get",
                "blockaffinities.crd.tortie.dev",
                "-o",
                "jsonpath={.items[*].spec.node}",
            ]);
            let block = t.output(&mut t.cmd(&[
                "kubectl",
                "get",
                "ipamblocks.crd.tortie.dev",
                "-o",
                "jsonpath={range .items[*]}{.spec.cidr}={.spec.affinity}{\"\\n\"}{end}",
            ]));
            let blocks = text(&block.stdout);
            let block_affine = blocks
                .lines()
                .any(|l| l.starts_with(&format!("{block3}=")) && l.contains("node-3"));
            if affinities.split_whitespace().any(|n| n == "node-3") || block_affine {
                Err(format!("affinities: {affinities}\nblocks:\n{blocks}"))
            } else {
                Ok(())
            }
        },
    );

    // A pod cut off from its node: every pair to and from it fails, and only those.
    let cut = t.lab.pod_netns("default", "pod-node-2-1");
    let down = t.output(
        Command::new("ip").args(["netns", "exec", &cut, "ip", "link", "set", "eth0", "down"]),
    );
    assert!(down.status.success(), "{}", text(&down.stderr));
    let (code, out) = ping_all(&t);
    assert_eq!(code, Some(1), "ping --all with a pod cut off:\n{out}");
    for pair in [
        "FAIL default/pod-node-1-1 → default/pod-node-2-1",
        "FAIL default/pod-node-2-1 → default/pod-node-1-1",
        "FAIL default/pod-node-2-1 → node-1",
    ] {
        assert!(out.contains(pair), "{pair} listed:\n{out}");
    }
    assert!(out.contains("3 of 4 pairs failed"), "{out}");
}
