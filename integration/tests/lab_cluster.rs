//! Root, real parts: `up` builds a lab with a real etcd and kube-apiserver; then its Nodes,
//! the node identity's RBAC, custom resources and the agents' processes are checked through
//! the real kubectl; then `down` must leave nothing behind.
//!
//! One test walks through all of it because a lab takes seconds to build; each step says
//! what failed.

mod lab_support;

use std::time::{Duration, Instant};

use lab_support::{TestLab, assert_nothing_left, text};
use serde_json::Value;

const NODES: u32 = 3;

#[test]
fn up_serves_nodes_rbac_and_custom_resources_then_down_leaves_nothing() {
    let t = TestLab::new("c");
    let start = Instant::now();
    let up_out = t.up_with_recording_agent(NODES);
    let up_time = start.elapsed();
    eprintln!(
        "up --nodes {NODES}: {:.1}s\n{}",
        up_time.as_secs_f64(),
        up_out
    );

    nodes_are_registered(&t);
    node_identity_has_exactly_the_manifest_rbac(&t);
    custom_resources_round_trip(&t);
    agents_run_in_their_node_with_the_env_contract(&t);
    the_manifest_passes_a_server_dry_run(&t);
    lan_connects_the_nodes(&t);
    pods_are_reported_from_the_apiserver(&t);
    second_up_changes_nothing(&t);

    let start = Instant::now();
    let out = t.ok(&["down"]);
    let down_time = start.elapsed();
    eprintln!("down: {:.1}s: {out}", down_time.as_secs_f64());
    assert_nothing_left(&t.lab);
    assert!(
        down_time < Duration::from_secs(5),
        "down took {down_time:?}"
    );
    // Idempotent: a second down finds nothing and succeeds.
    t.ok(&["down"]);
    assert_nothing_left(&t.lab);
}

fn kubectl_json(t: &TestLab, args: &[&str]) -> Value {
    let mut all = vec!["kubectl"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = t.ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
}

fn nodes_are_registered(t: &TestLab) {
    let list = kubectl_json(t, &["get", "nodes"]);
    let mut seen: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {list}"))
        .iter()
        .map(|n| {
            let ip = n["status"]["addresses"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                .and_then(|a| a["address"].as_str())
                .unwrap_or_default()
                .to_string();
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ip,
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String)> = (1..=NODES)
        .map(|i| (format!("node-{i}"), format!("172.31.0.{}", 10 + i)))
        .collect();
    assert_eq!(seen, want);
}

fn node_identity_has_exactly_the_manifest_rbac(t: &TestLab) {
    let out = t.kubectl_as_node("node-1", &["get", "nodes", "-o", "name"]);
    assert!(
        out.status.success(),
        "node token cannot list nodes: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).lines().count(), NODES as usize);

    let out = t.kubectl_as_node(
        "node-1",
        &["delete", "namespace", "default", "--wait=false"],
    );
    assert!(!out.status.success(), "the node token deleted a Namespace");
    let err = text(&out.stderr);
    assert!(
        err.contains("Forbidden") && err.contains("cannot delete resource \"namespaces\""),
        "{err}"
    );
    // The namespace is still there.
    t.ok(&["kubectl", "get", "namespace", "default"]);

    for (verb, resource, allowed) in [
        ("patch", "nodes", true),
        ("watch", "pods", true),
        // Nothing in the agent writes pod status or events: the manifest grants neither.
        ("patch", "pods/status", false),
        ("create", "ippools.crd.tortie.dev", true),
        ("delete", "ipamblocks.crd.tortie.dev", true),
        ("list", "networkpolicies.networking.k8s.io", true),
        ("create", "events", false),
        ("delete", "pods", false),
        ("create", "namespaces", false),
        // Secrets: none, not even in its own namespace (the kubeconfig's, kube-system); a
        // BGP password's Secret is granted by name, by whoever creates it.
        ("get", "secrets", false),
        ("list", "secrets", false),
        ("get", "secrets -n default", false),
        ("delete", "nodes", false),
    ] {
        let mut args = vec!["auth", "can-i", verb];
        let mut words = resource.split(' ');
        let resource = words.next().unwrap_or_default();
        args.extend(words);
        match resource.split_once('/') {
            Some((r, sub)) => args.extend([r, "--subresource", sub]),
            None => args.push(resource),
        }
        let out = t.kubectl_as_node("node-2", &args);
        let answer = text(&out.stdout).trim().to_string();
        assert_eq!(
            answer == "yes",
            allowed,
            "node identity: can-i {verb} {resource} said {answer:?} {}",
            text(&out.stderr)
        );
    }
}

const TEST_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: labchecks.lab.tortie.dev
spec:
  group: lab.tortie.dev
  scope: Cluster
  names: {plural: labchecks, singular: labcheck, kind: LabCheck}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                cidr: {type: string}
                blocks: {type: object, additionalProperties: {type: string}}
"#;

const TEST_CR: &str = r#"
apiVersion: lab.tortie.dev/v1
kind: LabCheck
metadata:
  name: first
spec:
  cidr: 10.244.0.0/16
  blocks: {"10.244.0.0-26": node-1}
"#;

/// The broken reflect2 in an unpatched v1.20 build kills the apiserver on the first write of
/// a custom resource with a map in it: this is the check that catches such a build.
fn custom_resources_round_trip(t: &TestLab) {
    let dir = t.scratch();
    std::fs::write(dir.join("crd.yaml"), TEST_CRD).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("cr.yaml"), TEST_CR).unwrap_or_else(|e| panic!("{e}"));
    let path = |f: &str| dir.join(f).display().to_string();
    t.ok(&["kubectl", "apply", "-f", &path("crd.yaml")]);
    t.ok(&[
        "kubectl",
        "wait",
        "--for=condition=Established",
        "crd/labchecks.lab.tortie.dev",
        "--timeout=30s",
    ]);
    t.ok(&["kubectl", "apply", "-f", &path("cr.yaml")]);
    // Keep the object as created, to write it back once it has changed.
    std::fs::write(
        dir.join("stale.json"),
        t.ok(&["kubectl", "get", "labcheck", "first", "-o", "json"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    t.ok(&[
        "kubectl",
        "patch",
        "labcheck",
        "first",
        "--type=merge",
        "-p",
        r#"{"spec":{"blocks":{"10.244.0.64-26":"node-2"}}}"#,
    ]);
    t.ok(&[
        "kubectl",
        "label",
        "labcheck",
        "first",
        "tortie.dev/checked=yes",
    ]);
    let cr = kubectl_json(t, &["get", "labcheck", "first"]);
    assert_eq!(cr["spec"]["blocks"]["10.244.0.64-26"], "node-2", "{cr}");
    assert_eq!(cr["spec"]["blocks"]["10.244.0.0-26"], "node-1", "{cr}");
    assert_eq!(
        cr["metadata"]["labels"]["tortie.dev/checked"], "yes",
        "{cr}"
    );
    // Compare-and-swap: a write carrying an old resourceVersion is refused with 409.
    let out = t.output(&mut t.cmd(&["kubectl", "replace", "-f", &path("stale.json")]));
    assert!(!out.status.success(), "a stale write was accepted");
    assert!(
        text(&out.stderr).contains("Conflict"),
        "{}",
        text(&out.stderr)
    );
    t.ok(&["kubectl", "delete", "labcheck", "first"]);
    let out = t.output(&mut t.cmd(&["kubectl", "get", "labcheck", "first"]));
    assert!(
        !out.status.success() && text(&out.stderr).contains("NotFound"),
        "{}",
        text(&out.stderr)
    );

    // The apiserver survived all of it.
    let status: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status["apiserver"]["pid"].is_i64(),
        "apiserver died: {status}"
    );

    // tortie's own CRDs, when the generated file exists, are served.
    if tortie_lab::objects::manifests_dir()
        .join("crds.yaml")
        .is_file()
    {
        let crds = kubectl_json(t, &["get", "crd"]);
        let names: Vec<&str> = crds["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["metadata"]["name"].as_str())
            .collect();
        assert!(names.contains(&"ippools.crd.tortie.dev"), "{names:?}");
    }
}

fn agents_run_in_their_node_with_the_env_contract(t: &TestLab) {
    let status: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    let nodes = status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(nodes.len(), NODES as usize);
    for (i, node) in (1..).zip(nodes) {
        let name = format!("node-{i}");
        assert_eq!(node["name"], name.as_str());
        assert_eq!(node["netns"], t.lab.node_netns(&name).as_str());
        assert_eq!(node["ip"], format!("172.31.0.{}", 10 + i).as_str());
        assert!(node["agent_pid"].is_i64(), "{node}");
        // The stand-in serves no gRPC.
        assert_eq!(node["health"], "unreachable");

        let socket = t.lab.agent_socket(&name);
        let env = std::fs::read_to_string(format!("{}.env", socket.display()))
            .unwrap_or_else(|e| panic!("{name}: the agent did not start: {e}"));
        for want in [
            format!("NODENAME={name}"),
            format!("KUBECONFIG={}", t.lab.node_kubeconfig(&name).display()),
            format!("TORTIE_AGENT_SOCKET={}", socket.display()),
            "CALICO_IPV4POOL_CIDR=10.244.0.0/16".to_string(),
            "IP_AUTODETECTION_METHOD=interface=eth0".to_string(),
        ] {
            assert!(
                env.lines().any(|l| l == want),
                "{name}: {want} missing from\n{env}"
            );
        }
        // As a kubelet starts a container: its env and PATH, nothing of ours (cargo sets
        // CARGO_* for this test, and `up` inherited them), and the CNI folders only for
        // install-cni.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        for absent in ["CARGO_", "TORTIE_CNI_"] {
            assert!(
                !env.contains(absent),
                "{name}: {absent} in the agent's env:\n{env}"
            );
        }

        // install-cni ran first, with the init container's env and the lab's folders.
        let init = std::fs::read_to_string(format!("{}.install-cni.env", socket.display()))
            .unwrap_or_else(|e| panic!("{name}: install-cni did not run: {e}"));
        for want in [
            format!("TORTIE_AGENT_SOCKET={}", socket.display()),
            format!(
                "TORTIE_CNI_CONF_DIR={}",
                t.lab.cni_conf_dir(&name).display()
            ),
            format!("TORTIE_CNI_BIN_DIR={}", t.lab.cni_bin_dir(&name).display()),
            "CNI_MTU=0".to_string(),
            "CNI_CONF_NAME=10-tortie.conflist".to_string(),
        ] {
            assert!(
                init.lines().any(|l| l == want),
                "{name}: {want} missing from install-cni's\n{init}"
            );
        }
        assert!(
            init.contains("__AGENT_SOCKET__"),
            "{name}: no template:\n{init}"
        );
        for absent in ["CARGO_", "KUBECONFIG=", "NODENAME="] {
            assert!(
                !init.contains(absent),
                "{name}: {absent} in install-cni's env:\n{init}"
            );
        }

        let addr =
            std::fs::read_to_string(format!("{}.addr", socket.display())).unwrap_or_default();
        assert!(
            addr.contains(&format!("172.31.0.{}/24", 10 + i)),
            "{name} did not run in its namespace: {addr}"
        );
    }
    assert!(
        status["pods"].as_array().is_some_and(|p| p.is_empty()),
        "{status}"
    );
    assert!(status["pods_error"].is_null(), "{status}");
}

/// `kubectl apply --dry-run=server`: the apiserver validates every object of the manifest
/// (the DaemonSet's probes, the Role, the ConfigMap) without storing anything.
fn the_manifest_passes_a_server_dry_run(t: &TestLab) {
    let manifest = tortie_lab::agents::manifest_path();
    let out = t.ok(&[
        "kubectl",
        "apply",
        "--dry-run=server",
        "-f",
        &manifest.display().to_string(),
    ]);
    assert!(
        out.contains("daemonset.apps/tortie-node")
            && out.contains("role.rbac.authorization.k8s.io/tortie-node"),
        "{out}"
    );
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default}
spec:
  nodeName: node-2
  containers: [{name: web, image: registry.invalid/none}]
"#;

/// The lab plays kubelet: it writes Pod objects bound to a node and their status.podIP.
/// `status` reads them back, with the pod's namespace once it exists (and `down` must
/// remove that namespace too).
fn pods_are_reported_from_the_apiserver(t: &TestLab) {
    std::fs::write(t.scratch().join("pod.yaml"), POD).unwrap_or_else(|e| panic!("{e}"));
    t.ok(&[
        "kubectl",
        "apply",
        "-f",
        &t.scratch().join("pod.yaml").display().to_string(),
    ]);
    // Through kube-rs: Debian's kubectl (1.20) cannot patch a status subresource.
    tortie_lab::kube_netns::with_admin_client(&t.lab, |client| async move {
        let status = serde_json::json!({"status": {"podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}]}});
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, "default")
            .patch_status("web-0", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(status))
            .await
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("patching the pod's status: {e}"));
    let netns = t.lab.pod_netns("default", "web-0");
    let out = t.output(std::process::Command::new("ip").args(["netns", "add", &netns]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    t.ok(&["exec", "default/web-0", "--", "ip", "link", "show", "lo"]);

    let status: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    let pods = status["pods"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(pods.len(), 1, "{status}");
    assert_eq!(pods[0]["namespace"], "default");
    assert_eq!(pods[0]["name"], "web-0");
    assert_eq!(pods[0]["node"], "node-2");
    assert_eq!(pods[0]["ip"], "10.244.0.5");
    assert_eq!(pods[0]["netns"], netns.as_str());
}

fn lan_connects_the_nodes(t: &TestLab) {
    t.ok(&["exec", "node-3", "--", "ping", "-c1", "-W2", "172.31.0.11"]);
    t.ok(&["exec", "node-1", "--", "ping", "-c1", "-W2", "172.31.0.2"]);
}

fn second_up_changes_nothing(t: &TestLab) {
    let before: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    t.ok(&[
        "up",
        "--nodes",
        &NODES.to_string(),
        "--agent-timeout",
        "1",
        "--agents-may-be-unready",
        "--pods-per-node",
        "0",
    ]);
    let again = start.elapsed();
    let after: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        before["apiserver"]["pid"], after["apiserver"]["pid"],
        "the apiserver was restarted"
    );
    assert_eq!(before["etcd"]["pid"], after["etcd"]["pid"]);
    assert_eq!(before["nodes"], after["nodes"], "agents were restarted");
    assert!(again < Duration::from_secs(10), "second up took {again:?}");
    nodes_are_registered(t);
}
