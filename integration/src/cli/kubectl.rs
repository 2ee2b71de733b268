use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::bail;

use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Passed to kubectl unchanged.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// Replaces this process with kubectl, run inside the control namespace (the only place the
/// apiserver can be reached) with the admin kubeconfig.
pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    if !lab.admin_kubeconfig().exists() {
        bail!(
            "no lab at {} (run `scripts/lab up` first)",
            lab.state_dir().display()
        );
    }
    let err = crate::up::kubectl(lab).args(&args.args).exec();
    bail!("running kubectl: {err}")
}
