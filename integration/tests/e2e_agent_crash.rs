//! Root, real parts: the node's agent is SIGKILLed in the middle of a burst of concurrent
//! pod ADDs, then restarted; the ADDs that failed are retried, as a kubelet would. Then no
//! address is held twice, and every ADD that returned success still holds its address in
//! the apiserver's IPAMBlocks (an allocation is durable before ADD returns).
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab_support::{TestLab, text};
use serde_json::Value;
use tortie_lab::pod::{self, AddOptions, PodRecord, PodRef};

const NODE: &str = "node-1";
const NETWORK: &str = "k8s-pod-network";
const PODS: usize = 40;
/// Kill once the agent has finished this many ADDs of the burst.
const KILL_AFTER: usize = 4;

#[test]
fn sigkill_during_a_burst_of_adds_loses_no_allocation_and_duplicates_none() {
    let agent = tortie_lab::agents::agent_binary().filter(|p| p.is_file());
    assert!(
        agent.is_some(),
        "tortie-node is not built: cargo build -p tortie-node -p tortie-cni"
    );
    let t = TestLab::new("k");
    t.ok(&["up", "--nodes", "1", "--agent-timeout", "30"]);
    let status: Value =
        serde_json::from_str(&t.ok(&["status", "-o", "json"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status["nodes"][0]["health"], "ready", "{status}");
    let pid = tortie_lab::process::running(&t.lab, &t.lab.agent_pid_file(NODE))
        .unwrap_or_else(|| panic!("no agent"));

    let pods: Vec<PodRef> = (0..PODS)
        .map(|i| PodRef::new("default", &format!("burst-{i}")).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let (tx, rx) = mpsc::channel::<(PodRef, Result<PodRecord, String>)>();
    let threads: Vec<_> = pods
        .iter()
        .cloned()
        .map(|p| {
            let (lab, tx) = (t.lab.clone(), tx.clone());
            std::thread::spawn(move || {
                let r = pod::add(
                    &lab,
                    &p,
                    &AddOptions {
                        node: NODE.into(),
                        ..Default::default()
                    },
                );
                let _ = tx.send((p, r.map_err(|e| e.to_string())));
            })
        })
        .collect();
    drop(tx);

    // The kill lands once the agent has finished a few ADDs of the burst (host route
    // installed, the last step before the plugin returns) while the others are in flight.
    // The pods' own returns lag behind: each still writes its Pod status.
    let log = t.lab.agent_log(NODE);
    let allocated = || {
        std::fs::read_to_string(&log)
            .map(|l| {
                l.lines()
                    .filter(|l| l.contains("endpoint routes installed"))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut done: BTreeMap<PodRef, Result<PodRecord, String>> = BTreeMap::new();
    let mut killed_at = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok((p, r)) => {
                done.insert(p, r);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if killed_at.is_none() && allocated() >= KILL_AFTER {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
                .unwrap_or_else(|e| panic!("SIGKILL: {e}"));
            killed_at = Some(done.len());
        }
    }
    for th in threads {
        th.join()
            .unwrap_or_else(|_| panic!("an ADD thread panicked"));
    }
    let killed_at = killed_at.unwrap_or_else(|| {
        panic!("the agent never finished {KILL_AFTER} ADDs of the burst: {done:#?}")
    });
    assert!(
        killed_at < PODS,
        "the burst was over before the kill; nothing was tested"
    );
    let failed: Vec<PodRef> = done
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(p, _)| p.clone())
        .collect();
    eprintln!(
        "killed when {killed_at} of {PODS} pod ADDs had returned; {} failed",
        failed.len()
    );
    assert!(!failed.is_empty(), "no ADD saw the agent die");
    assert!(
        failed.len() < PODS,
        "no ADD succeeded before the kill: the durability of a success is untested"
    );
    while tortie_lab::process::is_alive(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }

    // The restart, as `up` does it.
    t.restart_agents();

    // Finish: the kubelet retries each failed sandbox until it is up.
    for p in &failed {
        let deadline = Instant::now() + Duration::from_secs(60);
        let record = loop {
            match pod::add(
                &t.lab,
                p,
                &AddOptions {
                    node: NODE.into(),
                    ..Default::default()
                },
            ) {
                Ok(r) => break r,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{p}: ADD still failing after the restart: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        done.insert(p.clone(), Ok(record));
    }

    let records: Vec<PodRecord> = done
        .into_values()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(records.len(), PODS);
    let held = pod::kube::allocations(&t.lab).unwrap_or_else(|e| panic!("{e}"));

    // No address twice: not among the pods, not among the stored allocations.
    let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    for r in &records {
        for ip in &r.ips {
            if let Some(other) = owner.insert(*ip, r.pod.to_string()) {
                panic!("{ip} was given to {other} and to {}", r.pod);
            }
        }
    }
    let mut by_ip: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for (handle, ips) in &held {
        for ip in ips {
            by_ip.entry(*ip).or_default().push(handle);
        }
    }
    let dups: Vec<_> = by_ip.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(
        dups.is_empty(),
        "addresses stored under several handles: {dups:?}"
    );

    // Every successful ADD still holds its address, and the pod reaches its node.
    for r in &records {
        let handle = r.handle(NETWORK);
        assert!(
            held.get(&handle)
                .is_some_and(|ips| r.ips.iter().all(|ip| ips.contains(ip))),
            "{}: {handle} does not hold {:?} in the apiserver (holds {:?})",
            r.pod,
            r.ips,
            held.get(&handle)
        );
        let out = t.output(&mut t.cmd(&["ping", "-c", "1", &r.pod.to_string(), NODE]));
        assert!(
            out.status.success(),
            "{} cannot reach its node after the restart: {}",
            r.pod,
            text(&out.stdout)
        );
    }
}
