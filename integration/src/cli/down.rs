use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::lab::Lab;
use crate::teardown::down;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(lab: &Lab, _args: Args) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let removed =
        down(lab).with_context(|| format!("down (state {})", lab.state_dir().display()))?;
    println!(
        "lab down in {:.1}s: {} processes killed, {} namespaces deleted{}, {} mounts, state folder {}",
        start.elapsed().as_secs_f64(),
        removed.processes,
        removed.netns.len(),
        if removed.netns.is_empty() {
            String::new()
        } else {
            format!(" ({})", removed.netns.join(" "))
        },
        removed.mounts.len(),
        if removed.state_dir {
            "removed"
        } else {
            "absent"
        },
    );
    Ok(ExitCode::SUCCESS)
}
