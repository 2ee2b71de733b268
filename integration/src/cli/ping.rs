use std::process::ExitCode;

use anyhow::Context;

use crate::lab::{Lab, LabConfig};
use crate::pod::ping_matrix::PingMatrix;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source: a pod (`namespace/name`) or a node (`node-N`). Without FROM and TO: every pod
    /// to every other pod and to every node but its own, as a matrix (as `--all`).
    #[arg(requires = "to")]
    pub from: Option<String>,
    /// Destination: a pod (`namespace/name`) or a node (`node-N`); its lab address is pinged.
    pub to: Option<String>,
    /// The matrix of every pod to every pod and remote node; exit 1 when any pair fails.
    #[arg(long, conflicts_with = "from")]
    pub all: bool,
    /// Echo requests to send (per pair); a pair is ok when any is answered.
    #[arg(short = 'c', long, default_value_t = 3)]
    pub count: u32,
    /// How many pings of the matrix run at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    match (&args.from, &args.to) {
        (Some(from), Some(to)) => ping_one(lab, from, to, args.count),
        _ => ping_all(lab, args.count, args.parallel),
    }
}

/// Pings from inside the source's namespace; the exit status is ping's.
fn ping_one(lab: &Lab, from: &str, to: &str, count: u32) -> anyhow::Result<ExitCode> {
    let out =
        crate::pod::ping(lab, from, to, count).with_context(|| format!("ping {from} → {to}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(exit_code(out.status.success()))
}

/// The matrix; exit 1 naming each failed pair.
fn ping_all(lab: &Lab, count: u32, parallel: usize) -> anyhow::Result<ExitCode> {
    let config = LabConfig::load(lab)?.with_context(|| {
        format!(
            "no lab at {} (run `scripts/lab up`)",
            lab.state_dir().display()
        )
    })?;
    let mut matrix = PingMatrix::of_lab(lab, &config).context("ping --all")?;
    if matrix.pairs() == 0 {
        anyhow::bail!("ping --all: nothing to ping: the lab has no pods (`scripts/lab pod add`)");
    }
    matrix
        .ping_all(lab, count, parallel)
        .context("ping --all")?;
    print!("{}", matrix.render());
    let failures = matrix.failures();
    if failures.is_empty() {
        println!("all {} pairs answered", matrix.pairs());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} of {} pairs failed:", failures.len(), matrix.pairs());
    for (from, to) in failures {
        println!("  FAIL {from} → {to}");
    }
    Ok(exit_code(false))
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
