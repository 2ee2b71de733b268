//! Where a lab lives: its state folder, the prefix of its namespace names, and the fixed
//! layout of files, namespaces and addresses under them.
//!
//! Two labs with different state folders and prefixes never share anything: tests run their
//! own lab next to a developer's `scripts/lab up`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default state folder of `scripts/lab`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tortie-lab";
/// Environment variable overriding the state folder.
pub const STATE_ENV: &str = "TORTIE_LAB_STATE";
/// Environment variable giving the namespace name prefix (default empty: `node-1`, ...).
pub const PREFIX_ENV: &str = "TORTIE_LAB_PREFIX";
/// Set on every process the lab starts, with the state folder as value, so that `down` finds
/// them even when pid files are gone (children of children inherit it too).
pub const MEMBER_ENV: &str = "TORTIE_LAB_MEMBER";

/// The LAN every node and the control plane sit on. It exists only inside the lab's
/// namespaces.
pub const LAN_PREFIX_LEN: u8 = 24;
/// The control namespace's LAN address: etcd's peer, kube-apiserver.
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
/// The apiserver's port on [`CONTROL_IP`].
pub const APISERVER_PORT: u16 = 6443;
/// Node `i` (1-based) gets `172.31.0.(10+i)`.
const NODE_IP_BASE: u8 = 10;
/// The most nodes one /24 LAN holds with the numbering above.
pub const MAX_NODES: u32 = 200;

/// A lab's identity: where its files are and how its namespaces are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    state: PathBuf,
    prefix: String,
}

impl Lab {
    pub fn new(state: impl Into<PathBuf>, prefix: impl Into<String>) -> Lab {
        Lab {
            state: state.into(),
            prefix: prefix.into(),
        }
    }

    /// The lab `TORTIE_LAB_STATE` and `TORTIE_LAB_PREFIX` name (defaults: `/var/lib/tortie-lab`,
    /// no prefix).
    pub fn from_env() -> Lab {
        let state = std::env::var_os(STATE_ENV)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        // Absolute, so that the marker `down` looks for is the same from any working folder.
        let state = std::path::absolute(&state).unwrap_or(state);
        let prefix = std::env::var(PREFIX_ENV).unwrap_or_default();
        Lab::new(state, prefix)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the LAN bridge.
    pub fn lan_netns(&self) -> String {
        format!("{}tortie-lan", self.prefix)
    }

    /// The namespace running etcd and kube-apiserver.
    pub fn control_netns(&self) -> String {
        format!("{}tortie-ctl", self.prefix)
    }

    /// The namespace of node `node` (a Kubernetes node name such as `node-2`).
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    /// The namespace of pod `namespace/name`: `<prefix>pod-<namespace>.<name>`. A Kubernetes
    /// namespace never contains a dot, so the first dot splits the two back apart.
    pub fn pod_netns(&self, namespace: &str, name: &str) -> String {
        format!("{}pod-{namespace}.{name}", self.prefix)
    }

    /// Whether `netns` is a name this lab gives out. `down` removes exactly these (plus the
    /// ones its records list), so a half-finished `up` is cleaned up too.
    pub fn owns_netns(&self, netns: &str) -> bool {
        let Some(rest) = netns.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        if rest == "tortie-lan" || rest == "tortie-ctl" {
            return true;
        }
        if let Some(peer) = rest.strip_prefix("tortie-peer-") {
            // `peer add`'s routers (integration/src/peers.rs).
            return !peer.is_empty();
        }
        if let Some(n) = rest.strip_prefix("node-") {
            return !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
        }
        if let Some(pod) = rest.strip_prefix("pod-") {
            // `NetNs::create("pod")` names look like `pod-<pid>-<n>`: no dot, so never ours.
            return pod
                .split_once('.')
                .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty());
        }
        false
    }

    pub fn apiserver_url(&self) -> String {
        format!("https://{CONTROL_IP}:{APISERVER_PORT}")
    }

    pub fn config_file(&self) -> PathBuf {
        self.state.join("lab.json")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.state.join("pki")
    }
    pub fn control_dir(&self) -> PathBuf {
        self.state.join("control")
    }
    pub fn etcd_data_dir(&self) -> PathBuf {
        self.control_dir().join("etcd")
    }
    pub fn token_file(&self) -> PathBuf {
        self.control_dir().join("tokens.csv")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state.join("admin.kubeconfig")
    }
    /// kubectl's discovery cache, kept under the state folder so the host's `~/.kube` stays
    /// untouched and `down` removes it.
    pub fn kubectl_cache_dir(&self) -> PathBuf {
        self.state.join("kubectl-cache")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state.join("nodes").join(node)
    }
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("kubeconfig")
    }
    pub fn agent_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("run").join("agent.sock")
    }
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }
    pub fn agent_pid_file(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.pid")
    }
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("net.d")
    }
    pub fn cni_bin_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("bin")
    }
}

/// The name of node `i` (1-based).
pub fn node_name(i: u32) -> String {
    format!("node-{i}")
}

/// The index of a node named by [`node_name`] (`node-3` → 3); `None` for any other name.
pub fn node_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("node-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|i| (1..=MAX_NODES).contains(i))
}

/// The LAN address of node `i` (1-based), or `None` past [`MAX_NODES`].
pub fn node_ip(i: u32) -> Option<Ipv4Addr> {
    if i == 0 || i > MAX_NODES {
        return None;
    }
    let last = u8::try_from(i).ok()?.checked_add(NODE_IP_BASE)?;
    Some(Ipv4Addr::new(172, 31, 0, last))
}

/// What `up` built, written to `lab.json` so that the other subcommands need no flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabConfig {
    pub prefix: String,
    pub pool: ipnet::Ipv4Net,
    pub nodes: Vec<NodeConfig>,
    /// Where etcd keeps its data; `None` in a `lab.json` from before `--etcd-storage`.
    #[serde(default)]
    pub etcd_storage: Option<EtcdStorage>,
}

/// Where the lab's etcd keeps its data (`up --etcd-storage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdStorage {
    /// A folder in the state folder: every write waits for the disk's fsync, as in a real
    /// control plane.
    #[default]
    Disk,
    /// A tmpfs mounted on that folder: writes wait for no disk. Benches label it.
    Tmpfs,
}

impl EtcdStorage {
    pub fn as_str(self) -> &'static str {
        match self {
            EtcdStorage::Disk => "disk",
            EtcdStorage::Tmpfs => "tmpfs",
        }
    }
}

impl std::fmt::Display for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EtcdStorage {
    type Err = String;
    fn from_str(s: &str) -> Result<EtcdStorage, String> {
        match s {
            "disk" => Ok(EtcdStorage::Disk),
            "tmpfs" => Ok(EtcdStorage::Tmpfs),
            other => Err(format!("{other:?}: expected disk or tmpfs")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl LabConfig {
    pub fn load(lab: &Lab) -> Result<Option<LabConfig>, crate::Error> {
        let path = lab.config_file();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| crate::Error::Config {
                        path,
                        detail: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(crate::Error::Io {
                what: format!("reading {}", path.display()),
                source,
            }),
        }
    }

    /// The lowest node index no node of this lab has (`node add` after `node del node-2`
    /// of three gives node-2 again), or `None` when the LAN is full.
    pub fn free_node_index(&self) -> Option<u32> {
        (1..=MAX_NODES).find(|i| !self.nodes.iter().any(|n| node_index(&n.name) == Some(*i)))
    }

    /// The node called `name`, or an error listing the lab's nodes.
    pub fn node(&self, name: &str) -> Result<&NodeConfig, crate::Error> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            crate::Error::Invalid(format!(
                "{name:?} is not a node of this lab ({})",
                names.join(", ")
            ))
        })
    }

    pub fn save(&self, lab: &Lab) -> Result<(), crate::Error> {
        let path = lab.config_file();
        let text = serde_json::to_vec_pretty(self).map_err(|e| crate::Error::Config {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        crate::write_file(&path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let lab = Lab::new("/tmp/x", "t1-");
        assert_eq!(lab.node_netns("node-2"), "t1-node-2");
        assert_eq!(lab.pod_netns("default", "web-0"), "t1-pod-default.web-0");
        assert_eq!(lab.control_netns(), "t1-tortie-ctl");
    }

    #[test]
    fn owns_only_its_own_names() {
        let lab = Lab::new("/tmp/x", "");
        assert!(lab.owns_netns("node-1"));
        assert!(lab.owns_netns("node-12"));
        assert!(lab.owns_netns("tortie-lan"));
        assert!(lab.owns_netns("tortie-peer-tor"));
        assert!(!lab.owns_netns("tortie-peer-"));
        assert!(lab.owns_netns("pod-default.web-0"));
        // Names NetNs::create gives to other tests' namespaces.
        assert!(!lab.owns_netns("node-1234-0"));
        assert!(!lab.owns_netns("pod-1234-0"));
        assert!(!lab.owns_netns("node-"));
        let prefixed = Lab::new("/tmp/x", "t9-");
        assert!(!prefixed.owns_netns("node-1"));
        assert!(prefixed.owns_netns("t9-node-1"));
        assert!(!lab.owns_netns("t9-node-1"));
    }

    #[test]
    fn node_addresses_stay_in_the_lan() {
        assert_eq!(node_ip(1), Some(Ipv4Addr::new(172, 31, 0, 11)));
        assert_eq!(node_ip(MAX_NODES), Some(Ipv4Addr::new(172, 31, 0, 210)));
        assert_eq!(node_ip(0), None);
        assert_eq!(node_ip(MAX_NODES + 1), None);
    }

    #[test]
    fn node_indexes_come_from_the_names_and_fill_holes_first() {
        assert_eq!(node_index("node-3"), Some(3));
        for bad in ["node-", "node-0", "node-x", "node-+3", "n-3", "node-201"] {
            assert_eq!(node_index(bad), None, "{bad}");
        }
        let node = |i: u32| NodeConfig {
            name: node_name(i),
            netns: node_name(i),
            ip: node_ip(i).unwrap_or_else(|| panic!("no ip for {i}")),
        };
        let mut config = LabConfig {
            prefix: String::new(),
            pool: "10.244.0.0/16".parse().unwrap_or_else(|e| panic!("{e}")),
            nodes: vec![node(1), node(3)],
            etcd_storage: None,
        };
        assert_eq!(config.free_node_index(), Some(2));
        config.nodes.push(node(2));
        assert_eq!(config.free_node_index(), Some(4));
        assert_eq!(config.node("node-3").ok().map(|n| n.ip), node_ip(3));
        let unknown = config.node("node-4").map(|n| n.ip);
        assert!(
            unknown.is_err_and(|e| e.to_string().contains("(node-1, node-3, node-2)")),
            "the error lists the nodes"
        );
    }

    #[test]
    fn a_lab_json_from_before_etcd_storage_still_loads() {
        let old = r#"{"prefix":"","pool":"10.244.0.0/16","nodes":[]}"#;
        let c: LabConfig = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.etcd_storage, None);
        let new = r#"{"prefix":"","pool":"10.244.0.0/16","nodes":[],"etcd_storage":"tmpfs"}"#;
        let c: LabConfig = serde_json::from_str(new).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.etcd_storage, Some(EtcdStorage::Tmpfs));
        assert_eq!("disk".parse(), Ok(EtcdStorage::Disk));
        assert!("ssd".parse::<EtcdStorage>().is_err());
    }
}
