//! `node add` / `node del`: a node joins or leaves a running lab, as a machine joins a
//! cluster (kubelet registers its Node, the DaemonSet starts the agent there) or is removed
//! (`kubectl delete node` after the machine is gone).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lab::{Lab, LabConfig};
use crate::up::{Progress, converge, kubectl, node_config, not_ready};
use crate::{network, pod, process};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// A new node (the lowest free `node-N`): namespace on the LAN, Node object, agent, pods.
    Add(AddArgs),
    /// Remove a node: stop its agent, drop its pods, delete its Node object and namespace.
    Del(DelArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Pods to start on the new node once its agent is ready (`default/pod-<node>-<i>`).
    #[arg(long, default_value_t = 1)]
    pub pods: u32,
    /// Seconds to wait for the new node's agent to report ready (as `up --agent-timeout`).
    #[arg(long, default_value_t = 30)]
    pub agent_timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct DelArgs {
    /// The node to remove (`node-N`).
    pub node: String,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    let config = LabConfig::load(lab)?.with_context(|| {
        format!(
            "no lab at {} (run `scripts/lab up`)",
            lab.state_dir().display()
        )
    })?;
    match args.command {
        NodeCommand::Add(args) => add(lab, config, args),
        NodeCommand::Del(args) => del(lab, config, &args.node),
    }
}

fn add(lab: &Lab, mut config: LabConfig, args: AddArgs) -> anyhow::Result<ExitCode> {
    let progress = Progress::new(false);
    let index = config
        .free_node_index()
        .context("node add: the LAN has no free node address")?;
    let node = node_config(lab, index)?;
    let name = node.name.clone();
    config.nodes.push(node);
    // Recorded before its namespace exists, so that `down` after a crash knows it.
    config.save(lab)?;
    let agents = converge(
        lab,
        &config,
        Duration::from_secs(args.agent_timeout),
        &progress,
    )
    .with_context(|| format!("node add {name}"))?;
    let failed: Vec<String> = agents
        .iter()
        .filter_map(|(node, outcome)| not_ready(lab, node, outcome))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "node add {name}: {} agent(s) not ready (waited up to {}s, --agent-timeout); \
             `scripts/lab node del {name}` removes the node again:\n{}",
            failed.len(),
            args.agent_timeout,
            failed.join("\n")
        );
    }
    let only_new = LabConfig {
        nodes: config
            .nodes
            .iter()
            .filter(|n| n.name == name)
            .cloned()
            .collect(),
        ..config
    };
    let added = pod::ensure_per_node(lab, &only_new, args.pods)
        .with_context(|| format!("node add {name}: pods"))?;
    for record in &added {
        let ips: Vec<String> = record.ips.iter().map(ToString::to_string).collect();
        progress.say(&format!("pod {} on {name}: {}", record.pod, ips.join(", ")));
    }
    println!("node {name} added with {} pod(s)", added.len());
    Ok(ExitCode::SUCCESS)
}

/// How long the agent gets to stop on SIGTERM before it is killed.
const AGENT_STOP: Duration = Duration::from_secs(15);

fn del(lab: &Lab, mut config: LabConfig, name: &str) -> anyhow::Result<ExitCode> {
    let node = config
        .node(name)
        .cloned()
        .with_context(|| format!("node del {name}"))?;
    if let Some(pid) = process::running(lab, &lab.agent_pid_file(name)) {
        stop(pid).with_context(|| format!("node del {name}: stopping its agent"))?;
    }
    // The node is gone with its pods: their sandboxes and objects go, with no CNI DEL (no
    // agent answers one there). Its blocks, and the addresses in them, go with the Node.
    let pods: Vec<pod::PodRef> = pod::records(lab)?
        .into_iter()
        .filter(|r| r.node == name)
        .map(|r| r.pod)
        .collect();
    for p in &pods {
        pod::forget(lab, p).with_context(|| format!("node del {name}: pod {p}"))?;
    }
    crate::run(kubectl(lab).args(["delete", "node", name, "--ignore-not-found"]))?;
    network::delete_netns(&node.netns)?;
    config.nodes.retain(|n| n.name != name);
    config.save(lab)?;
    println!("node {name} deleted with {} pod(s)", pods.len());
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM, as a kubelet stops a container, then SIGKILL after [`AGENT_STOP`].
fn stop(pid: i32) -> anyhow::Result<()> {
    // ESRCH: it exited meanwhile, which is what we want.
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + AGENT_STOP;
    while process::is_alive(pid) {
        if Instant::now() >= deadline {
            process::kill_all(&[pid], Duration::from_secs(5))?;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
