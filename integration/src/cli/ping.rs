use std::process::ExitCode;

use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source pod, `namespace/name`.
    pub from: String,
    /// Destination pod (`namespace/name`) or address.
    pub to: String,
}

pub fn run(_lab: &Lab, _args: Args) -> anyhow::Result<ExitCode> {
    super::not_yet("ping", 3)
}
