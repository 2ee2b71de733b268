use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use anyhow::bail;

use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `node-N`, a pod as `namespace/name`, `control` or `lan`.
    pub target: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// The namespace a target names.
pub fn target_netns(lab: &Lab, target: &str) -> anyhow::Result<String> {
    let netns = match target {
        "control" => lab.control_netns(),
        "lan" => lab.lan_netns(),
        t => match t.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                lab.pod_netns(ns, name)
            }
            Some(_) => bail!("{t:?}: a pod is `namespace/name`"),
            None => lab.node_netns(t),
        },
    };
    if !lab.owns_netns(&netns) {
        bail!("{target:?} is not a lab node (node-N), pod (namespace/name), `control` or `lan`");
    }
    if !std::path::Path::new("/run/netns").join(&netns).exists() {
        bail!("{target:?}: namespace {netns} does not exist (is the lab up? is the pod there?)");
    }
    Ok(netns)
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    let netns = target_netns(lab, &args.target)?;
    let err = Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(&args.command)
        .exec();
    bail!("running {:?} in {netns}: {err}", args.command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_namespaces_or_errors() {
        let lab = Lab::new("/tmp/none", "tl-exec-test-");
        // None of these exist, so all fail, but each for its own reason.
        let e = |t: &str| {
            target_netns(&lab, t)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            e("node-2").contains("tl-exec-test-node-2 does not exist"),
            "{}",
            e("node-2")
        );
        assert!(e("default/web").contains("tl-exec-test-pod-default.web does not exist"));
        assert!(e("control").contains("tl-exec-test-tortie-ctl"));
        assert!(e("a/b/c").contains("namespace/name"));
        assert!(e("/x").contains("namespace/name"));
        assert!(e("eth0").contains("is not a lab node"));
    }
}
