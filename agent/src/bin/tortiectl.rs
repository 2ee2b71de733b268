//! tortiectl: the command-line view of a tortie-node (or standalone BGP daemon).
//! `tortiectl [--socket PATH] node status [-o json]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tortie_api::v1::StatusRequest;
use tortie_api::v1::status_client::StatusClient;
use tortie_node::node_status::{NOT_RUNNING, node_status, render_json, render_table};

#[derive(Parser)]
#[command(name = "tortiectl", version, about = "Inspect a tortie node")]
struct Cli {
    /// The agent's (or `tortie-node bgp` daemon's) API socket.
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
}

#[derive(Subcommand)]
enum NodeCommand {
    /// The daemon's state and its BGP sessions, as `calicoctl node status` prints them.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
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
    let Command::Node {
        command: NodeCommand::Status { output },
    } = cli.command;
    let reply = match tortie_api::connect_unix(&cli.socket).await {
        Ok(channel) => StatusClient::new(channel)
            .get_status(StatusRequest {})
            .await
            .with_context(|| format!("asking {} for its status", cli.socket.display()))?
            .into_inner(),
        Err(e) => {
            // Calico prints this and fails; a script can test the exit code.
            explain_connect_failure(&cli.socket, &e);
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
        Output::Table => print!("{}", render_table(&status)),
        Output::Json => print!("{}", render_json(&status)?),
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
