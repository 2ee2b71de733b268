//! The container runtime's half of CNI, as libcni does it for containerd: read a conflist,
//! run each plugin in order (ADD, CHECK) or in reverse order (DEL), hand each one the
//! previous plugin's result as `prevResult`, inject `runtimeConfig` for the capabilities a
//! plugin declares, and read the result or the error JSON from its stdout.
//!
//! Plugins run inside the node's network namespace, since on a real node the runtime, the
//! plugin and the agent share the host's. The child is forked by a thread that has joined
//! that namespace ([`crate::kube_netns::in_netns`]), not through `ip netns exec`, whose own
//! mount namespace and /sys remount would cost more than the plugin itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::PodError;

/// The conflist's versions that know CHECK (SPEC.md: CHECK appeared in 0.4.0).
const CHECK_SINCE: (u32, u32, u32) = (0, 4, 0);
/// STATUS and GC appeared in 1.1.0.
const STATUS_GC_SINCE: (u32, u32, u32) = (1, 1, 0);

/// A parsed conflist: the network name and version every plugin entry inherits, and the
/// entries in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflist {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
}

impl Conflist {
    pub fn load(path: &Path) -> Result<Conflist, PodError> {
        let text = std::fs::read(path)
            .map_err(|e| PodError::Invalid(format!("reading conflist {}: {e}", path.display())))?;
        let bad = |why: String| PodError::Invalid(format!("conflist {}: {why}", path.display()));
        let v: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let name = v["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("no \"name\"".into()))?;
        let cni_version = v["cniVersion"]
            .as_str()
            .ok_or_else(|| bad("no \"cniVersion\"".into()))?;
        let plugins: Vec<Map<String, Value>> = v["plugins"]
            .as_array()
            .ok_or_else(|| bad("no \"plugins\" list".into()))?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| bad(format!("plugin entry {p} is not an object")))
            })
            .collect::<Result<_, _>>()?;
        if plugins.is_empty() {
            return Err(bad("the plugin list is empty".into()));
        }
        for p in &plugins {
            let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
            // The type names a file in CNI_PATH; anything with a slash would escape it.
            if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
                return Err(bad(format!("plugin type {ty:?} is not a plugin name")));
            }
        }
        Ok(Conflist {
            path: path.to_owned(),
            name: name.to_owned(),
            cni_version: cni_version.to_owned(),
            plugins,
        })
    }

    /// The conflist a runtime would pick from `dir`: the first `*.conflist` in name order
    /// (containerd and CRI-O both take the lexically first file).
    pub fn first_in(dir: &Path) -> Result<Conflist, PodError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| {
                PodError::Invalid(format!(
                    "reading {}: {e} (is the node's agent running?)",
                    dir.display()
                ))
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        files.sort();
        let first = files.first().ok_or_else(|| {
            PodError::Invalid(format!(
                "no *.conflist in {} (the agent installs one when it starts)",
                dir.display()
            ))
        })?;
        Conflist::load(first)
    }

    fn version_at_least(&self, min: (u32, u32, u32)) -> bool {
        parse_version(&self.cni_version).is_some_and(|v| v >= min)
    }
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().unwrap_or(Some(0))?))
}

/// One `hostPort → containerPort` mapping, the `portMappings` capability's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: Protocol,
}

/// A transport protocol as Kubernetes names them in ports (lowercase in CNI's
/// `portMappings`). portmap takes TCP and UDP only; SCTP exists for container ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The name in a Pod or NetworkPolicy object: `TCP`, `UDP`, `SCTP`.
    pub fn kube_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    /// `tcp`, `udp` or `sctp`, in any case.
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(format!("protocol {s:?} is not tcp, udp or sctp")),
        }
    }
}

impl std::str::FromStr for PortMapping {
    type Err = String;
    /// `HOST:CONTAINER[/tcp|/udp]`.
    fn from_str(s: &str) -> Result<PortMapping, String> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => return Err(format!("{s:?}: protocol {other:?} is not tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let (h, c) = ports
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: a port mapping is HOST:CONTAINER[/tcp|/udp]"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{s:?}: {p:?} is not a port"))
        };
        Ok(PortMapping {
            host_port: port(h)?,
            container_port: port(c)?,
            protocol: proto,
        })
    }
}

/// What identifies one attachment to the plugins: the `CNI_*` variables of ADD/DEL/CHECK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    /// `None` for a DEL whose namespace is gone (the spec allows an empty CNI_NETNS then).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

impl Attachment {
    /// CNI_ARGS as the kubelet (dockershim, then containerd's CRI) sets it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }
}

/// A node's CNI setup as its runtime sees it: the plugin folder and a conflist.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The node's network namespace: plugins run there.
    pub netns: String,
    /// CNI_PATH: the node's plugin folder.
    pub bin_dir: PathBuf,
    pub conflist: Conflist,
    /// A folder holding only an `iptables` link, the PATH Debian's `portmap` runs with (see
    /// [`Runtime::plugin_env`]).
    pub iptables_only: PathBuf,
}

/// One plugin's run: what it printed, and how long the exec took (fork to exit).
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub plugin: String,
    pub stdout: String,
    pub took: Duration,
}

impl Runtime {
    /// ADD: each plugin in order, each fed the result of the one before. Returns the last
    /// result, the one a runtime caches and reports.
    pub fn add(&self, att: &Attachment) -> Result<Value, PodError> {
        let mut prev: Option<Value> = None;
        for plugin in &self.conflist.plugins {
            let conf = self.plugin_conf(plugin, prev.as_ref(), att);
            let run = self.exec(plugin, "ADD", Some(att), &conf)?;
            let result: Value = serde_json::from_str(&run.stdout).map_err(|e| PodError::Cni {
                plugin: run.plugin.clone(),
                command: "ADD".into(),
                code: None,
                msg: format!("ADD succeeded but its result is not JSON: {e}"),
                details: run.stdout.clone(),
            })?;
            prev = Some(result);
        }
        prev.ok_or_else(|| PodError::Invalid("the conflist has no plugins".into()))
    }

    /// DEL: each plugin in reverse order. From 0.4.0 on each gets the cached ADD result as
    /// `prevResult` (libcni passes none to older lists).
    pub fn del(&self, att: &Attachment, cached: Option<&Value>) -> Result<(), PodError> {
        let prev = cached.filter(|_| self.conflist.version_at_least(CHECK_SINCE));
        for plugin in self.conflist.plugins.iter().rev() {
            let conf = self.plugin_conf(plugin, prev, att);
            self.exec(plugin, "DEL", Some(att), &conf)?;
        }
        Ok(())
    }

    /// CHECK: each plugin in order with the cached ADD result. A list older than 0.4.0 has no
    /// CHECK, and libcni refuses it before running anything.
    pub fn check(&self, att: &Attachment, cached: &Value) -> Result<(), PodError> {
        if !self.conflist.version_at_least(CHECK_SINCE) {
            return Err(PodError::Unsupported(format!(
                "CHECK needs cniVersion 0.4.0 or later; the conflist has {}",
                self.conflist.cni_version
            )));
        }
        for plugin in &self.conflist.plugins {
            let conf = self.plugin_conf(plugin, Some(cached), att);
            self.exec(plugin, "CHECK", Some(att), &conf)?;
        }
        Ok(())
    }

    /// STATUS (1.1.0): every plugin must answer that it is ready.
    pub fn status(&self) -> Result<(), PodError> {
        if !self.conflist.version_at_least(STATUS_GC_SINCE) {
            return Err(PodError::Unsupported(format!(
                "STATUS needs cniVersion 1.1.0; the conflist has {}",
                self.conflist.cni_version
            )));
        }
        for plugin in &self.conflist.plugins {
            let conf = Value::Object(self.list_conf(plugin, None));
            self.exec(plugin, "STATUS", None, &conf)?;
        }
        Ok(())
    }

    /// GC (1.1.0): every plugin gets the attachments the runtime still wants, as
    /// `cni.dev/valid-attachments` (`containerID` + `ifname`).
    pub fn gc(&self, valid: &[(String, String)]) -> Result<(), PodError> {
        if !self.conflist.version_at_least(STATUS_GC_SINCE) {
            return Err(PodError::Unsupported(format!(
                "GC needs cniVersion 1.1.0; the conflist has {}",
                self.conflist.cni_version
            )));
        }
        let list: Vec<Value> = valid
            .iter()
            .map(|(cid, ifname)| json!({"containerID": cid, "ifname": ifname}))
            .collect();
        for plugin in &self.conflist.plugins {
            let conf = Value::Object(self.list_conf(plugin, Some(Value::Array(list.clone()))));
            self.exec(plugin, "GC", None, &conf)?;
        }
        Ok(())
    }

    /// The config one plugin gets on stdin (libcni's buildOneConfig): its own entry plus the
    /// list's `name` and `cniVersion`, `prevResult`, and `runtimeConfig` for each capability
    /// it declares that the runtime has a value for.
    fn plugin_conf(
        &self,
        plugin: &Map<String, Value>,
        prev: Option<&Value>,
        att: &Attachment,
    ) -> Value {
        let mut conf = self.list_conf(plugin, None);
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let wants = |cap: &str| {
            plugin
                .get("capabilities")
                .and_then(|c| c.get(cap))
                .and_then(Value::as_bool)
                == Some(true)
        };
        let mut runtime = Map::new();
        // containerd's CRI always passes the pod's port mappings, an empty list included.
        if wants("portMappings") {
            runtime.insert(
                "portMappings".into(),
                serde_json::to_value(&att.ports).unwrap_or(Value::Array(vec![])),
            );
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Value::Object(conf)
    }

    fn list_conf(&self, plugin: &Map<String, Value>, valid: Option<Value>) -> Map<String, Value> {
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(self.conflist.name.clone()));
        conf.insert(
            "cniVersion".into(),
            Value::String(self.conflist.cni_version.clone()),
        );
        if let Some(valid) = valid {
            conf.insert("cni.dev/valid-attachments".into(), valid);
        }
        conf
    }

    /// The environment a plugin runs with, beyond the CNI_* variables.
    ///
    /// Debian's `portmap` (plugins 1.1.1) checks its per-container chain in ip6tables as
    /// well, even for an IPv4-only pod, so its CHECK fails wherever ip6tables' nat table
    /// works (containernetworking/plugins#819). It runs with a PATH holding only `iptables`,
    /// as on a host without ip6tables; every command (ADD, CHECK, DEL) alike, so that DEL
    /// removes exactly what ADD made.
    fn plugin_env(&self, plugin_type: &str) -> Vec<(String, String)> {
        let path = if plugin_type == "portmap" {
            self.iptables_only.display().to_string()
        } else {
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        };
        vec![("PATH".into(), path)]
    }

    /// Execs one plugin in the node's namespace. A non-zero exit becomes [`PodError::Cni`]
    /// with the error JSON's code, message and details.
    pub fn exec(
        &self,
        plugin: &Map<String, Value>,
        command: &str,
        att: Option<&Attachment>,
        conf: &Value,
    ) -> Result<PluginRun, PodError> {
        let ty = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if ty == "portmap" {
            ensure_iptables_only(&self.iptables_only)?;
        }
        let mut env: Vec<(String, String)> = vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_PATH".into(), self.bin_dir.display().to_string()),
        ];
        if let Some(att) = att {
            env.push(("CNI_CONTAINERID".into(), att.container_id.clone()));
            env.push((
                "CNI_NETNS".into(),
                att.netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ));
            env.push(("CNI_IFNAME".into(), att.ifname.clone()));
            env.push(("CNI_ARGS".into(), att.cni_args()));
        }
        env.extend(self.plugin_env(&ty));
        let program = self.bin_dir.join(&ty);
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let run = exec_in_netns(&self.netns, &program, env, stdin)?;
        if run.code == 0 {
            return Ok(PluginRun {
                plugin: ty,
                stdout: run.stdout,
                took: run.took,
            });
        }
        let err: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        Err(PodError::Cni {
            plugin: ty,
            command: command.into(),
            code: err["code"].as_u64(),
            msg: err["msg"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("exit status {}", run.code)),
            details: match err["details"].as_str() {
                Some(d) => d.to_owned(),
                None => format!(
                    "stdout: {} stderr: {}",
                    run.stdout.trim(),
                    run.stderr.trim()
                ),
            },
        })
    }
}

/// Makes the `iptables`-only PATH folder for Debian's portmap (see [`Runtime::plugin_env`]).
fn ensure_iptables_only(dir: &Path) -> Result<(), PodError> {
    let link = dir.join("iptables");
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| PodError::Invalid(format!("creating {}: {e}", dir.display())))?;
    match std::os::unix::fs::symlink("/usr/sbin/iptables", &link) {
        Ok(()) => Ok(()),
        // Another pod made it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(PodError::Invalid(format!(
            "linking {}: {e}",
            link.display()
        ))),
    }
}

/// What one exec returned.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `program` with exactly `env` (nothing inherited) and `stdin`, forked from a thread
/// that has joined `netns`. `took` spans fork to exit.
pub fn exec_in_netns(
    netns: &str,
    program: &Path,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
) -> Result<ExecOutput, PodError> {
    let program = program.to_owned();
    crate::kube_netns::in_netns(netns, move || exec_here(&program, &env, &stdin))?
}

/// [`exec_in_netns`] for a thread that is already in the right namespace (benchmarks keep
/// one thread there for a whole series).
pub fn exec_here(
    program: &Path,
    env: &[(String, String)],
    stdin: &[u8],
) -> Result<ExecOutput, PodError> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PodError::Invalid(format!("running {}: {e}", program.display())))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits before reading all of stdin is judged by its exit status.
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| PodError::Invalid(format!("waiting for {}: {e}", program.display())))?;
    Ok(ExecOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(version: &str, plugins: Value) -> Runtime {
        let plugins = plugins
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_object().cloned())
            .collect();
        Runtime {
            netns: "n".into(),
            bin_dir: "/b".into(),
            conflist: Conflist {
                path: "/c".into(),
                name: "k8s-pod-network".into(),
                cni_version: version.into(),
                plugins,
            },
            iptables_only: "/i".into(),
        }
    }

    fn att() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            netns: Some("/run/netns/p".into()),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "u1".into(),
            ports: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
            }],
        }
    }

    #[test]
    fn each_plugin_gets_list_fields_prev_result_and_only_its_capabilities() {
        let rt = runtime(
            "1.0.0",
            json!([{"type": "tortie", "agent_socket": "/s"}, {"type": "portmap", "capabilities": {"portMappings": true}}]),
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let first = rt.plugin_conf(&rt.conflist.plugins[0], None, &att());
        assert_eq!(
            first,
            json!({"type": "tortie", "agent_socket": "/s", "name": "k8s-pod-network", "cniVersion": "1.0.0"})
        );
        let second = rt.plugin_conf(&rt.conflist.plugins[1], Some(&prev), &att());
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"]["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert_eq!(second["name"], "k8s-pod-network");
    }

    #[test]
    fn versions_gate_check_status_and_gc() {
        let old = runtime("0.3.1", json!([{"type": "tortie"}]));
        assert!(matches!(
            old.check(&att(), &json!({})),
            Err(PodError::Unsupported(_))
        ));
        assert!(matches!(old.status(), Err(PodError::Unsupported(_))));
        let v1 = runtime("1.0.0", json!([{"type": "tortie"}]));
        assert!(matches!(v1.gc(&[]), Err(PodError::Unsupported(_))));
        assert!(
            runtime("0.4.0", json!([]))
                .conflist
                .version_at_least(CHECK_SINCE)
        );
        assert!(
            runtime("1.1.0", json!([]))
                .conflist
                .version_at_least(STATUS_GC_SINCE)
        );
    }

    #[test]
    fn port_mappings_parse() {
        assert_eq!(
            "8080:80".parse(),
            Ok(PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(
            "53:5353/udp".parse::<PortMapping>().map(|p| p.protocol),
            Ok(Protocol::Udp)
        );
        assert!("80".parse::<PortMapping>().is_err());
        assert!("0:80".parse::<PortMapping>().is_err());
        assert!("1:2/sctp".parse::<PortMapping>().is_err());
    }

    #[test]
    fn cni_args_are_the_kubelets() {
        assert_eq!(
            att().cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1"
        );
    }

    #[test]
    fn conflists_are_validated() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, v: &Value| {
            std::fs::write(dir.path().join(name), v.to_string()).unwrap_or_else(|e| panic!("{e}"))
        };
        write(
            "20-b.conflist",
            &json!({"name": "b", "cniVersion": "1.0.0", "plugins": [{"type": "ptp"}]}),
        );
        write(
            "10-a.conflist",
            &json!({"name": "a", "cniVersion": "0.4.0", "plugins": [{"type": "tortie"}]}),
        );
        write("05-x.conf", &json!({"name": "x"}));
        let first = Conflist::first_in(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (first.name.as_str(), first.cni_version.as_str()),
            ("a", "0.4.0")
        );
        write(
            "bad.conflist",
            &json!({"name": "a", "cniVersion": "1.0.0", "plugins": [{"type": "../../bin/sh"}]}),
        );
        assert!(Conflist::load(&dir.path().join("bad.conflist")).is_err());
    }
}
