use std::process::ExitCode;

use crate::lab::Lab;
use crate::status::{gather, render_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format; the JSON shape is documented in README.md.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    let report = gather(lab)?;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", render_text(&report)),
    }
    Ok(ExitCode::SUCCESS)
}
