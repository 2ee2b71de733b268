//! A timing harness, not run by default: sequential ADD latency of the real `tortie` binary
//! against Debian's `ptp` + `host-local` on the same machine, in the same run.
//!
//! `cargo test --release -p tortie-cni --test timing -- --ignored --nocapture`
//! (`TORTIE_TIMING_N` sets the pod count, default 100.)
//!
//! Each plugin is exec'd straight into the node namespace (setns between fork and exec, as
//! a runtime in that namespace would run it), not through `ip netns exec`, whose own cost
//! (a mount namespace and a /sys remount) would swamp what we measure. The in-test agent
//! answers from memory and installs no host route, so tortie's figure leaves out the real
//! agent's datastore write and route install.

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
/// the whole exec (fork to exit) and the exit code.
fn timed(
    node: &File,
    plugin: &Path,
    env: &[(&str, String)],
    stdin: &str,
) -> (Duration, i32, String) {
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
    let took = start.elapsed();
    (
        took,
        reply.code,
        format!("{}{}", reply.stdout, reply.stderr),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
    println!(
        "{name:>20}: n={} p50={p50:.2?} p99={p99:.2?} max={:.2?}",
        times.len(),
        times[times.len() - 1]
    );
    (p50, p99)
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

#[test]
#[ignore = "timing harness; run explicitly with --release"]
fn sequential_add_latency_against_ptp_host_local() {
    let n: usize = std::env::var("TORTIE_TIMING_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
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
    let mut last_log = String::new();
    let ptp_conf = json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": "10.97.0.0/16", "dataDir": ipam_dir.path()}})
    .to_string();

    let mut pods = Vec::new();
    let (mut t_add, mut p_add, mut t_del, mut t_del2) = (vec![], vec![], vec![], vec![]);
    // Interleaved, so drift in machine load hits both alike.
    for i in 0..n {
        let (tp, pp) = (NetNs::new("tim-t"), NetNs::new("tim-p"));
        let (tenv, penv) = (
            env_for("ADD", &format!("t{i}"), &tp.path(), &format!("t{i}")),
            env_for("ADD", &format!("p{i}"), &pp.path(), &format!("p{i}")),
        );
        let (d, code, out) = timed(&node_fd, &tortie(), &tenv, &tortie_conf);
        assert_eq!(code, 0, "tortie ADD {i}: {out}");
        t_add.push(d);
        let (d, code, out) = timed(&node_fd, Path::new("/usr/lib/cni/ptp"), &penv, &ptp_conf);
        assert_eq!(code, 0, "ptp ADD {i}: {out}");
        p_add.push(d);
        pods.push((i, tp, pp));
    }
    for (i, tp, _pp) in &pods {
        let env = env_for("DEL", &format!("t{i}"), &tp.path(), &format!("t{i}"));
        let (d, code, out) = timed(&node_fd, &tortie(), &env, &tortie_conf);
        assert_eq!(code, 0, "tortie DEL {i}: {out}");
        t_del.push(d);
        last_log = out;
        let (d, code, out) = timed(&node_fd, &tortie(), &env, &tortie_conf);
        assert_eq!(code, 0, "tortie DEL again {i}: {out}");
        t_del2.push(d);
        let penv = env_for("DEL", &format!("p{i}"), &_pp.path(), &format!("p{i}"));
        let (_, code, out) = timed(&node_fd, Path::new("/usr/lib/cni/ptp"), &penv, &ptp_conf);
        assert_eq!(code, 0, "ptp DEL {i}: {out}");
    }
    println!("last tortie DEL printed:\n{last_log}");
    let (tp50, tp99) = report("tortie ADD", t_add);
    let (pp50, _) = report("ptp+host-local ADD", p_add);
    report("tortie DEL", t_del);
    report("tortie DEL (again)", t_del2);
    println!(
        "tortie p50 / ptp p50 = {:.2}",
        tp50.as_secs_f64() / pp50.as_secs_f64()
    );
    assert!(
        tp50.as_secs_f64() <= 0.6 * pp50.as_secs_f64(),
        "goal: tortie p50 ≤ 0.6 × ptp p50"
    );
    assert!(
        tp99 <= Duration::from_millis(25),
        "goal: tortie p99 ≤ 25 ms"
    );
}
