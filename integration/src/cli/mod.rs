//! The `tortie-lab` command line. A subcommand is one variant of [`Command`] plus one module
//! here with an `Args` struct and a `run(&Lab, Args)` function.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::lab::Lab;

pub mod bench;
pub mod down;
pub mod exec;
pub mod kubectl;
pub mod node;
pub mod peer;
pub mod ping;
pub mod pod;
pub mod probe;
pub mod serve;
pub mod status;
pub mod up;

/// A whole tortie cluster on one machine, in network namespaces.
///
/// The state folder is TORTIE_LAB_STATE (default /var/lib/tortie-lab); namespace names get
/// the prefix TORTIE_LAB_PREFIX (default none).
#[derive(Debug, Parser)]
#[command(name = "tortie-lab", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the lab (idempotent): LAN, nodes, etcd + kube-apiserver, objects, agents.
    Up(up::Args),
    /// Remove everything the lab made, even after a crash (idempotent).
    Down(down::Args),
    /// Nodes (agent pid and health) and pods.
    Status(status::Args),
    /// Run the real kubectl against the lab's apiserver, as admin.
    Kubectl(kubectl::Args),
    /// Run a command inside a node's (`node-2`) or a pod's (`ns/name`) network namespace.
    Exec(exec::Args),
    /// Add, check or delete pods: the lab as kubelet + containerd.
    Pod(pod::Args),
    /// Ping a pod or node from a pod or node; without both, every pod to every pod and node.
    Ping(ping::Args),
    /// Nodes joining (`node add`) and leaving (`node del node-N`) the running lab.
    Node(node::Args),
    /// Routers on the LAN peered with the nodes through BGPPeers (`peer add`).
    Peer(peer::Args),
    /// Run a benchmark scenario (`cni`).
    Bench(bench::Args),
    /// Serve TCP and UDP in this namespace, answering with an identity (`pod add --serve`).
    #[command(hide = true)]
    Serve(serve::Args),
    /// Probe a TCP or UDP server from this namespace or a lab target's; exit 0 on an answer.
    #[command(hide = true)]
    Probe(probe::Args),
}

/// Runs the parsed command line against the lab the environment names.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let lab = Lab::from_env();
    match cli.command {
        Command::Up(args) => up::run(&lab, args),
        Command::Down(args) => down::run(&lab, args),
        Command::Status(args) => status::run(&lab, args),
        Command::Kubectl(args) => kubectl::run(&lab, args),
        Command::Exec(args) => exec::run(&lab, args),
        Command::Pod(args) => pod::run(&lab, args),
        Command::Ping(args) => ping::run(&lab, args),
        Command::Node(args) => node::run(&lab, args),
        Command::Peer(args) => peer::run(&lab, args),
        Command::Bench(args) => bench::run(&lab, args),
        Command::Serve(args) => serve::run(args),
        Command::Probe(args) => probe::run(&lab, args),
    }
}

/// Exit status of a subcommand that exists but does not work yet.
pub const NOT_YET: u8 = 2;

pub(crate) fn not_yet(what: &str, issue: u32) -> anyhow::Result<ExitCode> {
    eprintln!("tortie-lab {what}: not yet implemented (issue {issue})");
    Ok(ExitCode::from(NOT_YET))
}
