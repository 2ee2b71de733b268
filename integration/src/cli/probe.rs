use std::process::ExitCode;
use std::time::Duration;

use crate::lab::Lab;
use crate::traffic::probe::{self, Target};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `ADDR:PORT[/tcp|/udp]` (TCP when no protocol is given).
    pub target: Target,
    /// Probe from inside a lab target's namespace (`node-N`, `namespace/name`, `control`,
    /// `lan`) instead of the current one.
    #[arg(long)]
    pub from: Option<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// Prints `ok <identity> <source it saw>` and exits 0, or `fail: <why>` and exits 1.
pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let result = match &args.from {
        Some(from) => {
            let netns = super::exec::target_netns(lab, from)?;
            probe::probe_from(&netns, args.target, timeout)
        }
        None => probe::probe(args.target, timeout),
    };
    match result {
        Ok(answer) => {
            println!("ok {} {}", answer.identity, answer.seen_source);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("fail: {} {e}", args.target);
            Ok(ExitCode::FAILURE)
        }
    }
}
