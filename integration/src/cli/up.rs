use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::Ipv4Net;

use crate::agents::{Outcome, sibling_binary};
use crate::lab::{EtcdStorage, Lab, LabConfig, NodeConfig};
use crate::up::{Progress, UpOptions, not_ready, up};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many nodes (node-1 .. node-N).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// The default IPv4 pool the agents create (CALICO_IPV4POOL_CIDR).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pool: Ipv4Net,
    /// Pods to start on each node once the lab is up (`default/pod-<node>-<i>`). With two
    /// or more nodes and pods, `up` then pings across nodes and shows node-1's BGP peers.
    #[arg(long, default_value_t = 1)]
    pub pods_per_node: u32,
    /// Seconds to wait for every agent to report ready. `up` exits non-zero, naming each
    /// agent that is not ready and why, when one is not by then, exited, or is not built;
    /// the control plane stays up to debug it.
    #[arg(long, default_value_t = 30)]
    pub agent_timeout: u64,
    /// Exit 0 even though agents that run are not ready by --agent-timeout. For tests whose
    /// stand-in agent serves no status; an agent that exited or is not built still fails
    /// `up`. Needs --pods-per-node 0: pods need ready agents.
    #[arg(long)]
    pub agents_may_be_unready: bool,
    /// Where etcd keeps its data: `disk` (a folder in the state folder, fsync'd as in a real
    /// control plane) or `tmpfs` (in memory: apiserver writes wait for no disk; `bench cni`
    /// says which it ran on). A lab whose etcd already has data keeps it where it is.
    #[arg(long, default_value = "disk")]
    pub etcd_storage: EtcdStorage,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    if args.agents_may_be_unready && args.pods_per_node > 0 {
        anyhow::bail!("--agents-may-be-unready needs --pods-per-node 0: pods need ready agents");
    }
    let progress = Progress::new(false);
    let opts = UpOptions {
        nodes: args.nodes,
        pool: args.pool,
        agent_timeout: Duration::from_secs(args.agent_timeout),
        etcd_storage: args.etcd_storage,
    };
    let report = up(lab, &opts, &progress)
        .with_context(|| format!("up (state {})", lab.state_dir().display()))?;
    let failed: Vec<String> = report
        .agents
        .iter()
        .filter(|(_, o)| !(args.agents_may_be_unready && matches!(o, Outcome::Running { .. })))
        .filter_map(|(node, o)| not_ready(lab, node, o))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "up: {} of {} agents not ready (waited up to {}s, --agent-timeout). The control \
             plane stays up to debug them (scripts/lab status; scripts/lab down removes it):\n{}",
            failed.len(),
            report.agents.len(),
            args.agent_timeout,
            failed.join("\n")
        );
    }
    let mut summary = format!(
        "lab up: {} nodes in {:.1}s",
        report.config.nodes.len(),
        report.elapsed.as_secs_f64()
    );
    let unready = report.agents.iter().filter(|(_, o)| !o.is_ready()).count();
    if unready > 0 {
        summary.push_str(&format!(
            "; {unready} agent(s) running but not ready (--agents-may-be-unready)"
        ));
    }
    // Here every agent is ready whenever pods are asked for (see --agents-may-be-unready).
    if args.pods_per_node > 0 {
        let added = crate::pod::ensure_per_node(lab, &report.config, args.pods_per_node)
            .context("up --pods-per-node")?;
        for record in &added {
            let ips: Vec<String> = record.ips.iter().map(ToString::to_string).collect();
            progress.say(&format!(
                "pod {} on {}: {}",
                record.pod,
                record.node,
                ips.join(", ")
            ));
        }
        summary.push_str(&format!(", {} pods added", added.len()));
    }
    println!("{summary}");
    if args.pods_per_node > 0 && report.config.nodes.len() > 1 {
        let pings_ok = show_cross_node(lab, &report.config, &progress)?;
        show_node_status(lab, &report.config.nodes[0])?;
        if !pings_ok {
            println!("lab up: some pods cannot reach pods on other nodes (see above)");
            return Ok(ExitCode::FAILURE);
        }
    }
    println!("try: scripts/lab kubectl get nodes -o wide; scripts/lab status");
    Ok(ExitCode::SUCCESS)
}

/// How long routes may take to reach every node once the pods exist: the mesh notices new
/// nodes within 5 s, then a session and one UPDATE.
const CONVERGENCE: Duration = Duration::from_secs(30);

/// Pings from each node's first pod to the next node's first pod (the last to the first),
/// retrying until routes have converged. Prints one line per pair; true when all answered.
fn show_cross_node(lab: &Lab, config: &LabConfig, progress: &Progress) -> anyhow::Result<bool> {
    let pods: Vec<String> = config
        .nodes
        .iter()
        .map(|n| format!("default/pod-{}-1", n.name))
        .collect();
    let deadline = Instant::now() + CONVERGENCE;
    let mut all_ok = true;
    for (i, from) in pods.iter().enumerate() {
        let to = &pods[(i + 1) % pods.len()];
        let ok = loop {
            let out = crate::pod::ping(lab, from, to, 1)
                .with_context(|| format!("ping {from} → {to}"))?;
            if out.status.success() {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        progress.say(&format!(
            "ping {from} → {to}: {}",
            if ok { "ok" } else { "FAILED" }
        ));
        all_ok &= ok;
    }
    Ok(all_ok)
}

/// Prints `tortiectl node status` as run on `node`, against its agent's socket.
fn show_node_status(lab: &Lab, node: &NodeConfig) -> anyhow::Result<()> {
    let Some(tortiectl) = sibling_binary("tortiectl", "TORTIE_CTL_BIN") else {
        println!("(tortiectl is not built: cargo build -p tortie-node)");
        return Ok(());
    };
    let socket = lab.agent_socket(&node.name);
    let out = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(&tortiectl)
        .arg("--socket")
        .arg(&socket)
        .args(["node", "status"])
        .output()
        .with_context(|| format!("running {} in {}", tortiectl.display(), node.netns))?;
    println!("\n{} $ tortiectl node status", node.name);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
