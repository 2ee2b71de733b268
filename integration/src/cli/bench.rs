use std::process::ExitCode;

use anyhow::Context;

use crate::bench_cni::{BenchOptions, render};
use crate::lab::Lab;
use crate::routers::Kind;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario to run: `cni` (needs `up`) or `bgp` (standalone, in namespaces of its own).
    pub scenario: String,
    /// The node to run on (cni).
    #[arg(long, default_value = "node-1")]
    pub node: String,
    /// Sequential ADDs per plugin (cni).
    #[arg(long, default_value_t = 200)]
    pub pods: usize,
    /// Concurrent ADDs (cni).
    #[arg(long, default_value_t = 30)]
    pub concurrent: usize,
    /// Table sizes fed to each speaker (bgp).
    #[arg(long, value_delimiter = ',', default_value = "100000,500000")]
    pub prefixes: Vec<u32>,
    /// The peer that feeds the table (bgp): `bird` or `tortie`.
    #[arg(long, default_value = "bird")]
    pub feeder: String,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    match args.scenario.as_str() {
        "cni" => {
            let opts = BenchOptions {
                node: args.node,
                sequential: args.pods,
                concurrent: args.concurrent,
            };
            let progress = crate::up::Progress::new(false);
            let report =
                crate::bench_cni::run(lab, &opts, &|m| progress.say(m)).context("bench cni")?;
            print!("{}", render(&report));
            Ok(ExitCode::SUCCESS)
        }
        "bgp" => {
            let feeder = match args.feeder.as_str() {
                "bird" => Kind::Bird,
                "tortie" => Kind::Tortie,
                other => anyhow::bail!("bench bgp --feeder {other:?}: expected bird or tortie"),
            };
            crate::bench_bgp::main(args.prefixes, feeder).context("bench bgp")?;
            Ok(ExitCode::SUCCESS)
        }
        _ => super::not_yet(&format!("bench {}", args.scenario), 4),
    }
}
