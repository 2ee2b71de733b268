//! `tortie-node`: parses arguments and the environment, and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tortie_node::config::Config;
use tortie_node::run::health;
use tortie_node::{health_probe, install_cni};

#[derive(Parser)]
#[command(name = "tortie-node", version, about = "tortie's per-node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (configured from the environment, calico-node's variable names).
    Run,
    /// Install the CNI plugin and the conflist made from CNI_NETWORK_CONFIG, then exit (the
    /// DaemonSet's init container, as Calico's install-cni).
    InstallCni,
    /// Ask the running agent whether it is live or ready: exit 0 if so, else 1 with why (the
    /// DaemonSet's exec probes).
    Health {
        #[command(flatten)]
        probe: ProbeArg,
        /// The agent's socket.
        #[arg(long, env = "TORTIE_AGENT_SOCKET", default_value = tortie_api::DEFAULT_AGENT_SOCKET)]
        socket: PathBuf,
    },
    /// Run only the BGP speaker and its kernel route sync, from a config file, without
    /// Kubernetes.
    Bgp {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print tortie's CustomResourceDefinitions as YAML.
    Crds,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ProbeArg {
    /// The agent answers (liveness).
    #[arg(long)]
    live: bool,
    /// The agent answers that it is ready (readiness).
    #[arg(long)]
    ready: bool,
}

/// How log lines are written, from `TORTIE_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// For people: one line per event, fields as `key=value`.
    Text,
    /// For log collectors: one JSON object per line.
    Json,
}

const LOG_FORMAT_VAR: &str = "TORTIE_LOG_FORMAT";

impl LogFormat {
    /// `None`: the variable is unset, which means text.
    fn parse(value: Option<&str>) -> Result<LogFormat, String> {
        match value {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(format!(
                "{LOG_FORMAT_VAR}={other:?}: expected \"text\" or \"json\""
            )),
        }
    }

    fn from_env() -> Result<LogFormat, String> {
        match std::env::var(LOG_FORMAT_VAR) {
            Ok(v) => LogFormat::parse(Some(&v)),
            Err(std::env::VarError::NotPresent) => LogFormat::parse(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!(
                "{LOG_FORMAT_VAR}={v:?}: expected \"text\" or \"json\""
            )),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // No colour codes in log files (the lab and DaemonSets capture stderr).
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Keeps large allocations out of the heap, so that memory freed after a burst goes back to
/// the kernel. glibc otherwise raises its mmap threshold each time a large block is freed
/// (up to 32 MiB): after a full BGP table's hash tables had grown through their doublings,
/// the freed smaller tables and batch buffers stayed in the heap as holes, and RSS held
/// about 35 bytes per route more than the tables themselves (`scripts/lab bench bgp`).
/// A fixed threshold also turns off that dynamic adjustment.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fix_malloc_mmap_threshold() {
    const THRESHOLD: libc::c_int = 256 * 1024;
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread
    // starts, and a refusal (return 0) leaves glibc's defaults, which are merely larger.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_mmap_threshold() {}

fn main() -> ExitCode {
    fix_malloc_mmap_threshold();
    let cli = Cli::parse();
    // Before logging starts: a bad format has no log to be reported in.
    let log_format = match LogFormat::from_env() {
        Ok(format) => format,
        Err(e) => {
            eprintln!("tortie-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(log_format);
    let result = match cli.command {
        Command::Run => run(),
        Command::InstallCni => install_cni(),
        Command::Health { probe, socket } => return health(&probe, &socket),
        Command::Bgp { config } => bgp(config),
        Command::Crds => crds(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our error messages already embed their causes, so `{e}` (not `{e:#}`, which
            // would repeat each cause) is the whole story.
            eprintln!("tortie-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run() -> anyhow::Result<()> {
    // Any bad variable stops the agent before it touches anything.
    let config = Config::from_env()?;
    config.refuse_unimplemented()?;
    let bgp_ready_window =
        health::bgp_ready_window(std::env::var(health::BGP_READY_WINDOW_VAR).ok().as_deref())
            .map_err(anyhow::Error::msg)?;
    for partial in config.partial_support() {
        tracing::warn!("{partial}");
    }
    for var in &config.ignored_variables {
        tracing::warn!(variable = %var, "{var} is set but tortie does not read it: ignored");
    }
    tracing::info!(node = %config.node_name, pool = %config.ipv4_pool.cidr, "starting tortie-node");
    runtime()?.block_on(tortie_node::run::run(config, bgp_ready_window))?;
    Ok(())
}

fn install_cni() -> anyhow::Result<()> {
    let settings = install_cni::Settings::from_env()?;
    let done = install_cni::install(&settings, &install_cni::shipped_plugin()?)?;
    tracing::info!(plugin = %done.plugin.display(), conflist = %done.conflist.display(), "CNI installed");
    Ok(())
}

fn health(probe: &ProbeArg, socket: &Path) -> ExitCode {
    let probe = if probe.live {
        health_probe::Probe::Live
    } else {
        health_probe::Probe::Ready
    };
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(health_probe::ask(socket, health_probe::ANSWER_TIMEOUT)))
        .unwrap_or_else(|e| health_probe::Answer::Unreachable(format!("tokio runtime: {e}")));
    match health_probe::verdict(probe, &answer) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

fn bgp(config: PathBuf) -> anyhow::Result<()> {
    runtime()?.block_on(tortie_node::standalone::run(&config))?;
    Ok(())
}

fn crds() -> anyhow::Result<()> {
    print!("{}", tortie_node::datastore::crds_yaml());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_format_is_text_unless_json_is_chosen() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("json")), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::parse(Some("JSON")),
            Err("TORTIE_LOG_FORMAT=\"JSON\": expected \"text\" or \"json\"".into())
        );
    }
}
