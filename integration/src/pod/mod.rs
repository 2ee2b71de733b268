//! Pods on the lab. The lab plays kubelet and containerd: it writes the Pod object bound to
//! a node, makes the sandbox's network namespace, runs the node's installed CNI plugins from
//! the node's conflist (inside the node's namespace, with the env and stdin containerd uses),
//! reports `status.podIP`, and undoes all of it on delete.
//!
//! Per pod, `<state>/pods/<namespace>.<name>/record.json` keeps what a runtime caches: the
//! container ID, the attachment's CNI_* values, the conflist used and the ADD result, which
//! DEL and CHECK get back as `prevResult`.

pub mod cni;
pub mod kube;
pub mod ping_matrix;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use cni::{Attachment, Conflist, PortMapping, Protocol, Runtime};
pub use kube::ContainerPort;

use crate::lab::{Lab, LabConfig};
use crate::traffic::serve::{self, Listener};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A plugin answered with an error (the CNI error JSON's code, msg and details).
    #[error("CNI {command} of plugin {plugin} failed: {}{msg}{}",
        code.map(|c| format!("code {c}: ")).unwrap_or_default(),
        if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Cni {
        plugin: String,
        command: String,
        code: Option<u64>,
        msg: String,
        details: String,
    },
    /// The conflist's version lacks the command.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Lab(#[from] crate::Error),
}

impl PodError {
    /// The CNI error code, when a plugin gave one.
    pub fn cni_code(&self) -> Option<u64> {
        match self {
            PodError::Cni { code, .. } => *code,
            _ => None,
        }
    }
}

/// A pod's `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn new(namespace: &str, name: &str) -> Result<PodRef, PodError> {
        // A namespace is a DNS label: no dot, which keeps `pod-<ns>.<name>` splittable.
        if !dns_label(namespace, false) {
            return Err(PodError::Invalid(format!(
                "namespace {namespace:?}: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63"
            )));
        }
        // Pod names may hold dots (DNS subdomain); the netns name must stay within NAME_MAX.
        if !dns_label(name, true) {
            return Err(PodError::Invalid(format!(
                "pod name {name:?}: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 63"
            )));
        }
        Ok(PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn netns_path(&self, lab: &Lab) -> PathBuf {
        Path::new("/run/netns").join(lab.pod_netns(&self.namespace, &self.name))
    }
}

impl std::str::FromStr for PodRef {
    type Err = PodError;
    fn from_str(s: &str) -> Result<PodRef, PodError> {
        match s.split_once('/') {
            Some((ns, name)) => PodRef::new(ns, name),
            None => Err(PodError::Invalid(format!("{s:?}: a pod is namespace/name"))),
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn dns_label(s: &str, dots: bool) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-' || (dots && c == '.'))
        && s.chars().next().is_some_and(ok)
        && s.chars().last().is_some_and(ok)
}

/// What the lab keeps about a pod it added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub pod: PodRef,
    pub node: String,
    pub attachment: Attachment,
    /// The conflist ADD used; DEL and CHECK use the same one.
    pub conflist: PathBuf,
    /// The last plugin's ADD result.
    pub result: Value,
    pub ips: Vec<IpAddr>,
}

impl PodRecord {
    /// The IPAM handle the agent files this attachment under (`<network>.<containerID>`).
    pub fn handle(&self, network: &str) -> String {
        format!("{network}.{}", self.attachment.container_id)
    }
}

/// Where the lab keeps a pod's record.
pub fn pod_dir(lab: &Lab, pod: &PodRef) -> PathBuf {
    lab.state_dir()
        .join("pods")
        .join(format!("{}.{}", pod.namespace, pod.name))
}

fn record_file(lab: &Lab, pod: &PodRef) -> PathBuf {
    pod_dir(lab, pod).join("record.json")
}

/// The pod's record, if the lab added it and has not deleted it.
pub fn load(lab: &Lab, pod: &PodRef) -> Result<Option<PodRecord>, PodError> {
    let path = record_file(lab, pod);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PodError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PodError::Invalid(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

fn save(lab: &Lab, record: &PodRecord) -> Result<(), PodError> {
    let text = serde_json::to_vec_pretty(record)
        .map_err(|e| PodError::Invalid(format!("encoding the pod record: {e}")))?;
    Ok(crate::write_file(&record_file(lab, &record.pod), &text)?)
}

/// Every pod the lab added, in name order.
pub fn records(lab: &Lab) -> Result<Vec<PodRecord>, PodError> {
    let dir = lab.state_dir().join("pods");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path().join("record.json");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        out.push(
            serde_json::from_slice::<PodRecord>(&bytes)
                .map_err(|e| PodError::Invalid(format!("{}: {e}", path.display())))?,
        );
    }
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(out)
}

/// The CNI runtime of `node`: its plugin folder, and `conflist` or else the one its agent
/// installed.
pub fn runtime(lab: &Lab, node: &str, conflist: Option<&Path>) -> Result<Runtime, PodError> {
    let conflist = match conflist {
        Some(path) => Conflist::load(path)?,
        None => Conflist::first_in(&lab.cni_conf_dir(node))?,
    };
    Ok(Runtime {
        netns: lab.node_netns(node),
        bin_dir: lab.cni_bin_dir(node),
        conflist,
        iptables_only: lab.node_dir(node).join("cni").join("iptables-only"),
    })
}

/// How to add a pod.
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// hostPort mappings, for portmap.
    pub ports: Vec<PortMapping>,
    /// The container's named ports (`spec.containers[0].ports`).
    pub container_ports: Vec<ContainerPort>,
    /// Start a `serve` server in the sandbox on every TCP and UDP container port, before
    /// CNI ADD: it listens from the moment the pod gets its address, so a probe finds any
    /// window in which the pod is reachable before its policy is in place.
    pub serve: bool,
    /// A conflist other than the node's installed one (tests use one per spec version).
    pub conflist: Option<PathBuf>,
}

impl AddOptions {
    /// What `serve` listens on: the container ports, each port and protocol once.
    pub fn listeners(&self) -> Result<Vec<Listener>, PodError> {
        let mut out: Vec<Listener> = self
            .container_ports
            .iter()
            .filter(|p| p.protocol != Protocol::Sctp)
            .map(|p| Listener {
                protocol: p.protocol,
                port: p.port,
            })
            .collect();
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(PodError::Invalid(
                "serving needs at least one TCP or UDP container port".into(),
            ));
        }
        Ok(out)
    }
}

/// A container ID as containerd makes them: 64 hex digits.
pub fn new_container_id() -> Result<String, PodError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| PodError::Invalid(format!("reading /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes a pod's sandbox namespace (loopback up, as a runtime's sandbox has it).
pub fn create_netns(lab: &Lab, pod: &PodRef) -> Result<(), PodError> {
    let name = lab.pod_netns(&pod.namespace, &pod.name);
    if pod.netns_path(lab).exists() {
        return Err(PodError::Invalid(format!(
            "namespace {name} already exists (a pod left behind? `pod del {pod}`)"
        )));
    }
    crate::run(Command::new("ip").args(["netns", "add", &name]))?;
    crate::run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
    Ok(())
}

fn delete_netns(lab: &Lab, pod: &PodRef) -> Result<(), PodError> {
    let name = lab.pod_netns(&pod.namespace, &pod.name);
    if !pod.netns_path(lab).exists() {
        return Ok(());
    }
    // Whatever still runs inside (a ping from `exec`) would keep the namespace alive.
    for pid in crate::netns::NetNs::pids_of(&name) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    crate::run(Command::new("ip").args(["netns", "del", &name]))?;
    Ok(())
}

/// The IP addresses of a CNI result (`ips[].address`, prefix length dropped).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// `pod add`: Pod object, sandbox namespace, CNI ADD through the whole conflist, status.
/// On failure everything made so far is undone (CNI DEL included, best effort), as a
/// runtime tears a failed sandbox down, and the error is returned.
pub fn add(lab: &Lab, pod: &PodRef, opts: &AddOptions) -> Result<PodRecord, PodError> {
    let config = LabConfig::load(lab)?.ok_or_else(|| {
        PodError::Invalid(format!(
            "no lab at {} (run `scripts/lab up`)",
            lab.state_dir().display()
        ))
    })?;
    let node = config.node(&opts.node)?;
    if load(lab, pod)?.is_some() {
        return Err(PodError::Invalid(format!(
            "pod {pod} exists already (`pod del {pod}` first)"
        )));
    }
    let rt = runtime(lab, &node.name, opts.conflist.as_deref())?;
    let listeners = if opts.serve {
        opts.listeners()?
    } else {
        Vec::new()
    };
    let uid = kube::create_pod(lab, pod, &node.name, &opts.labels, &opts.container_ports)?;
    let attachment = Attachment {
        container_id: new_container_id()?,
        netns: Some(pod.netns_path(lab)),
        ifname: "eth0".into(),
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        pod_uid: uid,
        ports: opts.ports.clone(),
    };
    // A namespace that is already there is not ours to wire or to delete: only the Pod
    // object made above is undone.
    if let Err(e) = create_netns(lab, pod) {
        if let Err(undo) = kube::delete_pod(lab, pod) {
            tracing::warn!(%pod, error = %undo, "deleting the Pod after its sandbox could not be made");
        }
        return Err(e);
    }
    if !listeners.is_empty() {
        let netns = lab.pod_netns(&pod.namespace, &pod.name);
        let log = pod_dir(lab, pod).join("serve.log");
        if let Err(e) = serve::spawn(lab, &netns, &pod.to_string(), &listeners, &log) {
            undo(lab, &rt, pod, &attachment);
            let _ = std::fs::remove_dir_all(pod_dir(lab, pod));
            return Err(e.into());
        }
    }
    let result = match rt.add(&attachment) {
        Ok(r) => r,
        Err(e) => {
            undo(lab, &rt, pod, &attachment);
            let _ = std::fs::remove_dir_all(pod_dir(lab, pod));
            return Err(e);
        }
    };
    let record = PodRecord {
        pod: pod.clone(),
        node: node.name.clone(),
        ips: result_ips(&result),
        attachment,
        conflist: rt.conflist.path.clone(),
        result,
    };
    if let Err(e) = save(lab, &record)
        .and_then(|()| kube::set_running(lab, pod, IpAddr::V4(node.ip), &record.ips))
    {
        undo(lab, &rt, pod, &record.attachment);
        let _ = std::fs::remove_dir_all(pod_dir(lab, pod));
        return Err(e);
    }
    Ok(record)
}

/// Tears down a sandbox whose ADD failed: DEL, namespace, Pod object. Each step is best
/// effort; what fails is logged, and the agent's leak GC reclaims an allocation left behind
/// once the Pod is gone.
fn undo(lab: &Lab, rt: &Runtime, pod: &PodRef, att: &Attachment) {
    if let Err(e) = rt.del(att, None) {
        tracing::warn!(%pod, error = %e, "DEL after a failed ADD");
    }
    if let Err(e) = delete_netns(lab, pod) {
        tracing::warn!(%pod, error = %e, "deleting the namespace after a failed ADD");
    }
    if let Err(e) = kube::delete_pod(lab, pod) {
        tracing::warn!(%pod, error = %e, "deleting the Pod after a failed ADD");
    }
}

fn record_and_runtime(lab: &Lab, pod: &PodRef) -> Result<(PodRecord, Runtime), PodError> {
    let record = load(lab, pod)?.ok_or_else(|| {
        PodError::Invalid(format!(
            "pod {pod}: the lab has no record of it (not added with `pod add`)"
        ))
    })?;
    let conflist = record
        .conflist
        .exists()
        .then_some(record.conflist.as_path());
    let rt = runtime(lab, &record.node, conflist)?;
    Ok((record, rt))
}

/// CNI DEL of a recorded pod, leaving the pod otherwise in place (DEL is idempotent; tests
/// run it twice).
pub fn cni_del(lab: &Lab, pod: &PodRef) -> Result<(), PodError> {
    let (record, rt) = record_and_runtime(lab, pod)?;
    let mut att = record.attachment.clone();
    // With the namespace gone, a runtime passes an empty CNI_NETNS.
    att.netns = att.netns.filter(|p| p.exists());
    rt.del(&att, Some(&record.result))
}

/// `pod check`: CNI CHECK through the conflist with the cached result.
pub fn check(lab: &Lab, pod: &PodRef) -> Result<(), PodError> {
    let (record, rt) = record_and_runtime(lab, pod)?;
    rt.check(&record.attachment, &record.result)
}

/// `pod del`: CNI DEL in reverse order, then the namespace and the Pod object. A DEL that
/// fails stops here, leaving the pod for another try, as a kubelet retries. A pod the lab has
/// no record of loses only its namespace and object.
pub fn del(lab: &Lab, pod: &PodRef) -> Result<(), PodError> {
    if load(lab, pod)?.is_some() {
        cni_del(lab, pod)?;
    }
    forget(lab, pod)
}

/// What is left of a pod once its network is undone, or once its node is gone (`node del`:
/// no agent answers a CNI DEL there, and the Node's blocks go with the Node): its
/// namespace, its Pod object and the lab's record.
pub fn forget(lab: &Lab, pod: &PodRef) -> Result<(), PodError> {
    delete_netns(lab, pod)?;
    kube::delete_pod(lab, pod)?;
    let dir = pod_dir(lab, pod);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodError::Invalid(format!(
            "removing {}: {e}",
            dir.display()
        ))),
    }
}

/// `up --pods-per-node M`: pods `default/pod-<node>-<i>`, i = 1..=M, on every node; those
/// that exist already are kept. Returns the ones added.
pub fn ensure_per_node(
    lab: &Lab,
    config: &LabConfig,
    per_node: u32,
) -> Result<Vec<PodRecord>, PodError> {
    let mut added = Vec::new();
    for node in &config.nodes {
        for i in 1..=per_node {
            let pod = PodRef::new("default", &format!("pod-{}-{i}", node.name))?;
            if load(lab, &pod)?.is_some() {
                continue;
            }
            added.push(add(
                lab,
                &pod,
                &AddOptions {
                    node: node.name.clone(),
                    ..Default::default()
                },
            )?);
        }
    }
    Ok(added)
}

/// Where a `ping` target lives: its namespace and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub netns: String,
    pub ip: IpAddr,
}

/// Resolves a lab node (`node-N`) or a pod the lab added (`ns/name`).
pub fn endpoint(lab: &Lab, target: &str) -> Result<Endpoint, PodError> {
    if target.contains('/') {
        let pod: PodRef = target.parse()?;
        let record = load(lab, &pod)?
            .ok_or_else(|| PodError::Invalid(format!("pod {pod}: not a pod the lab added")))?;
        let ip = *record
            .ips
            .first()
            .ok_or_else(|| PodError::Invalid(format!("pod {pod} has no address")))?;
        return Ok(Endpoint {
            netns: lab.pod_netns(&pod.namespace, &pod.name),
            ip,
        });
    }
    let config =
        LabConfig::load(lab)?.ok_or_else(|| PodError::Invalid("the lab is not up".into()))?;
    let node = config
        .nodes
        .iter()
        .find(|n| n.name == target)
        .ok_or_else(|| {
            PodError::Invalid(format!(
                "{target:?} is neither a lab node (node-N) nor a pod (namespace/name)"
            ))
        })?;
    Ok(Endpoint {
        netns: node.netns.clone(),
        ip: IpAddr::V4(node.ip),
    })
}

/// Pings `to`'s address from inside `from`'s namespace; `count` echo requests, 2 s each.
/// Both ends must be lab nodes or pods, so nothing is sent to any other address.
pub fn ping(lab: &Lab, from: &str, to: &str, count: u32) -> Result<std::process::Output, PodError> {
    let src = endpoint(lab, from)?;
    let dst = endpoint(lab, to)?;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &src.netns,
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-W",
            "2",
            &dst.ip.to_string(),
        ])
        .output()
        .map_err(|e| PodError::Invalid(format!("running ping in {}: {e}", src.netns)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_refs_are_checked() {
        let p: PodRef = "default/web-0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("default", "web-0")
        );
        assert!("default/web.v2".parse::<PodRef>().is_ok());
        for bad in [
            "web",
            "a.b/web",
            "default/",
            "/web",
            "Default/web",
            "default/-web",
            "default/a/b",
            "default/a b",
        ] {
            assert!(bad.parse::<PodRef>().is_err(), "{bad}");
        }
        let lab = Lab::new("/s", "p-");
        assert_eq!(
            p.netns_path(&lab),
            PathBuf::from("/run/netns/p-pod-default.web-0")
        );
        assert_eq!(pod_dir(&lab, &p), PathBuf::from("/s/pods/default.web-0"));
    }

    #[test]
    fn result_ips_drop_the_prefix_length() {
        let r = serde_json::json!({"ips": [{"address": "10.244.0.5/32"}, {"address": "fd00::5/128"}, {"gateway": "x"}]});
        assert_eq!(
            result_ips(&r),
            vec![
                "10.244.0.5"
                    .parse::<IpAddr>()
                    .unwrap_or_else(|e| panic!("{e}")),
                "fd00::5".parse().unwrap_or_else(|e| panic!("{e}"))
            ]
        );
    }

    #[test]
    fn container_ids_are_64_hex_digits() {
        let a = new_container_id().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_container_id().unwrap_or_else(|e| panic!("{e}")));
    }
}
