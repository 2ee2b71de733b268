use std::process::ExitCode;

use anyhow::Context;

use crate::bench_cni::{BenchOptions, render};
use crate::bench_header::exit_code;
use crate::lab::Lab;
use crate::routers::Kind;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario to run: `cni` (needs `up`), or `bgp` or `policy` (standalone, in
    /// namespaces of their own).
    pub scenario: String,
    /// The node to run on (cni).
    #[arg(long, default_value = "node-1")]
    pub node: String,
    /// Sequential ADDs per plugin (cni, default 200); pods on the node (policy, default 110).
    #[arg(long)]
    pub pods: Option<usize>,
    /// Concurrent ADDs (cni).
    #[arg(long, default_value_t = 30)]
    pub concurrent: usize,
    /// ADDs run with the plugin's debug log, outside the timed series, to show where an
    /// ADD's time goes (cni).
    #[arg(long, default_value_t = 10)]
    pub traced: usize,
    /// Table sizes fed to each speaker (bgp).
    #[arg(long, value_delimiter = ',', default_value = "100000,500000")]
    pub prefixes: Vec<u32>,
    /// The peer that feeds the table (bgp): `bird` or `tortie`.
    #[arg(long, default_value = "bird")]
    pub feeder: String,
    /// Policies of the full-sync cluster and of the new-pod runs (policy).
    #[arg(long, default_value_t = 100)]
    pub policies: usize,
    /// Pods elsewhere in the cluster, peers only (policy).
    #[arg(long, default_value_t = 1000)]
    pub remote_pods: usize,
    /// Full syncs of tortie and of the floor each (policy).
    #[arg(long, default_value_t = 5)]
    pub repetitions: usize,
    /// Changes timed at each scale (policy).
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// iptables rule counts to time changes at; policies are added until each is reached
    /// (policy).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pub scales: Vec<usize>,
    /// Seconds after which a scale's changes, or the new pods, stop early (policy).
    #[arg(long, default_value_t = 15)]
    pub budget: u64,
    /// New local pods timed one at a time (policy).
    #[arg(long, default_value_t = 50)]
    pub new_pods: usize,
    /// iptables backend (policy): `auto` (what an empty namespace gives: nft), `legacy`, `nft`.
    #[arg(long, default_value = "auto")]
    pub backend: String,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    match args.scenario.as_str() {
        "cni" => {
            let opts = BenchOptions {
                node: args.node,
                sequential: args.pods.unwrap_or(200),
                concurrent: args.concurrent,
                traced: args.traced,
            };
            let progress = crate::up::Progress::new(false);
            let report =
                crate::bench_cni::run(lab, &opts, &|m| progress.say(m)).context("bench cni")?;
            print!("{}", render(&report));
            Ok(exit_code(report.all_met()))
        }
        "bgp" => {
            let feeder = match args.feeder.as_str() {
                "bird" => Kind::Bird,
                "tortie" => Kind::Tortie,
                other => anyhow::bail!("bench bgp --feeder {other:?}: expected bird or tortie"),
            };
            let all_met = crate::bench_bgp::main(args.prefixes, feeder).context("bench bgp")?;
            Ok(exit_code(all_met))
        }
        "policy" => {
            let opts = crate::bench_policy::BenchOptions {
                policies: args.policies,
                pods: args.pods.unwrap_or(110),
                remote_pods: args.remote_pods,
                repetitions: args.repetitions,
                changes: args.changes,
                budget: std::time::Duration::from_secs(args.budget),
                scales: args.scales,
                new_pods: args.new_pods,
                backend: args
                    .backend
                    .parse()
                    .with_context(|| format!("bench policy --backend {:?}", args.backend))?,
            };
            let progress = crate::up::Progress::new(false);
            let report =
                crate::bench_policy::run(&opts, &|m| progress.say(m)).context("bench policy")?;
            print!("{}", crate::bench_policy::render(&report));
            Ok(exit_code(report.all_met()))
        }
        _ => super::not_yet(&format!("bench {}", args.scenario), 4),
    }
}
