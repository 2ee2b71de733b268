use std::process::ExitCode;

use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Create a pod on a node: its Pod object, its netns, wired by the real CNI plugin.
    Add {
        /// `namespace/name`.
        pod: String,
        /// The node it runs on.
        #[arg(long)]
        node: String,
    },
    /// Delete a pod: CNI DEL, its netns, its Pod object.
    Del {
        /// `namespace/name`.
        pod: String,
    },
}

pub fn run(_lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Add { .. } => super::not_yet("pod add", 3),
        Action::Del { .. } => super::not_yet("pod del", 3),
    }
}
