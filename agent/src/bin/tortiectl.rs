//! tortiectl: the command-line view of a tortie cluster and node.
//! - `tortiectl [--socket PATH] node status [-o table|json]`: asks the node's agent (or
//!   standalone BGP daemon) over its socket.
//! - `tortiectl ipam show [--show-blocks] [--ip ADDR]`, `tortiectl ipam check` and
//!   `tortiectl get ippools|bgppeers|bgpconfig|nodes [-o table|yaml|json]`: read the
//!   apiserver (`KUBECONFIG`, else in-cluster), as calicoctl does with the Kubernetes
//!   datastore; no agent needed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tortie_api::v1::StatusRequest;
use tortie_api::v1::status_client::StatusClient;
use tortie_node::ctl::check::{Cluster, check, render_check};
use tortie_node::ctl::get::{Format, Resource, get};
use tortie_node::ctl::ipam::{IpamState, render_usage, show_ip, usage};
use tortie_node::node_status::{NOT_RUNNING, node_status, render_json, render_table};

#[derive(Parser)]
#[command(
    name = "tortiectl",
    version,
    about = "Inspect a tortie cluster and node"
)]
struct Cli {
    /// The agent's (or `tortie-node bgp` daemon's) API socket, for `node status`.
    #[arg(long, env = "TORTIE_SOCKET", default_value = tortie_api::DEFAULT_AGENT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node commands.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// IP address management, read from the apiserver.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// List tortie's resources, or its view of the nodes.
    Get {
        #[arg(value_enum)]
        resource: Resource,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// The daemon's state and its BGP sessions, as `calicoctl node status` prints them.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = StatusOutput::Table)]
        output: StatusOutput,
    },
}

#[derive(Subcommand)]
enum IpamCommand {
    /// Usage of each IP pool, as `calicoctl ipam show` prints it.
    Show {
        /// Also each block: its network, the node it is affine to, its usage.
        #[arg(long)]
        show_blocks: bool,
        /// Who holds this address, or which block and pool it would come from. Fails for an
        /// address outside every pool.
        #[arg(long, conflicts_with = "show_blocks")]
        ip: Option<IpAddr>,
    },
    /// Looks for leaked allocations, conflicts and orphaned affinities; changes nothing.
    /// Exits 1 when it finds any.
    Check,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusOutput {
    Table,
    Json,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tortiectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Node {
            command: NodeCommand::Status { output },
        } => node_status_command(&cli.socket, output).await,
        Command::Ipam { command } => {
            let client = apiserver().await?;
            let state = IpamState::load(&client).await?;
            for e in &state.invalid {
                eprintln!("tortiectl: warning: {e} (agents ignore it)");
            }
            match command {
                IpamCommand::Show { ip: Some(ip), .. } => match show_ip(&state, ip) {
                    Ok(text) => print!("{text}"),
                    Err(e) => {
                        eprintln!("tortiectl: {e}");
                        return Ok(ExitCode::FAILURE);
                    }
                },
                IpamCommand::Show {
                    show_blocks,
                    ip: None,
                } => print!("{}", render_usage(&usage(&state, show_blocks), show_blocks)),
                IpamCommand::Check => {
                    let report = check(&state, &Cluster::load(&client).await?);
                    print!("{}", render_check(&report));
                    if !report.problems.is_empty() {
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { resource, output } => {
            print!("{}", get(&apiserver().await?, resource, output).await?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The apiserver client: `KUBECONFIG`, else the in-cluster service account.
async fn apiserver() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to the apiserver (set KUBECONFIG, or run in a pod)")
}

async fn node_status_command(
    socket: &std::path::Path,
    output: StatusOutput,
) -> anyhow::Result<ExitCode> {
    let reply = match tortie_api::connect_unix(socket).await {
        Ok(channel) => StatusClient::new(channel)
            .get_status(StatusRequest {})
            .await
            .with_context(|| format!("asking {} for its status", socket.display()))?
            .into_inner(),
        Err(e) => {
            // Calico prints this and fails; a script can test the exit code.
            explain_connect_failure(socket, &e);
            print!("{NOT_RUNNING}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let today = chrono::Local::now().date_naive();
    let status = node_status(
        &reply,
        |t| t.with_timezone(&chrono::Local).naive_local(),
        today,
    );
    match output {
        StatusOutput::Table => print!("{}", render_table(&status)),
        StatusOutput::Json => print!("{}", render_json(&status)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Says on stderr why the daemon looked absent, so "not running" is never a mystery.
fn explain_connect_failure(socket: &std::path::Path, e: &tonic::transport::Error) {
    let cause = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    eprintln!("tortiectl: cannot connect to {}: {cause}", socket.display());
}
