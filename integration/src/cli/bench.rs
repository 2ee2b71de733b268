use std::process::ExitCode;

use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario to run.
    pub scenario: String,
}

pub fn run(_lab: &Lab, _args: Args) -> anyhow::Result<ExitCode> {
    super::not_yet("bench", 4)
}
