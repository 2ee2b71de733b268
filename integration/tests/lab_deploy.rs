//! Root, real parts: the lab deploys tortie from `manifests/tortie.yaml` as a kubelet would
//! (install-cni, then the agent, each with only its container's env), and the node tools
//! work inside `scripts/lab exec` as on a node: `tortie-node health` (the DaemonSet's
//! probes) and `tortiectl`.

mod lab_support;

use std::collections::BTreeSet;

use lab_support::{TestLab, text};
use serde_json::Value;

#[test]
fn the_lab_runs_the_manifest_pod_and_its_probes_answer_in_exec() {
    let t = TestLab::up_with_real_agents("d", 2, 0);
    let pod = tortie_lab::agents::PodTemplate::load().unwrap_or_else(|e| panic!("{e}"));

    // install-cni wrote the manifest's conflist with this node's socket, and the plugin.
    let conflist_path = t.lab.cni_conf_dir("node-1").join("10-tortie.conflist");
    let conflist: Value = serde_json::from_slice(
        &std::fs::read(&conflist_path)
            .unwrap_or_else(|e| panic!("{}: {e}", conflist_path.display())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conflist["plugins"][0]["type"], "tortie", "{conflist}");
    assert_eq!(
        conflist["plugins"][0]["agent_socket"],
        t.lab.agent_socket("node-1").display().to_string().as_str()
    );
    // veth_mtu "0": the plugin asks the agent.
    assert!(conflist["plugins"][0].get("mtu").is_none(), "{conflist}");
    // install-cni copies the plugin built next to tortie-node.
    let plugin = tortie_lab::agents::agent_binary()
        .and_then(|agent| Some(agent.parent()?.join("tortie")))
        .unwrap_or_else(|| panic!("tortie-node is not built"));
    assert!(
        std::fs::read(t.lab.cni_bin_dir("node-1").join("tortie")).ok()
            == std::fs::read(&plugin).ok(),
        "the installed plugin is not the built one"
    );

    // The agent's environment is its container's, the lab's settings and PATH: no more.
    let pid = tortie_lab::process::running(&t.lab, &t.lab.agent_pid_file("node-1"))
        .unwrap_or_else(|| panic!("node-1 has no agent"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_else(|e| panic!("{e}"));
    let got: BTreeSet<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .filter_map(|v| text(v).split_once('=').map(|(k, _)| k.to_owned()))
        .collect();
    let mut want: BTreeSet<String> = pod
        .env(&pod.agent, "node-1")
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for added in [
        "KUBECONFIG",
        "CALICO_IPV4POOL_CIDR",
        "PATH",
        tortie_lab::lab::MEMBER_ENV,
    ] {
        want.insert(added.to_owned());
    }
    assert_eq!(got, want, "node-1's agent environment");

    // The probes and tortiectl, as `scripts/lab exec` runs them.
    let ready = t.ok(&["exec", "node-1", "--", "tortie-node", "health", "--ready"]);
    assert_eq!(ready, "tortie-node is ready\n");
    let status = t.ok(&["exec", "node-1", "--", "tortiectl", "node", "status"]);
    assert!(status.contains("tortie process is running."), "{status}");
    assert!(
        status.contains("172.31.0.12"),
        "node-2 is not a peer:\n{status}"
    );

    // A stopped agent fails both probes, saying why in one line.
    t.stop_agent("node-2");
    for probe in ["--live", "--ready"] {
        let out = t.output(&mut t.cmd(&["exec", "node-2", "--", "tortie-node", "health", probe]));
        assert_eq!(
            out.status.code(),
            Some(1),
            "health {probe} on a stopped agent"
        );
        let why = text(&out.stderr);
        assert_eq!(why.lines().count(), 1, "{why}");
        assert!(
            why.starts_with(&format!(
                "tortie-node is not running: cannot connect to {}: ",
                t.lab.agent_socket("node-2").display()
            )),
            "{why}"
        );
    }

    // Started again (install-cni again, over its own files), it is live and ready.
    t.restart_agents();
    t.ok(&["exec", "node-2", "--", "tortie-node", "health", "--live"]);
    t.ok(&["exec", "node-2", "--", "tortie-node", "health", "--ready"]);
}
