use std::process::ExitCode;

use anyhow::Context;
use ipnet::Ipv4Net;

use crate::agents::Outcome;
use crate::lab::Lab;
use crate::up::{Progress, UpOptions, up};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many nodes (node-1 .. node-N).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// The default IPv4 pool the agents create (CALICO_IPV4POOL_CIDR).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pool: Ipv4Net,
    /// Pods to start on each node once the lab is up (`default/pod-<node>-<i>`).
    #[arg(long, default_value_t = 0)]
    pub pods_per_node: u32,
    /// Seconds to wait for agents to report ready before returning anyway.
    #[arg(long, default_value_t = 10)]
    pub agent_timeout: u64,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    let progress = Progress::new(false);
    let opts = UpOptions {
        nodes: args.nodes,
        pool: args.pool,
        agent_timeout: std::time::Duration::from_secs(args.agent_timeout),
    };
    let report = up(lab, &opts, &progress)
        .with_context(|| format!("up (state {})", lab.state_dir().display()))?;
    let failed = report
        .agents
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Exited { .. }))
        .count();
    let missing = report
        .agents
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::NotBuilt))
        .count();
    let mut summary = format!(
        "lab up: {} nodes in {:.1}s",
        report.config.nodes.len(),
        report.elapsed.as_secs_f64()
    );
    if failed > 0 {
        summary.push_str(&format!("; WARNING: {failed} agent(s) exited, see above"));
    }
    if missing > 0 {
        summary.push_str("; agents not started (tortie-node not built)");
    }
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
    println!("try: scripts/lab kubectl get nodes -o wide; scripts/lab status");
    Ok(ExitCode::SUCCESS)
}
