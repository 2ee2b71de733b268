//! One `tortie-node run` per node, inside the node's namespace, configured only through the
//! environment (the contract the agent implements):
//!
//! | variable | lab value |
//! |---|---|
//! | `KUBECONFIG` | `<state>/nodes/<node>/kubeconfig` |
//! | `NODENAME` | `<node>` |
//! | `TORTIE_AGENT_SOCKET` | `<state>/nodes/<node>/run/agent.sock` |
//! | `TORTIE_CNI_CONF_DIR` | `<state>/nodes/<node>/cni/net.d` |
//! | `TORTIE_CNI_BIN_DIR` | `<state>/nodes/<node>/cni/bin` |
//! | `CALICO_IPV4POOL_CIDR` | `up --pool` |
//! | `IP_AUTODETECTION_METHOD` | `interface=eth0` |
//!
//! Output goes to `<state>/nodes/<node>/agent.log`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;
use crate::lab::{Lab, LabConfig, NodeConfig};
use crate::process::{self, Spec};

/// A binary built next to `tortie-lab` (`target/debug/NAME`), or from `env` when set. Test
/// binaries live one folder deeper (`target/debug/deps`), so that parent is tried too.
pub fn sibling_binary(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// The agent binary (`TORTIE_NODE_BIN` or next to `tortie-lab`).
pub fn agent_binary() -> Option<PathBuf> {
    sibling_binary("tortie-node", "TORTIE_NODE_BIN")
}

/// Why [`agent_binary`] gives nothing to start, for `up`'s report.
pub fn missing_binary_reason() -> String {
    match std::env::var_os("TORTIE_NODE_BIN") {
        Some(p) => format!("TORTIE_NODE_BIN={} is not a file", Path::new(&p).display()),
        None => "tortie-node is not built next to tortie-lab (cargo build -p tortie-node)".into(),
    }
}

/// How much of an agent's log `up` shows for an agent that is not ready.
pub const LOG_TAIL_LINES: usize = 10;

/// Where Debian's containernetworking-plugins puts the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Makes the node's private tree: socket folder and CNI folders. The CNI bin folder gets the
/// reference plugins (loopback, portmap, ...) linked in, as a node image would ship them in
/// /opt/cni/bin; the agent itself installs the `tortie` plugin and the conflist there.
pub fn prepare_tree(lab: &Lab, node: &str) -> Result<(), Error> {
    for dir in [
        lab.agent_socket(node)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| lab.node_dir(node)),
        lab.cni_conf_dir(node),
        lab.cni_bin_dir(node),
    ] {
        crate::mkdir(&dir)?;
    }
    let plugins = std::fs::read_dir(REFERENCE_PLUGINS)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok());
    for plugin in plugins {
        let link = lab.cni_bin_dir(node).join(plugin.file_name());
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(plugin.path(), &link)
                .map_err(Error::io(format!("linking {}", link.display())))?;
        }
    }
    Ok(())
}

pub fn spec(lab: &Lab, config: &LabConfig, node: &NodeConfig, binary: &Path) -> Spec {
    let env = |k: &str, v: OsString| (k.to_string(), v);
    Spec {
        netns: node.netns.clone(),
        program: binary.to_path_buf(),
        args: vec!["run".into()],
        env: vec![
            env(
                "KUBECONFIG",
                lab.node_kubeconfig(&node.name).into_os_string(),
            ),
            env("NODENAME", node.name.clone().into()),
            env(
                "TORTIE_AGENT_SOCKET",
                lab.agent_socket(&node.name).into_os_string(),
            ),
            env(
                "TORTIE_CNI_CONF_DIR",
                lab.cni_conf_dir(&node.name).into_os_string(),
            ),
            env(
                "TORTIE_CNI_BIN_DIR",
                lab.cni_bin_dir(&node.name).into_os_string(),
            ),
            env("CALICO_IPV4POOL_CIDR", config.pool.to_string().into()),
            env("IP_AUTODETECTION_METHOD", "interface=eth0".into()),
        ],
        log: lab.agent_log(&node.name),
        pid_file: lab.agent_pid_file(&node.name),
    }
}

/// What became of one node's agent after `up` started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The binary is not built (yet): nothing was started.
    NotBuilt,
    /// It answers `Status.GetStatus` with ready = true.
    Ready { pid: i32 },
    /// It runs, but is not ready (or not answering) by the deadline.
    Running { pid: i32, health: Health },
    /// It exited; `tail` is the end of its log.
    Exited { status: String, tail: String },
}

impl Outcome {
    pub fn is_ready(&self) -> bool {
        matches!(self, Outcome::Ready { .. })
    }
}

/// Health as the agent reports it over its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady(String),
    Unreachable(String),
}

impl Health {
    /// `ready`, `not-ready` or `unreachable`: the `health` field of `status -o json`.
    pub fn word(&self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::NotReady(_) => "not-ready",
            Health::Unreachable(_) => "unreachable",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Ready => None,
            Health::NotReady(r) | Health::Unreachable(r) => Some(r),
        }
    }
}

/// Asks the agent behind `socket` for its status. A unix socket is reached by path, from
/// any network namespace.
pub async fn health(socket: &Path) -> Health {
    let ask = async {
        let channel = tortie_api::connect_unix(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = tortie_api::v1::status_client::StatusClient::new(channel);
        client
            .get_status(tortie_api::v1::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("GetStatus: {}", e.message()))
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(reply)) if reply.ready => Health::Ready,
        Ok(Ok(reply)) => Health::NotReady(reply.reason),
        Ok(Err(e)) => Health::Unreachable(e),
        Err(_) => Health::Unreachable("no answer within 2s".into()),
    }
}

/// Blocking [`health`], on a small runtime of its own.
pub fn health_blocking(socket: &Path) -> Health {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(health(socket)),
        Err(e) => Health::Unreachable(format!("tokio runtime: {e}")),
    }
}

/// Starts the agent of every node that has none running. Returns, per node, the child we
/// started or the pid already running, or `None` when the binary is missing.
pub fn ensure_all(lab: &Lab, config: &LabConfig) -> Result<Vec<(String, Option<Started>)>, Error> {
    let binary = agent_binary().filter(|p| p.is_file());
    let mut out = Vec::new();
    for node in &config.nodes {
        let started = match (
            &binary,
            process::running(lab, &lab.agent_pid_file(&node.name)),
        ) {
            (_, Some(pid)) => Some(Started::Running(pid)),
            (None, None) => None,
            (Some(bin), None) => Some(Started::Spawned(process::spawn(
                lab,
                &spec(lab, config, node, bin),
            )?)),
        };
        out.push((node.name.clone(), started));
    }
    Ok(out)
}

pub use crate::control::Started;

/// Waits up to `timeout` for each agent to be ready or to exit, and says which it was.
pub fn settle(
    lab: &Lab,
    started: Vec<(String, Option<Started>)>,
    timeout: Duration,
) -> Vec<(String, Outcome)> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(String, Started)> = Vec::new();
    let mut done: Vec<(String, Outcome)> = Vec::new();
    for (node, s) in started {
        match s {
            None => done.push((node, Outcome::NotBuilt)),
            Some(s) => pending.push((node, s)),
        }
    }
    loop {
        let mut still = Vec::new();
        for (node, mut s) in pending {
            let exited = match &mut s {
                Started::Spawned(child) => child.try_wait().ok().flatten().map(|st| st.to_string()),
                Started::Running(pid) => (!process::is_alive(*pid)).then(|| "exited".to_string()),
            };
            if let Some(status) = exited {
                let tail = process::log_tail(&lab.agent_log(&node), LOG_TAIL_LINES);
                done.push((node, Outcome::Exited { status, tail }));
                continue;
            }
            let pid = match &s {
                Started::Spawned(child) => i32::try_from(child.id()).unwrap_or(-1),
                Started::Running(pid) => *pid,
            };
            let health = health_blocking(&lab.agent_socket(&node));
            if health == Health::Ready {
                done.push((node, Outcome::Ready { pid }));
            } else if Instant::now() >= deadline {
                done.push((node, Outcome::Running { pid, health }));
            } else {
                still.push((node, s));
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    done.sort_by(|a, b| crate::status::node_order(&a.0, &b.0));
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_the_env_contract() {
        let lab = Lab::new("/s", "p-");
        let config = LabConfig {
            prefix: "p-".into(),
            pool: "10.9.0.0/16".parse().unwrap_or_else(|e| panic!("{e}")),
            nodes: vec![],
            etcd_storage: None,
        };
        let node = NodeConfig {
            name: "node-2".into(),
            netns: "p-node-2".into(),
            ip: "172.31.0.12".parse().unwrap_or_else(|e| panic!("{e}")),
        };
        let s = spec(&lab, &config, &node, Path::new("/bin/tortie-node"));
        let get = |k: &str| {
            s.env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(s.netns, "p-node-2");
        assert_eq!(get("NODENAME").as_deref(), Some("node-2"));
        assert_eq!(
            get("TORTIE_AGENT_SOCKET").as_deref(),
            Some("/s/nodes/node-2/run/agent.sock")
        );
        assert_eq!(get("CALICO_IPV4POOL_CIDR").as_deref(), Some("10.9.0.0/16"));
        assert_eq!(
            get("IP_AUTODETECTION_METHOD").as_deref(),
            Some("interface=eth0")
        );
        assert_eq!(
            get("KUBECONFIG").as_deref(),
            Some("/s/nodes/node-2/kubeconfig")
        );
        assert_eq!(s.log, PathBuf::from("/s/nodes/node-2/agent.log"));
    }

    #[test]
    fn an_absent_agent_is_unreachable() {
        let h = health_blocking(Path::new("/nonexistent/agent.sock"));
        assert_eq!(h.word(), "unreachable");
    }
}
