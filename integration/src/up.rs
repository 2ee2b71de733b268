//! `up`: builds the lab, phase by phase, each phase idempotent. The slow part is the
//! apiserver's start (about 3 s), so everything that does not need it (node namespaces,
//! kubeconfigs, node trees) happens while it boots.

use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::agents::{self, Outcome};
use crate::control::{self, Started};
use crate::lab::{
    EtcdStorage, Lab, LabConfig, MAX_NODES, NodeConfig, node_index, node_ip, node_name,
};
use crate::teardown::MARKER_FILE;
use crate::{Error, network, objects, pki, write_file};

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: u32,
    pub pool: Ipv4Net,
    /// How long to wait for agents to report ready. `up` returns the control plane up
    /// either way; [`not_ready`] says which agents are not and why.
    pub agent_timeout: Duration,
    /// Where etcd keeps its data; a lab whose etcd already has data keeps it where it is.
    pub etcd_storage: EtcdStorage,
}

impl Default for UpOptions {
    fn default() -> UpOptions {
        UpOptions {
            nodes: 3,
            pool: Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            agent_timeout: Duration::from_secs(30),
            etcd_storage: EtcdStorage::Disk,
        }
    }
}

/// What `up` ended with.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub config: LabConfig,
    pub agents: Vec<(String, Outcome)>,
    pub elapsed: Duration,
}

/// Prints `[  1.2s] message` lines as phases complete.
pub struct Progress {
    start: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            start: Instant::now(),
            quiet,
        }
    }
    pub fn say(&self, msg: &str) {
        if !self.quiet {
            println!("[{:5.1}s] {msg}", self.start.elapsed().as_secs_f64());
        }
    }
}

fn describe(what: &str, s: &Started) -> String {
    match s {
        Started::Running(pid) => format!("{what} already running (pid {pid})"),
        Started::Spawned(child) => format!("{what} started (pid {})", child.id()),
    }
}

/// Brings the lab up (or completes a half-made one).
pub fn up(lab: &Lab, opts: &UpOptions, progress: &Progress) -> Result<UpReport, Error> {
    let start = Instant::now();
    if opts.nodes == 0 || opts.nodes > MAX_NODES {
        return Err(Error::Invalid(format!(
            "--nodes {}: must be between 1 and {MAX_NODES}",
            opts.nodes
        )));
    }
    for tool in ["ip", "etcd", "kubectl"] {
        if which(tool).is_none() {
            return Err(Error::Invalid(format!(
                "{tool} not found in PATH: run scripts/deps"
            )));
        }
    }
    let state = lab.state_dir();
    crate::mkdir(state)?;
    // Tokens, keys and kubeconfigs live here: root only.
    std::fs::set_permissions(state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(Error::io(format!("chmod 700 {}", state.display())))?;
    write_file(
        &state.join(MARKER_FILE),
        b"state folder of a tortie lab; `tortie-lab down` deletes it\n",
    )?;

    let nodes: Vec<NodeConfig> = (1..=opts.nodes)
        .map(|i| node_config(lab, i))
        .collect::<Result<_, Error>>()?;
    let old = LabConfig::load(lab)?;
    check_no_foreign_netns(lab, old.as_ref())?;
    if let Some(old) = &old {
        let extra: Vec<&str> = old
            .nodes
            .iter()
            .filter(|n| !nodes.iter().any(|m| m.name == n.name))
            .map(|n| n.name.as_str())
            .collect();
        if !extra.is_empty() {
            progress.say(&format!(
                "note: {} from an earlier up stay until `down`",
                extra.join(", ")
            ));
        }
        if old.pool != opts.pool {
            progress.say(&format!(
                "note: the pool was {}; agents already running keep it (and IPPools live in etcd) until `down`",
                old.pool
            ));
        }
    }
    let etcd_storage = match control::etcd_storage_in_place(lab) {
        Some(there) => {
            if there != opts.etcd_storage {
                progress.say(&format!(
                    "note: etcd's data is on {there} already and stays there until `down`"
                ));
            }
            there
        }
        None => opts.etcd_storage,
    };
    let config = LabConfig {
        prefix: lab.prefix().to_string(),
        pool: opts.pool,
        nodes,
        etcd_storage: Some(etcd_storage),
    };
    // Recorded before any namespace exists, so that `down` after a crash knows them.
    config.save(lab)?;
    let agents = converge(lab, &config, opts.agent_timeout, progress)?;
    Ok(UpReport {
        config,
        agents,
        elapsed: start.elapsed(),
    })
}

/// Node `i` (1-based) of a lab: its name, namespace and LAN address.
pub fn node_config(lab: &Lab, i: u32) -> Result<NodeConfig, Error> {
    let name = node_name(i);
    let ip = node_ip(i).ok_or_else(|| Error::Invalid(format!("no LAN address for node {i}")))?;
    Ok(NodeConfig {
        netns: lab.node_netns(&name),
        name,
        ip,
    })
}

/// Makes the lab match `config`, already saved in `lab.json`: network, control plane, the
/// tokens and kubeconfigs of its nodes, their namespaces, the objects, and an agent on each
/// node that has none running; waits up to `agent_timeout` for the agents. `up` builds a whole
/// lab with it, `node add` one more node. A new node's token makes the apiserver restart (it
/// reads its token file only at start); running agents ride that out as any watch client does.
pub fn converge(
    lab: &Lab,
    config: &LabConfig,
    agent_timeout: Duration,
    progress: &Progress,
) -> Result<Vec<(String, Outcome)>, Error> {
    let etcd_storage = config.etcd_storage.unwrap_or_default();
    network::ensure_lan(lab)?;
    network::ensure_control(lab)?;
    progress.say(&format!(
        "network: LAN bridge in {}, control plane in {}",
        lab.lan_netns(),
        lab.control_netns()
    ));

    let etcd = control::ensure_etcd(lab, etcd_storage)?;
    progress.say(&format!(
        "{}, data on {etcd_storage}",
        describe("etcd", &etcd)
    ));
    if pki::ensure(lab)? {
        progress.say("pki: CA, apiserver certificate and service-account key made");
    }
    let (tokens, tokens_changed) = objects::ensure_tokens(lab, config)?;
    objects::write_kubeconfigs(lab, config, &tokens)?;
    let apiserver = control::ensure_apiserver(lab, tokens_changed)?;
    progress.say(&describe("kube-apiserver", &apiserver));

    for node in &config.nodes {
        let i = node_index(&node.name)
            .ok_or_else(|| Error::Invalid(format!("{:?} is not a lab node name", node.name)))?;
        network::ensure_node(lab, i, &node.netns, node.ip)?;
        agents::prepare_tree(lab, &node.name)?;
    }
    progress.say(&format!(
        "nodes: {} on the LAN",
        config
            .nodes
            .iter()
            .map(|n| format!("{} {}", n.name, n.ip))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    control::wait_ready(lab, Duration::from_secs(90))?;
    progress.say(&format!("kube-apiserver ready at {}", lab.apiserver_url()));

    apply_objects(lab, config, progress)?;

    let started = agents::ensure_all(lab, config)?;
    let outcomes = agents::settle(lab, started, agent_timeout);
    for (node, outcome) in &outcomes {
        progress.say(&format!("agent {node}: {}", outcome_line(outcome)));
    }
    Ok(outcomes)
}

/// Refuses to adopt namespaces another lab made: same prefix, other state folder. Reusing
/// them would put two etcds on one loopback and agents of one lab in the other's nodes.
/// Our own are the ones our `lab.json` lists (it is written before any namespace exists).
fn check_no_foreign_netns(lab: &Lab, old: Option<&LabConfig>) -> Result<(), Error> {
    let mut known: Vec<String> = old
        .iter()
        .flat_map(|c| c.nodes.iter().map(|n| n.netns.clone()))
        .collect();
    if old.is_some() {
        known.extend([lab.lan_netns(), lab.control_netns()]);
    }
    let pods = format!("{}pod-", lab.prefix());
    let foreign: Vec<String> = network::existing_netns()
        .into_iter()
        .filter(|n| lab.owns_netns(n) && !n.starts_with(&pods) && !known.contains(n))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "namespaces {} exist but are not part of the lab in {}: another lab uses the same names. \
         Remove it (`down` with its TORTIE_LAB_STATE), or give this one another TORTIE_LAB_PREFIX",
        foreign.join(", "),
        lab.state_dir().display()
    )))
}

/// One line on an agent's outcome, for `up`'s progress.
fn outcome_line(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NotBuilt => format!("NOT STARTED: {}", agents::missing_binary_reason()),
        Outcome::Ready { pid } => format!("ready (pid {pid})"),
        Outcome::Running { pid, health } => format!(
            "running (pid {pid}) but {}{}",
            health.word(),
            health
                .reason()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        Outcome::Exited { status, .. } => format!("EXITED ({status})"),
    }
}

/// Why `node`'s agent is not ready, with the last lines of its log when it was started;
/// `None` when it is ready. One entry of `up`'s failure message.
pub fn not_ready(lab: &Lab, node: &str, outcome: &Outcome) -> Option<String> {
    let log = lab.agent_log(node);
    let tail = match outcome {
        Outcome::Ready { .. } => return None,
        Outcome::NotBuilt => return Some(format!("  {node}: {}", outcome_line(outcome))),
        Outcome::Exited { tail, .. } => tail.clone(),
        Outcome::Running { .. } => crate::process::log_tail(&log, agents::LOG_TAIL_LINES),
    };
    let tail = if tail.trim().is_empty() {
        "    | (empty)".to_string()
    } else {
        indent(&tail)
    };
    Some(format!(
        "  {node}: {}; last lines of {}:\n{tail}",
        outcome_line(outcome),
        log.display()
    ))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `kubectl` command run inside the control namespace as admin.
pub fn kubectl(lab: &Lab) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.control_netns(), "kubectl"])
        .arg("--kubeconfig")
        .arg(lab.admin_kubeconfig())
        .arg("--cache-dir")
        .arg(lab.kubectl_cache_dir());
    cmd
}

/// One `kubectl apply` with everything: kube-system, the CRDs, tortie's manifest, the Nodes.
fn apply_objects(lab: &Lab, config: &LabConfig, progress: &Progress) -> Result<(), Error> {
    let manifests = objects::manifests_dir();
    let mut docs = String::from(objects::KUBE_SYSTEM_YAML);
    let mut parts = vec!["namespace kube-system".to_string()];
    let crds = manifests.join("crds.yaml");
    let have_crds = crds.is_file();
    for (file, what) in [
        (crds, "CRDs"),
        (
            manifests.join("tortie.yaml"),
            "tortie.yaml (RBAC, ConfigMap, DaemonSet)",
        ),
    ] {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                docs.push_str("\n---\n");
                docs.push_str(&text);
                docs.push('\n');
                parts.push(what.to_string());
            }
            Err(_) => progress.say(&format!(
                "note: {} not found: {what} skipped",
                file.display()
            )),
        }
    }
    docs.push_str(&objects::nodes_yaml(config)?);
    parts.push(format!("{} Nodes", config.nodes.len()));
    let file = lab.state_dir().join("objects.yaml");
    write_file(&file, docs.as_bytes())?;
    crate::run(kubectl(lab).args(["apply", "-f"]).arg(&file))?;
    if have_crds {
        // Agents watch the CRDs right away; make sure they are served before agents start.
        crate::run(kubectl(lab).args([
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=30s",
        ]))?;
    }
    progress.say(&format!("applied: {}", parts.join(", ")));
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
