use std::process::ExitCode;

use anyhow::Context;

use crate::bench_cni::{BenchOptions, render};
use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario to run: `cni`.
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
        _ => super::not_yet(&format!("bench {}", args.scenario), 4),
    }
}
