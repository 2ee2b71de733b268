use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::pod::Protocol;
use crate::traffic::serve::{self, Listener};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to answer with, e.g. the pod's `namespace/name` (no spaces).
    #[arg(long)]
    pub identity: String,
    /// A TCP port to listen on, on every address (repeatable).
    #[arg(long = "tcp")]
    pub tcp: Vec<u16>,
    /// A UDP port to listen on, on every address (repeatable).
    #[arg(long = "udp")]
    pub udp: Vec<u16>,
}

/// Binds every port, prints `ready`, then answers until killed.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.identity.is_empty() || args.identity.contains(char::is_whitespace) {
        bail!(
            "--identity {:?}: one word, the answer is `<identity> <address>`",
            args.identity
        );
    }
    let listeners: Vec<Listener> = args
        .tcp
        .iter()
        .map(|&port| Listener {
            protocol: Protocol::Tcp,
            port,
        })
        .chain(args.udp.iter().map(|&port| Listener {
            protocol: Protocol::Udp,
            port,
        }))
        .collect();
    if listeners.is_empty() {
        bail!("nothing to serve: give --tcp PORT and/or --udp PORT");
    }
    let sockets = listeners
        .iter()
        .map(|l| serve::bind(*l))
        .collect::<Result<Vec<_>, _>>()
        .context("serve")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serve::READY).context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    drop(out);
    serve::run(&args.identity, sockets);
    Ok(ExitCode::FAILURE)
}
