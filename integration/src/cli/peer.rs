use std::process::ExitCode;

use anyhow::Context;

use crate::lab::Lab;
use crate::peers::{self, PeerKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start a real BIRD or FRR on the LAN as a top-of-rack router, peered with every node
    /// through a global BGPPeer.
    Add(AddArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The router: BIRD 2 or FRR's bgpd.
    #[arg(long, value_enum)]
    pub kind: PeerKind,
    /// The peer's name: its namespace, its BGPPeer and its Secret are named after it.
    pub name: String,
    /// The router's AS (eBGP to the nodes' 64512 by default).
    #[arg(long, default_value_t = 65000)]
    pub asn: u32,
    /// The AS the router expects the nodes in: BGPConfiguration `default`'s `asNumber` if
    /// the lab sets one (the lab's agents run without `AS`).
    #[arg(long, default_value_t = peers::NODE_ASN)]
    pub node_asn: u32,
    /// TCP MD5 password: the router gets it, and the BGPPeer reads it from a Secret. Read
    /// from this environment variable, so that it never shows in a process listing.
    #[arg(long, value_name = "ENV_VAR")]
    pub password_from_env: Option<String>,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Add(a) => {
            let password = match &a.password_from_env {
                Some(var) => Some(
                    std::env::var(var)
                        .with_context(|| format!("--password-from-env {var}: not set"))?,
                ),
                None => None,
            };
            let new = peers::NewPeer {
                kind: a.kind,
                name: &a.name,
                asn: a.asn,
                node_asn: a.node_asn,
                password: password.as_deref(),
            };
            let record = peers::add(lab, new).with_context(|| format!("peer add {}", a.name))?;
            println!(
                "peer {} ({:?}, AS {}) at {} in netns {}, peered with {} node(s) through BGPPeer {}{}",
                record.name,
                record.kind,
                record.asn,
                record.address,
                record.netns,
                record.nodes.len(),
                record.name,
                if record.password {
                    format!(
                        " (password in Secret kube-system/{})",
                        peers::secret_name(&record.name)
                    )
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
