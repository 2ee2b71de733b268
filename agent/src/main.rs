//! `tortie-node`: parses arguments and the environment, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tortie_node::config::Config;

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
    /// Run only the BGP speaker and its kernel route sync, from a config file, without
    /// Kubernetes.
    Bgp {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print tortie's CustomResourceDefinitions as YAML.
    Crds,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes in log files (the lab and DaemonSets capture stderr).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
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
    init_logging();
    let result = match cli.command {
        Command::Run => run(),
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
    for partial in config.partial_support() {
        tracing::warn!("{partial}");
    }
    for var in &config.ignored_variables {
        tracing::warn!(variable = %var, "{var} is set but tortie does not read it: ignored");
    }
    tracing::info!(node = %config.node_name, pool = %config.ipv4_pool.cidr, "starting tortie-node");
    runtime()?.block_on(tortie_node::run::run(config))?;
    Ok(())
}

fn bgp(config: PathBuf) -> anyhow::Result<()> {
    runtime()?.block_on(tortie_node::standalone::run(&config))?;
    Ok(())
}

fn crds() -> anyhow::Result<()> {
    print!("{}", tortie_node::datastore::crds_yaml());
    Ok(())
}
