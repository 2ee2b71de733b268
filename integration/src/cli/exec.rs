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

/// Runs the command in the target's namespace as it would run on a node: the built
/// binaries (`tortie-node`, `tortiectl`, `tortie`, next to `tortie-lab`) come first on the
/// PATH, and in a node the agent's socket is where they look for it by default.
pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    let netns = target_netns(lab, &args.target)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &netns]).args(&args.command);
    if let Some(path) = path_with_built_binaries() {
        cmd.env("PATH", path);
    }
    if lab.node_netns(&args.target) == netns {
        // On a node, tortie-node (TORTIE_AGENT_SOCKET) and tortiectl (TORTIE_SOCKET) find
        // the agent at /var/run/tortie/agent.sock by default; the lab's is per node.
        let socket = lab.agent_socket(&args.target);
        cmd.env("TORTIE_AGENT_SOCKET", &socket)
            .env("TORTIE_SOCKET", &socket);
    }
    let err = cmd.exec();
    bail!("running {:?} in {netns}: {err}", args.command)
}

/// Our PATH with the folder of the running `tortie-lab` (where cargo builds every binary of
/// the workspace) in front.
fn path_with_built_binaries() -> Option<OsString> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&rest))).ok()
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
