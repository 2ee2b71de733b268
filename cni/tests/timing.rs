//! A timing harness for the plugin alone: sequential ADD and DEL latency of the real `tortie`
//! binary against Debian's `ptp` + `host-local` on the same machine, in the same run. It
//! prints figures and checks only that every execution did its work: the in-test agent
//! answers from memory and installs no host route, so its figures leave out the real agent's
//! datastore write and route install, and are no measure of tortie against a goal (that is
//! `scripts/lab bench cni`, against real agents).
//!
//! `cargo test --release -p tortie-cni --test timing -- --nocapture`
//! (`TORTIE_TIMING_N` sets the pod count, default 10.)
//!
//! Each plugin is exec'd straight into the node namespace (setns between fork and exec, as
//! a runtime in that namespace would run it), not through `ip netns exec`, whose own cost
//! (a mount namespace and a /sys remount) would swamp what we measure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Runs `plugin` in the namespace `node` with `env` and `stdin`; returns the wall time of
/// the whole exec (fork to exit) and what the plugin answered.
fn timed(node: &File, plugin: &Path, env: &[(&str, String)], stdin: &str) -> (Duration, Reply) {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let fd = node.try_clone().unwrap();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    let start = Instant::now();
    let reply = exec_with(cmd, stdin);
    (start.elapsed(), reply)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
    println!(
        "{name:>20}: n={} p50={p50:.2?} p99={p99:.2?} max={:.2?}",
        times.len(),
        times[times.len() - 1]
    );
    p50
}

fn env_for(command: &str, cid: &str, netns: &Path, pod: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.into()),
        ("CNI_CONTAINERID", cid.into()),
        ("CNI_NETNS", netns.display().to_string()),
        ("CNI_IFNAME", "eth0".into()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod}"),
        ),
        ("CNI_PATH", "/usr/lib/cni".into()),
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    ]
}

/// The harness runs: every ADD and DEL of both plugins succeeds, each tortie ADD made its
/// own veth and address, and the DELs took them all away again.
#[test]
fn sequential_add_and_del_against_ptp_host_local() {
    let n: usize = std::env::var("TORTIE_TIMING_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let node = node_ns();
    let node_fd = File::open(node.path()).unwrap();
    let agent = TestAgent::start(&node);
    agent.state.lock().unwrap().skip_routes = true;
    let ipam_dir = tempfile::tempdir().unwrap();
    // TORTIE_TIMING_LOG=debug prints the plugin's own timestamped steps for the last DEL.
    let log_level = std::env::var("TORTIE_TIMING_LOG").unwrap_or_else(|_| "warn".into());
    let tortie_conf =
        json!({"cniVersion": "1.0.0", "name": "bench", "type": "tortie", "agent_socket": agent.socket, "log_level": log_level})
            .to_string();
    let ptp_conf = json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": "10.97.0.0/16", "dataDir": ipam_dir.path()}})
    .to_string();

    let mut pods = Vec::new();
    let mut addresses = std::collections::BTreeSet::new();
    let (mut t_add, mut p_add, mut t_del, mut t_del2) = (vec![], vec![], vec![], vec![]);
    // Interleaved, so drift in machine load hits both alike.
    for i in 0..n {
        let (tp, pp) = (NetNs::new("tim-t"), NetNs::new("tim-p"));
        let (tenv, penv) = (
            env_for("ADD", &format!("t{i}"), &tp.path(), &format!("t{i}")),
            env_for("ADD", &format!("p{i}"), &pp.path(), &format!("p{i}")),
        );
        let (d, reply) = timed(&node_fd, &tortie(), &tenv, &tortie_conf);
        t_add.push(d);
        addresses.insert(reply.ok().json()["ips"][0]["address"].to_string());
        let (d, reply) = timed(&node_fd, Path::new("/usr/lib/cni/ptp"), &penv, &ptp_conf);
        reply.ok();
        p_add.push(d);
        pods.push((i, tp, pp));
    }
    assert_eq!(
        addresses.len(),
        n,
        "each ADD its own address: {addresses:?}"
    );
    assert_eq!(tort_links(&node), n, "each ADD its own veth");
    let mut last_log = String::new();
    for (i, tp, pp) in &pods {
        let env = env_for("DEL", &format!("t{i}"), &tp.path(), &format!("t{i}"));
        let (d, reply) = timed(&node_fd, &tortie(), &env, &tortie_conf);
        t_del.push(d);
        last_log = reply.ok().stderr.clone();
        let (d, reply) = timed(&node_fd, &tortie(), &env, &tortie_conf);
        reply.ok();
        t_del2.push(d);
        let penv = env_for("DEL", &format!("p{i}"), &pp.path(), &format!("p{i}"));
        timed(&node_fd, Path::new("/usr/lib/cni/ptp"), &penv, &ptp_conf)
            .1
            .ok();
    }
    assert_eq!(tort_links(&node), 0, "the DELs left veths behind");
    assert!(agent.held().is_empty(), "{:?}", agent.held());
    println!("last tortie DEL printed:\n{last_log}");
    let tp50 = report("tortie ADD", t_add);
    let pp50 = report("ptp+host-local ADD", p_add);
    report("tortie DEL", t_del);
    report("tortie DEL (again)", t_del2);
    println!(
        "tortie p50 / ptp p50 = {:.2} (against an in-memory agent)",
        tp50.as_secs_f64() / pp50.as_secs_f64()
    );
}

/// How many of tortie's host veths the node has.
fn tort_links(node: &NetNs) -> usize {
    node.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|n| n.starts_with("tort"))
        .count()
}
