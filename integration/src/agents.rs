//! Each node runs tortie's DaemonSet pod as a kubelet would, from `manifests/tortie.yaml`:
//! first the `install-cni` init container's command, to completion, then the main
//! container's (`tortie-node run`), both inside the node's namespace with the `tortie-node`
//! built next to `tortie-lab` for the image's. Each gets a cleared environment holding only
//! its container's env from the manifest (values, ConfigMap keys from the manifest's
//! ConfigMap, `spec.nodeName` as the node's name), `PATH`, and the settings a user would
//! change for this cluster, which replace the manifest's:
//!
//! | variable | lab value | container |
//! |---|---|---|
//! | `TORTIE_AGENT_SOCKET` | `<state>/nodes/<node>/run/agent.sock` | both |
//! | `TORTIE_CNI_CONF_DIR` | `<state>/nodes/<node>/cni/net.d` | install-cni |
//! | `TORTIE_CNI_BIN_DIR` | `<state>/nodes/<node>/cni/bin` | install-cni |
//! | `KUBECONFIG` | `<state>/nodes/<node>/kubeconfig` (no in-cluster config here) | agent |
//! | `CALICO_IPV4POOL_CIDR` | `up --pool` | agent |
//! | `IP_AUTODETECTION_METHOD` | `interface=eth0` | agent |
//! | `FELIX_PROMETHEUSMETRICSENABLED` | `true` (metrics on 9091 in the node's namespace) | agent |
//!
//! Output of both goes to `<state>/nodes/<node>/agent.log`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container};
use serde::Deserialize;

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
/// /opt/cni/bin; `tortie-node install-cni` adds the `tortie` plugin and the conflist.
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

/// tortie's manifest, in `manifests/` (`TORTIE_MANIFESTS` overrides the folder).
pub fn manifest_path() -> PathBuf {
    crate::objects::manifests_dir().join("tortie.yaml")
}

/// The manifest's command for the agent's image: replaced by the built binary.
const IMAGE_BINARY: &str = "tortie-node";
/// The init container that installs the CNI plugin and conflist.
const INSTALL_CNI: &str = "install-cni";

/// The DaemonSet's pod, as the manifest defines it.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    pub install_cni: Container,
    pub agent: Container,
    /// The manifest's ConfigMaps' data, by name: what `configMapKeyRef` reads.
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

impl PodTemplate {
    /// Reads [`manifest_path`].
    pub fn load() -> Result<PodTemplate, Error> {
        let path = manifest_path();
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        PodTemplate::parse(&text).map_err(|detail| Error::Config { path, detail })
    }

    /// The one DaemonSet's `install-cni` init container and its one container, and the
    /// ConfigMaps beside them.
    pub fn parse(text: &str) -> Result<PodTemplate, String> {
        let mut daemon_sets = Vec::new();
        let mut config_maps = BTreeMap::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let doc = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
            match doc.get("kind").and_then(|k| k.as_str()) {
                Some("DaemonSet") => daemon_sets.push(
                    serde_yaml::from_value::<DaemonSet>(doc)
                        .map_err(|e| format!("the DaemonSet: {e}"))?,
                ),
                Some("ConfigMap") => {
                    let cm: ConfigMap =
                        serde_yaml::from_value(doc).map_err(|e| format!("a ConfigMap: {e}"))?;
                    let name = cm.metadata.name.clone().unwrap_or_default();
                    config_maps.insert(name, cm.data.unwrap_or_default());
                }
                _ => {}
            }
        }
        let [daemon_set] = <[DaemonSet; 1]>::try_from(daemon_sets)
            .map_err(|d| format!("{} DaemonSets; the lab runs exactly one", d.len()))?;
        let pod = daemon_set
            .spec
            .and_then(|s| s.template.spec)
            .ok_or("the DaemonSet has no pod spec")?;
        let install_cni = pod
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == INSTALL_CNI)
            .ok_or(format!(
                "the DaemonSet has no init container {INSTALL_CNI:?}"
            ))?;
        let [agent] = <[Container; 1]>::try_from(pod.containers)
            .map_err(|c| format!("{} containers; the lab runs exactly one", c.len()))?;
        Ok(PodTemplate {
            install_cni,
            agent,
            config_maps,
        })
    }

    /// `container`'s env with every `valueFrom` resolved as a kubelet on `node` would.
    pub fn env(&self, container: &Container, node: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for var in container.env.iter().flatten() {
            let bad =
                |why: String| format!("container {}: env {}: {why}", container.name, var.name);
            let value = match (&var.value, &var.value_from) {
                (value, None) => value.clone().unwrap_or_default(),
                (None, Some(from)) => {
                    if let Some(key_ref) = &from.config_map_key_ref {
                        self.config_maps
                            .get(&key_ref.name)
                            .and_then(|data| data.get(&key_ref.key))
                            .cloned()
                            .ok_or_else(|| {
                                bad(format!(
                                    "no key {:?} in a ConfigMap {:?} of the manifest",
                                    key_ref.key, key_ref.name
                                ))
                            })?
                    } else if from
                        .field_ref
                        .as_ref()
                        .is_some_and(|f| f.field_path == "spec.nodeName")
                    {
                        node.to_owned()
                    } else {
                        return Err(bad(
                            "the lab resolves only configMapKeyRef and fieldRef spec.nodeName"
                                .into(),
                        ));
                    }
                }
                (Some(_), Some(_)) => return Err(bad("both value and valueFrom".into())),
            };
            out.push((var.name.clone(), value));
        }
        Ok(out)
    }
}

/// What the lab starts for one node: the init container's run, then the agent's.
#[derive(Debug, Clone)]
pub struct NodeSpecs {
    pub install_cni: Spec,
    pub agent: Spec,
}

/// The manifest's containers as `node` runs them: `binary` for `tortie-node`, the env
/// resolved, the lab's settings over it, and nothing else but `PATH`.
pub fn specs(
    lab: &Lab,
    config: &LabConfig,
    node: &NodeConfig,
    binary: &Path,
    pod: &PodTemplate,
) -> Result<NodeSpecs, Error> {
    let name = node.name.as_str();
    let socket = (
        "TORTIE_AGENT_SOCKET",
        lab.agent_socket(name).into_os_string(),
    );
    let install_cni = [
        socket.clone(),
        (
            "TORTIE_CNI_CONF_DIR",
            lab.cni_conf_dir(name).into_os_string(),
        ),
        ("TORTIE_CNI_BIN_DIR", lab.cni_bin_dir(name).into_os_string()),
    ];
    let agent = [
        socket,
        ("KUBECONFIG", lab.node_kubeconfig(name).into_os_string()),
        ("CALICO_IPV4POOL_CIDR", config.pool.to_string().into()),
        ("IP_AUTODETECTION_METHOD", "interface=eth0".into()),
        ("FELIX_PROMETHEUSMETRICSENABLED", "true".into()),
    ];
    let spec = |container: &Container, overrides: &[(&str, OsString)], pid_file: PathBuf| {
        let invalid = |why: String| Error::Config {
            path: manifest_path(),
            detail: why,
        };
        let command: Vec<&String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .collect();
        let args = match command.split_first() {
            Some((program, args)) if *program == IMAGE_BINARY => args,
            _ => {
                return Err(invalid(format!(
                    "container {}: the command must start with {IMAGE_BINARY}, not {command:?}",
                    container.name
                )));
            }
        };
        let mut env: Vec<(String, OsString)> = pod
            .env(container, name)
            .map_err(invalid)?
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        for (var, value) in overrides {
            env.retain(|(k, _)| k != var);
            env.push((var.to_string(), value.clone()));
        }
        env.push((
            "PATH".into(),
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ));
        Ok(Spec {
            netns: node.netns.clone(),
            program: binary.to_path_buf(),
            args: args.iter().map(OsString::from).collect(),
            env,
            clear_env: true,
            log: lab.agent_log(name),
            pid_file,
        })
    };
    Ok(NodeSpecs {
        install_cni: spec(
            &pod.install_cni,
            &install_cni,
            lab.node_dir(name).join("install-cni.pid"),
        )?,
        agent: spec(&pod.agent, &agent, lab.agent_pid_file(name))?,
    })
}

/// How long install-cni may take: it copies a file and writes another.
const INSTALL_CNI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the init container's command to its end. `Ok(Err(why))`: it failed, and the agent
/// must not start, as a kubelet starts no container before the init containers succeed.
fn run_install_cni(lab: &Lab, spec: &Spec) -> Result<Result<(), String>, Error> {
    let mut child = process::spawn(lab, spec)?;
    let deadline = Instant::now() + INSTALL_CNI_TIMEOUT;
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break Ok(()),
            Ok(Some(status)) => break Err(status.to_string()),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("did not finish within {INSTALL_CNI_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(format!("waiting for it: {e}")),
        }
    };
    let _ = std::fs::remove_file(&spec.pid_file);
    Ok(outcome)
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
    /// It exited, or its install-cni failed (`status` then starts with `install-cni: `);
    /// `tail` is the end of its log.
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

/// Asks the agent behind `socket` for its status, as `tortie-node health` does.
pub async fn health(socket: &Path) -> Health {
    use tortie_node::health_probe::{Answer, ask};
    match ask(socket, Duration::from_secs(2)).await {
        Answer::Ready => Health::Ready,
        Answer::NotReady(why) | Answer::Stalled(why) => Health::NotReady(why),
        Answer::Unreachable(why) => Health::Unreachable(why),
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

/// What [`ensure_all`] did for one node.
#[derive(Debug)]
pub enum Launch {
    /// The binary is not built (yet): nothing was started.
    NotBuilt,
    /// install-cni failed (how), so the agent was not started.
    InstallCniFailed(String),
    /// The agent we started, or the one already running.
    Agent(Started),
}

/// Starts the agent of every node that has none running, after its install-cni, as a
/// kubelet starts a DaemonSet pod.
pub fn ensure_all(lab: &Lab, config: &LabConfig) -> Result<Vec<(String, Launch)>, Error> {
    let binary = agent_binary().filter(|p| p.is_file());
    let mut pod = None;
    let mut out = Vec::new();
    for node in &config.nodes {
        let launch = match (
            &binary,
            process::running(lab, &lab.agent_pid_file(&node.name)),
        ) {
            (_, Some(pid)) => Launch::Agent(Started::Running(pid)),
            (None, None) => Launch::NotBuilt,
            (Some(bin), None) => {
                let pod = match &pod {
                    Some(pod) => pod,
                    None => pod.insert(PodTemplate::load()?),
                };
                let specs = specs(lab, config, node, bin, pod)?;
                match run_install_cni(lab, &specs.install_cni)? {
                    Ok(()) => Launch::Agent(Started::Spawned(process::spawn(lab, &specs.agent)?)),
                    Err(why) => Launch::InstallCniFailed(why),
                }
            }
        };
        out.push((node.name.clone(), launch));
    }
    Ok(out)
}

pub use crate::control::Started;

/// Waits up to `timeout` for each agent to be ready or to exit, and says which it was.
pub fn settle(
    lab: &Lab,
    started: Vec<(String, Launch)>,
    timeout: Duration,
) -> Vec<(String, Outcome)> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<(String, Started)> = Vec::new();
    let mut done: Vec<(String, Outcome)> = Vec::new();
    for (node, launch) in started {
        match launch {
            Launch::NotBuilt => done.push((node, Outcome::NotBuilt)),
            Launch::InstallCniFailed(why) => {
                let tail = process::log_tail(&lab.agent_log(&node), LOG_TAIL_LINES);
                let status = format!("{INSTALL_CNI}: {why}");
                done.push((node, Outcome::Exited { status, tail }));
            }
            Launch::Agent(s) => pending.push((node, s)),
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

    fn lab_node() -> (Lab, LabConfig, NodeConfig) {
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
        (lab, config, node)
    }

    fn env_of(spec: &Spec) -> BTreeMap<String, String> {
        spec.env
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string_lossy().into_owned()))
            .collect()
    }

    /// The repository's manifest, run on node-2: its env, resolved, under the lab's settings.
    #[test]
    fn the_manifest_pod_runs_with_its_env_and_the_lab_settings_only() {
        let (lab, config, node) = lab_node();
        let pod = PodTemplate::load().unwrap_or_else(|e| panic!("{e}"));
        let s = specs(&lab, &config, &node, Path::new("/bin/tortie-node"), &pod)
            .unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(s.install_cni.args, vec![OsString::from("install-cni")]);
        assert_eq!(s.agent.args, vec![OsString::from("run")]);
        for spec in [&s.install_cni, &s.agent] {
            assert_eq!(spec.netns, "p-node-2");
            assert_eq!(spec.program, PathBuf::from("/bin/tortie-node"));
            assert!(spec.clear_env);
            assert_eq!(spec.log, PathBuf::from("/s/nodes/node-2/agent.log"));
            let env = env_of(spec);
            assert_eq!(
                env.get("TORTIE_AGENT_SOCKET").map(String::as_str),
                Some("/s/nodes/node-2/run/agent.sock")
            );
            assert!(env.contains_key("PATH"));
            // Each variable once: an override replaces the manifest's value.
            assert_eq!(env.len(), spec.env.len(), "{:?}", spec.env);
        }

        let init = env_of(&s.install_cni);
        let data = &pod.config_maps["tortie-config"];
        assert_eq!(init["CNI_NETWORK_CONFIG"], data["cni_network_config"]);
        assert_eq!(init["CNI_MTU"], data["veth_mtu"]);
        assert_eq!(init["TORTIE_CNI_CONF_DIR"], "/s/nodes/node-2/cni/net.d");
        assert_eq!(init["TORTIE_CNI_BIN_DIR"], "/s/nodes/node-2/cni/bin");
        assert!(!init.contains_key("KUBECONFIG"), "{init:?}");

        let agent = env_of(&s.agent);
        assert_eq!(agent["NODENAME"], "node-2");
        assert_eq!(agent["CALICO_NETWORKING_BACKEND"], data["calico_backend"]);
        assert_eq!(agent["CALICO_IPV4POOL_CIDR"], "10.9.0.0/16");
        assert_eq!(agent["IP_AUTODETECTION_METHOD"], "interface=eth0");
        assert_eq!(agent["FELIX_PROMETHEUSMETRICSENABLED"], "true");
        assert_eq!(agent["KUBECONFIG"], "/s/nodes/node-2/kubeconfig");
        assert_eq!(agent["DATASTORE_TYPE"], "kubernetes");
        assert!(!agent.contains_key("TORTIE_CNI_CONF_DIR"), "{agent:?}");
    }

    const POD: &str = r#"
kind: ConfigMap
apiVersion: v1
metadata: {name: cfg}
data: {mtu: "1400"}
---
kind: DaemonSet
apiVersion: apps/v1
metadata: {name: ds}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      initContainers:
        - name: install-cni
          command: [tortie-node, install-cni]
          env:
            - {name: CNI_MTU, valueFrom: {configMapKeyRef: {name: cfg, key: mtu}}}
            - {name: GONE, valueFrom: {configMapKeyRef: {name: cfg, key: nope}}}
      containers:
        - name: agent
          command: [/bin/sh]
          args: [-c, run]
          env:
            - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
"#;

    fn failure<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
        match r {
            Ok(v) => panic!("succeeded: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn what_the_lab_cannot_run_is_named() {
        let (lab, config, node) = lab_node();
        let on_node = |pod: &PodTemplate| {
            failure(specs(
                &lab,
                &config,
                &node,
                Path::new("/bin/tortie-node"),
                pod,
            ))
        };
        let pod = PodTemplate::parse(POD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            failure(pod.env(&pod.install_cni, "n")),
            r#"container install-cni: env GONE: no key "nope" in a ConfigMap "cfg" of the manifest"#
        );
        assert_eq!(
            failure(pod.env(&pod.agent, "n")),
            "container agent: env POD_IP: the lab resolves only configMapKeyRef and fieldRef spec.nodeName"
        );
        let e = on_node(&pod);
        assert!(e.contains("container install-cni: env GONE"), "{e}");

        let no_init = POD.replace("name: install-cni", "name: other");
        assert_eq!(
            failure(PodTemplate::parse(&no_init)),
            r#"the DaemonSet has no init container "install-cni""#
        );
        assert_eq!(
            failure(PodTemplate::parse("kind: ConfigMap\nmetadata: {name: x}\n")),
            "0 DaemonSets; the lab runs exactly one"
        );
        let fixed = POD
            .replace("key: nope", "key: mtu")
            .replace("status.podIP", "spec.nodeName");
        let pod = PodTemplate::parse(&fixed).unwrap_or_else(|e| panic!("{e}"));
        let e = on_node(&pod);
        assert!(
            e.ends_with(r#"container agent: the command must start with tortie-node, not ["/bin/sh", "-c", "run"]"#),
            "{e}"
        );
    }

    #[test]
    fn an_absent_agent_is_unreachable() {
        let h = health_blocking(Path::new("/nonexistent/agent.sock"));
        assert_eq!(h.word(), "unreachable");
    }
}
