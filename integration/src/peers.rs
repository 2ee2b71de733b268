//! `peer add`: a real BIRD or FRR on the lab LAN as a top-of-rack router, and the global
//! BGPPeer that makes every node peer with it.
//!
//! The router runs in its own namespace `<prefix>tortie-peer-<name>`, plugged into the LAN
//! bridge at an address from the top of the LAN (172.31.0.250 downwards, clear of the
//! nodes), with its config, log and control socket in `<state>/peers/<name>/` and a record
//! in `<state>/peers/<name>.json`. It outlives `peer add`; `down` kills it and removes its
//! namespace with the rest of the lab.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use crate::lab::{Lab, LabConfig};
use crate::routers::{Kind, PeerSpec, Router, RouterSpec};
use crate::{Error, network};

/// The nodes' AS when BGPConfiguration sets none: the lab's agents run with `AS` unset,
/// so they take calico-node's default.
pub const NODE_ASN: u32 = 64512;

fn default_node_asn() -> u32 {
    NODE_ASN
}

/// The LAN addresses peers take, from the top down: above every node address (the nodes
/// end at 172.31.0.210) and below the broadcast address.
const FIRST_HOST: u8 = 250;
const LAST_HOST: u8 = 211;

/// Which router a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    Bird,
    Frr,
}

impl PeerKind {
    fn router(self) -> Kind {
        match self {
            PeerKind::Bird => Kind::Bird,
            PeerKind::Frr => Kind::Frr,
        }
    }
}

/// What `peer add` made, as recorded in `<state>/peers/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub name: String,
    pub kind: PeerKind,
    pub asn: u32,
    /// The AS the router expects the nodes in.
    #[serde(default = "default_node_asn")]
    pub node_asn: u32,
    pub address: Ipv4Addr,
    pub netns: String,
    /// The nodes the router was configured with.
    pub nodes: Vec<Ipv4Addr>,
    /// The router has a TCP MD5 password (its value is in the Secret and the router's
    /// config only, never here).
    pub password: bool,
    pub pid: Option<u32>,
}

/// The Secret holding a peer's password, in the agents' namespace.
pub fn secret_name(peer: &str) -> String {
    format!("bgp-password-{peer}")
}

/// The key of the password in [`secret_name`].
pub const SECRET_KEY: &str = "password";

/// The namespace the agents run in (the manifest's), where their Secrets live.
const AGENT_NAMESPACE: &str = "kube-system";

fn peers_dir(lab: &Lab) -> PathBuf {
    lab.state_dir().join("peers")
}

fn record_path(lab: &Lab, name: &str) -> PathBuf {
    peers_dir(lab).join(format!("{name}.json"))
}

/// The namespace of peer `name`.
pub fn peer_netns(lab: &Lab, name: &str) -> String {
    format!("{}tortie-peer-{name}", lab.prefix())
}

/// Every recorded peer.
pub fn load_all(lab: &Lab) -> Result<Vec<PeerRecord>, Error> {
    let Ok(dir) = std::fs::read_dir(peers_dir(lab)) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes =
                std::fs::read(&path).map_err(Error::io(format!("reading {}", path.display())))?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| Error::Config {
                path: path.clone(),
                detail: e.to_string(),
            })?);
        }
    }
    Ok(out)
}

/// A handle on a peer's running router, for queries (`birdc`, `vtysh`) and for changing
/// what it announces. The handle does not know the password: a BIRD with one must not be
/// reconfigured through it (its config would be written again without).
pub fn router(lab: &Lab, record: &PeerRecord) -> Router {
    Router::attach(
        record.kind.router(),
        &record.netns,
        router_spec(record, None),
        peers_dir(lab).join(&record.name),
    )
}

fn router_spec(record: &PeerRecord, password: Option<&str>) -> RouterSpec {
    let mut spec = RouterSpec::new(record.address, record.asn);
    spec.hold_time = 9;
    spec.peers = record
        .nodes
        .iter()
        .map(|n| {
            let mut p = PeerSpec::new(IpAddr::V4(*n), record.node_asn);
            p.password = password.map(str::to_owned);
            p.local_address = Some(IpAddr::V4(record.address));
            p
        })
        .collect();
    spec
}

/// Checks a peer name: it names a namespace, a bridge port's peer, a BGPPeer and a Secret.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "peer name {name:?}: use 1 to 20 lowercase letters, digits and inner dashes"
        )))
    }
}

/// What `peer add` is asked for.
#[derive(Debug, Clone)]
pub struct NewPeer<'a> {
    pub kind: PeerKind,
    pub name: &'a str,
    /// The router's AS.
    pub asn: u32,
    /// The AS the router expects the nodes in (BGPConfiguration `asNumber`, else 64512).
    pub node_asn: u32,
    pub password: Option<&'a str>,
}

/// Starts the router, peered with every node of the lab, and applies its BGPPeer (and,
/// with a password, the Secret and the Role that lets the agents read that one Secret).
pub fn add(lab: &Lab, new: NewPeer<'_>) -> Result<PeerRecord, Error> {
    let NewPeer {
        kind,
        name,
        asn,
        node_asn,
        password,
    } = new;
    check_name(name)?;
    let config = LabConfig::load(lab)?.ok_or_else(|| {
        Error::Invalid(format!(
            "no lab at {} (run `scripts/lab up` first)",
            lab.state_dir().display()
        ))
    })?;
    let existing = load_all(lab)?;
    if existing.iter().any(|p| p.name == name) {
        return Err(Error::Invalid(format!("peer {name} exists already")));
    }
    let taken: Vec<Ipv4Addr> = existing.iter().map(|p| p.address).collect();
    let address = (LAST_HOST..=FIRST_HOST)
        .rev()
        .map(|h| Ipv4Addr::new(172, 31, 0, h))
        .find(|a| !taken.contains(a))
        .ok_or_else(|| Error::Invalid("every peer address of the LAN is taken".into()))?;
    let netns = peer_netns(lab, name);
    network::ensure_netns(&netns)?;
    // The bridge port is named after the address, so two peers never share one.
    network::attach(lab, &netns, &format!("p{}", address.octets()[3]), address)?;
    let mut record = PeerRecord {
        name: name.to_owned(),
        kind,
        asn,
        node_asn,
        address,
        netns,
        nodes: config.nodes.iter().map(|n| n.ip).collect(),
        password: password.is_some(),
        pid: None,
    };
    let router = Router::start_in(
        kind.router(),
        &record.netns,
        router_spec(&record, password),
        peers_dir(lab).join(name),
    )?;
    record.pid = router.detach();
    let text = serde_json::to_vec_pretty(&record).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::write_file(&record_path(lab, name), &text)?;
    apply(lab, &objects_yaml(&record, password))?;
    Ok(record)
}

/// The BGPPeer of a peer, and with a password its Secret plus the Role and RoleBinding that
/// grant the agents `get` on that one Secret.
fn objects_yaml(record: &PeerRecord, password: Option<&str>) -> String {
    let name = &record.name;
    let secret = secret_name(name);
    let mut bgp_peer = serde_json::json!({
        "apiVersion": "crd.tortie.dev/v1",
        "kind": "BGPPeer",
        "metadata": {"name": name},
        "spec": {"peerIP": record.address.to_string(), "asNumber": record.asn},
    });
    let mut docs = Vec::new();
    if let Some(pw) = password {
        bgp_peer["spec"]["password"] =
            serde_json::json!({"secretKeyRef": {"name": secret, "key": SECRET_KEY}});
        docs.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret, "namespace": AGENT_NAMESPACE},
            "stringData": {SECRET_KEY: pw},
        }));
        docs.push(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": secret, "namespace": AGENT_NAMESPACE},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"]}],
        }));
        docs.push(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": secret, "namespace": AGENT_NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": secret},
            "subjects": [{"kind": "ServiceAccount", "name": "tortie-node", "namespace": AGENT_NAMESPACE}],
        }));
    }
    docs.push(bgp_peer);
    // JSON is YAML; one document per line keeps the password off the command line.
    docs.iter().map(|d| format!("---\n{d}\n")).collect()
}

/// `kubectl apply -f -` with `yaml` on stdin (never in the arguments: it may hold a password).
fn apply(lab: &Lab, yaml: &str) -> Result<(), Error> {
    let mut child = crate::up::kubectl(lab)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io("starting kubectl apply"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(yaml.as_bytes())
            .map_err(Error::io("writing to kubectl apply"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(Error::io("waiting for kubectl apply"))?;
    if !out.status.success() {
        return Err(Error::Command(format!(
            "kubectl apply of the peer's objects failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(password: bool) -> PeerRecord {
        PeerRecord {
            name: "tor".into(),
            kind: PeerKind::Bird,
            asn: 65000,
            node_asn: NODE_ASN,
            address: Ipv4Addr::new(172, 31, 0, 250),
            netns: "x-tortie-peer-tor".into(),
            nodes: vec![Ipv4Addr::new(172, 31, 0, 11)],
            password,
            pid: None,
        }
    }

    #[test]
    fn a_global_bgp_peer_and_with_a_password_its_secret_and_role() {
        let plain = objects_yaml(&record(false), None);
        assert_eq!(plain.matches("---").count(), 1, "{plain}");
        assert!(plain.contains(r#""peerIP":"172.31.0.250""#), "{plain}");
        assert!(
            !plain.contains("node"),
            "a global peer names no node: {plain}"
        );
        let with = objects_yaml(&record(true), Some("s3cret"));
        assert_eq!(with.matches("---").count(), 4, "{with}");
        assert!(
            with.contains(r#""resourceNames":["bgp-password-tor"]"#),
            "{with}"
        );
        assert!(
            with.contains(r#""secretKeyRef":{"key":"password","name":"bgp-password-tor"}"#),
            "{with}"
        );
    }

    #[test]
    fn names_fit_namespaces_and_objects() {
        assert!(check_name("tor-1").is_ok());
        for bad in ["", "Tor", "-tor", "tor-", "a_b", "averyveryverylongname1"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
