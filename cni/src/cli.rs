//! One invocation of the plugin: the environment and stdin in, stdout and an exit code out.
//! `main.rs` only reads stdin and exits with what this returns.

use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::agent::GrpcAgent;
use crate::config::{LogLevel, NetConf, sniff_version};
use crate::env::{CniEnv, Command};
use crate::error::{CniError, Code};
use crate::lock::{self, PodLock};
use crate::netns::KernelDataplane;
use crate::version::{Version, version_json};

pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

fn failure(err: &CniError, stdin: &[u8]) -> Outcome {
    // Label the error with the runtime's version when it is one we speak, so it parses it.
    let version = sniff_version(stdin)
        .filter(|v| Version::parse(v).is_ok())
        .unwrap_or_else(|| Version::LATEST.to_string());
    tracing::error!(code = err.code.number(), msg = %err.msg, details = %err.details, "failed");
    Outcome {
        stdout: err.to_json(&version),
        exit_code: 1,
    }
}

fn init_logging(level: LogLevel) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    // stdout is the result channel; logs go to stderr, which runtimes keep for diagnosis.
    // Our own events at the configured level; the libraries' (h2, tower) only when they warn.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("tortie_cni", level)
        .with_default(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level)
        .finish()
        .with(filter)
        .try_init();
}

/// Runs the plugin as the runtime invoked it.
pub fn run(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: Result<Vec<u8>, std::io::Error>,
) -> Outcome {
    let stdin = match stdin {
        Ok(s) => s,
        Err(e) => {
            let err = CniError::new(Code::IoFailure, "cannot read the network config from stdin")
                .with_details(e.to_string());
            return failure(&err, b"");
        }
    };
    let env = match CniEnv::parse(&get_env) {
        Ok(e) => e,
        Err(err) => return failure(&err, &stdin),
    };
    if env.command == Command::Version {
        return Outcome {
            stdout: version_json(sniff_version(&stdin).as_deref()),
            exit_code: 0,
        };
    }
    let conf = match NetConf::parse(&stdin) {
        Ok(c) => c,
        Err(err) => return failure(&err, &stdin),
    };
    init_logging(conf.log_level);
    tracing::debug!("plugin started");

    // Held until the command is done (see `lock`): another ADD or DEL of this pod waits for
    // it, and so never finds a half-made or half-removed veth.
    let lock = match env.command {
        Command::Add | Command::Del => {
            let dir = lock::dir_for(&conf.agent_socket);
            match PodLock::acquire(&dir, &env.host_ifname(), conf.timeout) {
                Ok(l) => Some(l),
                Err(err) => return failure(&err, &stdin),
            }
        }
        _ => None,
    };

    // One worker thread besides this one. ADD makes the veth pair with blocking netlink
    // calls on this thread while Allocate is in flight, and tonic drives the request onto
    // the socket (and its reply back) in tasks it spawns. On a current-thread runtime those
    // tasks would run only when this thread yields, i.e. after the veth request, and the
    // request would leave that much later; the worker runs them meanwhile. Measured against
    // the lab's agent (150 interleaved ADDs, busy 2-core machine): Allocate answered about
    // 0.25 ms sooner than on a current-thread runtime, and starting the worker cost about as
    // much; the gain should show on a quiet machine, where a thread starts in ~0.1 ms.
    // Netns work has its own thread either way.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let err = CniError::new(Code::IoFailure, "cannot start the async runtime")
                .with_details(e.to_string());
            return failure(&err, &stdin);
        }
    };
    let span = tracing::info_span!(
        "cni",
        cmd = env.command.as_str(),
        container = %env.container_id,
        pod = env.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default(),
    );
    let mut agent = GrpcAgent::new(conf.agent_socket.clone(), conf.timeout);
    let mut dataplane = KernelDataplane::new();
    let result = runtime
        .block_on(crate::commands::run(&env, &conf, &mut agent, &mut dataplane).instrument(span));
    // The answer is in hand and the process exits right after: waiting for the worker to
    // wind down the agent's connection would only delay the runtime reading our stdout.
    runtime.shutdown_background();
    if let (Command::Del, Ok(_), Some(lock)) = (env.command, &result, lock) {
        lock.remove();
    }
    match result {
        Ok(out) => Outcome {
            stdout: out.unwrap_or_default(),
            exit_code: 0,
        },
        Err(err) => failure(&err, &stdin),
    }
}
