//! Which BGP sessions this node should have, decided from the cluster: the node-to-node
//! mesh (unless BGPConfiguration `default` turns it off) and every BGPPeer that applies to
//! this node. Pure: the mesh task (agent/src/mesh.rs) applies the result to the speaker.
//!
//! A BGPPeer applies to this node when it has neither `node` nor `nodeSelector` (a global
//! peer), when `node` names this node, or when `nodeSelector` selects this node's labels.
//! It peers with `peerIP` (optionally with a port), or with every node `peerSelector`
//! selects, at that node's `tortie.dev/ipv4-address`. A `peerSelector` peering is symmetric,
//! as in Calico: a node the BGPPeer applies to peers with the selected nodes, and each
//! selected node peers back with it, so route reflectors need one BGPPeer, not two.
//!
//! A node annotated `tortie.dev/route-reflector-cluster-id` (Calico's
//! `routeReflectorClusterID`), or labelled `route-reflector=true` (the label Calico's
//! examples select reflectors by; the cluster ID is then the node's address), is a route
//! reflector (RFC 4456): the nodes it peers with through BGPPeers in its AS are its clients
//! unless they are reflectors of the same cluster. The mesh is never reflected.
//!
//! A BGPPeer this node cannot carry out (a selector that does not parse, an IPv6 peer, no
//! AS number) applies to nothing, and the caller logs the
//! [`Warning`] that names it.

pub mod selector;

use std::collections::{BTreeMap, btree_map};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::datastore::crd::{BGPPeerSpec, SecretKeyRef};
use crate::datastore::{ANNOTATION_AS, ANNOTATION_IPV4, BGPConfiguration, BGPPeer};
use selector::Selector;

/// A BGPPeer annotation: the most prefixes the peer may send before its session is closed
/// with a Cease (RFC 4486 subcode 1).
pub const ANNOTATION_MAX_PREFIXES: &str = "tortie.dev/max-prefixes";

/// A Node annotation: the node is a route reflector with this cluster ID (an IPv4 address).
pub const ANNOTATION_RR_CLUSTER_ID: &str = "tortie.dev/route-reflector-cluster-id";

/// A Node label: `route-reflector=true` makes the node a route reflector whose cluster ID
/// is its address.
pub const LABEL_ROUTE_REFLECTOR: &str = "route-reflector";

/// The one BGPConfiguration that has an effect, as in Calico.
pub const DEFAULT_CONFIGURATION: &str = "default";

/// What a session is, in Calico's words (`calicoctl node status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerType {
    Mesh,
    Global,
    NodeSpecific,
}

impl PeerType {
    pub const fn as_str(self) -> &'static str {
        match self {
            PeerType::Mesh => "node-to-node mesh",
            PeerType::Global => "global",
            PeerType::NodeSpecific => "node specific",
        }
    }
}

/// One session this node should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPeer {
    pub address: Ipv4Addr,
    /// The peer's TCP port (179 unless `peerIP` names one).
    pub port: u16,
    pub asn: u32,
    /// Wait for the peer to connect. Between two tortie nodes the higher address waits, so
    /// the two never race two connections against each other.
    pub passive: bool,
    pub peer_type: PeerType,
    /// The BGPPeer this session comes from; `None` for the mesh.
    pub bgp_peer: Option<String>,
    /// The Secret key holding the TCP MD5 password (RFC 2385).
    pub password: Option<SecretKeyRef>,
    /// We reflect routes to and from this peer (RFC 4456).
    pub route_reflector_client: bool,
    /// `maxRestartTime`, seconds: the graceful restart time for this peer.
    pub restart_time: Option<u16>,
    pub max_prefixes: Option<u32>,
    /// `keepOriginalNextHop`: learned routes go to this (eBGP) peer with their own next
    /// hop, not ours.
    pub keep_original_next_hop: bool,
}

/// This node, as the BGPPeers see it.
#[derive(Clone, Copy, Debug)]
pub struct ThisNode<'a> {
    pub name: &'a str,
    pub ip: Ipv4Addr,
    pub asn: u32,
    /// We are a route reflector of this cluster ([`NodeSettings::cluster_id`]).
    pub cluster_id: Option<Ipv4Addr>,
}

/// A BGPPeer left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub bgp_peer: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub peers: BTreeMap<Ipv4Addr, DesiredPeer>,
    pub warnings: Vec<Warning>,
}

/// What BGPConfiguration `default` decides for this node besides its sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    /// The node's AS, by Calico's precedence: the node's own (`AS`), else `asNumber`, else
    /// 64512.
    pub asn: u32,
    /// This node is a route reflector with this cluster ID.
    pub cluster_id: Option<Ipv4Addr>,
    /// What the BGPConfiguration or our Node set that this node does not carry out, as log
    /// lines.
    pub warnings: Vec<String>,
}

/// This node's AS and reflector role, from its `AS`, its Node and the BGPConfigurations.
pub fn node_settings(
    own_asn: Option<u32>,
    node: Option<&Node>,
    configurations: &BTreeMap<String, Arc<BGPConfiguration>>,
) -> NodeSettings {
    let spec = configurations.get(DEFAULT_CONFIGURATION).map(|c| &c.spec);
    let mut warnings = Vec::new();
    let cluster_asn = match spec.and_then(|s| s.as_number) {
        Some(0) => {
            warnings.push(format!(
                "BGPConfiguration {DEFAULT_CONFIGURATION:?}: asNumber 0 is reserved (RFC 7607) and ignored"
            ));
            None
        }
        other => other,
    };
    if let Some(port) = spec.and_then(|s| s.listen_port)
        && port != tortie_bgp::BGP_PORT
    {
        // Refused rather than half done: every speaker would have to move to the new port
        // at once, and the speaker's listener is bound for its lifetime.
        warnings.push(format!(
            "BGPConfiguration {DEFAULT_CONFIGURATION:?}: listenPort {port} is not supported; the nodes listen on and connect to port {}",
            tortie_bgp::BGP_PORT
        ));
    }
    let cluster_id = node.and_then(|n| match reflector_cluster_id(n) {
        Ok(id) => id,
        Err(reason) => {
            warnings.push(reason);
            None
        }
    });
    NodeSettings {
        asn: own_asn
            .or(cluster_asn)
            .unwrap_or(crate::config::DEFAULT_AS_NUMBER),
        cluster_id,
        warnings,
    }
}

/// A Node's route reflector cluster ID, if it is a reflector; an annotation that is not
/// an IPv4 address is an error and makes it none.
fn reflector_cluster_id(node: &Node) -> Result<Option<Ipv4Addr>, String> {
    let annotated = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RR_CLUSTER_ID));
    if let Some(text) = annotated {
        return text.trim().parse::<Ipv4Addr>().map(Some).map_err(|_| {
            format!(
                "Node {:?}: {ANNOTATION_RR_CLUSTER_ID} {text:?} is not an IPv4 address (e.g. 244.0.0.1); the node is no route reflector",
                node.metadata.name.as_deref().unwrap_or_default()
            )
        });
    }
    let labelled = labels_of(Some(node))
        .get(LABEL_ROUTE_REFLECTOR)
        .is_some_and(|v| v == "true");
    Ok(labelled.then(|| node_ipv4(node)).flatten())
}

/// The sessions this node should have. A BGPPeer at a mesh peer's address replaces the
/// mesh session (one session per address); of two BGPPeers at one address, the first by
/// name wins and the other is reported.
pub fn desired_peers(
    this: ThisNode<'_>,
    nodes: &BTreeMap<String, Arc<Node>>,
    bgp_peers: &BTreeMap<String, Arc<BGPPeer>>,
    configurations: &BTreeMap<String, Arc<BGPConfiguration>>,
) -> Desired {
    let mut out = Desired::default();
    for (name, peer) in bgp_peers {
        match peers_of(
            this,
            nodes,
            name,
            &peer.spec,
            annotation(peer, ANNOTATION_MAX_PREFIXES),
        ) {
            Ok(peers) => {
                for p in peers {
                    match out.peers.entry(p.address) {
                        btree_map::Entry::Vacant(v) => {
                            v.insert(p);
                        }
                        // Both directions of a symmetric peering: one session.
                        btree_map::Entry::Occupied(o) if o.get().bgp_peer == p.bgp_peer => {}
                        btree_map::Entry::Occupied(o) => out.warnings.push(Warning {
                            bgp_peer: name.clone(),
                            reason: format!(
                                "peer {} is already configured by BGPPeer {:?}; this one is ignored for it",
                                p.address,
                                o.get().bgp_peer.as_deref().unwrap_or_default()
                            ),
                        }),
                    }
                }
            }
            Err(reason) => out.warnings.push(Warning {
                bgp_peer: name.clone(),
                reason,
            }),
        }
    }
    if let Some(ours) = this.cluster_id {
        let reflectors: BTreeMap<Ipv4Addr, Option<Ipv4Addr>> = nodes
            .values()
            .filter_map(|n| Some((node_ipv4(n)?, reflector_cluster_id(n).ok().flatten())))
            .collect();
        for p in out.peers.values_mut() {
            if let Some(theirs) = reflectors.get(&p.address)
                && p.asn == this.asn
                && *theirs != Some(ours)
            {
                p.route_reflector_client = true;
            }
        }
    }
    let mesh_enabled = configurations
        .get(DEFAULT_CONFIGURATION)
        .and_then(|c| c.spec.node_to_node_mesh_enabled)
        .unwrap_or(true);
    if mesh_enabled {
        let mesh = crate::mesh::mesh_peers(
            this.name,
            this.ip,
            this.asn,
            nodes.values().map(|n| n.as_ref()),
        );
        for (address, m) in mesh {
            out.peers.entry(address).or_insert(DesiredPeer {
                address,
                port: tortie_bgp::BGP_PORT,
                asn: m.asn,
                passive: m.passive,
                peer_type: PeerType::Mesh,
                bgp_peer: None,
                password: None,
                route_reflector_client: false,
                restart_time: None,
                max_prefixes: None,
                keep_original_next_hop: false,
            });
        }
    }
    out
}

/// The sessions one BGPPeer asks of this node, or why it asks for none.
fn peers_of(
    this: ThisNode<'_>,
    nodes: &BTreeMap<String, Arc<Node>>,
    name: &str,
    spec: &BGPPeerSpec,
    max_prefixes: Option<&str>,
) -> Result<Vec<DesiredPeer>, String> {
    let scope = Scope::of(spec)?;
    let restart_time = spec
        .max_restart_time
        .as_deref()
        .map(|t| {
            crate::config::parse_duration(t)
                // The capability carries 12 bits of seconds (RFC 4724 §3).
                .map(|d| d.as_secs().min(4095) as u16)
                .map_err(|e| format!("maxRestartTime {t:?}: {e}"))
        })
        .transpose()?;
    let max_prefixes = max_prefixes
        .map(|m| {
            m.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{ANNOTATION_MAX_PREFIXES} {m:?} is not a positive number"))
        })
        .transpose()?;
    let peer = |address: Ipv4Addr, port: u16, asn: u32, passive: bool| DesiredPeer {
        address,
        port,
        asn,
        passive,
        peer_type: scope.peer_type(),
        bgp_peer: Some(name.to_owned()),
        password: spec.password.as_ref().map(|p| p.secret_key_ref.clone()),
        route_reflector_client: spec.route_reflector_client.unwrap_or(false),
        restart_time,
        max_prefixes,
        keep_original_next_hop: spec.keep_original_next_hop.unwrap_or(false),
    };
    let this_labels = labels_of(nodes.get(this.name).map(|n| n.as_ref()));
    match (&spec.peer_ip, &spec.peer_selector) {
        (Some(_), Some(_)) => Err("peerIP and peerSelector are both set; set one".into()),
        (None, None) => Err("neither peerIP nor peerSelector is set".into()),
        (Some(peer_ip), None) => {
            if !scope.applies(this.name, &this_labels) {
                return Ok(Vec::new());
            }
            let (address, port) = parse_peer_ip(peer_ip)?;
            let asn = spec
                .as_number
                .filter(|a| *a != 0)
                .ok_or("asNumber is required with peerIP")?;
            if address == this.ip {
                return Ok(Vec::new());
            }
            Ok(vec![peer(address, port, asn, false)])
        }
        (None, Some(text)) => {
            let selected = Selector::parse(text).map_err(|e| format!("peerSelector: {e}"))?;
            let here = scope.applies(this.name, &this_labels);
            let selected_here = selected.matches(&this_labels);
            let mut out = Vec::new();
            for (other_name, other) in nodes {
                if other_name == this.name {
                    continue;
                }
                let Some(address) = node_ipv4(other) else {
                    continue;
                };
                let labels = labels_of(Some(other));
                let peers = (here && selected.matches(&labels))
                    || (selected_here && scope.applies(other_name, &labels));
                if peers && address != this.ip {
                    out.push(peer(
                        address,
                        tortie_bgp::BGP_PORT,
                        node_asn(other).unwrap_or(this.asn),
                        this.ip > address,
                    ));
                }
            }
            Ok(out)
        }
    }
}

/// Which nodes a BGPPeer applies to.
enum Scope {
    Global,
    Node(String),
    Selected(Selector),
}

impl Scope {
    fn of(spec: &BGPPeerSpec) -> Result<Scope, String> {
        match (&spec.node, &spec.node_selector) {
            (Some(_), Some(_)) => Err("node and nodeSelector are both set; set one".into()),
            (Some(node), None) => Ok(Scope::Node(node.clone())),
            (None, Some(text)) => Selector::parse(text)
                .map(Scope::Selected)
                .map_err(|e| format!("nodeSelector: {e}")),
            (None, None) => Ok(Scope::Global),
        }
    }

    fn applies(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Scope::Global => true,
            Scope::Node(n) => n == node,
            Scope::Selected(s) => s.matches(labels),
        }
    }

    fn peer_type(&self) -> PeerType {
        match self {
            Scope::Global => PeerType::Global,
            Scope::Node(_) | Scope::Selected(_) => PeerType::NodeSpecific,
        }
    }
}

/// `10.0.0.1` or `10.0.0.1:1790`. IPv6 peers are refused: the speaker runs its sessions
/// from the node's IPv4 address.
fn parse_peer_ip(text: &str) -> Result<(Ipv4Addr, u16), String> {
    let text = text.trim();
    let (ip, port) = match text.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip(), sa.port()),
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => (ip, tortie_bgp::BGP_PORT),
            Err(_) => {
                return Err(format!(
                    "peerIP {text:?} is not an address (10.0.0.1, 10.0.0.1:1790)"
                ));
            }
        },
    };
    match ip {
        IpAddr::V4(a) if !a.is_unspecified() && port != 0 => Ok((a, port)),
        IpAddr::V4(_) => Err(format!("peerIP {text:?}: not a peer's address or port")),
        IpAddr::V6(_) => Err(format!(
            "peerIP {text:?}: IPv6 peers are not supported (sessions run over the node's IPv4 address)"
        )),
    }
}

fn annotation<'a>(peer: &'a BGPPeer, key: &str) -> Option<&'a str> {
    peer.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn labels_of(node: Option<&Node>) -> BTreeMap<String, String> {
    node.and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default()
}

/// A Node's BGP address from its annotation; Calico writes it with its prefix length
/// (10.0.0.2/24), so both forms are read.
pub fn node_ipv4(node: &Node) -> Option<Ipv4Addr> {
    node.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_IPV4)?
        .split('/')
        .next()?
        .trim()
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|a| !a.is_unspecified())
}

/// A Node's AS number from its annotation, if it has a usable one.
pub fn node_asn(node: &Node) -> Option<u32> {
    node.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_AS)?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|a| *a != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
