//! Root, real parts: pods on a lab node, wired by the real `tortie` plugin (installed by the
//! real agent) through the lab's kubelet/containerd stand-in, with IPAM in the real
//! apiserver. Each test has its own lab, removed even when it fails.
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::{TestLab, text};
use serde_json::{Value, json};
use tortie_lab::pod::{self, AddOptions, Attachment, PodRecord, PodRef};

const NODE: &str = "node-1";
const NETWORK: &str = "k8s-pod-network";

/// A one-node lab with its real agent ready, and `pods_per_node` pods from `up`.
fn lab(tag: &str, pods_per_node: u32) -> TestLab {
    let t = TestLab::up_with_real_agents(tag, 1, pods_per_node);
    let status: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        status["nodes"][0]["health"], "ready",
        "the agent is not ready: {status}"
    );
    t
}

fn pod_ref(s: &str) -> PodRef {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// A conflist holding only tortie, at `version`, next to the test (not in the node's folder:
/// the node keeps the one its agent installed).
fn conflist(t: &TestLab, version: &str) -> PathBuf {
    let path = t.scratch().join(format!("tortie-{version}.conflist"));
    let list = json!({
        "name": NETWORK,
        "cniVersion": version,
        "plugins": [{"type": "tortie", "agent_socket": t.lab.agent_socket(NODE), "log_level": "info"}],
    });
    std::fs::write(&path, list.to_string()).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn add(t: &TestLab, pod: &str, list: Option<&Path>) -> PodRecord {
    let opts = AddOptions {
        node: NODE.into(),
        conflist: list.map(Path::to_path_buf),
        ..Default::default()
    };
    pod::add(&t.lab, &pod_ref(pod), &opts).unwrap_or_else(|e| panic!("pod add {pod}: {e}"))
}

fn ip_of(r: &PodRecord) -> String {
    r.ips
        .first()
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("{} has no address", r.pod))
}

fn node_netns(t: &TestLab) -> String {
    t.lab.node_netns(NODE)
}

/// `program args` inside namespace `netns`; stdout, or a test failure with stderr.
fn run_in(netns: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {netns}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn pings(t: &TestLab, from: &str, to: &str) -> bool {
    t.output(&mut t.cmd(&["ping", "-c", "1", from, to]))
        .status
        .success()
}

/// The host veth the plugin must name (docs/architecture.md), computed apart from the plugin's code.
fn host_ifname(pod: &PodRef) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(format!("{}.{}", pod.namespace, pod.name).as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    format!("tort{}", &text(&out.stdout)[..11])
}

fn tort_links(t: &TestLab) -> Vec<String> {
    run_in(&node_netns(t), "ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("tort"))
        .collect()
}

fn allocations(t: &TestLab) -> std::collections::BTreeMap<String, Vec<IpAddr>> {
    pod::kube::allocations(&t.lab).unwrap_or_else(|e| panic!("reading IPAMBlocks: {e}"))
}

/// Calico's dataplane, as docs/architecture.md lays it out, seen from the pod and from the node.
fn assert_calico_dataplane(t: &TestLab, r: &PodRecord) {
    let ip = ip_of(r);
    let pod_ns = t.lab.pod_netns(&r.pod.namespace, &r.pod.name);
    let addr = run_in(&pod_ns, "ip", &["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        addr.contains(&format!("inet {ip}/32 ")),
        "{}: eth0 lacks {ip}/32: {addr}",
        r.pod
    );
    let routes = run_in(&pod_ns, "ip", &["-4", "route", "show"]);
    assert!(
        routes
            .lines()
            .any(|l| l.trim() == "default via 169.254.1.1 dev eth0"),
        "{}: {routes}",
        r.pod
    );
    assert!(
        routes
            .lines()
            .any(|l| l.trim() == "169.254.1.1 dev eth0 scope link"),
        "{}: {routes}",
        r.pod
    );

    let host = host_ifname(&r.pod);
    let node = node_netns(t);
    let link = run_in(&node, "ip", &["-o", "link", "show", "dev", &host]);
    assert!(
        link.contains("link/ether ee:ee:ee:ee:ee:ee"),
        "{host}: {link}"
    );
    let proxy_arp = run_in(
        &node,
        "cat",
        &[&format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp")],
    );
    assert_eq!(proxy_arp.trim(), "1", "{host}: proxy_arp");
    let route = run_in(
        &node,
        "ip",
        &["-4", "route", "show", "exact", &format!("{ip}/32")],
    );
    assert_eq!(
        route.trim(),
        format!("{ip} dev {host} proto 116 scope link"),
        "host route of {}",
        r.pod
    );
}

fn pod_object_exists(t: &TestLab, pod: &PodRef) -> bool {
    t.output(&mut t.cmd(&["kubectl", "get", "pod", "-n", &pod.namespace, &pod.name]))
        .status
        .success()
}

fn version_at_least_0_4(v: &str) -> bool {
    !v.starts_with("0.3.")
}

/// For each spec version: two pods on one node, Calico's dataplane, node ↔ pod and pod ↔
/// pod pings, CHECK, then DEL twice, and nothing of the pod left.
#[test]
fn every_spec_version_adds_pings_checks_and_deletes_twice() {
    let t = lab("v", 0);
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let list = conflist(&t, version);
        let tag = version.replace('.', "");
        let (pa, pb) = (format!("default/a{tag}"), format!("default/b{tag}"));
        let a = add(&t, &pa, Some(&list));
        let b = add(&t, &pb, Some(&list));
        assert_eq!(a.result["cniVersion"], version, "{}", a.result);
        let ips = a.result["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", a.result));
        // 0.3.x results carry `version` per address; 1.0.0 dropped it.
        assert_eq!(
            ips[0].get("version").is_some(),
            version.starts_with("0."),
            "{version}: {}",
            a.result
        );
        assert_ne!(a.ips, b.ips);
        assert_calico_dataplane(&t, &a);
        assert_calico_dataplane(&t, &b);

        assert!(pings(&t, NODE, &pa), "{version}: node → pod");
        assert!(pings(&t, &pa, NODE), "{version}: pod → node");
        assert!(pings(&t, &pa, &pb), "{version}: pod → pod");
        assert!(pings(&t, &pb, &pa), "{version}: pod → pod, back");

        // The Pod object carries what a kubelet reports.
        let obj: Value = serde_json::from_str(&t.ok(&[
            "kubectl",
            "get",
            "pod",
            "-n",
            "default",
            &format!("a{tag}"),
            "-o",
            "json",
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(obj["status"]["podIP"], ip_of(&a).as_str(), "{obj}");
        assert_eq!(obj["status"]["phase"], "Running");
        assert_eq!(obj["spec"]["nodeName"], NODE);

        match pod::check(&t.lab, &a.pod) {
            Ok(()) => assert!(
                version_at_least_0_4(version),
                "{version} has no CHECK, yet it passed"
            ),
            Err(pod::PodError::Unsupported(_)) => {
                assert!(!version_at_least_0_4(version), "{version}: CHECK refused")
            }
            Err(e) => panic!("{version}: CHECK failed: {e}"),
        }

        let handle = a.handle(NETWORK);
        assert!(
            allocations(&t)
                .get(&handle)
                .is_some_and(|held| held.contains(&a.ips[0])),
            "{version}: {handle} not stored"
        );
        pod::cni_del(&t.lab, &a.pod).unwrap_or_else(|e| panic!("{version}: DEL: {e}"));
        pod::cni_del(&t.lab, &a.pod).unwrap_or_else(|e| panic!("{version}: second DEL: {e}"));
        let host = host_ifname(&a.pod);
        assert!(
            !tort_links(&t).contains(&host),
            "{version}: {host} survived DEL"
        );
        let route = run_in(
            &node_netns(&t),
            "ip",
            &["-4", "route", "show", "exact", &format!("{}/32", ip_of(&a))],
        );
        assert!(
            route.trim().is_empty(),
            "{version}: host route survived DEL: {route}"
        );
        assert!(
            !allocations(&t).contains_key(&handle),
            "{version}: {handle} still allocated after DEL"
        );
        assert!(
            pings(&t, NODE, &pb),
            "{version}: the other pod lost its network"
        );

        for r in [&a, &b] {
            pod::del(&t.lab, &r.pod)
                .unwrap_or_else(|e| panic!("{version}: pod del {}: {e}", r.pod));
            assert!(
                !r.pod.netns_path(&t.lab).exists(),
                "{version}: netns of {} left",
                r.pod
            );
            assert!(
                !pod_object_exists(&t, &r.pod),
                "{version}: Pod {} left",
                r.pod
            );
        }
        assert!(tort_links(&t).is_empty(), "{version}: {:?}", tort_links(&t));
    }

    // `bench cni` at a small size on the same node, through the command line: every exec
    // succeeds, the output names its circumstances and every phase of the traced ADDs, and it
    // exits 0 or 1 by its goals (which this test does not judge: a timing goal is no test's
    // business); then no sandbox, veth or allocation is left.
    let out = t.output(&mut t.cmd(&[
        "bench",
        "cni",
        "--node",
        NODE,
        "--pods",
        "5",
        "--concurrent",
        "5",
        "--traced",
        "3",
    ]));
    let table = text(&out.stdout);
    eprintln!("{table}");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "bench cni failed ({}): {}\n{table}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(
        code == Some(0),
        table.contains("every goal met"),
        "the exit code follows the goals:\n{table}"
    );
    // 5 ADDs, DELs and repeated DELs of each plugin, 5 concurrent and 3 traced ADDs.
    assert!(table.contains("failed execs: 0 of 38 "), "{table}");
    assert!(!table.contains(" failure: "), "{table}");
    for line in ["load average", "build: ", "etcd data on disk"] {
        assert!(table.contains(line), "no {line:?} in:\n{table}");
    }
    for phase in tortie_lab::bench_cni::Phase::ALL {
        let row = format!("| {} | 3 | ", phase.describe());
        assert!(table.contains(&row), "no {row:?} in:\n{table}");
    }
    let left: Vec<String> = tortie_lab::network::existing_netns()
        .into_iter()
        .filter(|n| n.contains("pod-bench-cni."))
        .collect();
    assert!(left.is_empty(), "bench sandboxes left: {left:?}");
    assert!(
        tort_links(&t).is_empty(),
        "bench veths left: {:?}",
        tort_links(&t)
    );
    assert!(
        allocations(&t).is_empty(),
        "bench allocations left: {:?}",
        allocations(&t)
    );
}

/// The installed conflist (tortie, then Debian's portmap, 1.0.0) through the command line;
/// the agent repairing a deleted host route; a repeated ADD; ADD over a foreign ifname; CNI
/// GC; STATUS with the agent stopped.
#[test]
fn chaining_drift_repeats_gc_and_status() {
    let t = lab("p", 1);
    let node = node_netns(&t);

    // `up --pods-per-node 1` made default/pod-node-1-1; `status` reports it from the apiserver.
    let status: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    let upped = pod::load(&t.lab, &pod_ref("default/pod-node-1-1"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("up --pods-per-node made no pod: {status}"));
    assert_eq!(status["pods"][0]["name"], "pod-node-1-1", "{status}");
    assert_eq!(status["pods"][0]["ip"], ip_of(&upped).as_str(), "{status}");
    assert_eq!(
        status["pods"][0]["netns"],
        t.lab.pod_netns("default", "pod-node-1-1").as_str(),
        "{status}"
    );
    assert_calico_dataplane(&t, &upped);
    assert!(pings(&t, "default/pod-node-1-1", NODE));

    // Chained with portmap, as the lab's kubelet does it.
    let out = t.ok(&[
        "pod", "add", "web/pm", "--node", NODE, "--labels", "app=web", "--port", "18080:80",
    ]);
    let pm = pod::load(&t.lab, &pod_ref("web/pm"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no record: {out}"));
    let installed = std::fs::read_to_string(&pm.conflist).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        installed.matches("\"portmap\"").count(),
        1,
        "the installed conflist chains portmap: {installed}"
    );
    // portmap's own answer, in the version Debian's plugins speak at most.
    assert_eq!(pm.result["cniVersion"], "1.0.0", "{}", pm.result);
    let nat = run_in(&node, "iptables", &["-t", "nat", "-S"]);
    assert!(nat.contains("18080") && nat.contains(&ip_of(&pm)), "{nat}");
    assert_calico_dataplane(&t, &pm);
    let labels = t.ok(&[
        "kubectl",
        "get",
        "pod",
        "-n",
        "web",
        "pm",
        "-o",
        "jsonpath={.metadata.labels.app}",
    ]);
    assert_eq!(labels, "web");
    t.ok(&["pod", "check", "web/pm"]);
    t.ok(&["pod", "del", "web/pm"]);
    let nat = run_in(&node, "iptables", &["-t", "nat", "-S"]);
    assert!(
        !nat.contains("18080"),
        "portmap's rules survived DEL: {nat}"
    );
    assert!(
        !tort_links(&t).contains(&host_ifname(&pm.pod))
            && !allocations(&t).contains_key(&pm.handle(NETWORK))
    );
    assert!(!pod_object_exists(&t, &pm.pod));

    // Drift: the agent owns the /32 and puts it back as soon as the kernel announces the
    // deletion, long before its periodic resync (90 s, Felix's route refresh interval).
    let drift = add(&t, "default/drift", None);
    let drift_prefix = format!("{}/32", ip_of(&drift));
    run_in(&node, "ip", &["route", "del", &drift_prefix]);
    let drifted_at = Instant::now();
    loop {
        let route = run_in(
            &node,
            "ip",
            &["-4", "route", "show", "exact", &drift_prefix],
        );
        if route.contains("proto 116") {
            break;
        }
        assert!(
            drifted_at.elapsed() < Duration::from_secs(10),
            "the agent did not restore {drift_prefix} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(t.lab.node_dir(NODE).join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("putting them back"),
        "the route came back, but not through the agent's repair: {log}"
    );
    assert!(pings(&t, NODE, "default/drift"));

    // A repeated ADD of the same sandbox returns the same address and leaves one veth.
    let same = add(&t, "default/same", None);
    let rt = pod::runtime(&t.lab, NODE, None).unwrap_or_else(|e| panic!("{e}"));
    let again = rt
        .add(&same.attachment)
        .unwrap_or_else(|e| panic!("repeated ADD: {e}"));
    assert_eq!(pod::result_ips(&again), same.ips);
    let links = tort_links(&t);
    assert_eq!(
        links
            .iter()
            .filter(|l| **l == host_ifname(&same.pod))
            .count(),
        1,
        "{links:?}"
    );
    assert_eq!(links.len(), 3, "up's pod, drift and same: {links:?}");
    // Judged at the end, so that the steps below run whatever this says.
    let same_route = run_in(
        &node,
        "ip",
        &[
            "-4",
            "route",
            "show",
            "exact",
            &format!("{}/32", ip_of(&same)),
        ],
    );
    let same_reachable = pings(&t, NODE, "default/same");

    // ADD over an eth0 someone else made: refused, nothing changed, nothing allocated.
    let intruder = pod_ref("default/intruder");
    pod::create_netns(&t.lab, &intruder).unwrap_or_else(|e| panic!("{e}"));
    let ins = t.lab.pod_netns("default", "intruder");
    run_in(
        &ins,
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ],
    );
    run_in(&ins, "ip", &["addr", "add", "192.0.2.9/24", "dev", "eth0"]);
    let before = (
        run_in(&ins, "ip", &["-o", "addr", "show", "dev", "eth0"]),
        allocations(&t),
        tort_links(&t),
    );
    let att = Attachment {
        container_id: pod::new_container_id().unwrap_or_else(|e| panic!("{e}")),
        netns: Some(intruder.netns_path(&t.lab)),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "intruder".into(),
        pod_uid: "uid-intruder".into(),
        ports: vec![],
    };
    match rt.add(&att) {
        Err(e) => assert_eq!(e.cni_code(), Some(100), "not 'interface exists': {e}"),
        Ok(r) => panic!("ADD over a foreign eth0 succeeded: {r}"),
    }
    let after = (
        run_in(&ins, "ip", &["-o", "addr", "show", "dev", "eth0"]),
        allocations(&t),
        tort_links(&t),
    );
    assert_eq!(before, after, "a refused ADD changed something");
    t.ok(&["pod", "del", "default/intruder"]);

    // GC (1.1.0): what valid-attachments lists stays, the rest is released.
    let v11 = conflist(&t, "1.1.0");
    let keep = add(&t, "default/gc-keep", Some(&v11));
    let leak = add(&t, "default/gc-leak", Some(&v11));
    let rt11 = pod::runtime(&t.lab, NODE, Some(&v11)).unwrap_or_else(|e| panic!("{e}"));
    let valid: Vec<(String, String)> = pod::records(&t.lab)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|r| r.pod != leak.pod)
        .map(|r| (r.attachment.container_id, r.attachment.ifname))
        .collect();
    assert_eq!(
        valid.len(),
        4,
        "up's pod, drift, same and gc-keep: {valid:?}"
    );
    rt11.gc(&valid).unwrap_or_else(|e| panic!("GC: {e}"));
    let held = allocations(&t);
    assert!(
        !held.contains_key(&leak.handle(NETWORK)),
        "GC kept an attachment not listed: {held:?}"
    );
    for r in [&keep, &drift, &same] {
        assert!(
            held.get(&r.handle(NETWORK))
                .is_some_and(|ips| ips.contains(&r.ips[0])),
            "GC released {}: {held:?}",
            r.pod
        );
    }
    assert!(pings(&t, NODE, "default/gc-keep"));
    // DEL of what GC already released is still a success.
    pod::del(&t.lab, &leak.pod).unwrap_or_else(|e| panic!("DEL after GC: {e}"));

    // STATUS: ready while the agent runs, 50 once it is stopped, ready again after a restart.
    rt11.status()
        .unwrap_or_else(|e| panic!("STATUS with the agent up: {e}"));
    t.stop_agent(NODE);
    match rt11.status() {
        Err(e) => assert_eq!(e.cni_code(), Some(50), "STATUS with the agent stopped: {e}"),
        Ok(()) => panic!("STATUS said ready with the agent stopped"),
    }
    t.restart_agents();
    rt11.status()
        .unwrap_or_else(|e| panic!("STATUS after the restart: {e}"));
    pod::check(&t.lab, &drift.pod).unwrap_or_else(|e| panic!("CHECK after the restart: {e}"));
    assert!(
        same_reachable,
        "after a repeated ADD the node cannot reach the pod: the new veth has no host route ({same_route:?}); \
         the agent must reinstall a known endpoint's /32, which the kernel dropped with the old veth"
    );
}
