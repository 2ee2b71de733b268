//! Root tests: the real `tortie` binary, run as a kubelet would, wiring real namespaces and
//! veths, against an in-test agent that serves the real gRPC API. Each test makes its own
//! "node" and "pod" namespaces; the test's own namespace is never touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn conf(version: &str, socket: &Path) -> Value {
    json!({"cniVersion": version, "name": "k8s-pod-network", "type": "tortie", "agent_socket": socket, "log_level": "debug"})
}

fn with(mut base: Value, extra: Value) -> String {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base.to_string()
}

/// `tortie` ADD of `inv` with the plain 1.0.0 config, against `agent`.
fn add_v1(node: &NetNs, inv: &Invocation, agent: &TestAgent) -> Reply {
    exec(
        node,
        &tortie(),
        "ADD",
        inv,
        &conf("1.0.0", &agent.socket).to_string(),
    )
}

fn tort_links(node: &NetNs) -> Vec<String> {
    node.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("tort"))
        .collect()
}

fn address_of(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().unwrap();
    cidr.split('/').next().unwrap().to_owned()
}

/// ADD → kernel state as docs/architecture.md says → ping node↔pod and pod↔pod → CHECK → DEL → DEL.
fn lifecycle(version: &str) {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let (pod_a, pod_b) = (NetNs::new("cni-pod"), NetNs::new("cni-pod"));
    let (name_a, name_b) = (unique("web"), unique("db"));
    let inv_a = Invocation::kubelet(&name_a, &unique("cid"), &pod_a.path());
    let inv_b = Invocation::kubelet(&name_b, &unique("cid"), &pod_b.path());
    let c = conf(version, &agent.socket);

    let add = exec(&node, &tortie(), "ADD", &inv_a, &c.to_string());
    let result = add.ok().json();
    let host_if = expected_host_ifname(&name_a);
    assert_eq!(result["cniVersion"], version);
    assert_eq!(result["interfaces"][0]["name"], host_if.as_str());
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod_a.path().display().to_string()
    );
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(
        result["ips"][0].get("version").is_some(),
        version.starts_with("0."),
        "{result}"
    );
    let ip_a = address_of(&result);

    // The pod side.
    let pod_mac = result["interfaces"][1]["mac"].as_str().unwrap().to_owned();
    let link = pod_a.ip(&["link", "show", "dev", "eth0"]);
    assert!(
        link.contains("mtu 1450") && link.contains(&pod_mac) && link.contains(",UP"),
        "{link}"
    );
    let addrs = pod_a.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip_a}/32 ")), "{addrs}");
    let routes = pod_a.ip(&["-4", "route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );
    // The host side: the name, the MAC, no address, up, the sysctls.
    let host = node.ip(&["link", "show", "dev", &host_if]);
    assert!(
        host.contains("ee:ee:ee:ee:ee:ee") && host.contains(",UP") && host.contains("mtu 1450"),
        "{host}"
    );
    assert_eq!(node.ip(&["-4", "addr", "show", "dev", &host_if]).trim(), "");
    for (path, want) in [
        (format!("/proc/sys/net/ipv4/conf/{host_if}/proxy_arp"), "1"),
        (
            format!("/proc/sys/net/ipv4/neigh/{host_if}/proxy_delay"),
            "0",
        ),
        (format!("/proc/sys/net/ipv4/conf/{host_if}/forwarding"), "1"),
    ] {
        assert_eq!(node.output("cat", &[&path]).trim(), want, "{path}");
    }
    // The host route is the agent's (proto 116), installed during EndpointReady.
    let host_routes = node.ip(&["route", "show", "proto", "116"]);
    assert!(
        host_routes.contains(&format!("{ip_a} dev {host_if} scope link")),
        "{host_routes}"
    );

    let result_b = exec(&node, &tortie(), "ADD", &inv_b, &c.to_string())
        .ok()
        .json();
    let ip_b = address_of(&result_b);
    assert_ne!(ip_a, ip_b);
    assert!(node.ping(&ip_a), "node → pod a");
    assert!(pod_a.ping("10.200.0.1"), "pod a → node");
    assert!(pod_a.ping(&ip_b), "pod a → pod b");
    assert!(pod_b.ping(&ip_a), "pod b → pod a");

    let with_prev = with(c.clone(), json!({"prevResult": result}));
    let check = exec(&node, &tortie(), "CHECK", &inv_a, &with_prev);
    if version == "0.3.0" || version == "0.3.1" {
        check.error(1);
    } else {
        assert_eq!(check.ok().stdout, "");
    }

    assert_eq!(
        exec(&node, &tortie(), "DEL", &inv_a, &with_prev)
            .ok()
            .stdout,
        ""
    );
    assert!(!node.has_link(&host_if), "host veth left behind");
    assert!(!pod_a.has_link("eth0"), "pod eth0 left behind");
    assert!(
        !agent.held().contains(&format!("{ip_a}/32")),
        "allocation left behind"
    );
    assert!(!node.ip(&["route", "show", "proto", "116"]).contains(&ip_a));
    exec(&node, &tortie(), "DEL", &inv_a, &with_prev).ok();
    assert!(pod_b.ping("10.200.0.1"), "pod b unaffected");
}

#[test]
fn lifecycle_0_3_0() {
    lifecycle("0.3.0");
}

#[test]
fn lifecycle_0_3_1() {
    lifecycle("0.3.1");
}

#[test]
fn lifecycle_0_4_0() {
    lifecycle("0.4.0");
}

#[test]
fn lifecycle_1_0_0() {
    lifecycle("1.0.0");
}

#[test]
fn lifecycle_1_1_0() {
    lifecycle("1.1.0");
}

#[test]
fn check_detects_drift_in_the_pod_and_in_the_agent() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    let c = conf("1.0.0", &agent.socket);
    let result = exec(&node, &tortie(), "ADD", &inv, &c.to_string())
        .ok()
        .json();
    let prev = with(c.clone(), json!({"prevResult": result}));
    exec(&node, &tortie(), "CHECK", &inv, &prev).ok();

    pod.ip(&["route", "del", "default"]);
    let err = exec(&node, &tortie(), "CHECK", &inv, &prev).error(102);
    assert!(err["msg"].as_str().unwrap().contains("0.0.0.0/0"), "{err}");
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    exec(&node, &tortie(), "CHECK", &inv, &prev).ok();

    agent.state.lock().unwrap().held.clear();
    let err = exec(&node, &tortie(), "CHECK", &inv, &prev).error(102);
    assert!(err["msg"].as_str().unwrap().contains("agent"), "{err}");
}

#[test]
fn repeated_add_returns_the_same_address_with_one_veth() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    let c = conf("1.0.0", &agent.socket).to_string();
    let first = exec(&node, &tortie(), "ADD", &inv, &c).ok().json();
    let second = exec(&node, &tortie(), "ADD", &inv, &c).ok().json();
    assert_eq!(first["ips"], second["ips"]);
    assert_eq!(tort_links(&node).len(), 1, "{:?}", tort_links(&node));
    assert!(node.ping(&address_of(&second)));
}

#[test]
fn add_over_a_foreign_ifname_fails_and_changes_nothing() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    // Someone else's eth0: a veth, like ours, but not paired with our host side.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    pod.ip(&["addr", "add", "192.0.2.9/24", "dev", "eth0"]);
    let before = pod.ip(&["addr", "show", "dev", "eth0"]);
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    let err = add_v1(&node, &inv, &agent).error(100);
    assert!(err["msg"].as_str().unwrap().contains("eth0"), "{err}");
    assert_eq!(pod.ip(&["addr", "show", "dev", "eth0"]), before);
    assert!(tort_links(&node).is_empty());
    assert!(
        agent.state.lock().unwrap().calls.is_empty(),
        "no allocation for a refused ADD"
    );
}

#[test]
fn failed_add_leaves_no_veth_and_no_allocation() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    agent.state.lock().unwrap().fail_endpoint_ready = true;
    let pod = NetNs::new("cni-pod");
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    add_v1(&node, &inv, &agent).error(103);
    assert!(tort_links(&node).is_empty(), "{:?}", tort_links(&node));
    assert!(!pod.has_link("eth0"));
    assert!(agent.held().is_empty(), "{:?}", agent.held());
    let calls = agent.state.lock().unwrap().calls.clone();
    assert!(calls.iter().any(|c| c.starts_with("Release")), "{calls:?}");
}

/// The MTU of `name` as `ip -j link` reports it in `ns`.
fn mtu_of(ns: &NetNs, name: &str) -> u64 {
    let out = ns.ip(&["-j", "link", "show", "dev", name]);
    let links: Value = serde_json::from_str(&out).unwrap();
    links[0]["mtu"].as_u64().unwrap()
}

/// The pair is made while Allocate is in flight, before the agent's MTU is known; both ends
/// must still end with the agent's MTU (above and below the provisional 1500), or with the
/// config's when it has one.
#[test]
fn both_ends_get_the_agents_mtu_when_it_differs_from_the_provisional_one() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    for (agent_mtu, config_mtu, want) in [
        (1450, None, 1450),
        (9000, None, 9000),
        (1450, Some(1400), 1400),
    ] {
        agent.state.lock().unwrap().mtu = Some(agent_mtu);
        let pod = NetNs::new("cni-pod");
        let name = unique("web");
        let inv = Invocation::kubelet(&name, &unique("cid"), &pod.path());
        let c = match config_mtu {
            Some(m) => with(conf("1.0.0", &agent.socket), json!({ "mtu": m })),
            None => conf("1.0.0", &agent.socket).to_string(),
        };
        let result = exec(&node, &tortie(), "ADD", &inv, &c).ok().json();
        let host_if = expected_host_ifname(&name);
        assert_eq!(
            (mtu_of(&pod, "eth0"), mtu_of(&node, &host_if)),
            (want, want),
            "agent {agent_mtu}, config {config_mtu:?}"
        );
        assert!(node.ping(&address_of(&result)));
        let prev = with(
            conf("1.0.0", &agent.socket),
            json!({ "prevResult": result }),
        );
        exec(&node, &tortie(), "CHECK", &inv, &prev).ok();
        exec(&node, &tortie(), "DEL", &inv, &c).ok();
    }
}

/// The pair made during a refused Allocate is gone again, and nothing was released (nothing
/// was allocated) or readied.
#[test]
fn refused_allocate_removes_the_pair_made_meanwhile() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    agent.state.lock().unwrap().fail_allocate = true;
    let pod = NetNs::new("cni-pod");
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    let err = add_v1(&node, &inv, &agent).error(103);
    assert!(err["msg"].as_str().unwrap().contains("Allocate"), "{err}");
    assert!(tort_links(&node).is_empty(), "{:?}", tort_links(&node));
    assert!(!pod.has_link("eth0"));
    let calls = agent.state.lock().unwrap().calls.clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
}

#[test]
fn error_paths_print_cni_errors_with_the_spec_codes() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    let good = conf("1.0.0", &agent.socket);
    let run = |cmd: &str, inv: &Invocation, stdin: &str| exec(&node, &tortie(), cmd, inv, stdin);

    run("ADD", &inv, "{\"cniVersion\": \"1.0.0\", ").error(6);
    run(
        "ADD",
        &inv,
        &with(good.clone(), json!({"cniVersion": "0.2.0"})),
    )
    .error(1);
    run(
        "ADD",
        &inv,
        &with(good.clone(), json!({"cniVersion": "2.0.0"})),
    )
    .error(1);
    run(
        "ADD",
        &inv,
        &with(good.clone(), json!({"ipam": {"type": "host-local"}})),
    )
    .error(2);
    run("ADD", &inv, &with(good.clone(), json!({"name": ""}))).error(7);
    run("ADD", &inv, &with(good.clone(), json!({"mtu": 9}))).error(7);
    let e = run(
        "ADD",
        &inv,
        &with(good.clone(), json!({"cniVersion": "0.4.0", "mtu": "x"})),
    )
    .error(7);
    assert_eq!(
        e["cniVersion"], "0.4.0",
        "errors speak the config's version"
    );

    let no_container = Invocation {
        container_id: String::new(),
        ..Invocation::kubelet("w", "c", &pod.path())
    };
    run("ADD", &no_container, &good.to_string()).error(4);
    let bad_args = Invocation {
        args: "K8S_POD_NAME=x;BOGUS=1".into(),
        ..Invocation::kubelet("w", "c", &pod.path())
    };
    run("ADD", &bad_args, &good.to_string()).error(4);
    let no_netns = Invocation {
        netns: None,
        ..Invocation::kubelet("w", "c", &pod.path())
    };
    run("ADD", &no_netns, &good.to_string()).error(4);
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &node.name])
        .arg(tortie())
        .env("CNI_COMMAND", "FROB");
    exec_with(cmd, &good.to_string()).error(4);

    let gone = Invocation::kubelet("w", &unique("cid"), Path::new("/run/netns/does-not-exist"));
    run("ADD", &gone, &good.to_string()).error(3);

    let unreachable = conf("1.0.0", &PathBuf::from("/run/tortie-test-no-such.sock")).to_string();
    let e = run("ADD", &inv, &unreachable).error(11);
    assert!(
        e["details"].as_str().unwrap().contains("no-such.sock"),
        "{e}"
    );
    assert!(tort_links(&node).is_empty() && !pod.has_link("eth0"));
    run("DEL", &inv, &unreachable).error(11);

    // None of it allocated anything or touched the namespaces.
    assert!(agent.held().is_empty());
    assert!(tort_links(&node).is_empty() && !pod.has_link("eth0"));
}

#[test]
fn del_is_idempotent_when_the_netns_is_gone() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    let path = pod.path();
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &path);
    let c = conf("1.0.0", &agent.socket).to_string();
    exec(&node, &tortie(), "ADD", &inv, &c).ok();
    drop(pod);
    // DEL right away, as a runtime may: the kernel tears the namespace down asynchronously,
    // so the host end of the veth may still be there; DEL must not need it gone.
    exec(&node, &tortie(), "DEL", &inv, &c).ok();
    assert!(agent.held().is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !tort_links(&node).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(tort_links(&node).is_empty(), "the veth dies with the netns");
    exec(&node, &tortie(), "DEL", &inv, &c).ok();
    exec(
        &node,
        &tortie(),
        "DEL",
        &Invocation { netns: None, ..inv },
        &c,
    )
    .ok();
}

#[test]
fn version_status_and_gc() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    let none = Invocation {
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        args: String::new(),
    };

    let v = exec(
        &node,
        &tortie(),
        "VERSION",
        &none,
        "{\"cniVersion\":\"1.1.0\"}",
    )
    .ok()
    .json();
    assert_eq!(v["supportedVersions"], json!(VERSIONS));

    let c = conf("1.1.0", &agent.socket);
    assert_eq!(
        exec(&node, &tortie(), "STATUS", &none, &c.to_string())
            .ok()
            .stdout,
        ""
    );
    agent.state.lock().unwrap().ready = false;
    exec(&node, &tortie(), "STATUS", &none, &c.to_string()).error(50);
    agent.state.lock().unwrap().ready = true;
    exec(
        &node,
        &tortie(),
        "STATUS",
        &none,
        &conf("1.1.0", Path::new("/run/tortie-test-no-such.sock")).to_string(),
    )
    .error(50);
    exec(
        &node,
        &tortie(),
        "STATUS",
        &none,
        &conf("1.0.0", &agent.socket).to_string(),
    )
    .error(1);

    let keep = Invocation::kubelet(&unique("keep"), &unique("cid"), &pod.path());
    exec(&node, &tortie(), "ADD", &keep, &c.to_string()).ok();
    let leaked = NetNs::new("cni-pod");
    let leak = Invocation::kubelet(&unique("leak"), &unique("cid"), &leaked.path());
    exec(&node, &tortie(), "ADD", &leak, &c.to_string()).ok();
    assert_eq!(agent.held().len(), 2);
    let gc = with(
        c.clone(),
        json!({"cni.dev/valid-attachments": [{"containerID": keep.container_id, "ifname": "eth0"}]}),
    );
    exec(&node, &tortie(), "GC", &none, &gc).ok();
    let held = agent
        .state
        .lock()
        .unwrap()
        .held
        .keys()
        .map(|k| k.1.clone())
        .collect::<Vec<_>>();
    assert_eq!(held, vec![keep.container_id.clone()]);
}

/// tortie first, then Debian's reference portmap, as a 1.0.0 conflist: the runtime's ADD,
/// CHECK and DEL sequence, each plugin fed the previous result.
#[test]
fn chains_with_debians_portmap() {
    let portmap = PathBuf::from("/usr/lib/cni/portmap");
    assert!(
        portmap.exists(),
        "containernetworking-plugins is not installed"
    );
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    let tortie_conf = conf("1.0.0", &agent.socket);
    let portmap_conf = json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "portmap",
        "capabilities": {"portMappings": true}, "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
    });

    // Debian's portmap (plugins 1.1.1) checks its per-container chain in ip6tables too,
    // even for a pod with only IPv4, so its CHECK fails on any host where ip6tables' nat
    // table works, whatever plugin comes first (containernetworking/plugins#819). Run it as
    // on a host without ip6tables: a PATH that holds only `iptables`.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/sbin/iptables", bin.path().join("iptables")).unwrap();
    let path = bin.path().display().to_string();
    let pm_env = [("PATH", path.as_str())];
    let portmap_run = |cmd: &str, prev: &Value| {
        exec_env(
            &node,
            &portmap,
            cmd,
            &inv,
            &with(portmap_conf.clone(), json!({"prevResult": prev})),
            &pm_env,
        )
    };

    let r1 = exec(&node, &tortie(), "ADD", &inv, &tortie_conf.to_string())
        .ok()
        .json();
    let r2 = portmap_run("ADD", &r1).ok().json();
    assert_eq!(r2["ips"], r1["ips"], "portmap passes our result on");
    let nat = node.output("iptables", &["-t", "nat", "-S"]);
    assert!(
        nat.contains("18080") && nat.contains(&address_of(&r1)),
        "{nat}"
    );

    exec(
        &node,
        &tortie(),
        "CHECK",
        &inv,
        &with(tortie_conf.clone(), json!({"prevResult": r2})),
    )
    .ok();
    portmap_run("CHECK", &r2).ok();

    portmap_run("DEL", &r2).ok();
    exec(
        &node,
        &tortie(),
        "DEL",
        &inv,
        &with(tortie_conf, json!({"prevResult": r2})),
    )
    .ok();
    let nat = node.output("iptables", &["-t", "nat", "-S"]);
    assert!(!nat.contains("18080"), "{nat}");
    assert!(tort_links(&node).is_empty() && agent.held().is_empty());
}

/// IPv6 next to IPv4: the pod gets a /128, its default route goes via the host veth's
/// link-local address (the EUI-64 of ee:ee:ee:ee:ee:ee), and the host side skips DAD.
#[test]
fn dual_stack_pods_reach_the_node_and_each_other_over_ipv6() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    agent.state.lock().unwrap().dual_stack = true;
    let (pod_a, pod_b) = (NetNs::new("cni-pod"), NetNs::new("cni-pod"));
    let (name_a, name_b) = (unique("web"), unique("db"));
    let c = conf("1.1.0", &agent.socket);
    let inv_a = Invocation::kubelet(&name_a, &unique("cid"), &pod_a.path());
    let inv_b = Invocation::kubelet(&name_b, &unique("cid"), &pod_b.path());
    let ra = exec(&node, &tortie(), "ADD", &inv_a, &c.to_string())
        .ok()
        .json();
    let rb = exec(&node, &tortie(), "ADD", &inv_b, &c.to_string())
        .ok()
        .json();
    let v6 = |r: &Value| {
        r["ips"][1]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let (a6, b6) = (v6(&ra), v6(&rb));
    assert_eq!(ra["ips"][1]["gateway"], "fe80::ecee:eeff:feee:eeee");
    assert!(
        ra["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "::/0"),
        "{ra}"
    );

    let routes = pod_a.ip(&["-6", "route", "show"]);
    assert!(
        routes.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes}"
    );
    let host_if = expected_host_ifname(&name_a);
    assert_eq!(
        node.output(
            "cat",
            &[&format!("/proc/sys/net/ipv6/conf/{host_if}/accept_dad")]
        )
        .trim(),
        "0"
    );
    assert_eq!(
        node.output(
            "cat",
            &[&format!("/proc/sys/net/ipv6/conf/{host_if}/proxy_ndp")]
        )
        .trim(),
        "1"
    );
    let ll = node.ip(&["-6", "addr", "show", "dev", &host_if]);
    assert!(
        ll.contains("fe80::ecee:eeff:feee:eeee/64") && !ll.contains("tentative"),
        "{ll}"
    );

    assert!(node.ping6(&a6), "node → pod a over IPv6");
    assert!(pod_a.ping6("fd00:200::1"), "pod a → node over IPv6");
    assert!(pod_a.ping6(&b6), "pod a → pod b over IPv6");
    assert!(pod_a.ping(&address_of(&rb)), "pod a → pod b over IPv4");

    let prev = with(c.clone(), json!({"prevResult": ra}));
    exec(&node, &tortie(), "CHECK", &inv_a, &prev).ok();
    exec(&node, &tortie(), "DEL", &inv_a, &prev).ok();
    assert!(!node.has_link(&host_if));
    assert!(
        !node
            .ip(&["-6", "route", "show", "proto", "116"])
            .contains(&a6)
    );
}

/// A kernel refusal after the veth exists (IPv6 on a link whose MTU is below IPv6's 1280)
/// must undo the veth and the allocation, like any other failed ADD.
#[test]
fn kernel_refusal_mid_add_leaves_nothing() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    agent.state.lock().unwrap().dual_stack = true;
    let pod = NetNs::new("cni-pod");
    let inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    let c = with(conf("1.0.0", &agent.socket), json!({"mtu": 1000}));
    let err = exec(&node, &tortie(), "ADD", &inv, &c).error(101);
    let calls = agent.state.lock().unwrap().calls.clone();
    assert!(
        calls.iter().any(|c| c.starts_with("Allocate")),
        "the failure came after the allocation: {err} {calls:?}"
    );
    assert!(tort_links(&node).is_empty(), "{:?}", tort_links(&node));
    assert!(!pod.has_link("eth0"));
    assert!(agent.held().is_empty(), "{:?}", agent.held());
}

/// Thirty pods on one node at once, as a kubelet starting a deployment would: every ADD
/// succeeds with its own address and veth, every pod answers, and thirty DELs clean up.
#[test]
fn thirty_concurrent_adds_and_dels() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let c = conf("1.0.0", &agent.socket).to_string();
    let pods: Vec<(NetNs, Invocation)> = (0..30)
        .map(|_| {
            let ns = NetNs::new("cni-pod");
            let inv = Invocation::kubelet(&unique("burst"), &unique("cid"), &ns.path());
            (ns, inv)
        })
        .collect();
    let results: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(_, inv)| s.spawn(|| exec(&node, &tortie(), "ADD", inv, &c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses: Vec<String> = results.iter().map(|r| address_of(&r.ok().json())).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 30, "{addresses:?}");
    assert_eq!(tort_links(&node).len(), 30);
    for a in &addresses {
        assert!(node.ping(a), "node → {a}");
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(_, inv)| s.spawn(|| exec(&node, &tortie(), "DEL", inv, &c)))
            .collect();
        for h in handles {
            h.join().unwrap().ok();
        }
    });
    assert!(tort_links(&node).is_empty(), "{:?}", tort_links(&node));
    assert!(agent.held().is_empty());
}

/// Two ADDs of one container at once, as a runtime that retries an ADD before the first has
/// returned makes them: each must not take the other's veth for a leftover. Allocate takes
/// 100 ms, as a datastore write may, so the two overlap in every round. Without the per-pod
/// lock (`tortie_cni::lock`) one ADD finds the veth the other is making, fails, and its
/// cleanup deletes that veth and releases the address the other reports.
#[test]
fn racing_adds_of_one_container_both_succeed_and_leave_one_wiring() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    agent.state.lock().unwrap().allocate_delay = Duration::from_millis(100);
    let c = conf("1.0.0", &agent.socket).to_string();
    for round in 0..3 {
        let pod = NetNs::new("cni-pod");
        let name = unique("race");
        let inv = Invocation::kubelet(&name, &unique("cid"), &pod.path());
        let replies: Vec<Reply> = std::thread::scope(|s| {
            let adds: Vec<_> = (0..2)
                .map(|_| s.spawn(|| exec(&node, &tortie(), "ADD", &inv, &c)))
                .collect();
            adds.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &replies {
            assert_eq!(r.code, 0, "round {round}: an ADD failed: {r:?}");
        }
        let (first, second) = (replies[0].json(), replies[1].json());
        assert_eq!(first["ips"], second["ips"], "round {round}");
        assert_eq!(
            tort_links(&node),
            vec![expected_host_ifname(&name)],
            "round {round}"
        );
        assert!(pod.has_link("eth0"), "round {round}");
        assert_eq!(agent.held().len(), 1, "round {round}: {:?}", agent.held());
        assert!(node.ping(&address_of(&first)), "round {round}");
        exec(&node, &tortie(), "DEL", &inv, &c).ok();
        assert!(tort_links(&node).is_empty(), "round {round}");
        assert!(agent.held().is_empty(), "round {round}");
    }
}

/// As a second interface (`net1`) in a pod whose default route already goes elsewhere,
/// tortie does not take that route over: the ADD fails and leaves nothing behind.
#[test]
fn an_existing_default_route_is_not_taken_over() {
    let node = node_ns();
    let agent = TestAgent::start(&node);
    let pod = NetNs::new("cni-pod");
    pod.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    pod.ip(&["link", "set", "other0", "up"]);
    pod.ip(&["link", "set", "other1", "up"]);
    pod.ip(&["addr", "add", "192.0.2.2/24", "dev", "other0"]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.0.2.1",
        "dev",
        "other0",
    ]);
    let mut inv = Invocation::kubelet(&unique("web"), &unique("cid"), &pod.path());
    inv.ifname = "net1".into();
    let err = add_v1(&node, &inv, &agent).error(101);
    assert!(err["msg"].as_str().unwrap().contains("0.0.0.0/0"), "{err}");
    assert!(
        pod.ip(&["route", "show", "default"])
            .contains("via 192.0.2.1 dev other0")
    );
    assert!(!pod.has_link("net1") && tort_links(&node).is_empty() && agent.held().is_empty());
}
