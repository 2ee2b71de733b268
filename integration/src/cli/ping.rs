use std::process::ExitCode;

use anyhow::Context;

use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source: a pod (`namespace/name`) or a node (`node-N`).
    pub from: String,
    /// Destination: a pod (`namespace/name`) or a node (`node-N`); its lab address is pinged.
    pub to: String,
    /// Echo requests to send.
    #[arg(short = 'c', long, default_value_t = 3)]
    pub count: u32,
}

/// Pings from inside the source's namespace; the exit status is ping's.
pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    let out = crate::pod::ping(lab, &args.from, &args.to, args.count)
        .with_context(|| format!("ping {} → {}", args.from, args.to))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(if out.status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
