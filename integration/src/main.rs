//! `tortie-lab`: see the library's `cli` module for the subcommands.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube-rs logs every failed request as an error; polling /readyz while the
                // apiserver boots fails on purpose, and real failures come back as values.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,kube_client::client::builder=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = tortie_lab::cli::Cli::parse();
    match tortie_lab::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tortie-lab: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
